// Finished jobs out of the controller's memory, on a real nats-server,
// controller and agent: 251 job records in the store (one with hundreds of
// targets in shards) and 130 jobs that end while the controller runs. Pages
// of `jobs ls` list each once, newest first; get, cancel and watch of a job
// that left memory answer from the store; a restart loads the index; and
// retention deletes the oldest, then every job past its time. Nothing is
// armed (the submitted jobs wait for a process that never starts), so this
// runs on any host, traps or not.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { connect } from "nats";
import { recentFinished } from "../../controller/job-cache.js";
import { JobSchema, JobState, RpcError, TargetState, WatchMode, jobBucket, type Job } from "../../proto/index.js";
import { Cluster } from "../support/cluster.js";
import { scrape } from "../support/metrics.js";
import { storeJobs } from "../support/stored-job.js";
import { waitFor } from "../support/wait.js";

const stored = 250;
/** More than memory keeps whole after they end. */
const live = recentFinished + 2;
const bigTargets = 300;
const notFound = (id: string) => `no job '${id}': list jobs with \`fleetwatch jobs ls\``;

/** Listing order: newer first, then by id. */
function byListing(a: { id: string; created: bigint }, b: { id: string; created: bigint }): number {
  return a.created === b.created ? (a.id < b.id ? -1 : 1) : a.created > b.created ? -1 : 1;
}

describe("finished jobs", () => {
  let cluster: Cluster;
  /** Every job in the store, in listing order once the tests have submitted theirs. */
  const expected: Array<{ id: string; created: bigint; state: JobState }> = [];
  const hoursAgo = Date.now() - 3 * 3_600_000;

  before(async () => {
    cluster = await Cluster.start({ metrics: true });
    await cluster.stopController();
    // Finished hours ago; three at a time share a creation time; every fourth cancelled, every tenth failed.
    const jobs: Job[] = [];
    for (let i = 0; i < stored; i++) {
      const state = i % 10 === 0 ? JobState.FAILED : i % 4 === 0 ? JobState.CANCELLED : JobState.COMPLETED;
      const created = BigInt(hoursAgo + Math.floor(i / 3) * 1_000);
      jobs.push(create(JobSchema, { id: `old-${String(i).padStart(3, "0")}`, state, reason: "stored", createdUnixMs: created, endedUnixMs: created + 500n, counts: {}, targets: [{ hostId: "h1", pid: 100 + i, state: TargetState.COMPLETED, counts: {} }] }));
    }
    const bigCreated = BigInt(hoursAgo - 60_000);
    jobs.push(
      create(JobSchema, {
        id: "old-big",
        state: JobState.COMPLETED,
        reason: "stored",
        createdUnixMs: bigCreated,
        endedUnixMs: bigCreated + 500n,
        counts: {},
        targets: Array.from({ length: bigTargets }, (_, i) => ({ hostId: `h${i}`, pid: 7, state: TargetState.COMPLETED, counts: {} })),
      }),
    );
    await storeJobs(cluster.natsUrl, jobs);
    expected.push(...jobs.map((j) => ({ id: j.id, created: j.createdUnixMs, state: j.state })));
    await cluster.startController();
    await cluster.waitForAgent("host-a");
  });

  after(async () => {
    await cluster?.stop();
  });

  /** Every page of `jobs ls -o json` with these flags, following the next page token. */
  async function pages(flags: string[]): Promise<Array<{ jobs?: Array<{ id: string; state: string }>; nextPageToken?: string; total?: number }>> {
    const out = [];
    let token: string | undefined;
    do {
      const result = await cluster.cli(["jobs", "ls", ...flags, ...(token ? ["--continue", token] : []), "-o", "json"]);
      assert.equal(result.code, 0, result.stderr);
      const page = JSON.parse(result.stdout) as { jobs?: Array<{ id: string; state: string }>; nextPageToken?: string; total?: number };
      out.push(page);
      token = page.nextPageToken;
    } while (token);
    return out;
  }

  test("jobs that end while the controller runs leave memory; get, cancel and watch of one answer from the store; an unknown id is NOT_FOUND", async () => {
    const api = cluster.api();
    for (let i = 0; i < live; i++) {
      // No process has this name: the job waits for one, pending, then is cancelled.
      const spec = { target: { hostIds: ["host-a"], comm: `fw-none-${i}` }, watches: [{ location: { case: "symbol" as const, value: "counter" }, length: 8, mode: WatchMode.WRITE }], queueTimeoutMs: 600_000n };
      const { job } = await api.submitJob({ spec }, { deadlineMs: 10_000 });
      assert.equal(job?.state, JobState.PENDING);
      const { job: cancelled } = await api.cancelJob({ id: job!.id }, { deadlineMs: 10_000 });
      assert.equal(cancelled?.state, JobState.CANCELLED);
      expected.push({ id: job!.id, created: job!.createdUnixMs, state: JobState.CANCELLED });
    }
    const first = expected[stored + 1]!.id;

    const get = await cluster.cli(["jobs", "get", first]);
    assert.equal(get.code, 0, get.stderr);
    assert.match(get.stdout, new RegExp(`^job\\s+${first}\\n`));
    assert.match(get.stdout, /^state\s+cancelled \(cancelled by user\)$/m);
    const again = await api.cancelJob({ id: first }, { deadlineMs: 10_000 });
    assert.deepEqual([again.job?.id, again.job?.state, again.job?.reason], [first, JobState.CANCELLED, "cancelled by user"], "a cancel of a finished job answers its final state");
    const watched = [];
    for await (const r of api.watchJob({ id: first }, { deadlineMs: 10_000 })) watched.push(r.job?.state);
    assert.deepEqual(watched, [JobState.CANCELLED], "a watch of a finished job sends its final state and ends");
    const big = await api.getJob({ id: "old-big" }, { deadlineMs: 10_000 });
    assert.equal(big.job?.targets.length, bigTargets, "GetJob reads every target back");

    for (const call of [() => api.getJob({ id: "nope" }), () => api.cancelJob({ id: "nope" }), async () => { for await (const r of api.watchJob({ id: "nope" })) void r; }]) {
      await assert.rejects(call(), (err: unknown) => err instanceof RpcError && err.code === status.NOT_FOUND && err.details === notFound("nope"));
    }
    const missing = await cluster.cli(["jobs", "get", "nope"]);
    assert.deepEqual([missing.code, missing.stderr], [2, `fleetwatch: ${notFound("nope")}\n`]);
  });

  test("jobs ls pages through every job once, newest first; --state filters; bad input is exit 3 saying what to do", async () => {
    expected.sort(byListing);
    const all = await pages(["--limit", "100"]);
    assert.deepEqual(all.map((p) => p.jobs?.length ?? 0), [100, 100, 100, expected.length - 300]);
    assert.deepEqual(new Set(all.map((p) => p.total)), new Set([expected.length]));
    assert.deepEqual(all.flatMap((p) => p.jobs?.map((j) => j.id) ?? []), expected.map((e) => e.id));
    const bigListed = all.flatMap((p) => p.jobs ?? []).find((j) => j.id === "old-big") as { targets?: unknown[] } | undefined;
    assert.equal(bigListed?.targets, undefined, "a big finished job is listed without its targets");

    const cancelled = await pages(["--state", "cancelled,failed", "--limit", "60"]);
    const want = expected.filter((e) => e.state === JobState.CANCELLED || e.state === JobState.FAILED).map((e) => e.id);
    assert.deepEqual(cancelled.flatMap((p) => p.jobs?.map((j) => j.id) ?? []), want);
    assert.deepEqual(new Set(cancelled.map((p) => p.total)), new Set([want.length]));

    const table = await cluster.cli(["jobs", "ls", "--limit", "100", "--state", "completed"]);
    assert.equal(table.code, 0, table.stderr);
    assert.equal(table.stdout.trim().split("\n").length, 101, "a header and 100 rows");
    const completed = expected.filter((e) => e.state === JobState.COMPLETED).length;
    const hint = new RegExp(`^100 of ${completed} jobs shown; the next page: fleetwatch jobs ls --limit 100 --state completed --continue (\\S+)\\n$`).exec(table.stderr);
    assert.ok(hint, table.stderr);
    const next = await cluster.cli(["jobs", "ls", "--limit", "100", "--state", "completed", "--continue", hint[1]!]);
    assert.equal(next.code, 0, next.stderr);
    assert.match(next.stdout, new RegExp(`^${expected.filter((e) => e.state === JobState.COMPLETED)[100]!.id}\\s`, "m"));

    const legacy = await cluster.api().listJobs({}, { deadlineMs: 10_000 });
    assert.deepEqual([legacy.jobs.length, legacy.total, legacy.jobs[0]?.id], [100, expected.length, expected[0]!.id], "an empty request (an older client) gets the newest 100");

    const bad: Array<[string[], RegExp]> = [
      [["--state", "finished"], /^fleetwatch: --state 'finished' is not a job state: use pending, armed, degraded, completed, cancelled, failed/],
      [["--limit", "5000"], /^fleetwatch: limit 5000 is more than 1000 jobs per page: ask for at most 1000 and continue with the next page token\n$/],
      [["--continue", "not-a-token"], /^fleetwatch: page token 'not-a-token' is not one this controller gave: pass the next page token of the previous page as it was, or none for the newest jobs\n$/],
    ];
    for (const [flags, message] of bad) {
      const result = await cluster.cli(["jobs", "ls", ...flags]);
      assert.deepEqual([result.code, result.stdout], [3, ""], flags.join(" "));
      assert.match(result.stderr, message);
    }
  });

  test("a restarted controller loads the index: the same pages, get of a job with its targets, and job gauges from the index", async () => {
    const before = await pages(["--limit", "1000"]);
    await cluster.stopController();
    await cluster.startController();
    assert.match(cluster.controller!.output, new RegExp(`controller: loaded ${expected.length} job\\(s\\), 0 active`));
    assert.deepEqual(await pages(["--limit", "1000"]), before);
    const big = await cluster.cli(["jobs", "get", "old-big", "-o", "json"]);
    assert.equal(big.code, 0, big.stderr);
    assert.equal((JSON.parse(big.stdout) as { targets: unknown[] }).targets.length, bigTargets);
    const metrics = await scrape(cluster.controllerMetricsUrl);
    for (const state of [JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED]) {
      assert.equal(metrics.get("fleetwatch_controller_jobs", { state: JobState[state]!.toLowerCase() }), expected.filter((e) => e.state === state).length, JobState[state]);
    }
    assert.equal(metrics.get("fleetwatch_controller_jobs", { state: "armed" }), 0);
  });

  test("retention: the oldest beyond --keep-finished-count go as the controller starts, then every job past --keep-finished, shards too", async () => {
    const nc = await connect({ servers: cluster.natsUrl });
    try {
      const kv = await nc.jetstream().views.kv(jobBucket);
      /** The keys of one job (itself and its shards), or every key. */
      const keys = async (id?: string) => {
        const found: string[] = [];
        for await (const k of await kv.keys()) if (id === undefined || k === id || k.startsWith(`${id}.`)) found.push(k);
        return found;
      };
      assert.ok((await keys("old-big")).length > 1, "old-big is in shards");

      await cluster.stopController();
      await cluster.startController(["--keep-finished-count", "100"]);
      const total = async () => (await cluster.api().listJobs({ limit: 1 }, { deadlineMs: 10_000 })).total;
      await waitFor("100 finished jobs kept", async () => (await total()) === 100);
      // The jobs that ended last are kept: those that ended while the controller ran.
      const kept = (await pages(["--limit", "1000"])).flatMap((p) => p.jobs?.map((j) => j.id) ?? []);
      assert.deepEqual(kept.filter((id) => id.startsWith("old-")), []);
      assert.deepEqual(await keys("old-big"), [], "old-big and its shards are deleted");
      const gone = await cluster.cli(["jobs", "get", "old-big"]);
      assert.deepEqual([gone.code, gone.stderr], [2, `fleetwatch: ${notFound("old-big")}\n`]);
      assert.match(cluster.controller!.output, /retention: deleted \d+ finished job\(s\) that ended over 24h ago or beyond the 100 kept/);

      await cluster.stopController();
      await cluster.startController(["--keep-finished", "1s"]);
      await waitFor("every finished job deleted", async () => (await total()) === 0);
      assert.deepEqual(await keys(), [], "the bucket is empty");
      const empty = await cluster.cli(["jobs", "ls"]);
      assert.deepEqual([empty.code, empty.stdout, empty.stderr], [0, "no jobs\n", ""]);
    } finally {
      await nc.close();
    }
  });
});
