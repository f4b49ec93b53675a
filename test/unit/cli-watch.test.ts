import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { Backend, ConditionOp, WatchMode, WatchSpecError } from "../../proto/index.js";
import { buildJobSpec, type WatchArgs } from "../../cli/commands/watch.js";
import { parseEventsArgs } from "../../cli/commands/events.js";
import { parseAgentArgs, parseLabels, parsePerfBuffer } from "../../cli/commands/agent.js";
import { embeddedHostId, parseUpArgs, printNoTrapsWarning, printUpReady } from "../../cli/commands/up.js";
import { UsageError } from "../../cli/errors.js";
import { SequenceTracker } from "../../proto/index.js";

const args = (extra: Partial<WatchArgs>): WatchArgs => ({ pid: "4242", locations: [], mode: "w", hosts: [], ...extra });

test("cli watch - one watch per --symbol/--address in command-line order with per-kind default lengths", () => {
  const spec = buildJobSpec(
    args({
      locations: [
        { kind: "address", text: "0x4010" },
        { kind: "symbol", text: "counter+16" },
        { kind: "symbol", text: "flag" },
      ],
    }),
  );
  assert.deepEqual(
    spec.watches.map((w) => [w.location.case, w.location.value, w.length, w.mode]),
    [
      ["address", 0x4010n, 8, WatchMode.WRITE],
      ["symbol", "counter+0x10", 0, WatchMode.WRITE],
      ["symbol", "flag", 0, WatchMode.WRITE],
    ],
  );
  assert.equal(spec.target?.pid, 4242);
  assert.deepEqual(spec.target?.hostIds, []);
  assert.equal(spec.maxHits, 0n);
  assert.equal(spec.durationMs, 0n);
});

test("cli watch - --length and --mode apply to every watch; limits and hosts are carried", () => {
  const spec = buildJobSpec(
    args({
      locations: [
        { kind: "symbol", text: "counter" },
        { kind: "address", text: "4096" },
      ],
      length: "4",
      mode: "rw",
      maxHits: "100",
      duration: "1h30m",
      hosts: ["db-1", "db_2"],
    }),
  );
  assert.deepEqual(spec.watches.map((w) => [w.length, w.mode]), [[4, WatchMode.READ_WRITE], [4, WatchMode.READ_WRITE]]);
  assert.equal(spec.maxHits, 100n);
  assert.equal(spec.durationMs, 5_400_000n);
  assert.deepEqual(spec.target?.hostIds, ["db-1", "db_2"]);
});

test("cli watch - refuses bad input locally with the shared rules' messages (exit 3)", () => {
  const cases: Array<[Partial<WatchArgs>, RegExp]> = [
    [{ locations: [] }, /at least one watch/],
    [{ pid: undefined, locations: [{ kind: "symbol", text: "x" }] }, /needs target processes: --pid, --exe, --comm or --cgroup/],
    [{ pid: undefined, exe: "bin/app", locations: [{ kind: "symbol", text: "x" }] }, /--exe 'bin\/app' must be an absolute path/],
    [{ locations: [{ kind: "symbol", text: "x" }], hosts: ["a"], selector: "role=db" }, /name hosts one way: --host, --selector or --all-hosts/],
    [{ locations: [{ kind: "symbol", text: "x" }], selector: "zone in a" }, /selector 'zone in a': expected '\('/],
    [{ pid: "abc", locations: [{ kind: "symbol", text: "x" }] }, /--pid 'abc' is not a non-negative integer/],
    [{ pid: "4294967296", locations: [{ kind: "symbol", text: "x" }] }, /--pid 4294967296 is too large/],
    [{ locations: [{ kind: "symbol", text: "a b" }] }, /symbol 'a b' is not NAME/],
    [{ locations: [{ kind: "address", text: "zz" }] }, /address 'zz' is not a number/],
    [{ locations: [{ kind: "address", text: "0x4010" }], length: "3" }, /length 3 is not 1, 2, 4 or 8/],
    [{ locations: [{ kind: "address", text: "0x4010" }], mode: "x" }, /execute watches take length 1/],
    [{ locations: [{ kind: "address", text: "0x4010" }], mode: "q" }, /mode 'q' is not one of w, rw, r, x/],
    [{ locations: [{ kind: "symbol", text: "x" }], conditions: ["value = 1"] }, /condition 'value = 1' is not/],
    [{ locations: [{ kind: "symbol", text: "x" }], tids: ["t1"] }, /--tid 't1' is not a non-negative integer/],
    [{ locations: [{ kind: "symbol", text: "x" }], stack: "65" }, /--stack 65 is too large \(at most 64\)/],
    [{ locations: [{ kind: "symbol", text: "x" }], rate: "-1" }, /--rate '-1' is not a non-negative integer/],
    [{ locations: [{ kind: "address", text: "0xffffffff81000000" }] }, /not a user-space address/],
    [{ locations: [{ kind: "address", text: "0x4003" }, { kind: "address", text: "0x5000" }] }, /need 5 debug registers/],
    [{ locations: [{ kind: "symbol", text: "x" }], duration: "30" }, /--duration '30' is not a duration/],
    [{ locations: [{ kind: "symbol", text: "x" }], maxHits: "-1" }, /--max-hits '-1'/],
    [{ locations: [{ kind: "symbol", text: "x" }], hosts: ["a.b"] }, /--host 'a.b' is not a host id/],
    [{ locations: [{ kind: "symbol", text: "x" }], backend: "ebpf" }, /backend 'ebpf' is not ptrace or perf/],
    [{ locations: [{ kind: "symbol", text: "x" }], backend: "perf", conditions: ["changed"] }, /use --backend ptrace/],
    [{ locations: [{ kind: "symbol", text: "x" }], backend: "ptrace", count: true }, /counting \(--count\) needs the perf backend/],
    [{ locations: [{ kind: "symbol", text: "x" }], count: true, countInterval: "5ms" }, /count interval 5ms is outside 10ms \.\. 1h/],
    [{ locations: [{ kind: "symbol", text: "x" }], count: true, countInterval: "1s5" }, /--count-interval '1s5' is not a duration/],
    [{ locations: [{ kind: "symbol", text: "x" }], countInterval: "1s" }, /needs a counting job \(--count\)/],
  ];
  for (const [extra, message] of cases) {
    assert.throws(() => buildJobSpec(args(extra)), (err: unknown) => {
      assert.ok(err instanceof UsageError || err instanceof WatchSpecError, String(err));
      assert.match((err as Error).message, message);
      return true;
    });
  }
});

test("cli events - --since counts back from now; job ids must be one subject token", () => {
  assert.deepEqual(parseEventsArgs("j-1", { since: "10m" }, 1_000_000), { jobId: "j-1", follow: false, since: new Date(400_000) });
  assert.deepEqual(parseEventsArgs("j-1", { follow: true }), { jobId: "j-1", follow: true });
  assert.throws(() => parseEventsArgs("j.*", {}), /job id 'j\.\*' is not a job id/);
  assert.throws(() => parseEventsArgs("j-1", { since: "yesterday" }), /--since 'yesterday' is not a duration/);
});

test("cli agent - labels are key=value and host ids one subject token", () => {
  assert.deepEqual(parseLabels(["role=db", "zone=", "a=b=c"]), { role: "db", zone: "", "a": "b=c" });
  assert.throws(() => parseLabels(["=x"]), /--label '=x' is not key=value/);
  assert.throws(() => parseLabels(["novalue"]), /--label 'novalue' is not key=value/);
  assert.throws(() => parseAgentArgs({ hostId: "a b" }, { controller: "c:1", nats: "nats://n:1" }), /--host-id 'a b'/);
  assert.deepEqual(parseAgentArgs({ hostId: "h1", label: ["k=v"], helper: "/h" }, { controller: "c:1", nats: "nats://n:1" }), {
    controller: "c:1",
    natsUrl: "nats://n:1",
    hostId: "h1",
    labels: { k: "v" },
    helperPath: "/h",
  });
  // Read again on every reload: a relative path must not depend on the working directory then.
  assert.equal(parseAgentArgs({ hostId: "h1", policy: "policy.json" }, { controller: "c:1", nats: "nats://n:1" }).policyPath, path.resolve("policy.json"));
});

test("cli up - host id is the hostname reduced to [A-Za-z0-9_-]; data dir is under the cwd", () => {
  assert.equal(embeddedHostId("db-1.example.com"), "db-1-example-com");
  assert.equal(embeddedHostId("my_host"), "my_host");
  assert.equal(embeddedHostId(""), "localhost");
  assert.deepEqual(parseUpArgs({ dataDir: ".fleetwatch", listen: "127.0.0.1:7070", natsPort: "4222" }, "/srv", "h.x"), {
    dataDir: "/srv/.fleetwatch",
    listen: "127.0.0.1:7070",
    natsPort: 4222,
    hostId: "h-x",
  });
  assert.throws(() => parseUpArgs({ dataDir: "d", listen: "127.0.0.1:1", natsPort: "70000" }, "/", "h"), /--nats-port '70000' is not a TCP port/);
  assert.throws(() => parseUpArgs({ dataDir: "d", listen: "0.0.0.0:7070", natsPort: "4222" }, "/", "h"), /serves plaintext, on loopback only/);
});

test("cli up - warns, in a line scripts waiting for the ready line skip, only when no backend traps here", () => {
  const ptrace = "DR0 armed, 0 of 8 probe writes trapped: this host does not deliver debug-register traps (hypervisor)";
  const perf = "perf breakpoint opened, 0 of 8 probe writes trapped: this host does not deliver debug-register traps (hypervisor)";
  const check = (backend: "ptrace" | "perf", delivery: "delivered" | "not-delivered" | "not-run", detail: string) => ({ backend, delivery, writes: 8, traps: delivery === "delivered" ? 8 : 0, nsPerTrap: 0, detail });
  const warning = printNoTrapsWarning([check("ptrace", "not-delivered", ptrace), check("perf", "not-delivered", perf)]);
  assert.equal(warning, `warning: this host delivers no debug-register traps (ptrace: ${ptrace}; perf: ${perf}): watches here are refused; see README "Hosts without debug traps"\n`);
  assert.doesNotMatch(warning!, /^fleetwatch up:/m);
  assert.match(printUpReady("127.0.0.1:7070", "nats://127.0.0.1:4222", "h1"), /^fleetwatch up: controller 127\.0\.0\.1:7070, nats nats:\/\/127\.0\.0\.1:4222, host h1\n$/);
  assert.match(printNoTrapsWarning([check("ptrace", "not-delivered", ptrace), check("perf", "not-run", "perf_event_open: EACCES (perf_event_paranoid 3)")]) ?? "", /\(ptrace: DR0 armed.*; perf: perf_event_open: EACCES \(perf_event_paranoid 3\)\)/);
  assert.equal(printNoTrapsWarning([check("ptrace", "not-delivered", ptrace), check("perf", "delivered", "8 of 8 probe writes trapped")]), undefined, "perf traps");
  assert.equal(printNoTrapsWarning([]), undefined, "not tested");
});

test("cli events - a hit seen again from the same host is dropped, in or out of order", () => {
  const seen = new SequenceTracker();
  const log: Array<[string, bigint]> = [["h1", 1n], ["h1", 3n], ["h2", 1n], ["h1", 2n], ["h1", 3n], ["h1", 1n], ["h1", 4n], ["h1", 0n], ["h1", 0n]];
  assert.deepEqual(log.map(([host, seq]) => seen.add(host, seq)), [true, true, true, true, false, false, true, true, true]);
});

test("cli watch - conditions, thread filter, rate limit and stack depth go into the spec", () => {
  const spec = buildJobSpec({
    pid: "42",
    locations: [{ kind: "symbol", text: "counter" }],
    mode: "r",
    hosts: [],
    conditions: ["value > 0x10", "changed"],
    tids: ["43", "44"],
    rate: "1000",
    backoff: "250ms",
    stack: "0",
  });
  assert.deepEqual(spec.conditions.map((c) => [c.op, c.value]), [[ConditionOp.GT, 16n], [ConditionOp.CHANGED, 0n]]);
  assert.deepEqual(spec.tids, [43, 44]);
  assert.deepEqual([spec.maxHitsPerSecond, spec.backoffMs, spec.stackDepth], [1000, 250, 0]);
  assert.equal(spec.watches[0]!.mode, WatchMode.READ);
  const defaults = buildJobSpec({ pid: "42", locations: [{ kind: "symbol", text: "counter" }], mode: "w", hosts: [] });
  assert.equal(defaults.stackDepth, undefined, "unset: the controller applies the default depth");
});

test("cli watch - --backend, --count and --count-interval go into the spec; no --backend leaves the choice to the controller", () => {
  const table: Array<[Partial<WatchArgs>, Backend, boolean, bigint]> = [
    [{}, Backend.UNSPECIFIED, false, 0n],
    [{ backend: "ptrace" }, Backend.PTRACE, false, 0n],
    [{ backend: "perf" }, Backend.PERF, false, 0n],
    [{ count: true }, Backend.UNSPECIFIED, true, 0n],
    [{ count: true, backend: "perf", countInterval: "250ms" }, Backend.PERF, true, 250n],
    [{ count: true, countInterval: "1h" }, Backend.UNSPECIFIED, true, 3_600_000n],
  ];
  for (const [extra, backend, countOnly, intervalMs] of table) {
    const spec = buildJobSpec(args({ locations: [{ kind: "symbol", text: "counter" }], ...extra }));
    assert.deepEqual([spec.backend, spec.countOnly, spec.countIntervalMs], [backend, countOnly, intervalMs], JSON.stringify(extra));
  }
});

test("cli agent - --perf-buffer is a power of two from 64KiB to 256MiB, in KiB, MiB or a number of KiB", () => {
  assert.equal(parsePerfBuffer("8MiB"), 8192);
  assert.equal(parsePerfBuffer("512KiB"), 512);
  assert.equal(parsePerfBuffer("64"), 64);
  assert.equal(parsePerfBuffer("256M"), 262_144);
  for (const bad of ["3MiB", "32KiB", "512MiB", "0", "", "1.5MiB", "8GiB", "-64"]) {
    assert.throws(() => parsePerfBuffer(bad), /--perf-buffer '.*' is not a power of two from 64KiB to 256MiB/, bad);
  }
  assert.equal(parseAgentArgs({ hostId: "h1", perfBuffer: "16MiB" }, { controller: "c:1", nats: "nats://n:1" }).perfBufferKiB, 16_384);
});
