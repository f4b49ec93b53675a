// The daemons' /metrics, /healthz and /readyz scraped over real HTTP from a
// real controller and agent, parsed as Prometheus would. Nothing here arms a
// watch (a job waits for a process that never starts), so it runs on hosts
// without debug traps too; the hit counters are in metrics-hits.test.ts.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { Daemon } from "../support/cluster.js";
import { clusterSuite } from "../support/cluster-suite.js";
import { cliPath, helperPath } from "../support/paths.js";
import { probe, scrape } from "../support/metrics.js";
import { waitFor } from "../support/wait.js";

const jobStates = ["pending", "armed", "degraded", "completed", "cancelled", "failed"];

describe("metrics and health", () => {
  const suite = clusterSuite({ metrics: true });
  const controllerUrl = () => suite.cluster.controllerMetricsUrl;
  const agentUrl = () => suite.cluster.agentMetricsUrls.get("host-a")!;

  /** Jobs by state as the controller's metrics say, every state present. */
  async function jobsByState(): Promise<Record<string, number>> {
    const s = await scrape(controllerUrl());
    return Object.fromEntries(jobStates.map((state) => [state, s.get("fleetwatch_controller_jobs", { state })]));
  }

  test("both daemons print their metrics URL on loopback, are alive and ready, and export process metrics apart", async () => {
    assert.match(controllerUrl(), /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    assert.match(agentUrl(), /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    for (const url of [controllerUrl(), agentUrl()]) {
      assert.deepEqual(await probe(url, "/healthz"), { status: 200, text: "ok\n" }, url);
      assert.deepEqual(await probe(url, "/readyz"), { status: 200, text: "ready\n" }, url);
    }
    const controller = await scrape(controllerUrl());
    assert.equal(controller.get("fleetwatch_controller_agents_connected"), 1);
    assert.equal(controller.get("fleetwatch_controller_leader"), 1);
    assert.ok(controller.get("fleetwatch_controller_epoch") >= 1);
    assert.equal(controller.get("fleetwatch_controller_agent_registrations_total"), 1);
    assert.ok(controller.get("process_cpu_seconds_total", { daemon: "controller" }) > 0);
    const agent = await scrape(agentUrl());
    assert.equal(agent.get("fleetwatch_agent_controller_session"), 1);
    assert.equal(agent.get("fleetwatch_agent_targets_armed"), 0);
    assert.ok(agent.get("process_cpu_seconds_total", { daemon: "agent" }) > 0);
    // The helper's self-test, whatever this host delivers: one gauge per backend, 1 or 0.
    const expectTraps = process.env.FLEETWATCH_EXPECT_TRAPS;
    for (const backend of ["ptrace", "perf"]) {
      const delivered = agent.get("fleetwatch_agent_trap_delivered", { backend });
      if (expectTraps === "1") assert.equal(delivered, 1, backend);
      else if (expectTraps === "0") assert.equal(delivered, 0, backend);
      else assert.ok(delivered === 0 || delivered === 1, backend);
      if (delivered === 1) assert.ok(agent.get("fleetwatch_agent_trap_cost_seconds", { backend }) > 0, `${backend} cost`);
    }
    for (const outcome of ["trapped", "delivered", "suppressed", "dropped", "filtered"]) assert.equal(agent.get("fleetwatch_agent_hits_total", { outcome }), 0, outcome);
  });

  test("jobs by state follow a job that waits in the queue and is cancelled", async () => {
    const before = await jobsByState();
    const submitted = await suite.cluster.cli(["watch", "--comm", "fw-never-runs", "--symbol", "fw_counter", "--queue-timeout", "10m", "-o", "json"]);
    assert.equal(submitted.code, 0, submitted.stderr);
    const id = (JSON.parse(submitted.stdout) as { id: string }).id;
    assert.deepEqual(await jobsByState(), { ...before, pending: before.pending! + 1 });
    const waiting = await scrape(controllerUrl());
    assert.ok(waiting.get("fleetwatch_controller_pending_oldest_seconds") > 0);
    // SubmitJob was timed under its status (a labelled histogram: read from the text).
    assert.match(waiting.text, /^fleetwatch_controller_submit_seconds_count\{code="OK"\} 1$/m);

    const cancelled = await suite.cluster.cli(["jobs", "cancel", id]);
    assert.equal(cancelled.code, 0, cancelled.stderr);
    assert.deepEqual(await jobsByState(), { ...before, cancelled: before.cancelled! + 1 });
    const after = await scrape(controllerUrl());
    assert.equal(after.get("fleetwatch_controller_pending_oldest_seconds"), 0);
    assert.equal(after.get("fleetwatch_controller_placements_total"), 0, "nothing was placed");
    assert.equal(after.histogram("fleetwatch_controller_job_armed_seconds").count, 0);

    // A refused submit is timed under its own status.
    const refused = await suite.cluster.cli(["watch", "--comm", "fw-never-runs", "--symbol", "fw_counter"]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match((await scrape(controllerUrl())).text, /^fleetwatch_controller_submit_seconds_count\{code="NOT_FOUND"\} 1$/m);
  });

  test("the agent is not ready without a controller session, and ready again once it registers", async () => {
    const cluster = suite.cluster;
    await cluster.stopController();
    const down = await waitFor("the agent's /readyz says 503", async () => {
      const r = await probe(agentUrl(), "/readyz");
      return r.status === 503 ? r : undefined;
    });
    assert.equal(down.text, `not ready: no session with a controller (${cluster.controllerAddress})\n`);
    assert.equal((await scrape(agentUrl())).get("fleetwatch_agent_controller_session"), 0);
    await cluster.startController();
    await cluster.waitForAgent("host-a");
    await waitFor("the agent's /readyz says 200", async () => (await probe(agentUrl(), "/readyz")).status === 200);
    const controller = await scrape(cluster.controllerMetricsUrl);
    assert.equal(controller.get("fleetwatch_controller_agents_connected"), 1);
    assert.equal(controller.get("fleetwatch_controller_agent_registrations_total"), 1, "a new controller counts from its start");
  });

  test("the controller's /readyz is 503 while nats-server is down and 200 once it is back", async () => {
    const cluster = suite.cluster;
    await cluster.restartNats("SIGTERM", async () => {
      const down = await waitFor(
        "the controller's /readyz says 503",
        async () => {
          const r = await probe(controllerUrl(), "/readyz");
          return r.status === 503 ? r : undefined;
        },
        15_000,
      );
      assert.match(down.text, /^not ready: the store \(NATS JetStream\) does not answer: .+\n$/);
      // Alive all the same: a liveness probe must not restart it for NATS' sake.
      assert.deepEqual(await probe(controllerUrl(), "/healthz"), { status: 200, text: "ok\n" });
    });
    await waitFor("the controller's /readyz says 200", async () => (await probe(controllerUrl(), "/readyz")).status === 200, 30_000, 100);
    await cluster.waitForAgent("host-a", 30_000);
    const controller = await waitFor("the controller leads again with the agent", async () => {
      const s = await scrape(controllerUrl());
      return s.get("fleetwatch_controller_leader") === 1 && s.get("fleetwatch_controller_agents_connected") === 1 ? s : undefined;
    }, 30_000, 100);
    assert.ok(controller.get("fleetwatch_controller_epoch") >= 1);
    await waitFor("the agent's /readyz says 200", async () => (await probe(agentUrl(), "/readyz")).status === 200, 30_000, 100);
  });

  test("logs: a daemon whose stderr is a pipe logs one JSON object per line, with level, time, component, host and the line's job and pid", async () => {
    // The test harness asks its daemons for text lines; this one gets the default.
    const env = { ...process.env };
    delete env.FLEETWATCH_LOG_FORMAT;
    const agent = new Daemon("agent log-probe", spawn(process.execPath, [cliPath, "agent", "--controller", suite.cluster.controllerAddress, "--nats", suite.cluster.natsUrl, "--host-id", "log-probe", "--helper", helperPath], { stdio: ["ignore", "ignore", "pipe"], env }));
    try {
      await agent.waitForOutput(/registered with/);
    } finally {
      await agent.stop();
    }
    const lines = agent.output.split("\n").filter((line) => line !== "");
    assert.ok(lines.length >= 2, agent.output);
    for (const line of lines) {
      const entry = JSON.parse(line) as Record<string, unknown>;
      assert.deepEqual(Object.keys(entry).slice(0, 4), ["level", "time", "component", "host"], line);
      assert.ok(["debug", "info", "warn", "error"].includes(String(entry.level)), line);
      assert.equal(entry.component, "agent");
      assert.equal(entry.host, "log-probe");
      assert.equal(typeof entry.msg, "string");
    }
    assert.ok(lines.some((line) => /"msg":"agent log-probe: registered with /.test(line)), agent.output);
  });
});
