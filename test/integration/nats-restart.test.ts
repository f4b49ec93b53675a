// nats-server restarted (and killed) in the middle of a hot stream of hits:
// the agent resends what was not acknowledged (JetStream stores each batch
// once, by its message id) or counts it dropped; at the end trapped =
// delivered + dropped exactly, the stream holds every delivered hit once,
// and the watched program never noticed.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Backend, JobSpecSchema, JobState, TargetState, WatchMode, type Job } from "../../proto/index.js";
import { clusterSuite } from "../support/cluster-suite.js";
import type { Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

describe("nats-server restarts", () => {
  const suite = clusterSuite();

  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    test(`${signal} to nats-server during a hot stream: every hit delivered once or counted dropped`, async () => {
      const writes = 60_000;
      const target = await suite.target("counter", ["--writes", String(writes)]);
      await target.waitForLine(/^ready /);
      const spec = create(JobSpecSchema, { watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], target: { pid: target.pid }, stackDepth: 0, backend: Backend.PTRACE });
      const { job } = await suite.cluster.api().submitJob({ spec });
      assert.equal(job?.state, JobState.ARMED, job?.reason);
      const id = job!.id;
      const get = async (): Promise<Job> => (await suite.cluster.api().getJob({ id })).job!;

      target.send("go");
      // A wait that times out says what the target's state was, not only that hits did not come.
      await waitFor("hits flowing", async () => {
        const j = await get();
        assert.equal(j.targets[0]?.state, TargetState.ARMED, `target ${TargetState[j.targets[0]?.state ?? 0]}: ${j.targets[0]?.reason}; delivered ${j.counts?.delivered}`);
        return (j.counts?.delivered ?? 0n) > 2_000n;
      }, 30_000);
      await suite.cluster.restartNats(signal);
      await target.waitForLine(/^done/, 120_000);
      assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });

      // Every trap settled: delivered or dropped, nothing in between.
      const settled = await waitFor("the job's counts settle", async () => {
        const j = await get();
        const c = j.counts!;
        return j.state === JobState.COMPLETED && c.trapped === BigInt(writes) && c.delivered + c.dropped === c.trapped ? j : undefined;
      }, 120_000);
      const c = settled.counts!;
      assert.equal(c.suppressed + c.filtered, 0n);

      // The stream holds each delivered hit exactly once.
      const replay = await suite.cluster.cli(["events", id, "-o", "json"], { timeoutMs: 120_000 });
      assert.equal(replay.code, 0, replay.stderr);
      const sequences = replay.stdout.trim().split("\n").map((line) => BigInt((JSON.parse(line) as { sequence: string }).sequence));
      assert.equal(new Set(sequences).size, sequences.length, "no hit stored twice");
      assert.equal(BigInt(sequences.length), c.delivered);
      // Resent batches land after later ones: the sequence numbers put them back in order, none missing.
      if (c.dropped === 0n) assert.deepEqual([...sequences].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), sequences.map((_, i) => BigInt(i + 1)));
    });
  }
});
