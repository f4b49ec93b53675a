// Leases: a controller that falls silent (SIGSTOP) must not leave targets
// trapping with nobody listening. The agent disarms on its own after the
// lease; the controller, back, marks the host lost, then re-arms it when the
// agent registers again; counters and hit sequences carry on without a gap.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readdir } from "node:fs/promises";
import { create } from "@bufbuild/protobuf";
import { Backend, ControllerService, JobSpecSchema, JobState, TargetState, WatchMode, createClient, isFinalJobState, type Job } from "../../proto/index.js";
import { Cluster } from "../support/cluster.js";
import { buildFixtures, procState, procStatusField, startTarget, type Target } from "../support/targets.js";
import { scaled, waitFor } from "../support/wait.js";

// Long enough for the CLI to see hits published while the controller is silent.
const lostAfterMs = scaled(5_000);

describe("leases", () => {
  let cluster: Cluster;
  let target: Target | undefined;

  before(async () => {
    await buildFixtures();
    // Leases stretch with the machine: a slow one must not lose sessions it keeps alive.
    cluster = await Cluster.start({ leaseMs: scaled(1_000) });
  });

  after(async () => {
    await target?.kill();
    await cluster?.stop();
  });

  test("a silent controller: the agent disarms after the lease, the host is lost, then re-armed with counts intact", async (context) => {
    target = await startTarget("demo-counter");
    const spec = create(JobSpecSchema, { watches: [{ location: { case: "symbol", value: "demo_counter" }, mode: WatchMode.WRITE }], target: { pid: target.pid }, stackDepth: 0, backend: Backend.PTRACE });
    const { job } = await cluster.api().submitJob({ spec });
    assert.equal(job?.state, JobState.ARMED, job?.reason);
    const id = job!.id;
    await waitFor("two hits delivered", async () => ((await cluster.api().getJob({ id })).job?.counts?.delivered ?? 0n) >= 2n);
    assert.notEqual(await target.tracerPid(), 0);

    // Every state the job goes through from here is recorded: the stream is open before the
    // controller stops, so a controller that is back and done (lost, then re-armed) before a
    // watch could start leaves nothing unseen. Its client sends no keepalive pings: a stopped
    // controller answers none, and the stream must outlive the stop.
    const seen: Job[] = [];
    const patient = createClient(ControllerService, cluster.controllerAddress, undefined, { "grpc.keepalive_time_ms": 2_147_483_647, "grpc.keepalive_permit_without_calls": 0 });
    context.after(() => patient.close());
    const watching = (async () => {
      for await (const { job: j } of patient.watchJob({ id }, { deadlineMs: 60_000 })) {
        if (!j) continue;
        seen.push(j);
        if (j.targets[0]?.state === TargetState.ARMED && seen.some((s) => s.targets[0]?.state === TargetState.LOST)) return;
        if (isFinalJobState(j.state)) return;
      }
    })();
    await waitFor("the job's first state streamed", () => seen.length > 0);
    const controllerPid = cluster.controller!.child.pid!;
    process.kill(controllerPid, "SIGSTOP");
    try {
      await waitFor("the agent disarmed and detached on its own", async () => (await target!.tracerPid()) === 0, 15_000);
    } finally {
      process.kill(controllerPid, "SIGCONT");
    }
    await watching;
    const lost = seen.find((j) => j.targets[0]?.state === TargetState.LOST)!;
    assert.ok(lost, `states seen: ${seen.map((j) => TargetState[j.targets[0]!.state]).join(", ")}`);
    assert.equal(lost.state, JobState.DEGRADED);
    assert.match(lost.targets[0]!.reason, /registers stay reserved until it returns/);
    const back = seen.at(-1)!;
    assert.equal(back.targets[0]!.state, TargetState.ARMED);
    assert.equal(back.state, JobState.ARMED);
    assert.match(back.targets[0]!.reason, /re-armed after the agent reconnected/);
    await waitFor("traced again", async () => (await target!.tracerPid()) !== 0);
    const before = (await cluster.api().getJob({ id })).job!.counts!.delivered;
    await waitFor("hits again after the re-arm", async () => ((await cluster.api().getJob({ id })).job?.counts?.delivered ?? 0n) > before + 1n);

    const cancelled = (await cluster.api().cancelJob({ id })).job!;
    assert.equal(cancelled.state, JobState.CANCELLED);
    const c = cancelled.counts!;
    assert.equal(c.trapped, c.delivered + c.suppressed + c.dropped + c.filtered);
    assert.equal(await target.tracerPid(), 0);

    // Every delivered hit is in the stream once, sequences 1..delivered without a gap.
    const replay = await cluster.cli(["events", id, "-o", "json"]);
    assert.equal(replay.code, 0, replay.stderr);
    const sequences = replay.stdout.trim().split("\n").map((line) => BigInt((JSON.parse(line) as { sequence: string }).sequence));
    assert.equal(BigInt(sequences.length), c.delivered);
    assert.deepEqual(sequences, sequences.map((_, i) => BigInt(i + 1)));

    // The target never noticed.
    target.child.kill("SIGTERM");
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });

  test("a job's lost-after: the agent keeps its target armed and publishing past the lease, then disarms it", async () => {
    const second = await startTarget("demo-counter");
    try {
      const spec = create(JobSpecSchema, { watches: [{ location: { case: "symbol", value: "demo_counter" }, mode: WatchMode.WRITE }], target: { pid: second.pid }, stackDepth: 0, lostAfterMs: BigInt(lostAfterMs), backend: Backend.PTRACE });
      const { job } = await cluster.api().submitJob({ spec });
      assert.equal(job?.state, JobState.ARMED, job?.reason);
      const id = job!.id;
      const agent = cluster.agents.get("host-a")!;
      const lapses = (agent.output.match(/\(the lease\):/g) ?? []).length;
      const controllerPid = cluster.controller!.child.pid!;
      process.kill(controllerPid, "SIGSTOP");
      try {
        // The session's lease lapsed: a job without lost-after would be disarmed now; this one stays.
        await waitFor("the agent's session lease lapsed", () => (agent.output.match(/\(the lease\):/g) ?? []).length > lapses, 15_000);
        assert.match(agent.output.split("\n").filter((line) => line.includes("(the lease):")).at(-1)!, /\(the lease\): (.*; )?1 watch stays armed within its job's lost-after$/);
        assert.notEqual(await second.tracerPid(), 0, "still armed within its lost-after");
        const replayed = async () => (await cluster.cli(["events", id, "-o", "json"])).stdout.trim().split("\n").filter(Boolean).length;
        const atLapse = await replayed();
        await waitFor("hits still published with no controller", async () => (await replayed()) > atLapse, 15_000);
        await waitFor("disarmed once its lost-after passed", async () => (await second.tracerPid()) === 0, 15_000);
        assert.match(agent.output, new RegExp(`for ${lostAfterMs} ms \\(the job's lost-after\\): disarmed by the agent`));
      } finally {
        process.kill(controllerPid, "SIGCONT");
      }
      await waitFor("re-armed after the controller is back", async () => (await cluster.api().getJob({ id })).job?.targets[0]?.state === TargetState.ARMED && (await second.tracerPid()) !== 0, 30_000);
      const cancelled = (await cluster.api().cancelJob({ id })).job!;
      const c = cancelled.counts!;
      assert.equal(c.trapped, c.delivered + c.suppressed + c.dropped + c.filtered);
      assert.equal(await second.tracerPid(), 0);
      second.child.kill("SIGTERM");
      assert.deepEqual(await second.waitForExit(), { code: 0, signal: null });
    } finally {
      await second.kill();
    }
  });
});

/** The agent of host-a, and how often it has let its lease lapse and registered so far (from its output). */
function agentEvents(cluster: Cluster) {
  const agent = cluster.agents.get("host-a")!;
  const count = (pattern: RegExp) => (agent.output.match(pattern) ?? []).length;
  return { agent, lapses: () => count(/\(the lease\):/g), registrations: () => count(/: registered with \S+ \(epoch/g) };
}

/** Hits come again after a re-arm; then a cancel ends the job with counts that add up. */
async function hitsAgainThenCancel(cluster: Cluster, id: string, deliveredAtRearm: bigint): Promise<void> {
  await waitFor("hits again after the re-arm", async () => ((await cluster.api().getJob({ id })).job?.counts?.delivered ?? 0n) > deliveredAtRearm + 10n);
  const cancelled = (await cluster.api().cancelJob({ id })).job!;
  assert.equal(cancelled.state, JobState.CANCELLED);
  const c = cancelled.counts!;
  assert.equal(c.trapped, c.delivered + c.suppressed + c.dropped + c.filtered);
}

describe("leases: the controller SIGKILLed and started again", () => {
  for (const back of ["after", "before"] as const) {
    describe(`back ${back} the agent's lease ran out`, () => {
      let cluster: Cluster;
      const targets: Target[] = [];
      // After: short, so that it runs out soon. Before: long enough that a controller started again at
      // once, and the agent's reconnecting with back-off, are back within it on a loaded machine too.
      const leaseMs = scaled(back === "after" ? 2_000 : 10_000);

      before(async () => {
        await buildFixtures();
        cluster = await Cluster.start({ leaseMs });
      });

      after(async () => {
        for (const t of targets) await t.kill();
        await cluster?.stop();
      });

      for (const backend of [Backend.PTRACE, Backend.PERF]) {
        const name = Backend[backend].toLowerCase();
        test(`${name}: back ${back} the agent's lease ran out, the live target of a hot writer is re-armed, never reported exited, and a cancel leaves it untraced`, async () => {
          // Writes for as long as the test runs (ten minutes at most).
          const target = await startTarget("hot-writer");
          targets.push(target);
          await target.waitForLine(/^ready /);
          const spec = create(JobSpecSchema, { watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], target: { pid: target.pid }, stackDepth: 0, backend });
          const { job } = await cluster.api().submitJob({ spec });
          assert.equal(job?.state, JobState.ARMED, job?.reason);
          const id = job!.id;
          target.send("run 600000 hot");
          const delivered = async () => (await cluster.api().getJob({ id })).job?.counts?.delivered ?? 0n;
          await waitFor("hits from the hot writer", async () => (await delivered()) >= 100n);

          const { lapses, registrations } = agentEvents(cluster);
          const lapsedBefore = lapses();
          const registeredBefore = registrations();
          await cluster.stopController("SIGKILL");
          if (back === "after") {
            await waitFor("the agent's lease ran out", () => lapses() > lapsedBefore, 30_000);
            if (backend === Backend.PTRACE) await waitFor("the agent disarmed and detached on its own", async () => (await target.tracerPid()) === 0);
          }
          await cluster.startController();
          // The stored job says armed until the agent has told the new controller what it has.
          await waitFor("the agent registered with the controller started again", () => registrations() > registeredBefore, 30_000);
          await cluster.waitForAgent("host-a");
          const rearmed = await waitFor("the target armed again", async () => {
            const j = (await cluster.api().getJob({ id })).job!;
            assert.notEqual(j.targets[0]?.state, TargetState.EXITED, `a live process reported exited: ${j.targets[0]?.reason}`);
            return j.targets[0]?.state === TargetState.ARMED && j.state === JobState.ARMED ? j : undefined;
          }, 30_000);
          if (back === "before") assert.equal(lapses(), lapsedBefore, "the controller was back within the lease");
          assert.equal(target.child.exitCode, null, "the target runs on");
          if (backend === Backend.PTRACE) assert.notEqual(await target.tracerPid(), 0, "traced again");
          else assert.equal(await target.tracerPid(), 0, "perf never traces");
          await hitsAgainThenCancel(cluster, id, rearmed.counts?.delivered ?? 0n);
          await waitFor("untraced after the cancel", async () => (await target.tracerPid()) === 0);
          assert.equal(target.child.exitCode, null, "the target runs on");
          await target.kill();
        });
      }

      if (back === "after") {
        test("ptrace: a thread that cannot stop (vfork) when the lease runs out: the re-arm takes the other threads back, the live target is never reported exited, and a cancel leaves every thread untraced", async () => {
          const target = await startTarget("vfork-stall");
          targets.push(target);
          await target.waitForLine(/^ready /);
          const tids = (await readdir(`/proc/${target.pid}/task`)).map(Number);
          const writerTid = tids.find((tid) => tid !== target.pid)!;
          // /proc/TID/status is the thread's own: its tracer, not the process leader's.
          const tracerOf = (tid: number) => procStatusField(tid, "TracerPid");
          const spec = create(JobSpecSchema, { watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], target: { pid: target.pid }, stackDepth: 0, backend: Backend.PTRACE });
          const { job } = await cluster.api().submitJob({ spec });
          assert.equal(job?.state, JobState.ARMED, job?.reason);
          const id = job!.id;
          const delivered = async () => (await cluster.api().getJob({ id })).job?.counts?.delivered ?? 0n;
          await waitFor("hits from the writer thread", async () => (await delivered()) >= 10n);
          const helperPid = await tracerOf(writerTid);
          assert.notEqual(helperPid, 0);

          // The main thread waits for its vfork child: no ptrace stop reaches it until the child exits.
          target.send("vfork");
          await target.waitForLine(/^vforking$/);
          await waitFor("the main thread held in vfork (D)", async () => (await procState(target.pid)) === "D");
          const { agent, lapses, registrations } = agentEvents(cluster);
          const lapsedBefore = lapses();
          const registeredBefore = registrations();
          await cluster.stopController("SIGKILL");
          await waitFor("the agent's lease ran out", () => lapses() > lapsedBefore, 30_000);
          // Its disarm lets the writer go and leaves the held thread to be detached when it stops.
          await waitFor("the writer thread let go by the agent's disarm", async () => (await tracerOf(writerTid)) === 0, 30_000);
          assert.equal(await tracerOf(target.pid), helperPid, "the held thread is still to be detached");

          await cluster.startController();
          await waitFor("the agent registered with the controller started again", () => registrations() > registeredBefore, 30_000);
          const notExited = async () => {
            const t = (await cluster.api().getJob({ id })).job!.targets[0];
            assert.notEqual(t?.state, TargetState.EXITED, `a live process reported exited: ${t?.reason}`);
            return t;
          };
          await waitFor("the writer thread taken back by the re-arm (while the held thread still waits)", async () => (await notExited(), (await tracerOf(writerTid)) === helperPid), 30_000);
          target.send("release");
          assert.equal(await target.waitForLine(/^vforked /), "vforked 1");
          const rearmed = await waitFor("the target armed again", async () => {
            const t = await notExited();
            if (t?.state === TargetState.FAILED) assert.fail(`the re-arm failed: ${t.reason}\nagent:\n${agent.output.split("\n").slice(-20).join("\n")}`);
            // (Its reason moves on to the agent's progress reports.)
            return t?.state === TargetState.ARMED ? t : undefined;
          }, 30_000);
          await hitsAgainThenCancel(cluster, id, rearmed.counts?.delivered ?? 0n);
          await waitFor("every thread untraced after the cancel", async () => (await tracerOf(target.pid)) === 0 && (await tracerOf(writerTid)) === 0);
          assert.equal(target.child.exitCode, null, "the target runs on");
          target.send("quit");
          assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
        });

        test("a target that exits while the controller is stopped and then SIGKILLed keeps its final counts: the agent sends its last report again to the next controller", async () => {
          const N = 1000;
          const target = await startTarget("counter", ["--threads", "1", "--writes", String(N)]);
          targets.push(target);
          await target.waitForLine(/^ready /);
          const spec = create(JobSpecSchema, { watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], target: { pid: target.pid }, stackDepth: 0, backend: Backend.PERF });
          const { job } = await cluster.api().submitJob({ spec });
          assert.equal(job?.state, JobState.ARMED, job?.reason);
          const id = job!.id;
          const { registrations } = agentEvents(cluster);
          const registeredBefore = registrations();
          // The target's exit report reaches a controller that never reads it.
          const controllerPid = cluster.controller!.child.pid!;
          process.kill(controllerPid, "SIGSTOP");
          try {
            target.send("go");
            assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
          } finally {
            await cluster.stopController("SIGKILL");
          }
          await cluster.startController();
          await waitFor("the agent registered with the controller started again", () => registrations() > registeredBefore, 30_000);
          const done = await waitFor("the job completed with the target's final counts", async () => {
            const j = (await cluster.api().getJob({ id })).job!;
            return j.state === JobState.COMPLETED && j.targets[0]?.counts?.trapped === BigInt(N) ? j : undefined;
          }, 30_000);
          assert.equal(done.targets[0]!.state, TargetState.EXITED);
          assert.deepEqual([done.counts?.trapped, done.counts?.delivered, done.counts?.dropped], [BigInt(N), BigInt(N), 0n]);
        });
      }
    });
  }
});