// A real job on a real C target, then the daemons' metrics against what the
// controller says of the job: the agent's hit counters equal the jobs'
// counters (they are the counters the agent reports), its publish histograms
// account for every delivered hit, and the controller counts the jobs, the
// placements and the time to armed. Needs debug traps.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { JobState, TargetState, type HitCounts } from "../../proto/index.js";
import { clusterSuite } from "../support/cluster-suite.js";
import { scrape, type Scrape } from "../support/metrics.js";
import type { Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

const outcomes = ["trapped", "delivered", "suppressed", "dropped", "filtered"] as const;

function plain(c: HitCounts | undefined): Record<(typeof outcomes)[number], number> {
  return { trapped: Number(c?.trapped ?? 0n), delivered: Number(c?.delivered ?? 0n), suppressed: Number(c?.suppressed ?? 0n), dropped: Number(c?.dropped ?? 0n), filtered: Number(c?.filtered ?? 0n) };
}

function agentHits(s: Scrape): Record<(typeof outcomes)[number], number> {
  return { trapped: s.get("fleetwatch_agent_hits_total", { outcome: "trapped" }), delivered: s.get("fleetwatch_agent_hits_total", { outcome: "delivered" }), suppressed: s.get("fleetwatch_agent_hits_total", { outcome: "suppressed" }), dropped: s.get("fleetwatch_agent_hits_total", { outcome: "dropped" }), filtered: s.get("fleetwatch_agent_hits_total", { outcome: "filtered" }) };
}

describe("metrics of real hits", () => {
  const suite = clusterSuite({ metrics: true });
  const controllerUrl = () => suite.cluster.controllerMetricsUrl;
  const agentUrl = () => suite.cluster.agentMetricsUrls.get("host-a")!;

  async function counter(writes: number): Promise<Target> {
    const target = await suite.target("counter", ["--writes", String(writes)]);
    await target.waitForLine(/^ready /);
    return target;
  }

  /** Waits until the controller says a job on this pid is armed; returns its id. */
  async function armedJobOn(pid: number): Promise<string> {
    return waitFor(`a job armed on pid ${pid}`, async () => {
      const { jobs } = await suite.cluster.api().listJobs({});
      return jobs.find((j) => j.targets.some((t) => t.pid === pid && t.state === TargetState.ARMED))?.id;
    });
  }

  /** Runs `watch ... --follow` on a counter writing `writes` times; the job id once it has ended. */
  async function runJob(writes: number, watchArgs: string[], whileArmed: (id: string) => Promise<void> = async () => {}): Promise<string> {
    const target = await counter(writes);
    const watch = suite.cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", ...watchArgs, "--follow", "-o", "json"], { timeoutMs: 120_000 });
    const id = await armedJobOn(target.pid);
    await whileArmed(id);
    target.send("go");
    const result = await watch;
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
    return id;
  }

  /** Every job's counters added up, as GetJob says: what this one agent trapped. */
  async function allJobsCounts(): Promise<Record<(typeof outcomes)[number], number>> {
    const { jobs } = await suite.cluster.api().listJobs({});
    const sum = plain(undefined);
    for (const { id } of jobs) {
      const job = (await suite.cluster.api().getJob({ id })).job!;
      const c = plain(job.counts);
      for (const o of outcomes) sum[o] += c[o];
    }
    return sum;
  }

  test("a perf job's hits: the agent's counters equal the job's (lost samples included), every delivered hit went out in a batch", async () => {
    const writes = 2_000;
    const id = await runJob(writes, ["--max-hits", String(writes)], async (armedId) => {
      // While armed: one register of ours on one process, one target armed, the job armed.
      const agent = await scrape(agentUrl());
      assert.deepEqual(
        ["ours", "free", "reserved", "foreign"].map((state) => agent.get("fleetwatch_agent_debug_registers", { state })),
        [1, 3, 0, 0],
      );
      assert.equal(agent.get("fleetwatch_agent_targets_armed"), 1);
      const controller = await scrape(controllerUrl());
      assert.equal(controller.get("fleetwatch_controller_jobs", { state: "armed" }), 1, armedId);
      assert.equal(controller.get("fleetwatch_controller_targets", { state: "armed" }), 1);
      assert.equal(controller.get("fleetwatch_controller_placements_total"), 1);
      assert.equal(controller.histogram("fleetwatch_controller_job_armed_seconds").count, 1);
    });
    const job = (await suite.cluster.api().getJob({ id })).job!;
    assert.equal(job.state, JobState.COMPLETED, job.reason);
    const want = plain(job.counts);
    // The kernel counts every trap; a writer this fast may outrun the ring buffers, and what they lose is dropped.
    assert.equal(want.trapped, writes);
    assert.equal(want.trapped, want.delivered + want.suppressed + want.dropped + want.filtered);
    assert.ok(want.delivered > 0);

    const agent = await waitFor("the agent's hit counters reach the job's", async () => {
      const s = await scrape(agentUrl());
      return JSON.stringify(agentHits(s)) === JSON.stringify(want) ? s : undefined;
    });
    assert.deepEqual(agentHits(agent), want);
    const batches = agent.histogram("fleetwatch_agent_publish_batch_hits");
    assert.equal(batches.sum, want.delivered, "every delivered hit went out in one batch");
    assert.ok(batches.count >= 1 && batches.count <= want.delivered);
    assert.equal(agent.histogram("fleetwatch_agent_publish_seconds").count, batches.count, "every batch was acknowledged and timed");
    assert.equal(agent.get("fleetwatch_agent_publish_pending_bytes"), 0);
    assert.equal(agent.get("fleetwatch_agent_helper_restarts_total"), 0);

    const controller = await scrape(controllerUrl());
    assert.equal(controller.get("fleetwatch_controller_jobs", { state: "completed" }), 1);
    assert.equal(controller.get("fleetwatch_controller_jobs", { state: "armed" }), 0);
    assert.equal(controller.get("fleetwatch_controller_targets", { state: "armed" }), 0, "the ended job's targets are not counted");
    assert.equal(controller.get("fleetwatch_controller_placements_total"), 1);
    assert.equal(controller.get("fleetwatch_controller_preemptions_total"), 0);
    assert.equal(controller.histogram("fleetwatch_controller_job_armed_seconds").count, 1);
    assert.match(controller.text, /^fleetwatch_controller_submit_seconds_count\{code="OK"\} 1$/m);
  });

  test("a ptrace job stopped by its budget: the agent's counters are every job's counters added up", async () => {
    const id = await runJob(1_000, ["--max-hits", "300", "--backend", "ptrace"]);
    const job = (await suite.cluster.api().getJob({ id })).job!;
    assert.equal(job.state, JobState.COMPLETED, job.reason);
    assert.equal(job.counts?.delivered, 300n);
    const want = await allJobsCounts();
    const agent = await waitFor("the agent's hit counters reach every job's", async () => {
      const s = await scrape(agentUrl());
      return JSON.stringify(agentHits(s)) === JSON.stringify(want) ? s : undefined;
    });
    assert.deepEqual(agentHits(agent), want);
    assert.equal(agent.histogram("fleetwatch_agent_publish_batch_hits").sum, want.delivered);
    // The target exited: no register of ours is left, nothing armed.
    await waitFor("the agent holds no register", async () => (await scrape(agentUrl())).get("fleetwatch_agent_debug_registers", { state: "ours" }) === 0);
    assert.equal((await scrape(agentUrl())).get("fleetwatch_agent_targets_armed"), 0);

    const controller = await scrape(controllerUrl());
    assert.equal(controller.get("fleetwatch_controller_jobs", { state: "completed" }), 2);
    assert.equal(controller.get("fleetwatch_controller_placements_total"), 2);
    assert.equal(controller.histogram("fleetwatch_controller_job_armed_seconds").count, 2);
  });
});
