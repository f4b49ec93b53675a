import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import parsePrometheusTextFormat, { type ParsedFamily } from "parse-prometheus-text-format";
import { AgentMetrics, agentReadiness, registerCensus, type AgentView } from "../../agent/metrics.js";
import type { HelperHit } from "../../agent/helper-process.js";
import { HitPipeline, noHits, type HitTotals, type WatchHits } from "../../agent/hit-pipeline.js";
import type { HitPublisher } from "../../agent/hit-publisher.js";
import { HitCountsSchema, SlotAssignmentSchema, ValueRedaction, WatchMode, type HitCounts } from "../../proto/index.js";

async function scrape(metrics: AgentMetrics): Promise<Map<string, ParsedFamily>> {
  return new Map(parsePrometheusTextFormat(await metrics.registry.metrics()).map((f) => [f.name, f]));
}

function value(families: Map<string, ParsedFamily>, name: string, labels: Record<string, string> = {}): number | undefined {
  const sample = families.get(name)?.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
  return sample?.value === undefined ? undefined : Number(sample.value);
}

test("metrics agent - each process's four registers counted once: ours, then reserved, then foreign, the rest free", () => {
  assert.deepEqual(registerCensus([]), { free: 0, ours: 0, reserved: 0, foreign: 0 });
  assert.deepEqual(
    registerCensus([
      { ours: 0b0011, reserved: 0b0110, foreign: 0b1100 },
      { ours: 0, reserved: 0b0001, foreign: 0 },
      { ours: 0b1111, reserved: 0b1111, foreign: 0b1111 },
    ]),
    // 1st: ours DR0 DR1, reserved DR2, foreign DR3; 2nd: reserved DR0, 3 free; 3rd: all ours.
    { free: 3, ours: 6, reserved: 2, foreign: 1 },
  );
});

test("metrics agent - ready when the helper runs and a session with a controller is live", () => {
  const controllers = ["a:7070", "b:7070"];
  assert.deepEqual(agentReadiness({ sessionLive: true, helperRunning: true, controllers }), { ready: true });
  assert.deepEqual(agentReadiness({ sessionLive: false, helperRunning: true, controllers }), { ready: false, reason: "no session with a controller (a:7070, b:7070)" });
  assert.deepEqual(agentReadiness({ sessionLive: true, helperRunning: false, controllers }), { ready: false, reason: "the helper is not running (it is being restarted)" });
});

/** A publisher that acknowledges every batch on the next turn. */
class AckingPublisher {
  publish(_subject: string, _data: Uint8Array, _id: string, settle: (ok: boolean) => void): void {
    setImmediate(() => settle(true));
  }
}

function hit(group: bigint, n: number): HelperHit {
  return { group, pid: 42, tid: 42, ip: 0x1000n, address: 0x2000n, oldValue: BigInt(n - 1), newValue: BigInt(n), timeNs: BigInt(n), dr: 0, length: 8, mode: "w", valueExact: true, stack: [] };
}

function pipeline(): HitPipeline {
  return new HitPipeline(new AckingPublisher() as unknown as HitPublisher, "h1", () => {}, (_job, oldValue, newValue) => ({ oldValue, newValue, redaction: ValueRedaction.UNSPECIFIED }), { maxBatchHits: 4, batchDelayMs: 1 });
}

function open(p: HitPipeline, counts: HitCounts, previous?: WatchHits): WatchHits {
  return p.open({ jobId: "j1", pid: 42, slots: [create(SlotAssignmentSchema, { dr: 0, chunk: { address: 0x2000n, length: 8, mode: WatchMode.WRITE } })], counts, previous, jobValues: "capture", backend: "ptrace", countOnly: false, countIntervalMs: 0n, onSettled: () => {} });
}

const groupCounts = (trapped: bigint, delivered: bigint, suppressed = 0n, filtered = 0n) => ({ trapped, delivered, suppressed, filtered, lost: 0n });

test("metrics agent - hit totals are what the targets' counters gained here: resumed counts left out, a re-arm counted once, forgotten watches kept", async () => {
  const p = pipeline();
  assert.deepEqual(p.hitTotals(), noHits());
  // Armed again after an agent restart: the controller's counts (100 trapped) are where it resumes.
  const first = open(p, create(HitCountsSchema, { trapped: 100n, delivered: 100n }));
  for (let i = 1; i <= 6; i++) p.hit(first, hit(1n, i));
  p.end(first, groupCounts(7n, 6n, 1n));
  await p.settled(first);
  assert.deepEqual(p.hitTotals(), { trapped: 7, delivered: 6, suppressed: 1, dropped: 0, filtered: 0 });
  assert.deepEqual([first.counts.trapped, first.counts.delivered], [107n, 106n], "the target's own counters go on from the controller's");

  // A re-arm after a lapse goes on in the same counters: counted once.
  const second = open(p, first.counts, first);
  p.takeOver(first, second);
  for (let i = 1; i <= 3; i++) p.hit(second, hit(2n, i));
  p.end(second, groupCounts(4n, 3n, 0n, 1n));
  await p.settled(second);
  const want: HitTotals = { trapped: 11, delivered: 9, suppressed: 1, dropped: 0, filtered: 1 };
  assert.deepEqual(p.hitTotals(), want);

  // Forgotten (its process exited): the totals keep what it gained, once, however often it is retired.
  p.retire(second);
  p.retire(first);
  assert.deepEqual(p.hitTotals(), want);
  const other = open(p, create(HitCountsSchema));
  p.hit(other, hit(3n, 1));
  p.end(other, groupCounts(1n, 1n));
  await p.settled(other);
  assert.deepEqual(p.hitTotals(), { ...want, trapped: 12, delivered: 10 });
});

test("metrics agent - counters follow the hit totals at each scrape; publish histograms, traps and gauges", async () => {
  let hits: HitTotals = noHits();
  const view: AgentView = {
    registers: () => [{ ours: 0b0001, reserved: 0b0010, foreign: 0 }],
    armedTargets: () => 1,
    hits: () => hits,
    pendingBytes: () => 4096,
    traps: () => [
      { backend: "ptrace", delivery: "delivered", writes: 8, traps: 8, nsPerTrap: 25_000, detail: "" },
      { backend: "perf", delivery: "not-delivered", writes: 8, traps: 0, nsPerTrap: 0, detail: "hypervisor" },
    ],
    sessionLive: () => true,
  };
  const metrics = new AgentMetrics(view);
  let f = await scrape(metrics);
  for (const outcome of ["trapped", "delivered", "suppressed", "dropped", "filtered"]) assert.equal(value(f, "fleetwatch_agent_hits_total", { outcome }), 0, outcome);
  hits = { trapped: 10, delivered: 7, suppressed: 1, dropped: 1, filtered: 1 };
  f = await scrape(metrics);
  assert.equal(f.get("fleetwatch_agent_hits_total")?.type, "COUNTER");
  assert.deepEqual(["trapped", "delivered", "suppressed", "dropped", "filtered"].map((outcome) => value(f, "fleetwatch_agent_hits_total", { outcome })), [10, 7, 1, 1, 1]);
  hits = { ...hits, trapped: 15, delivered: 12 };
  f = await scrape(metrics);
  assert.deepEqual([value(f, "fleetwatch_agent_hits_total", { outcome: "trapped" }), value(f, "fleetwatch_agent_hits_total", { outcome: "delivered" })], [15, 12]);

  metrics.publishSettled({ ok: true, hits: 3, waitedMs: 0.8 });
  metrics.publishSettled({ ok: true, hits: 0, waitedMs: 0.3 });
  metrics.publishSettled({ ok: false, hits: 2048, waitedMs: 60_000 });
  metrics.helperRestarted();
  metrics.policyReloaded();
  metrics.policyReloaded();
  f = await scrape(metrics);
  const batches = f.get("fleetwatch_agent_publish_batch_hits")!.metrics[0]!;
  assert.deepEqual([batches.count, batches.sum, batches.buckets?.["2"], batches.buckets?.["4"], batches.buckets?.["2048"]], ["2", "2051", "0", "1", "2"], "count reports (0 hits) are not batches");
  const latency = f.get("fleetwatch_agent_publish_seconds")!.metrics[0]!;
  assert.deepEqual([latency.count, latency.buckets?.["0.0005"], latency.buckets?.["0.001"]], ["2", "1", "2"], "only acknowledged batches are timed");
  assert.equal(value(f, "fleetwatch_agent_debug_registers", { state: "ours" }), 1);
  assert.equal(value(f, "fleetwatch_agent_debug_registers", { state: "reserved" }), 1);
  assert.equal(value(f, "fleetwatch_agent_debug_registers", { state: "free" }), 2);
  assert.equal(value(f, "fleetwatch_agent_debug_registers", { state: "foreign" }), 0);
  assert.equal(value(f, "fleetwatch_agent_targets_armed"), 1);
  assert.equal(value(f, "fleetwatch_agent_publish_pending_bytes"), 4096);
  assert.equal(value(f, "fleetwatch_agent_helper_restarts_total"), 1);
  assert.equal(value(f, "fleetwatch_agent_policy_reloads_total"), 2);
  assert.equal(value(f, "fleetwatch_agent_controller_session"), 1);
  assert.deepEqual([value(f, "fleetwatch_agent_trap_delivered", { backend: "ptrace" }), value(f, "fleetwatch_agent_trap_delivered", { backend: "perf" })], [1, 0]);
  assert.deepEqual(f.get("fleetwatch_agent_trap_cost_seconds")?.metrics, [{ labels: { backend: "ptrace" }, value: "0.000025" }], "a cost only where traps are delivered");
  assert.ok(f.get("process_cpu_seconds_total")?.metrics.every((m) => m.labels?.daemon === "agent"), "process metrics carry daemon=agent");
});
