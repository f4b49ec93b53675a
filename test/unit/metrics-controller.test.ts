import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import type { Histogram } from "prom-client";
import parsePrometheusTextFormat, { type ParsedFamily } from "parse-prometheus-text-format";
import { ControllerMetrics, controllerReadiness, everyTargetArmed, jobCensus, type ControllerView } from "../../controller/metrics.js";
import { JobSchema, JobState, TargetSchema, TargetState, type Job } from "../../proto/index.js";

const S = TargetState;

function job(id: string, state: JobState, targets: TargetState[], createdUnixMs = 1_000n): Job {
  return create(JobSchema, { id, state, createdUnixMs, targets: targets.map((s, i) => create(TargetSchema, { hostId: "h", pid: 10 + i, state: s })) });
}

async function scrape(metrics: ControllerMetrics): Promise<Map<string, ParsedFamily>> {
  return new Map(parsePrometheusTextFormat(await metrics.registry.metrics()).map((f) => [f.name, f]));
}

/** The value of a family's sample with these labels (all of them), as a number. */
function value(families: Map<string, ParsedFamily>, name: string, labels: Record<string, string> = {}): number | undefined {
  const sample = families.get(name)?.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
  return sample?.value === undefined ? undefined : Number(sample.value);
}

test("metrics controller - jobs by state (every state, zeros too), targets of jobs not ended, oldest pending age", () => {
  const jobs = [
    job("a", JobState.ARMED, [S.ARMED, S.ARMING]),
    job("b", JobState.PENDING, [S.PENDING], 4_000n),
    job("c", JobState.PENDING, [S.PREEMPTED], 2_500n),
    job("d", JobState.DEGRADED, [S.ARMED, S.LOST, S.FAILED]),
    job("e", JobState.COMPLETED, [S.COMPLETED, S.EXITED]),
    job("f", JobState.CANCELLED, [S.CANCELLED]),
  ];
  assert.deepEqual(jobCensus(jobs, 10_000), {
    jobs: { pending: 2, armed: 1, degraded: 1, completed: 1, cancelled: 1, failed: 0 },
    targets: { pending: 1, arming: 1, armed: 2, lost: 1, preempted: 1, completed: 0, cancelled: 0, failed: 1, exited: 0 },
    oldestPendingSeconds: 7.5,
  });
  assert.equal(jobCensus([], 10_000).oldestPendingSeconds, 0);
});

test("metrics controller - finished jobs out of memory are counted from the index beside the jobs held", () => {
  const indexed = new Map([
    [JobState.COMPLETED, 40_000],
    [JobState.CANCELLED, 7],
    [JobState.FAILED, 3],
  ]);
  const census = jobCensus([job("a", JobState.ARMED, [S.ARMED]), job("b", JobState.PENDING, [S.PENDING], 9_000n)], 10_000, (s) => indexed.get(s) ?? 0);
  assert.deepEqual(census.jobs, { pending: 1, armed: 1, degraded: 0, completed: 40_000, cancelled: 7, failed: 3 });
  assert.deepEqual([census.targets.armed, census.targets.pending, census.targets.completed], [1, 1, 0]);
  assert.equal(census.oldestPendingSeconds, 1);
});

test("metrics controller - a job counts as armed everywhere once it is armed and nothing is still arming", () => {
  const table: Array<[JobState, TargetState[], boolean]> = [
    [JobState.ARMED, [S.ARMED, S.ARMED], true],
    [JobState.ARMED, [S.ARMED, S.EXITED], true],
    [JobState.ARMED, [S.ARMED, S.ARMING], false],
    [JobState.PENDING, [S.ARMING], false],
    [JobState.DEGRADED, [S.ARMED, S.FAILED], false],
    [JobState.COMPLETED, [S.COMPLETED], false],
  ];
  for (const [state, targets, want] of table) assert.equal(everyTargetArmed(job("j", state, targets)), want, `${JobState[state]} ${targets.map((t) => S[t]).join(",")}`);
});

test("metrics controller - ready when the store answers and the controller leads with its jobs loaded, or stands by", () => {
  assert.deepEqual(controllerReadiness({ started: true, leading: true, termOpen: true, storeError: undefined }), { ready: true });
  assert.deepEqual(controllerReadiness({ started: false, leading: false, termOpen: false, storeError: undefined }), { ready: false, reason: "starting: the first leader election is not decided yet" });
  assert.deepEqual(controllerReadiness({ started: true, leading: false, termOpen: false, storeError: undefined }), { ready: true });
  assert.deepEqual(controllerReadiness({ started: true, leading: true, termOpen: false, storeError: undefined }), { ready: false, reason: "taking over as leader: loading the stored jobs" });
  assert.deepEqual(controllerReadiness({ started: true, leading: true, termOpen: true, storeError: "no answer within 1500 ms" }), { ready: false, reason: "the store (NATS JetStream) does not answer: no answer within 1500 ms" });
});

test("metrics controller - gauges read the leader term at scrape; counters and histograms follow the hooks", async () => {
  let jobs: Job[] = [job("a", JobState.ARMED, [S.ARMED])];
  let completed = 1;
  let leading = true;
  const view: ControllerView = {
    term: () => (leading ? { activeJobs: () => jobs, finishedJobs: (s) => (s === JobState.COMPLETED ? completed : 0), connectedAgents: () => 3, queuedJobs: () => 1 } : undefined),
    leading: () => leading,
    epoch: () => (leading ? 7n : 8n),
  };
  const metrics = new ControllerMetrics(view);
  metrics.placed(2);
  metrics.placed(0);
  metrics.preempted();
  metrics.registered(false);
  metrics.registered(true);
  metrics.kvConflict();
  metrics.audited("submit", "ok");
  metrics.audited("cancel", "PERMISSION_DENIED");
  metrics.audited("cancel", "PERMISSION_DENIED");
  metrics.audited("agent-session", "PERMISSION_DENIED");
  metrics.submitted("OK", 0.02);
  metrics.submitted("RESOURCE_EXHAUSTED", 0.004);
  // Armed everywhere 1.5 s after submit: observed once, however often it is published again.
  const armed = job("c", JobState.ARMED, [S.ARMED], BigInt(Date.now() - 1_500));
  metrics.jobChanged(job("c", JobState.PENDING, [S.ARMING], armed.createdUnixMs));
  metrics.jobChanged(armed);
  metrics.jobChanged(armed);

  let f = await scrape(metrics);
  assert.equal(value(f, "fleetwatch_controller_jobs", { state: "armed" }), 1);
  assert.equal(value(f, "fleetwatch_controller_jobs", { state: "completed" }), 1);
  assert.equal(value(f, "fleetwatch_controller_jobs", { state: "failed" }), 0);
  assert.equal(value(f, "fleetwatch_controller_targets", { state: "armed" }), 1);
  assert.equal(value(f, "fleetwatch_controller_targets", { state: "completed" }), 0, "ended jobs' targets are left out");
  assert.equal(value(f, "fleetwatch_controller_agents_connected"), 3);
  assert.equal(value(f, "fleetwatch_controller_queue_jobs"), 1);
  assert.equal(value(f, "fleetwatch_controller_leader"), 1);
  assert.equal(value(f, "fleetwatch_controller_epoch"), 7);
  assert.equal(value(f, "fleetwatch_controller_placements_total"), 2);
  assert.equal(value(f, "fleetwatch_controller_preemptions_total"), 1);
  assert.equal(value(f, "fleetwatch_controller_agent_registrations_total"), 2);
  assert.equal(value(f, "fleetwatch_controller_agent_reconnects_total"), 1);
  assert.equal(value(f, "fleetwatch_controller_kv_conflicts_total"), 1);
  assert.equal(value(f, "fleetwatch_controller_access_denials_total", { action: "cancel" }), 2);
  assert.equal(value(f, "fleetwatch_controller_access_denials_total", { action: "agent-session" }), 1);
  assert.equal(value(f, "fleetwatch_controller_access_denials_total", { action: "submit" }), undefined);
  assert.equal(f.get("fleetwatch_controller_submit_seconds")?.type, "HISTOGRAM");
  // The text parser merges a histogram's label sets into one; prom-client's own structured view keeps them apart.
  const submits = await (metrics.registry.getSingleMetric("fleetwatch_controller_submit_seconds") as Histogram).get();
  const sample = (code: string, name: string, le?: number) => submits.values.find((v) => v.labels.code === code && v.metricName === name && (le === undefined || v.labels.le === le))?.value;
  assert.deepEqual([sample("OK", "fleetwatch_controller_submit_seconds_count"), sample("OK", "fleetwatch_controller_submit_seconds_bucket", 0.01), sample("OK", "fleetwatch_controller_submit_seconds_bucket", 0.025)], [1, 0, 1]);
  assert.deepEqual([sample("RESOURCE_EXHAUSTED", "fleetwatch_controller_submit_seconds_count"), sample("RESOURCE_EXHAUSTED", "fleetwatch_controller_submit_seconds_bucket", 0.005)], [1, 1]);
  const armedHistogram = f.get("fleetwatch_controller_job_armed_seconds")!.metrics[0]!;
  assert.equal(armedHistogram.count, "1");
  assert.deepEqual([armedHistogram.buckets?.["1"], armedHistogram.buckets?.["2.5"]], ["0", "1"]);
  assert.ok(Number(armedHistogram.sum) >= 1.5 && Number(armedHistogram.sum) < 60, armedHistogram.sum);
  assert.ok(f.get("process_cpu_seconds_total")?.metrics.every((m) => m.labels?.daemon === "controller"), "process metrics carry daemon=controller");

  // A standby: no term, the leader's epoch; the job census goes with the term.
  leading = false;
  jobs = [];
  completed = 0;
  f = await scrape(metrics);
  assert.deepEqual([value(f, "fleetwatch_controller_leader"), value(f, "fleetwatch_controller_epoch"), value(f, "fleetwatch_controller_agents_connected"), value(f, "fleetwatch_controller_jobs", { state: "armed" })], [0, 8, 0, 0]);
});

test("metrics controller - two controllers' registries in one process do not collide", async () => {
  const view: ControllerView = { term: () => undefined, leading: () => false, epoch: () => 0n };
  const one = new ControllerMetrics(view);
  const two = new ControllerMetrics(view);
  one.placed(5);
  assert.equal(value(await scrape(one), "fleetwatch_controller_placements_total"), 5);
  assert.equal(value(await scrape(two), "fleetwatch_controller_placements_total"), 0);
});
