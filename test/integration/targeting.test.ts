// Targeting beyond one pid: every process with a command name on the hosts a
// label selector picks is a target; a process that starts later is armed
// too; one that exits frees its registers and the others go on.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { Backend, JobSpecSchema, JobState, TargetState, WatchMode, submittedTargetStates, type Job } from "../../proto/index.js";
import { Cluster } from "../support/cluster.js";
import { buildFixtures, fixturePath, startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

describe("targeting", () => {
  let cluster: Cluster;
  let dir: string;
  let program: string;
  const targets: Target[] = [];

  before(async () => {
    await buildFixtures();
    // A copy under a name of our own: its comm tells our processes from any other.
    dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-targeting-"));
    program = path.join(dir, `fwdb${process.pid % 100000}`);
    await copyFile(fixturePath("demo-counter"), program);
    // Both agents see this machine's processes: only host-b is selected, by label.
    cluster = await Cluster.start({ hosts: ["host-a", "host-b"], labels: { "host-a": ["role=web"], "host-b": ["role=db", "zone=b"] } });
  });

  after(async () => {
    for (const t of targets) await t.kill();
    await cluster?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  async function start(): Promise<Target> {
    const target = await startTarget("fwdb", [], { path: program });
    targets.push(target);
    await target.waitForLine(/^ready /);
    return target;
  }

  const job = async (id: string): Promise<Job> => (await cluster.api().getJob({ id })).job!;

  test("every process with the comm on the selected hosts, late joiners included; exits free their registers", async () => {
    const [one, two] = [await start(), await start()];
    const comm = path.basename(program);
    const submitted = await cluster.cli(["watch", "--comm", comm, "--selector", "role=db,zone in (b,c)", "--symbol", "demo_counter", "--stack", "0", "-o", "json"]);
    assert.equal(submitted.code, 0, submitted.stderr);
    const id = (JSON.parse(submitted.stdout) as { id: string }).id;
    const armed = await job(id);
    assert.equal(armed.state, JobState.ARMED);
    assert.deepEqual(armed.targets.map((t) => [t.hostId, t.pid, t.state]).sort(), [["host-b", one.pid, TargetState.ARMED], ["host-b", two.pid, TargetState.ARMED]].sort());

    const three = await start();
    await waitFor("the late joiner is armed", async () => (await job(id)).targets.some((t) => t.pid === three.pid && t.state === TargetState.ARMED));
    // The default backend: perf events, no tracer.
    assert.equal((await job(id)).targets.find((t) => t.pid === three.pid)?.backend, Backend.PERF);
    assert.equal(await three.tracerPid(), 0);
    await waitFor("hits from the late joiner", async () => ((await job(id)).targets.find((t) => t.pid === three.pid)?.counts?.delivered ?? 0n) > 0n);

    one.child.kill("SIGTERM");
    assert.deepEqual(await one.waitForExit(), { code: 0, signal: null });
    await waitFor("the exited target is reported", async () => (await job(id)).targets.find((t) => t.pid === one.pid)?.state === TargetState.EXITED);
    const { agents } = await cluster.api().listAgents({});
    const slotsOfOne = agents.find((a) => a.info?.hostId === "host-b")?.targets.find((t) => t.pid === one.pid);
    assert.equal(slotsOfOne, undefined, "an exited process holds no registers");
    assert.equal((await job(id)).state, JobState.ARMED, "the others are still armed");

    const cancelled = (await cluster.api().cancelJob({ id })).job!;
    assert.equal(cancelled.state, JobState.CANCELLED);
    for (const t of [two, three]) {
      assert.equal(await t.tracerPid(), 0);
      t.child.kill("SIGTERM");
      assert.deepEqual(await t.waitForExit(), { code: 0, signal: null });
    }
  });

  test("a submit asked for no targets answers how many are in each state; GetJob and a submit without the flag list every target", async () => {
    const [one, two] = [await start(), await start()];
    const spec = create(JobSpecSchema, { watches: [{ location: { case: "symbol", value: "demo_counter" }, mode: WatchMode.WRITE }], target: { comm: path.basename(program), hostSelector: "role=db" }, stackDepth: 0 });
    const counted = await cluster.api().submitJob({ spec, withoutTargets: true });
    const id = counted.job!.id;
    assert.equal(counted.job!.state, JobState.ARMED);
    assert.deepEqual(counted.job!.targets, []);
    assert.deepEqual(counted.targetStates.map((c) => [c.state, c.targets]), [[TargetState.ARMED, 2]]);
    assert.deepEqual(submittedTargetStates(counted), counted.targetStates);
    const listed = await job(id);
    assert.deepEqual(listed.targets.map((t) => [t.hostId, t.pid, t.state]).sort(), [["host-b", one.pid, TargetState.ARMED], ["host-b", two.pid, TargetState.ARMED]].sort());
    assert.deepEqual(listed.counts, counted.job!.counts);
    assert.equal((await cluster.api().cancelJob({ id })).job!.state, JobState.CANCELLED);

    // Unasked, the answer lists every target and counts none: what clients from before the flag read.
    const full = await cluster.api().submitJob({ spec });
    assert.deepEqual(full.job!.targets.map((t) => [t.pid, t.state]).sort(), [[one.pid, TargetState.ARMED], [two.pid, TargetState.ARMED]].sort());
    assert.deepEqual(full.targetStates, []);
    assert.deepEqual(submittedTargetStates(full).map((c) => [c.state, c.targets]), [[TargetState.ARMED, 2]]);
    assert.equal((await cluster.api().cancelJob({ id: full.job!.id })).job!.state, JobState.CANCELLED);
    for (const t of [one, two]) await t.kill();
  });

  test("no matching process is not placeable (exit 2) and says what was looked for", async () => {
    const result = await cluster.cli(["watch", "--comm", "fw-no-such", "--selector", "role=db", "--symbol", "demo_counter"]);
    assert.equal(result.code, 2, result.stderr);
    assert.match(result.stderr, /no process matches comm 'fw-no-such' on host-b: give --queue-timeout to wait for one to start/);
    const noHost = await cluster.cli(["watch", "--comm", "x", "--selector", "role=cache", "--symbol", "demo_counter"]);
    assert.equal(noHost.code, 2, noHost.stderr);
    assert.match(noHost.stderr, /no connected agent matches selector 'role=cache'; connected: host-a, host-b/);
  });

  for (const by of ["--exe", "--comm"] as const) {
    test(`${by} with --queue-timeout and nothing running yet: pending until the first matching process starts, then armed`, async () => {
      const selector = by === "--exe" ? program : path.basename(program);
      const submitted = await cluster.cli(["watch", by, selector, "--selector", "role=db", "--symbol", "demo_counter", "--stack", "0", "--queue-timeout", "60s", "-o", "json"]);
      assert.equal(submitted.code, 0, submitted.stderr);
      const id = (JSON.parse(submitted.stdout) as { id: string }).id;
      const waiting = await job(id);
      assert.equal(waiting.state, JobState.PENDING, waiting.reason);
      assert.equal(waiting.targets.length, 0);
      const what = by === "--exe" ? `exe ${program}` : `comm '${selector}'`;
      assert.equal(waiting.reason, `waiting for a process matching ${what} to start on host-b (queue timeout 1m)`);

      const first = await start();
      await waitFor("the first matching process is armed", async () => (await job(id)).targets.some((t) => t.pid === first.pid && t.state === TargetState.ARMED));
      assert.equal((await job(id)).state, JobState.ARMED);
      await waitFor("its hits are counted", async () => ((await job(id)).counts?.delivered ?? 0n) > 0n);
      assert.equal((await cluster.api().cancelJob({ id })).job!.state, JobState.CANCELLED);
      await first.kill();
    });
  }

  test("a job waiting for a process that never starts fails at its queue timeout, saying so", async () => {
    const submitted = await cluster.cli(["watch", "--comm", "fw-never", "--selector", "role=db", "--symbol", "demo_counter", "--queue-timeout", "1s", "-o", "json"]);
    assert.equal(submitted.code, 0, submitted.stderr);
    const id = (JSON.parse(submitted.stdout) as { id: string }).id;
    const failed = await waitFor("the job fails at its queue timeout", async () => {
      const j = await job(id);
      return j.state === JobState.FAILED ? j : undefined;
    });
    assert.equal(failed.reason, "no process matching comm 'fw-never' started within the queue timeout (1s)");
    assert.equal(failed.targets.length, 0);
  });
});
