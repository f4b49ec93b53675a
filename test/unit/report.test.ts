import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { CountReportSchema, HitEventSchema, JobSchema, JobState, ValueRedaction, type HitEvent } from "../../proto/index.js";
import { UsageError } from "../../cli/errors.js";
import { parseReportArgs } from "../../cli/commands/report.js";
import { renderFlameGraphSvg } from "../../cli/report/flamegraph.js";
import { coverageOf, renderFolded, renderReport, reportJson } from "../../cli/report/render.js";
import { WritersAggregator, foldedStack, frameKey, parseGroupBy } from "../../cli/report/writers.js";

/** A hit from `fn` (called by `caller`, called by main) on host/pid/tid, writing old → new. */
function hit(init: { host?: string; pid?: number; tid?: number; fn?: string; caller?: string; ip?: bigint; old?: bigint; new?: bigint; seq: bigint; timeNs?: bigint; redaction?: ValueRedaction }): HitEvent {
  const ip = init.ip ?? 0x401000n;
  return create(HitEventSchema, {
    jobId: "j1",
    hostId: init.host ?? "h1",
    pid: init.pid ?? 100,
    tid: init.tid ?? 101,
    ip,
    oldValue: init.old ?? 0n,
    newValue: init.new ?? 1n,
    sequence: init.seq,
    timeUnixNano: init.timeNs ?? 1_000_000_000n * init.seq,
    valueRedaction: init.redaction ?? ValueRedaction.UNSPECIFIED,
    stack: init.fn
      ? [
          { ip, function: init.fn, offset: 6n, module: "/usr/bin/app" },
          { ip: 0x402000n, function: init.caller ?? "loop", offset: 0x20n, module: "/usr/bin/app" },
          { ip: 0x403000n, function: "main", offset: 0x40n, module: "/usr/bin/app" },
        ]
      : [],
  });
}

const job = (delivered: bigint, state = JobState.COMPLETED, extra: { dropped?: bigint } = {}) =>
  create(JobSchema, { id: "j1", state, counts: { trapped: delivered + (extra.dropped ?? 0n), delivered, dropped: extra.dropped ?? 0n }, targets: [{ hostId: "h1", pid: 100 }] });

test("report - groups by stack: each writer once, with hits, share, hosts, processes, first and last seen", () => {
  const a = new WritersAggregator(["stack"]);
  let seq = 0n;
  for (let i = 0; i < 6; i++) a.addHit(hit({ fn: "write_alpha", caller: "alpha_loop", seq: ++seq, old: BigInt(i), new: BigInt(i + 1) }));
  for (let i = 0; i < 3; i++) a.addHit(hit({ fn: "write_beta", caller: "beta_loop", host: "h2", pid: 200, seq: BigInt(i + 1), timeNs: 50n + BigInt(i) }));
  const s = a.snapshot();
  assert.equal(s.hits, 9);
  assert.equal(s.groupCount, 2);
  assert.deepEqual(s.groups.map((g) => [g.key[0], g.hits]), [
    ["main;alpha_loop;write_alpha", 6],
    ["main;beta_loop;write_beta", 3],
  ]);
  const [alpha, beta] = s.groups;
  assert.equal(alpha!.share, 6 / 9);
  assert.deepEqual(alpha!.hosts, ["h1"]);
  assert.deepEqual(beta!.processes, ["h2/200"]);
  assert.equal(alpha!.firstUnixNano, 1_000_000_000n);
  assert.equal(alpha!.lastUnixNano, 6_000_000_000n);
  assert.equal(beta!.firstUnixNano, 50n);
  assert.equal(beta!.lastUnixNano, 52n);
  assert.deepEqual(s.sequences.map((q) => [q.hostId, q.seen, q.missing]), [
    ["h1", 6, 0n],
    ["h2", 3, 0n],
  ]);
});

test("report - groups by several kinds at once, sorted by hits; --top keeps the heaviest and counts the rest", () => {
  const a = new WritersAggregator(parseGroupBy("host,frame"));
  const seqs = new Map<string, bigint>();
  const next = (h: string) => {
    seqs.set(h, (seqs.get(h) ?? 0n) + 1n);
    return seqs.get(h)!;
  };
  for (const [host, fn, n] of [["h1", "f", 5], ["h1", "g", 2], ["h2", "f", 3]] as const) for (let i = 0; i < n; i++) a.addHit(hit({ host, fn, seq: next(host) }));
  const s = a.snapshot(2);
  assert.deepEqual(s.by, ["host", "frame"]);
  assert.deepEqual(s.groups.map((g) => [...g.key, g.hits]), [
    ["h1", "f+0x6", 5],
    ["h2", "f+0x6", 3],
  ]);
  assert.equal(s.groupCount, 3);
  // The folded stacks keep every hit, not only the shown groups'.
  assert.equal([...s.folded.values()].reduce((x, y) => x + y, 0), 10);
});

test("report - frame, ip, tid, process and value keys; a hit without a stack is its ip", () => {
  const h = hit({ fn: "bump", seq: 1n, new: 42n, tid: 7 });
  assert.equal(frameKey(h), "bump+0x6");
  assert.equal(foldedStack(h), "main;loop;bump");
  const bare = hit({ seq: 2n, ip: 0x4011aan });
  assert.equal(frameKey(bare), "0x4011aa");
  assert.equal(foldedStack(bare), "0x4011aa");
  const a = new WritersAggregator(["ip", "tid", "process", "value"]);
  a.addHit(h);
  assert.deepEqual(a.snapshot().groups[0]!.key, ["0x401000", "h1/100/7", "h1/100", "0x2a (42)"]);
  // A name with a ';' must not split the folded stack.
  assert.equal(foldedStack(hit({ fn: "operator;weird", seq: 3n })), "main;loop;operator:weird");
});

test("report - the most frequent old → new transitions: exact while few, only the certain ones once many", () => {
  const a = new WritersAggregator(["frame"]);
  let seq = 0n;
  for (let i = 0; i < 5; i++) a.addHit(hit({ fn: "f", old: 1n, new: 2n, seq: ++seq }));
  for (let i = 0; i < 3; i++) a.addHit(hit({ fn: "f", old: 2n, new: 3n, seq: ++seq }));
  let g = a.snapshot().groups[0]!;
  assert.equal(g.manyTransitions, false);
  assert.deepEqual(g.transitions.map((t) => [t.old, t.new, t.hits, t.atMost]), [
    ["0x1", "0x2", 5, 5],
    ["0x2", "0x3", 3, 3],
  ]);
  // A counter: every transition once. The heavy one stays on top with what is certain of it.
  for (let i = 0; i < 100; i++) a.addHit(hit({ fn: "f", old: 1000n + BigInt(i), new: 2000n + BigInt(i), seq: ++seq }));
  for (let i = 0; i < 20; i++) a.addHit(hit({ fn: "f", old: 1n, new: 2n, seq: ++seq }));
  g = a.snapshot().groups[0]!;
  assert.equal(g.hits, 128);
  assert.equal(g.manyTransitions, true);
  const top = g.transitions[0]!;
  assert.deepEqual([top.old, top.new], ["0x1", "0x2"]);
  assert.ok(top.hits <= 25 && top.atMost >= 25, `${top.hits}..${top.atMost} holds 25`);
  // Transitions seen once among many are not shown as if they repeated.
  const counter = new WritersAggregator(["frame"]);
  for (let i = 0; i < 100; i++) counter.addHit(hit({ fn: "f", old: BigInt(i), new: BigInt(i + 1), seq: BigInt(i + 1) }));
  const only = counter.snapshot();
  assert.deepEqual(only.groups[0]!.transitions, []);
  assert.match(renderReport({ job: job(100n), snapshot: only }, "table", 20), /f\+0x6\s+no transition repeats often$/m);
});

test("report - hashed values are grouped by their hash and the report says values are redacted", () => {
  const a = new WritersAggregator(["value"]);
  a.addHit(hit({ seq: 1n, new: 0xdeadbeefcafef00dn, redaction: ValueRedaction.HASHED }));
  const s = a.snapshot();
  assert.equal(s.redacted, true);
  assert.match(s.groups[0]!.key[0]!, /^hash:deadbeef/);
  assert.match(renderReport({ job: job(1n), snapshot: s }, "table", 20), /hashed or masked/);
});

test("report - coverage: every delivered hit, hits missing from the stream, messages the stream lost", () => {
  const a = new WritersAggregator(["stack"]);
  for (const seq of [1n, 2n, 3n, 4n]) a.addHit(hit({ fn: "f", seq }));
  assert.deepEqual(coverageOf({ job: job(4n), snapshot: a.snapshot() }), { complete: true, missing: 0n, lostFromStream: 0n, note: "every delivered hit (4) is in the report" });
  // The job delivered 6: two are not in the stream.
  const short = coverageOf({ job: job(6n), snapshot: a.snapshot() });
  assert.equal(short.complete, false);
  assert.equal(short.missing, 2n);
  assert.match(short.note, /2 delivered hits no longer in the stream/);
  // Sequence 5 and 6 never came, 8 did: two gaps; one is the job's dropped hit, one a lost message.
  const gappy = new WritersAggregator(["stack"]);
  for (const seq of [1n, 2n, 3n, 4n, 7n]) gappy.addHit(hit({ fn: "f", seq }));
  const lost = coverageOf({ job: job(5n, JobState.COMPLETED, { dropped: 1n }), snapshot: gappy.snapshot() });
  assert.equal(lost.lostFromStream, 1n);
  assert.equal(lost.complete, false);
  assert.match(lost.note, /the stream lost messages: 1 sequence number never arrived beyond the job's 1 dropped/);
  // A running job's counters lag: not complete, and said so.
  const running = coverageOf({ job: job(3n, JobState.ARMED), snapshot: a.snapshot() });
  assert.equal(running.complete, false);
  assert.match(running.note, /running/);
});

test("report - reading from a time on counts gaps from the first hit read and says the counters cover more", () => {
  const a = new WritersAggregator(["stack"], false);
  for (const seq of [10n, 11n, 13n]) a.addHit(hit({ fn: "f", seq }));
  const s = a.snapshot();
  assert.equal(s.sequences[0]!.missing, 1n);
  const since = new Date(0);
  assert.match(coverageOf({ job: job(20n), snapshot: s, since }).note, /counters also cover hits before then/);
});

test("report - a counting job: hits and rates per host, process and thread from its cumulative count reports", () => {
  const a = new WritersAggregator(["stack"]);
  const report = (host: string, pid: number, seq: bigint, atS: bigint, delivered: bigint, threads: [number, bigint][]) =>
    a.addCount(create(CountReportSchema, { jobId: "j1", hostId: host, pid, sequence: seq, timeUnixNano: atS * 1_000_000_000n, intervalMs: 1000n, totals: { delivered, trapped: delivered }, threads: threads.map(([tid, hits]) => ({ tid, hits })) }));
  report("h1", 100, 1n, 1n, 100n, [[101, 60n], [102, 40n]]);
  report("h1", 100, 2n, 2n, 300n, [[101, 200n]]);
  report("h2", 200, 1n, 1n, 50n, [[201, 50n]]);
  const s = a.snapshot();
  assert.deepEqual(s.counting!.hosts.map((r) => [r.key, r.hits, r.perSecond]), [
    ["h1", 300n, 150],
    ["h2", 50n, 50],
  ]);
  assert.deepEqual(s.counting!.threads.map((r) => [r.key, r.hits]), [
    ["h1/100/101", 260n],
    ["h2/200/201", 50n],
    ["h1/100/102", 40n],
  ]);
  const counting = create(JobSchema, { id: "j1", state: JobState.COMPLETED, spec: { countOnly: true }, counts: { delivered: 350n, trapped: 350n } });
  assert.equal(coverageOf({ job: counting, snapshot: s }).complete, true);
  const table = renderReport({ job: counting, snapshot: s }, "table", 20);
  assert.match(table, /^HITS\s+PER SECOND\s+THREAD$/m);
  assert.match(table, /^260\s+130\.0\s+h1\/100\/101$/m);
});

test("report - table, json and folded agree on the counts", () => {
  const a = new WritersAggregator(["stack"]);
  let seq = 0n;
  for (let i = 0; i < 4; i++) a.addHit(hit({ fn: "write_alpha", caller: "alpha_loop", seq: ++seq }));
  for (let i = 0; i < 2; i++) a.addHit(hit({ fn: "write_beta", caller: "beta_loop", seq: ++seq }));
  const r = { job: job(6n), snapshot: a.snapshot() };
  const table = renderReport(r, "table", 20);
  assert.match(table, /^job j1 \(completed, 1 target\): trapped 6  delivered 6  dropped 0  suppressed 0  filtered 0$/m);
  assert.match(table, /^report: 6 hits in 2 groups by stack; every delivered hit \(6\) is in the report$/m);
  assert.match(table, /^4\s+66\.7%\s+1\s+1\s.*main;alpha_loop;write_alpha\s+0x0 → 0x1 ×4$/m);
  const json = reportJson(r) as { hits: string; groups: Array<{ key: { stack: string }; hits: number }>; coverage: { complete: boolean } };
  assert.equal(json.hits, "6");
  assert.equal(json.coverage.complete, true);
  assert.deepEqual(json.groups.map((g) => [g.key.stack, g.hits]), [
    ["main;alpha_loop;write_alpha", 4],
    ["main;beta_loop;write_beta", 2],
  ]);
  assert.equal(renderFolded(r.snapshot), "main;alpha_loop;write_alpha 4\nmain;beta_loop;write_beta 2\n");
});

test("report - the flame graph is one SVG document: a frame per function, as wide as its hits, names escaped", () => {
  const svg = renderFlameGraphSvg(new Map([["main;alpha;write<a>", 3], ["main;beta", 1]]), { title: "writers & co", widthPx: 1020 });
  assert.match(svg, /^<\?xml/);
  assert.match(svg, /<svg [^>]*width="1020"/);
  assert.doesNotMatch(svg, /<script|href=/);
  assert.match(svg, /writers &amp; co/);
  assert.match(svg, /<title>write&lt;a&gt; \(3 hits, 75\.00%\)<\/title>/);
  assert.match(svg, /<title>all \(4 hits, 100\.00%\)<\/title>/);
  // all: 1000 px wide (1020 less the margins); main the same; alpha three quarters.
  const width = (name: string) => Number(new RegExp(`<title>${name} \\([^<]*</title>\\n<rect [^>]*width="([0-9.]+)"`).exec(svg)![1]);
  assert.equal(width("all"), 1000);
  assert.equal(width("main"), 1000);
  assert.equal(width("alpha"), 750);
  assert.equal(width("beta"), 250);
  assert.match(renderFlameGraphSvg(new Map(), { title: "t" }), /no hits/);
});

test("report - command line: --by, --top, formats, and what --follow cannot do", () => {
  const r = parseReportArgs("j1", { by: "host,frame", top: "5", format: "svg" }, 10_000);
  assert.deepEqual([r.by, r.top, r.format, r.follow], [["host", "frame"], 5, "svg", false]);
  assert.equal(parseReportArgs("j1", { since: "5s" }, 10_000).since!.getTime(), 5_000);
  assert.equal(parseReportArgs("j1", { output: "json" }).format, "json");
  const bad: Array<[Parameters<typeof parseReportArgs>[1], RegExp]> = [
    [{ by: "stack,colour" }, /'colour' is not one of stack, frame, ip, tid, process, host, value/],
    [{ by: "host,host" }, /'host' is named twice/],
    [{ top: "-1" }, /--top/],
    [{ top: "two" }, /--top/],
    [{ output: "json", format: "svg" }, /disagree/],
    [{ follow: true, format: "folded" }, /leave out --follow/],
  ];
  for (const [opts, message] of bad) assert.throws(() => parseReportArgs("j1", opts), (err: unknown) => err instanceof UsageError && message.test(err.message), JSON.stringify(opts));
  assert.throws(() => parseReportArgs("j.*", {}), UsageError);
});
