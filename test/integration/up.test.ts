// The embedded default as the quick start uses it: `fleetwatch up` starts
// nats-server, a controller and this host's agent, serves a real watch, and
// on SIGTERM stops all three and leaves the target untraced and running.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { freePort } from "../../cli/nats-server.js";
import { Daemon } from "../support/cluster.js";
import { probe, scrape } from "../support/metrics.js";
import { cliPath } from "../support/paths.js";
import { buildFixtures, childPids, startTarget, type Target } from "../support/targets.js";

// fleetwatch-helper as /proc/PID/comm holds it (15 bytes).
const helperComm = "fleetwatch-helper".slice(0, 15);

/** A process's command name, or "" once it is gone. */
function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return "";
  }
}

/** Pids of processes whose command line mentions this text. */
async function processesMentioning(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    if (cmdline.includes(text)) pids.push(Number(entry));
  }
  return pids;
}

describe("fleetwatch up", () => {
  let dir: string;
  let target: Target | undefined;

  after(async () => {
    await target?.kill();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test("starts everything, watches a target, and stops cleanly on SIGTERM", async () => {
    let helpers: number[] = [];
    await buildFixtures();
    dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-up-"));
    const listen = `127.0.0.1:${await freePort()}`;
    const natsPort = await freePort();
    const metricsArgs = ["--metrics-listen", "127.0.0.1:0", "--agent-metrics-listen", "127.0.0.1:0"];
    const up = new Daemon("up", spawn(process.execPath, [cliPath, "up", "--data-dir", path.join(dir, "data"), "--listen", listen, "--nats-port", String(natsPort), ...metricsArgs], { stdio: ["ignore", "pipe", "pipe"] }));
    try {
      const [line] = await up.waitForOutput(/^fleetwatch up: .*$/m, 30_000);
      assert.match(line!, new RegExp(`^fleetwatch up: controller ${listen}, nats nats://127.0.0.1:${natsPort}, host \\S+$`));
      // The next line says where both daemons' metrics are; each serves them and is ready.
      const [, controllerMetrics, agentMetrics] = await up.waitForOutput(/^fleetwatch up: metrics (http:\/\/127\.0\.0\.1:\d+\/metrics) \(controller\), (http:\/\/127\.0\.0\.1:\d+\/metrics) \(agent\)$/m);
      assert.equal((await scrape(controllerMetrics!)).get("fleetwatch_controller_agents_connected"), 1);
      assert.equal((await scrape(agentMetrics!)).get("fleetwatch_agent_controller_session"), 1);
      for (const url of [controllerMetrics!, agentMetrics!]) assert.deepEqual(await probe(url, "/readyz"), { status: 200, text: "ready\n" }, url);

      target = await startTarget("demo-counter");
      await target.waitForLine(/^ready /);
      const env = { ...process.env, FLEETWATCH_CONTROLLER: listen, FLEETWATCH_NATS: `nats://127.0.0.1:${natsPort}` };
      const watch = spawn(process.execPath, [cliPath, "watch", "--pid", String(target.pid), "--symbol", "demo_counter", "--max-hits", "3", "--follow", "-o", "json"], { env, stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "";
      watch.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
      const code = await new Promise<number | null>((resolve) => watch.once("exit", resolve));
      assert.equal(code, 0);
      const values = stdout.trim().split("\n").map((l) => BigInt((JSON.parse(l) as { newValue: string }).newValue));
      assert.equal(values.length, 3);
      assert.deepEqual(values, [values[0]!, values[0]! + 1n, values[0]! + 2n]);
    } finally {
      // Its helper, among its children (others may run helpers on this machine too).
      helpers = (await childPids(up.child.pid!)).filter((pid) => commOf(pid) === helperComm);
      assert.deepEqual(await up.stop("SIGTERM"), { code: 0, signal: null }, up.output);
    }
    // Nothing of it is left: no nats-server on its data dir, no helper, and the target is free.
    assert.deepEqual(await processesMentioning(dir), []);
    assert.equal(helpers.length, 1, "up ran one helper");
    assert.deepEqual(helpers.filter((pid) => commOf(pid) === helperComm), [], "its helper is gone");
    assert.equal(await target.tracerPid(), 0);
    target.child.kill("SIGTERM");
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });
});
