// Chaos: while four threads write a watched global as fast as they can, the
// agent is SIGKILLed or the helper gets SIGTERM, SIGINT, SIGHUP or a crash
// signal at a random moment. Every target must still run to its normal exit
// with its own output. Rounds: FLEETWATCH_CHAOS_ROUNDS (default 50); faults:
// FLEETWATCH_CHAOS_FAULTS, comma-separated (e.g. "helper SIGKILL", which
// ptrace cannot survive, shows that the test catches a harmed target). The
// watches are ptrace: perf needs no cleanup to survive any of these, and
// the helper's own tests SIGKILL it under perf watches.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { connect, type NatsConnection } from "nats";
import { create, fromBinary } from "@bufbuild/protobuf";
import { Backend, HitBatchSchema, JobSpecSchema, JobState, WatchMode, jobEventFilter, type Job } from "../../proto/index.js";
import { Cluster } from "../support/cluster.js";
import { buildFixtures, startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

const rounds = Number(process.env.FLEETWATCH_CHAOS_ROUNDS ?? 50);
type Fault = `agent SIGKILL` | `helper SIG${string}`;
const faults: Fault[] = process.env.FLEETWATCH_CHAOS_FAULTS
  ? (process.env.FLEETWATCH_CHAOS_FAULTS.split(",").map((f) => f.trim()) as Fault[])
  : ["agent SIGKILL", "helper SIGTERM", "helper SIGINT", "helper SIGHUP", "helper SIGSEGV", "helper SIGABRT"];

/** The helper process the agent runs: its child named fleetwatch-helpe(r). */
async function helperPidOf(agentPid: number): Promise<number | undefined> {
  const children = await readFile(`/proc/${agentPid}/task/${agentPid}/children`, "utf8").catch(() => "");
  for (const pid of children.trim().split(/\s+/).filter(Boolean).map(Number)) {
    const comm = await readFile(`/proc/${pid}/comm`, "utf8").catch(() => "");
    if (comm.startsWith("fleetwatch-help")) return pid;
  }
  return undefined;
}

describe("chaos", () => {
  let cluster: Cluster;
  let nc: NatsConnection;
  const targets: Target[] = [];

  before(async () => {
    await buildFixtures();
    cluster = await Cluster.start();
    nc = await connect({ servers: cluster.natsUrl });
  });

  after(async () => {
    for (const t of targets) await t.kill();
    await nc?.close();
    await cluster?.stop();
  });

  /** Submits a watch on the target, retrying while the agent restarts its helper. */
  async function arm(pid: number): Promise<Job> {
    const spec = create(JobSpecSchema, { watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], target: { pid }, stackDepth: 0, backend: Backend.PTRACE });
    return waitFor(`job armed on pid ${pid}`, async () => {
      await cluster.waitForAgent("host-a");
      const { job } = await cluster.api().submitJob({ spec });
      return job?.state === JobState.ARMED ? job : undefined;
    }, 20_000, 50);
  }

  test(`every target survives ${rounds} faults injected at random moments of hot writes`, async () => {
    const seen = new Map<Fault, number>();
    // Rounds whose fault landed while the target was still writing under the watch.
    let hotRounds = 0;
    for (let round = 0; round < rounds; round++) {
      const fault = faults[round % faults.length]!;
      const target = await startTarget("counter", ["--threads", "4", "--writes", "200000"]);
      targets.push(target);
      const job = await arm(target.pid);

      // The random moment: after k hits have reached NATS, k in [1, 2000].
      const k = 1 + Math.floor(Math.random() * 2000);
      let received = 0;
      const sub = nc.subscribe(jobEventFilter(job.id));
      const reached = (async () => {
        for await (const message of sub) {
          received += fromBinary(HitBatchSchema, message.data).hits.length;
          if (received >= k) return;
        }
      })();
      target.send("go");
      await Promise.race([reached, target.waitForExit(60_000).then(() => undefined)]);
      sub.unsubscribe();
      if (target.child.exitCode === null) hotRounds++;

      const agent = cluster.agents.get("host-a")!;
      if (fault === "agent SIGKILL") {
        agent.child.kill("SIGKILL");
        await agent.exited;
      } else {
        const helper = await helperPidOf(agent.child.pid!);
        assert.ok(helper, `round ${round}: the agent's helper is running`);
        process.kill(helper, fault.slice("helper ".length) as NodeJS.Signals);
      }

      const done = await target.waitForLine(/^done/, 60_000).catch((err: Error) => {
        throw new Error(`round ${round} (${fault}) after ${received} hits: ${err.message}`);
      });
      assert.match(done, /done/);
      assert.deepEqual(await target.waitForExit(60_000), { code: 0, signal: null }, `round ${round} (${fault}) after ${received} hits`);
      seen.set(fault, (seen.get(fault) ?? 0) + 1);
      if (fault === "agent SIGKILL") await cluster.startAgent("host-a");
    }
    assert.equal([...seen.values()].reduce((a, b) => a + b, 0), rounds);
    // k hits of 800,000 writes: the fault should practically always land mid-write.
    assert.ok(hotRounds >= rounds * 0.9, `only ${hotRounds} of ${rounds} faults landed while the target was writing`);
  });
});
