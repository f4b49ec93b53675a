// The agent's side of the two backends, with a scripted helper and publisher:
// counting jobs' reports and totals, lost perf samples counted as dropped,
// exact-value flags, and a perf-only process gone with an unknown status.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { AgentCore } from "../../agent/agent.js";
import { HelperError } from "../../agent/helper-process.js";
import type { GroupCounts, HelperEvent, HelperHit, HelperProcess, WatchOptions } from "../../agent/helper-process.js";
import type { HitPublisher } from "../../agent/hit-publisher.js";
import type { StoredHits } from "../../agent/stored-hits.js";
import { AsyncQueue, ArmSchema, Backend, DisarmSchema, HitBatchSchema, HitCountsSchema, TargetState, WatchMode, type HitBatch, type HitCounts, type TargetReport } from "../../proto/index.js";
import { waitFor } from "../support/wait.js";

// Above PID_MAX_LIMIT: never a process here, so the host policy has nothing to refuse.
const pid = 4_194_305;
const counts = (c: Partial<GroupCounts>): GroupCounts => ({ trapped: 0n, delivered: 0n, suppressed: 0n, filtered: 0n, lost: 0n, ...c });
const plain = (c: HitCounts | undefined) => [c?.trapped, c?.delivered, c?.suppressed, c?.dropped, c?.filtered];

/** A helper that arms anything and answers a disarm with the counts it is given, after the events it is given. */
class ScriptedHelper {
  readonly pid = 1;
  readonly capabilities = {
    backends: ["ptrace", "perf"] as const,
    perfValues: "after-trap" as const,
    perfNote: "",
    traps: (["ptrace", "perf"] as const).map((backend) => ({ backend, delivery: "delivered" as const, writes: 8, traps: 8, nsPerTrap: 1000, detail: "8 of 8 probe writes trapped, 1.0 µs per trap" })),
  };
  readonly arms: WatchOptions[] = [];
  private readonly queue = new AsyncQueue<HelperEvent>();
  onDisarm: (group: bigint) => { before: HelperEvent[]; counts: GroupCounts } = () => ({ before: [], counts: counts({}) });

  events(): AsyncIterable<HelperEvent> {
    return this.queue;
  }
  emit(event: HelperEvent): void {
    this.queue.push(event);
  }
  end(): void {
    this.queue.close();
  }
  /** Thrown by the next arms, when set. */
  armError: Error | undefined;
  async arm(_pid: number, _group: bigint, _chunks: unknown, options: WatchOptions) {
    if (this.armError) throw this.armError;
    this.arms.push(options);
    return { threadsTotal: 2, threadsArmed: 2, drMask: 1, reservedMask: 0 };
  }
  async disarm(_pid: number, group: bigint) {
    const { before, counts: final } = this.onDisarm(group);
    // The helper writes these before its reply: the agent may handle them after it.
    for (const e of before) this.emit(e);
    return { ...final, reservedMask: 0 };
  }
}

/** Every batch published, acknowledged at once. */
class RecordingPublisher {
  readonly batches: HitBatch[] = [];
  publish(_subject: string, data: Uint8Array, _id: string, settle: (ok: boolean) => void): void {
    this.batches.push(fromBinary(HitBatchSchema, data));
    setImmediate(() => settle(true));
  }
}

function agent(stored: Partial<StoredHits> = {}) {
  const helper = new ScriptedHelper();
  const publisher = new RecordingPublisher();
  const reports: TargetReport[] = [];
  const core = new AgentCore(publisher as unknown as HitPublisher, async () => ({ lastSequence: 0n, byPid: new Map(), countedByPid: new Map(), ...stored }), "h1", () => {}, 60_000);
  core.onReport = (r) => reports.push(r);
  const running = core.run(helper as unknown as HelperProcess);
  return { core, helper, publisher, reports, stop: async () => (helper.end(), await running) };
}

const armRequest = (fields: object) =>
  create(ArmSchema, { requestId: 1n, jobId: "j1", pid, slots: [{ dr: 0, chunk: { address: 0x1000n, length: 8, mode: WatchMode.WRITE } }], ...fields });

test("agent - a counting job publishes each COUNTS as a report of its totals, lost samples dropped, and its last one before the disarm answers", async () => {
  const { core, helper, publisher, stop } = agent();
  const armed = await core.arm(armRequest({ backend: Backend.PERF, countOnly: true, countIntervalMs: 250n }));
  assert.equal(armed.error, undefined);
  assert.deepEqual([armed.backend, armed.valuesExact], [Backend.PERF, false]);
  assert.deepEqual([helper.arms[0]?.backend, helper.arms[0]?.countOnly, helper.arms[0]?.countIntervalMs], ["perf", true, 250]);
  helper.emit({ kind: "counts", pid, group: 1n, timeNs: 5n, counts: counts({ trapped: 10n, delivered: 8n, filtered: 1n, lost: 1n }), threads: [{ tid: 7, hits: 8n }] });
  await waitFor("the first report", () => publisher.batches.length === 1);
  const first = publisher.batches[0]!.counts[0]!;
  assert.deepEqual([first.jobId, first.hostId, first.pid, first.intervalMs, first.sequence, first.timeUnixNano], ["j1", "h1", pid, 250n, 1n, 5n]);
  assert.deepEqual(plain(first.totals), [10n, 8n, 0n, 1n, 1n]);
  assert.deepEqual(first.threads.map((t) => [t.tid, t.hits]), [[7, 8n]]);
  assert.equal(publisher.batches[0]!.hits.length, 0);

  const last = counts({ trapped: 30n, delivered: 26n, filtered: 1n, lost: 3n });
  helper.onDisarm = () => ({ before: [{ kind: "counts", pid, group: 1n, timeNs: 9n, counts: last, threads: [{ tid: 7, hits: 12n }, { tid: 8, hits: 6n }] }], counts: last });
  const disarmed = await core.disarm(create(DisarmSchema, { requestId: 2n, jobId: "j1", pid }));
  assert.deepEqual(plain(disarmed.counts), [30n, 26n, 0n, 3n, 1n], "final counts: delivered = hits counted, lost = dropped");
  assert.equal(publisher.batches.length, 2, "the last report went out before the disarm answered");
  assert.deepEqual(plain(publisher.batches[1]!.counts[0]!.totals), [30n, 26n, 0n, 3n, 1n]);
  assert.equal(publisher.batches[1]!.counts[0]!.sequence, 2n);
  await stop();
});

test("agent - a counting target armed by a restarted agent goes on from the last report stored", async () => {
  const stored = create(HitCountsSchema, { trapped: 120n, delivered: 118n, dropped: 2n });
  const { core, helper, publisher, stop } = agent({ lastSequence: 40n, countedByPid: new Map([[pid, stored]]) });
  const heard = create(HitCountsSchema, { trapped: 100n, delivered: 99n, dropped: 1n });
  assert.equal((await core.arm(armRequest({ backend: Backend.PERF, countOnly: true, counts: heard }))).error, undefined);
  helper.emit({ kind: "counts", pid, group: 1n, timeNs: 1n, counts: counts({ trapped: 5n, delivered: 5n }), threads: [{ tid: 7, hits: 5n }] });
  await waitFor("a report", () => publisher.batches.length === 1);
  const report = publisher.batches[0]!.counts[0]!;
  assert.deepEqual(plain(report.totals), [125n, 123n, 0n, 2n, 0n]);
  assert.equal(report.sequence, 41n, "the host's sequence goes on after the stream's");
  helper.onDisarm = () => ({ before: [], counts: counts({ trapped: 5n, delivered: 5n }) });
  assert.deepEqual(plain((await core.disarm(create(DisarmSchema, { requestId: 2n, jobId: "j1", pid }))).counts), [125n, 123n, 0n, 2n, 0n]);
  await stop();
});

test("agent - perf hits say their values were read after the trap, ptrace ones are exact; lost samples end as dropped", async () => {
  const hit = (group: bigint, valueExact: boolean): HelperHit => ({ group, pid, tid: 7, ip: 0x401000n, address: 0x1000n, oldValue: 1n, newValue: 2n, timeNs: 3n, dr: 0, length: 8, mode: "w", valueExact, stack: [] });
  for (const [backend, name, flag, exact] of [[Backend.PERF, "perf", false, false], [Backend.PTRACE, "ptrace", false, true]] as const) {
    const { core, helper, publisher, stop } = agent();
    const armed = await core.arm(armRequest({ backend }));
    assert.deepEqual([armed.backend, armed.valuesExact, helper.arms[0]?.backend], [backend, exact, name]);
    helper.emit({ kind: "hits", hits: [hit(1n, flag), hit(1n, flag)] });
    await waitFor(`${name}: hits published`, () => publisher.batches.flatMap((b) => b.hits).length === 2);
    assert.deepEqual(publisher.batches.flatMap((b) => b.hits).map((h) => h.valueExact), [exact, exact], name);
    helper.onDisarm = () => ({ before: [], counts: counts({ trapped: 5n, delivered: 2n, lost: 3n }) });
    const disarmed = await core.disarm(create(DisarmSchema, { requestId: 2n, jobId: "j1", pid }));
    const c = disarmed.counts!;
    assert.deepEqual(plain(c), [5n, 2n, 0n, 3n, 0n], name);
    assert.equal(c.trapped, c.delivered + c.suppressed + c.dropped + c.filtered);
    await stop();
  }
});

test("agent - a process only perf watched, gone with its status unknown, is exited with 'process exited' and why its status is unknown", async () => {
  const { core, helper, reports, stop } = agent();
  await core.arm(armRequest({ backend: Backend.PERF }));
  helper.emit({ kind: "group-done", pid, group: 1n, reason: "exited", counts: counts({}) });
  helper.emit({ kind: "target-exited", pid, how: "gone", code: 0 });
  await waitFor("the exit reported", () => reports.some((r) => r.state === TargetState.EXITED));
  assert.deepEqual(reports.filter((r) => r.state === TargetState.EXITED).map((r) => [r.jobId, r.reason]), [["j1", "process exited (its status unknown: its parent reaped it first)"]]);
  await stop();
});

test("agent - a process killed by a signal is told by name; SIGTRAP under perf says where it comes from and what avoids it", async () => {
  for (const [backend, code, reason] of [
    [Backend.PTRACE, 9, /^process killed by signal 9 \(SIGKILL\)$/],
    [Backend.PTRACE, 5, /^process killed by signal 5 \(SIGTRAP\)$/],
    [Backend.PERF, 5, /^process killed by signal 5 \(SIGTRAP\): a perf watch cannot keep from it the SIGTRAP of a debug exception with no cause, .*--backend ptrace intercepts it$/],
  ] as const) {
    const { core, helper, reports, stop } = agent();
    await core.arm(armRequest({ backend }));
    helper.emit({ kind: "group-done", pid, group: 1n, reason: "exited", counts: counts({}) });
    helper.emit({ kind: "target-exited", pid, how: "killed", code });
    await waitFor("the exit reported", () => reports.some((r) => r.state === TargetState.EXITED));
    const exited = reports.filter((r) => r.state === TargetState.EXITED);
    assert.equal(exited.length, 1);
    assert.match(exited[0]!.reason, reason);
    await stop();
  }
});

test("agent - a perf arm on a helper without perf is refused with the helper's reason", async () => {
  const { core, helper, stop } = agent();
  Object.assign(helper, { capabilities: { backends: ["ptrace"], perfValues: "unavailable", perfNote: "perf_event_open: EACCES (perf_event_paranoid 3)" } });
  const armed = await core.arm(armRequest({ backend: Backend.PERF }));
  assert.equal(armed.error?.errnoName, "EOPNOTSUPP");
  assert.match(armed.error?.message ?? "", /perf events are unavailable on h1: perf_event_open: EACCES \(perf_event_paranoid 3\)/);
  assert.equal(helper.arms.length, 0, "nothing was asked of the helper");
  await stop();
});

test("agent - an arm on a backend whose trap self-test did not deliver is refused with what the probe saw", async () => {
  const { core, helper, stop } = agent();
  const detail = "DR0 armed, 0 of 8 probe writes trapped: this host does not deliver debug-register traps (hypervisor)";
  const traps = [
    { backend: "ptrace", delivery: "not-delivered", writes: 8, traps: 0, nsPerTrap: 0, detail },
    { backend: "perf", delivery: "not-run", writes: 0, traps: 0, nsPerTrap: 0, detail: "perf_event_open: EACCES (perf_event_paranoid 2)" },
  ];
  Object.assign(helper, { capabilities: { ...helper.capabilities, traps } });
  try {
    const ptrace = await core.arm(armRequest({ backend: Backend.PTRACE }));
    assert.equal(ptrace.error?.errnoName, "EOPNOTSUPP");
    assert.equal(ptrace.error?.message, `ptrace watch traps are not delivered on h1: ${detail}; a watch armed here could never see a hit`);
    const perf = await core.arm(armRequest({ backend: Backend.PERF }));
    assert.equal(perf.error?.errnoName, "EOPNOTSUPP");
    assert.equal(perf.error?.message, "perf watch traps could not be tested on h1: perf_event_open: EACCES (perf_event_paranoid 2); a watch armed here might never see a hit");
    assert.equal(helper.arms.length, 0, "nothing was asked of the helper");
    assert.deepEqual(core.armed(), []);
  } finally {
    await stop();
  }
});

test("agent - hits with deep stacks go out in batches a NATS server takes (under its 1 MiB message limit)", async () => {
  const { core, helper, publisher, stop } = agent();
  await core.arm(armRequest({ backend: Backend.PERF, stackDepth: 64 }));
  const frame = { ip: 0x401000n, function: "a_function_name_of_some_length", offset: 16n, module: "/usr/lib/x86_64-linux-gnu/a-library-with-a-long-path.so.1" };
  const deep = (i: number): HelperHit => ({ group: 1n, pid, tid: 7, ip: 0x401000n, address: 0x1000n, oldValue: BigInt(i), newValue: BigInt(i + 1), timeNs: BigInt(i), dr: 0, length: 8, mode: "w", valueExact: true, stack: Array.from({ length: 64 }, () => frame) });
  // More hits at once than a batch may hold: a writer trapping ~100,000 times a second.
  const N = 3000;
  try {
    helper.emit({ kind: "hits", hits: Array.from({ length: N }, (_, i) => deep(i)) });
    await waitFor("every hit published", () => publisher.batches.reduce((n, b) => n + b.hits.length, 0) === N);
    assert.ok(publisher.batches.length > 1, "split into several batches");
    for (const b of publisher.batches) assert.ok(toBinary(HitBatchSchema, b).length < 1024 * 1024, `a batch of ${b.hits.length} hits`);
  } finally {
    await stop();
  }
});

test("agent - a second arm of the same job and pid while the first is on its way is refused, and only one watch reaches the helper", async () => {
  const { core, helper, stop } = agent();
  try {
    const [a, b] = await Promise.all([core.arm(armRequest({ backend: Backend.PTRACE })), core.arm(armRequest({ requestId: 2n, backend: Backend.PTRACE }))]);
    assert.equal(helper.arms.length, 1, "one watch in the helper");
    assert.equal(a.error, undefined);
    assert.equal(b.error?.errnoName, "EEXIST");
    assert.match(b.error?.message ?? "", /job j1 is being armed on pid \d+ already/);
    // The refused one does not stand in the way of the next arm once the first has ended.
    const disarmed = await core.disarm(create(DisarmSchema, { requestId: 3n, jobId: "j1", pid }));
    assert.equal(disarmed.error, undefined);
    assert.equal((await core.arm(armRequest({ requestId: 4n, backend: Backend.PTRACE }))).error, undefined);
    assert.equal(helper.arms.length, 2);
  } finally {
    await stop();
  }
});

test("agent - a helper's ESRCH for a process that is still running is not passed on as gone; for one that is gone it is", async () => {
  const { core, helper, stop } = agent();
  const running = spawn("sleep", ["60"], { stdio: "ignore" });
  try {
    await once(running, "spawn");
    const esrch = (p: number) => new HelperError(`pid ${p} exited while its threads were being stopped`, { errno: 3, errnoName: "ESRCH", attempted: `arm pid ${p} group 1` });
    helper.armError = esrch(running.pid!);
    const alive = await core.arm(armRequest({ pid: running.pid!, backend: Backend.PTRACE }));
    assert.equal(alive.error?.errnoName, "EAGAIN", alive.error?.message);
    assert.match(alive.error?.message ?? "", new RegExp(`pid ${running.pid} is running, but arming it failed \\(pid ${running.pid} exited while its threads were being stopped\\): try again`));
    helper.armError = esrch(pid);
    const gone = await core.arm(armRequest({ requestId: 2n, backend: Backend.PTRACE }));
    assert.equal(gone.error?.errnoName, "ESRCH");
  } finally {
    running.kill("SIGKILL");
    await stop();
  }
});
