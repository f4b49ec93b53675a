import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Backend, ConditionOp, JobSpecSchema, WatchMode, WatchSpecError, armConditions, backendName, checkJobSpec, chunksOf, countIntervalMs, formatChunk, formatCondition, parseBackend, parseCondition, parseSymbol, resolveBackend, splitRange } from "../../proto/index.js";

const split = (address: bigint, length: number) => splitRange(address, length, WatchMode.WRITE).map((c) => [Number(c.address - address), c.length]);

test("watch-spec - splits ranges into the largest aligned chunk that fits the remaining length", () => {
  const table: Array<[bigint, number, number[][]]> = [
    [0x1000n, 8, [[0, 8]]],
    [0x1000n, 4, [[0, 4]]],
    [0x1004n, 8, [[0, 4], [4, 4]]],
    [0x1003n, 8, [[0, 1], [1, 4], [5, 2], [7, 1]]],
    [0x1001n, 2, [[0, 1], [1, 1]]],
    [0x1002n, 8, [[0, 2], [2, 4], [6, 2]]],
    [0x1000n, 3, [[0, 2], [2, 1]]],
    [0x1006n, 1, [[0, 1]]],
  ];
  for (const [address, length, expected] of table) {
    assert.deepEqual(split(address, length), expected, `${address.toString(16)}/${length}`);
  }
});

test("watch-spec - parses symbols with decimal and hex offsets", () => {
  assert.deepEqual(parseSymbol("work_mem"), { name: "work_mem", offset: 0n });
  assert.deepEqual(parseSymbol("fw_bytes+0x8"), { name: "fw_bytes", offset: 8n });
  assert.deepEqual(parseSymbol("fw_bytes+12"), { name: "fw_bytes", offset: 12n });
  assert.deepEqual(parseSymbol("conf.limits.max"), { name: "conf.limits.max", offset: 0n });
  assert.deepEqual(parseSymbol("conf->ptr->x+4"), { name: "conf->ptr->x", offset: 4n });
  assert.deepEqual(parseSymbol("table[3].b"), { name: "table[3].b", offset: 0n });
  assert.throws(() => parseSymbol("a b"), WatchSpecError);
  assert.throws(() => parseSymbol("conf->"), WatchSpecError);
  assert.throws(() => parseSymbol("table[x]"), WatchSpecError);
  assert.throws(() => parseSymbol("x+"), WatchSpecError);
});

const job = (watches: object[]) => create(JobSpecSchema, { watches: watches as never, target: { pid: 42 } });

test("watch-spec - refuses bad lengths, execute widths and kernel addresses", () => {
  const cases: Array<[object, RegExp]> = [
    [{ location: { case: "address", value: 0x1000n }, length: 3, mode: WatchMode.WRITE }, /length 3 is not 1, 2, 4 or 8/],
    [{ location: { case: "address", value: 0x1000n }, length: 8, mode: WatchMode.EXECUTE }, /execute watches take length 1/],
    [{ location: { case: "address", value: 0xffffffff81000000n }, length: 8, mode: WatchMode.WRITE }, /not a user-space address/],
    [{ location: { case: "address", value: 0x7fffffffeffcn }, length: 8, mode: WatchMode.WRITE }, /not a user-space address/],
    [{ location: { case: "address", value: 0x1000n }, length: 8, mode: WatchMode.UNSPECIFIED }, /mode is required/],
    [{ location: { case: "address", value: 0x1000n }, length: 0, mode: WatchMode.WRITE }, /needs a length/],
  ];
  for (const [watch, message] of cases) assert.throws(() => checkJobSpec(job([watch])), message);
});

test("watch-spec - refuses a fifth chunk on one target and lists every chunk", () => {
  const spec = job([
    { location: { case: "address", value: 0x1003n }, length: 8, mode: WatchMode.WRITE },
    { location: { case: "address", value: 0x2000n }, length: 8, mode: WatchMode.READ_WRITE },
  ]);
  assert.throws(() => checkJobSpec(spec), (err: unknown) => {
    assert.ok(err instanceof WatchSpecError);
    assert.match(err.message, /need 5 debug registers per target but a thread has 4/);
    assert.match(err.message, /0x1003\/1 w #0, 0x1004\/4 w #0, 0x1008\/2 w #0, 0x100a\/1 w #0, 0x2000\/8 rw #1/);
    return true;
  });
});

test("watch-spec - sizes symbol watches from the symbol and splits them like addresses", () => {
  const spec = job([{ location: { case: "symbol", value: "counter" }, length: 0, mode: WatchMode.WRITE }]);
  const chunks = chunksOf(spec, new Map([[0, { address: 0x5000n, size: 4n }]]));
  assert.deepEqual(chunks.map(formatChunk), ["0x5000/4 w #0"]);
  assert.throws(() => chunksOf(spec, new Map([[0, { address: 0x5000n, size: 24n }]])), /is 24 bytes; give --length/);
});

test("watch-spec - parses value conditions and refuses malformed ones", () => {
  assert.deepEqual([parseCondition("changed").op, parseCondition("unchanged").op], [ConditionOp.CHANGED, ConditionOp.UNCHANGED]);
  const table: Array<[string, ConditionOp, bigint]> = [
    ["value == 5", ConditionOp.EQ, 5n],
    ["!= 0x10", ConditionOp.NE, 16n],
    ["value<3", ConditionOp.LT, 3n],
    ["> 18446744073709551615", ConditionOp.GT, 18446744073709551615n],
    ["value <= 0", ConditionOp.LE, 0n],
    [">= 7", ConditionOp.GE, 7n],
  ];
  for (const [text, op, value] of table) {
    const c = parseCondition(text);
    assert.deepEqual([c.op, c.value], [op, value], text);
  }
  assert.equal(formatCondition(parseCondition("value>=0x1f")), "value >= 0x1f");
  for (const bad of ["value = 5", "value > -1", "> 18446744073709551616", "sometimes"]) assert.throws(() => parseCondition(bad), WatchSpecError, bad);
});

test("watch-spec - read watches arm read/write registers plus an unchanged condition, and stand alone", () => {
  const read = job([{ location: { case: "address", value: 0x1000n }, length: 8, mode: WatchMode.READ }]);
  checkJobSpec(read);
  assert.deepEqual(chunksOf(read, new Map()).map(formatChunk), ["0x1000/8 rw #0"]);
  assert.deepEqual(armConditions(read).map(formatCondition), ["unchanged"]);
  const mixed = job([
    { location: { case: "address", value: 0x1000n }, length: 8, mode: WatchMode.READ },
    { location: { case: "address", value: 0x2000n }, length: 8, mode: WatchMode.WRITE },
  ]);
  assert.throws(() => checkJobSpec(mixed), /cannot share a job with other modes/);
  const write = job([{ location: { case: "address", value: 0x1000n }, length: 8, mode: WatchMode.WRITE }]);
  assert.deepEqual(armConditions(write), []);
});

test("watch-spec - bounds conditions, thread filters and stack depth", () => {
  const base = { watches: [{ location: { case: "address", value: 0x1000n }, length: 8, mode: WatchMode.READ }], target: { pid: 42 } };
  const many = create(JobSpecSchema, { ...base, conditions: [1, 2, 3, 4].map((v) => ({ op: ConditionOp.NE, value: BigInt(v) })) } as never);
  assert.throws(() => checkJobSpec(many), /at most 4 conditions per job, read watches use one \(got 5\)/);
  assert.throws(() => checkJobSpec(create(JobSpecSchema, { ...base, tids: Array.from({ length: 17 }, (_, i) => i + 1) } as never)), /at most 16 threads/);
  assert.throws(() => checkJobSpec(create(JobSpecSchema, { ...base, stackDepth: 65 } as never)), /stack depth 65 is above 64/);
});

const write8 = { location: { case: "address", value: 0x1000n }, length: 8, mode: WatchMode.WRITE };
const read8 = { ...write8, mode: WatchMode.READ };
const changed = [{ op: ConditionOp.CHANGED }];
const spec = (fields: object, watches: object[] = [write8]) => create(JobSpecSchema, { watches, target: { pid: 42 }, ...fields } as never);

test("watch-spec - automatic backend is perf unless the spec needs a stop at each trap; an explicit one is kept", () => {
  const table: Array<[string, object, object[], Backend]> = [
    ["automatic, plain write watch", {}, [write8], Backend.PERF],
    ["automatic, counting", { countOnly: true }, [write8], Backend.PERF],
    ["automatic, conditions", { conditions: changed }, [write8], Backend.PTRACE],
    ["automatic, read watch", {}, [read8], Backend.PTRACE],
    ["ptrace", { backend: Backend.PTRACE }, [write8], Backend.PTRACE],
    ["ptrace with conditions", { backend: Backend.PTRACE, conditions: changed }, [write8], Backend.PTRACE],
    ["perf", { backend: Backend.PERF }, [write8], Backend.PERF],
    ["perf, rw with a thread filter and a rate limit", { backend: Backend.PERF, tids: [7], maxHitsPerSecond: 10 }, [{ ...write8, mode: WatchMode.READ_WRITE }], Backend.PERF],
  ];
  for (const [name, fields, watches, backend] of table) {
    const s = spec(fields, watches);
    checkJobSpec(s);
    assert.equal(resolveBackend(s), backend, name);
  }
});

test("watch-spec - refuses what a backend cannot do, and counting that is not perf or filters by value", () => {
  const table: Array<[string, object, object[], RegExp]> = [
    ["perf with conditions", { backend: Backend.PERF, conditions: changed }, [write8], /perf backend .* conditions \(--if\) need the value at the trap: use --backend ptrace/],
    ["perf with a read watch", { backend: Backend.PERF }, [read8], /perf backend .* read watches \(--mode r\) .*: use --backend ptrace/],
    ["counting on ptrace", { backend: Backend.PTRACE, countOnly: true }, [write8], /counting \(--count\) needs the perf backend/],
    ["counting with conditions", { countOnly: true, conditions: changed }, [write8], /counting job \(--count\) .* conditions \(--if\)/],
    ["counting a read watch", { countOnly: true }, [read8], /counting job \(--count\) .* read watches/],
    ["counting with a rate limit", { countOnly: true, maxHitsPerSecond: 100 }, [write8], /no rate limit \(--rate\)/],
    ["interval without counting", { countIntervalMs: 1000n }, [write8], /needs a counting job \(--count\)/],
    ["interval below 10 ms", { countOnly: true, countIntervalMs: 9n }, [write8], /count interval 9ms is outside 10ms \.\. 1h/],
    ["interval above an hour", { countOnly: true, countIntervalMs: 3_600_001n }, [write8], /count interval 1h1ms is outside/],
    ["unknown backend", { backend: 7 }, [write8], /backend 7 is not known/],
  ];
  for (const [name, fields, watches, message] of table) {
    assert.throws(() => checkJobSpec(spec(fields, watches)), (err: unknown) => err instanceof WatchSpecError && message.test(err.message), name);
  }
});

test("watch-spec - count intervals default to 1 s and take 10 ms .. 1 h", () => {
  const table: Array<[bigint, bigint]> = [
    [0n, 1_000n],
    [10n, 10n],
    [250n, 250n],
    [3_600_000n, 3_600_000n],
  ];
  for (const [asked, used] of table) {
    const s = spec({ countOnly: true, countIntervalMs: asked });
    checkJobSpec(s);
    assert.equal(countIntervalMs(s), used, String(asked));
  }
});

test("watch-spec - backend names round trip", () => {
  for (const name of ["ptrace", "perf", "auto"]) assert.equal(backendName(parseBackend(name)), name);
  assert.throws(() => parseBackend("ebpf"), /backend 'ebpf' is not ptrace or perf/);
});
