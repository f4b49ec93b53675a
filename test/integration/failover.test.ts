// Two controllers on one NATS: one leads, the other stands by and says who
// leads. SIGKILL the leader: the standby takes over within its election
// lease with the stored jobs, the agents follow it, the CLI (given both
// addresses) too, and the armed targets never noticed; the new leader goes
// on arming late joiners and freeing the registers of processes that exit.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { startNatsServer, type RunningNatsServer } from "../../cli/nats-server.js";
import { ControllerService, JobState, TargetState, createFailoverClient, type ServiceClient } from "../../proto/index.js";
import { Daemons, collectCli, type Daemon } from "../support/cluster.js";
import { cliPath, helperPath } from "../support/paths.js";
import { buildFixtures, fixturePath, startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

describe("controller failover", () => {
  let dir: string;
  let nats: RunningNatsServer;
  const daemons = new Daemons();
  let target: Target | undefined;
  const others: Target[] = [];
  let api: ServiceClient<typeof ControllerService> | undefined;

  before(async () => {
    await buildFixtures();
    dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-failover-"));
    nats = await startNatsServer({ dataDir: path.join(dir, "nats") });
  });

  after(async () => {
    api?.close();
    await target?.kill();
    for (const t of others) await t.kill();
    await daemons.stop();
    await nats?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const daemon = (name: string, args: string[]): Daemon => daemons.start(name, args);
  const controller = (name: string) => daemons.controller(name, nats.url, "2s", "1s");

  function cli(args: string[], controllers: string) {
    const child = spawn(process.execPath, [cliPath, ...args], { env: { ...process.env, FLEETWATCH_CONTROLLER: controllers, FLEETWATCH_NATS: nats.url }, stdio: ["ignore", "pipe", "pipe"] });
    return collectCli(child, args);
  }

  test("the standby takes over the jobs and the agent when the leader is SIGKILLed", async () => {
    const a = await controller("controller a");
    await a.daemon.waitForOutput(/leading with epoch (\d+)/);
    const b = await controller("controller b");
    await b.daemon.waitForOutput(/standing by/);
    const both = `${a.address},${b.address}`;
    api = createFailoverClient(ControllerService, [a.address, b.address]);

    const agent = daemon("agent", ["agent", "--controller", both, "--nats", nats.url, "--host-id", "host-a", "--helper", helperPath]);
    await agent.waitForOutput(/registered with/);

    // The standby refuses and names the leader; with both addresses the CLI finds it.
    const standby = await cli(["jobs", "ls"], b.address);
    assert.equal(standby.code, 1, standby.stderr);
    assert.match(standby.stderr, new RegExp(`standing by: the leader is \\S+ at ${a.address.replace(/\./g, "\\.")}`));

    target = await startTarget("demo-counter");
    await target.waitForLine(/^ready /);
    const submitted = await cli(["watch", "--pid", String(target.pid), "--symbol", "demo_counter", "--stack", "0", "--backend", "ptrace", "-o", "json"], both);
    assert.equal(submitted.code, 0, submitted.stderr);
    const id = (JSON.parse(submitted.stdout) as { id: string }).id;
    const job = async () => (await api!.getJob({ id })).job!;
    await waitFor("hits delivered under the first leader", async () => ((await job()).counts?.delivered ?? 0n) > 0n);

    a.daemon.child.kill("SIGKILL");
    await a.daemon.exited;
    const [, epoch] = await b.daemon.waitForOutput(/leading with epoch (\d+)/, 15_000);
    assert.ok(BigInt(epoch!) >= 2n, `epoch ${epoch}`);
    await agent.waitForOutput(new RegExp(`registered with ${b.address.replace(/\./g, "\\.")} \\(epoch ${epoch}\\)`), 15_000);

    // The new leader has the job from the store, still armed, and hits go on.
    const taken = await job();
    assert.equal(taken.state, JobState.ARMED, taken.reason);
    assert.equal(taken.targets[0]!.state, TargetState.ARMED);
    assert.notEqual(await target.tracerPid(), 0);
    const before = taken.counts?.delivered ?? 0n;
    await waitFor("hits delivered under the new leader", async () => ((await job()).counts?.delivered ?? 0n) > before);

    const listed = await cli(["jobs", "ls", "-o", "json"], both);
    assert.equal(listed.code, 0, listed.stderr);
    assert.deepEqual((JSON.parse(listed.stdout) as { jobs: Array<{ id: string }> }).jobs.map((j) => j.id), [id]);
    const cancelled = await cli(["jobs", "cancel", id], both);
    assert.equal(cancelled.code, 0, cancelled.stderr);
    assert.equal(await target.tracerPid(), 0);
    target.child.kill("SIGTERM");
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });

  test("several agents: jobs on two hosts survive the leader's death; the new leader arms a late joiner and frees an exited one", async () => {
    // The controllers and agent of the test before leave first (the leader resigns).
    for (const d of daemons.all) await d.stop();
    const a = await controller("controller c");
    await a.daemon.waitForOutput(/leading with epoch/);
    const b = await controller("controller d");
    await b.daemon.waitForOutput(/standing by/);
    const both = `${a.address},${b.address}`;
    const client = createFailoverClient(ControllerService, [a.address, b.address]);
    try {
      for (const host of ["host-c", "host-d"]) {
        const agent = daemon(`agent ${host}`, ["agent", "--controller", both, "--nats", nats.url, "--host-id", host, "--helper", helperPath]);
        await agent.waitForOutput(/registered with/);
      }
      // Both agents see this machine's processes: each host's job picks its own program by name.
      const programs = await Promise.all(["c", "d"].map(async (h) => {
        const program = path.join(dir, `fwfo${h}${process.pid % 10000}`);
        await copyFile(fixturePath("demo-counter"), program);
        return program;
      }));
      const start = async (program: string) => {
        const t = await startTarget(path.basename(program), [], { path: program });
        others.push(t);
        await t.waitForLine(/^ready /);
        return t;
      };
      const [onC, onD] = [await start(programs[0]!), await start(programs[1]!)];
      const ids: string[] = [];
      for (const [i, host] of ["host-c", "host-d"].entries()) {
        const submitted = await cli(["watch", "--comm", path.basename(programs[i]!), "--host", host, "--symbol", "demo_counter", "--stack", "0", "--backend", "ptrace", "-o", "json"], both);
        assert.equal(submitted.code, 0, submitted.stderr);
        ids.push((JSON.parse(submitted.stdout) as { id: string }).id);
      }
      const job = async (id: string) => (await client.getJob({ id })).job!;
      for (const id of ids) await waitFor(`hits of job ${id}`, async () => ((await job(id)).counts?.delivered ?? 0n) > 0n);

      a.daemon.child.kill("SIGKILL");
      await a.daemon.exited;
      await b.daemon.waitForOutput(/leading with epoch (\d+)/, 15_000);
      for (const id of ids) {
        const taken = await job(id);
        assert.equal(taken.state, JobState.ARMED, taken.reason);
        const before = taken.counts?.delivered ?? 0n;
        await waitFor(`hits of job ${id} under the new leader`, async () => ((await job(id)).counts?.delivered ?? 0n) > before, 15_000);
      }
      assert.notEqual(await onC.tracerPid(), 0);
      assert.notEqual(await onD.tracerPid(), 0);

      // A process that starts matching now is armed by the new leader; one that exits frees its registers.
      const late = await start(programs[0]!);
      await waitFor("the late joiner is armed under the new leader", async () => (await job(ids[0]!)).targets.some((t) => t.pid === late.pid && t.state === TargetState.ARMED), 15_000);
      onC.child.kill("SIGTERM");
      assert.deepEqual(await onC.waitForExit(), { code: 0, signal: null });
      await waitFor("the exited target is reported", async () => (await job(ids[0]!)).targets.find((t) => t.pid === onC.pid)?.state === TargetState.EXITED);
      const { agents } = await client.listAgents({});
      assert.equal(agents.find((x) => x.info?.hostId === "host-c")?.targets.find((t) => t.pid === onC.pid), undefined, "an exited process holds no registers");

      for (const id of ids) assert.equal((await client.cancelJob({ id })).job!.state, JobState.CANCELLED);
      for (const t of [late, onD]) {
        assert.equal(await t.tracerPid(), 0);
        t.child.kill("SIGTERM");
        assert.deepEqual(await t.waitForExit(), { code: 0, signal: null });
      }
    } finally {
      client.close();
    }
  });
});
