// The job store on a real nats-server: small jobs are one value; a job with
// thousands of targets is spread over shards by host, a change on one host
// rewrites its shard and the job only, a fresh store reads back exactly what
// was written, and a change outside its declared hosts fails loudly.
// Finished jobs leave memory for an index entry, are read back when asked
// for, and retention deletes them with their shards, leaving nothing.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { connect, type KV, type NatsConnection } from "nats";
import { startNatsServer, type RunningNatsServer } from "../../cli/nats-server.js";
import { recentFinished } from "../../controller/job-cache.js";
import type { ListPosition } from "../../controller/job-index.js";
import { JobStore, inlineTargets, shardOf, shardsFor, targetsPerShard } from "../../controller/job-store.js";
import { NotLeaderError } from "../../controller/leader-election.js";
import { JobSchema, JobState, TargetSchema, TargetShardSchema, TargetState, jobBucket, type Job } from "../../proto/index.js";

describe("job store", () => {
  let dir: string;
  let nats: RunningNatsServer;
  let nc: NatsConnection;
  let kv: KV;

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-job-store-"));
    nats = await startNatsServer({ dataDir: path.join(dir, "nats") });
    nc = await connect({ servers: nats.url });
    await JobStore.open(nc.jetstream());
    kv = await nc.jetstream().views.kv(jobBucket);
  });

  after(async () => {
    await nc?.close();
    await nats?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  function job(id: string, hosts: number, perHost: number): Job {
    return create(JobSchema, {
      id,
      state: JobState.ARMED,
      targets: Array.from({ length: hosts * perHost }, (_, i) =>
        create(TargetSchema, { hostId: `host-${Math.floor(i / perHost)}`, pid: 1000 + (i % perHost), state: TargetState.ARMED, reason: "1/1 threads armed", counts: {} }),
      ),
    });
  }

  async function keysOf(id: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const k of await kv.keys()) if (k === id || k.startsWith(`${id}.`)) keys.push(k);
    return keys.sort();
  }

  const revision = async (key: string) => (await kv.get(key))?.revision ?? 0;

  test("a small job is one value; it moves to shards when late joiners make it big", async () => {
    const store = await JobStore.open(nc.jetstream());
    await store.create(job("small", 2, 2));
    assert.deepEqual(await keysOf("small"), ["small"]);
    await store.mutate("small", (j) => {
      for (let i = 0; i < inlineTargets; i++) j.targets.push(create(TargetSchema, { hostId: `late-${i}`, pid: 7, state: TargetState.ARMED }));
    }, Array.from({ length: inlineTargets }, (_, i) => `late-${i}`));
    const keys = await keysOf("small");
    assert.ok(keys.length > 2, `shards written: ${keys.join(", ")}`);
    assert.equal((await kv.get("small"))!.value.length < 200, true, "the job's own value no longer carries the targets");
    const fresh = await JobStore.open(nc.jetstream());
    await fresh.load();
    assert.equal(fresh.get("small")!.targets.length, 4 + inlineTargets);
  });

  test("a 40,000-target job fits, and a change on one target rewrites one small shard and the job only", async () => {
    const store = await JobStore.open(nc.jetstream());
    const big = job("big", 10_000, 4);
    assert.ok(toBinary(JobSchema, big).length > 1024 * 1024, "as one value it would exceed NATS' 1 MB payload");
    await store.create(big);
    const keys = await keysOf("big");
    const before = new Map(await Promise.all(keys.map(async (k) => [k, await revision(k)] as const)));

    await store.mutate("big", (j) => {
      const t = j.targets.find((x) => x.hostId === "host-42" && x.pid === 1001)!;
      t.state = TargetState.EXITED;
      t.reason = "process exited with code 0";
    }, ["host-42"]);
    const changed = [];
    for (const k of keys) if ((await revision(k)) !== before.get(k)) changed.push(k);
    assert.deepEqual(changed.sort(), ["big", `big.${shardOf("host-42", shardsFor(40_000))}`].sort());
    assert.equal(keys.length, 1 + shardsFor(40_000), "every shard is written");
    const shard = (await kv.get(`big.${shardOf("host-42", shardsFor(40_000))}`))!.value;
    assert.ok(shard.length < 16 * 1024, `the rewritten shard is small: ${shard.length} bytes for ~${targetsPerShard} targets`);

    const fresh = await JobStore.open(nc.jetstream());
    await fresh.load();
    const loaded = fresh.get("big")!;
    assert.equal(loaded.targets.length, 40_000);
    assert.equal(loaded.targets.find((x) => x.hostId === "host-42" && x.pid === 1001)!.state, TargetState.EXITED);
    assert.equal(loaded.targets.filter((x) => x.state === TargetState.ARMED).length, 39_999);
  });

  test("a change to a host outside the declared ones throws and writes nothing", async () => {
    const store = await JobStore.open(nc.jetstream());
    await store.create(job("scoped", 3, 1));
    const rev = await revision("scoped");
    await assert.rejects(
      store.mutate("scoped", (j) => {
        j.targets.find((x) => x.hostId === "host-2")!.state = TargetState.LOST;
      }, ["host-0"]),
      TypeError,
    );
    assert.equal(await revision("scoped"), rev);
    assert.equal(store.get("scoped")!.targets[2]!.state, TargetState.ARMED);
  });

  test("a big finished job keeps only its summary in memory; full() and a later change read the targets back", async () => {
    const store = await JobStore.open(nc.jetstream());
    await store.create(job("done", 400, 1));
    const ended = await store.mutate("done", (j) => {
      for (const t of j.targets) t.state = TargetState.COMPLETED;
      j.state = JobState.COMPLETED;
    });
    assert.equal(ended.targets.length, 400, "the writer gets the whole job");
    assert.equal(store.get("done")!.targets.length, 0, "memory keeps the summary");
    assert.equal(store.get("done")!.state, JobState.COMPLETED);
    assert.equal((await store.full("done"))!.targets.length, 400);
    // Late final counts of one target: the change sees every target.
    const counted = await store.mutate("done", (j) => {
      assert.equal(j.targets.length, 400);
      j.targets.find((t) => t.hostId === "host-7")!.counts = { $typeName: "fleetwatch.v1.HitCounts", trapped: 3n, delivered: 3n, suppressed: 0n, dropped: 0n, filtered: 0n };
    }, ["host-7"]);
    assert.equal(counted.targets.find((t) => t.hostId === "host-7")!.counts?.delivered, 3n);
    const fresh = await JobStore.open(nc.jetstream());
    await fresh.load();
    assert.equal(fresh.get("done"), undefined, "a loaded finished job is not in memory");
    assert.ok(fresh.has("done"), "but the index knows it");
    assert.equal((await fresh.summary("done"))!.targets.length, 0, "its record without the shards");
    assert.equal((await fresh.full("done"))!.targets.find((t) => t.hostId === "host-7")!.counts?.delivered, 3n);
  });
  test("a job stored with 64 shards before shard counts were recorded reads back whole, and is written the same way", async () => {
    const hosts = Array.from({ length: 300 }, (_, i) => `old-${i}`);
    const legacy = job("legacy", 300, 1);
    legacy.targets.forEach((t, i) => (t.hostId = hosts[i]!));
    const byShard = new Map<number, Job["targets"]>();
    for (const t of legacy.targets) byShard.set(shardOf(t.hostId, 64), [...(byShard.get(shardOf(t.hostId, 64)) ?? []), t]);
    for (const [n, targets] of byShard) await kv.create(`legacy.${n}`, toBinary(TargetShardSchema, create(TargetShardSchema, { targets })));
    await kv.create("legacy", toBinary(JobSchema, { ...legacy, targets: [] }));
    const store = await JobStore.open(nc.jetstream());
    await store.load();
    assert.equal(store.get("legacy")!.targets.length, 300);
    const host = hosts[7]!;
    const before = await revision(`legacy.${shardOf(host, 64)}`);
    await store.mutate("legacy", (j) => void (j.targets.find((t) => t.hostId === host)!.state = TargetState.LOST), [host]);
    assert.notEqual(await revision(`legacy.${shardOf(host, 64)}`), before, "its host's shard of the 64 was rewritten");
    const fresh = await JobStore.open(nc.jetstream());
    await fresh.load();
    assert.equal((await fresh.full("legacy"))!.targets.find((t) => t.hostId === host)!.state, TargetState.LOST);
  });

  /** A finished job record of `targets` targets on as many hosts, created at `createdUnixMs`. */
  function finished(id: string, createdUnixMs: number, targets = 1, state = JobState.COMPLETED): Job {
    return create(JobSchema, {
      id,
      state,
      createdUnixMs: BigInt(createdUnixMs),
      endedUnixMs: BigInt(createdUnixMs + 1_000),
      targets: Array.from({ length: targets }, (_, i) => create(TargetSchema, { hostId: `host-${i}`, pid: 1000, state: TargetState.COMPLETED, counts: {} })),
    });
  }

  /** Every page of the listing, `limit` at a time. */
  async function allPages(store: JobStore, limit: number, states?: ReadonlySet<JobState>): Promise<{ pages: Job[][]; totals: number[] }> {
    const pages: Job[][] = [];
    const totals: number[] = [];
    let after: ListPosition | undefined;
    do {
      const page = await store.list({ limit, states, after });
      pages.push(page.jobs);
      totals.push(page.total);
      after = page.next;
    } while (after);
    return { pages, totals };
  }

  test("a job that ends leaves memory but for the last few to end; the index knows every one and full() reads it back", async () => {
    const store = await JobStore.open(nc.jetstream());
    const before = store.countFinished();
    const n = recentFinished + 20;
    for (let i = 0; i < n; i++) {
      await store.create(create(JobSchema, { ...job(`end-${i}`, 1, 1), createdUnixMs: BigInt(1_000 + i) }));
      await store.mutate(`end-${i}`, (j) => {
        j.state = JobState.COMPLETED;
        j.endedUnixMs = BigInt(2_000 + i);
      });
    }
    assert.deepEqual(store.active().filter((j) => j.id.startsWith("end-")), [], "no finished job among the active ones");
    assert.equal(store.countFinished() - before, n);
    assert.equal(store.get("end-0"), undefined, "the first to end is out of memory");
    assert.equal(store.get(`end-${n - 1}`)?.state, JobState.COMPLETED, "the last to end is kept whole");
    assert.ok(store.has("end-0"));
    assert.equal((await store.full("end-0"))?.targets.length, 1);
    assert.equal(store.has("end-never"), false);
    assert.equal(await store.full("end-never"), undefined);
    assert.equal(await store.summary("end-never"), undefined);
  });

  test("a load reads each job once: active ones whole with their shards, finished ones only indexed; pages list each job once, newest first", async () => {
    const store = await JobStore.open(nc.jetstream());
    await store.create(create(JobSchema, { ...job("ld-active-big", 100, 4), createdUnixMs: 5_000n }));
    await store.create(create(JobSchema, { ...job("ld-active", 1, 1), createdUnixMs: 5_001n, state: JobState.PENDING }));
    await store.create(finished("ld-fin-big", 5_002, 300));
    for (let i = 0; i < 30; i++) await store.create(finished(`ld-fin-${i}`, 4_000 + i, 1, i % 3 === 0 ? JobState.CANCELLED : JobState.COMPLETED));

    const fresh = await JobStore.open(nc.jetstream());
    const active = await fresh.load();
    const ids = new Set(active.map((j) => j.id));
    assert.ok(ids.has("ld-active-big") && ids.has("ld-active"), "the active jobs are returned");
    assert.equal([...ids].filter((id) => id.startsWith("ld-fin")).length, 0, "no finished job is");
    assert.equal(fresh.get("ld-active-big")!.targets.length, 400, "a sharded active job has its targets");
    assert.equal(fresh.get("ld-fin-big"), undefined);
    assert.equal(fresh.get("ld-fin-3"), undefined);
    assert.ok(fresh.has("ld-fin-big") && fresh.has("ld-fin-3"));

    const heads: string[] = [];
    for await (const k of await kv.keys()) if (!k.includes(".")) heads.push(k);
    const { pages, totals } = await allPages(fresh, 7);
    const listed = pages.flat();
    assert.deepEqual(new Set(totals), new Set([heads.length]), "every page says the same total");
    assert.equal(listed.length, heads.length, "every job once");
    assert.deepEqual(new Set(listed.map((j) => j.id)), new Set(heads));
    assert.ok(pages.slice(0, -1).every((p) => p.length === 7), "full pages but the last");
    for (let i = 1; i < listed.length; i++) {
      const [a, b] = [listed[i - 1]!, listed[i]!];
      assert.ok(a.createdUnixMs > b.createdUnixMs || (a.createdUnixMs === b.createdUnixMs && a.id < b.id), `${a.id} before ${b.id}`);
    }
    assert.equal(listed.find((j) => j.id === "ld-fin-big")!.targets.length, 0, "a big finished job is listed without its targets");
    assert.equal(listed.find((j) => j.id === "ld-active-big")!.targets.length, 400);

    const cancelled = await allPages(fresh, 4, new Set([JobState.CANCELLED]));
    assert.deepEqual(cancelled.pages.flat().map((j) => j.id), ["ld-fin-27", "ld-fin-24", "ld-fin-21", "ld-fin-18", "ld-fin-15", "ld-fin-12", "ld-fin-9", "ld-fin-6", "ld-fin-3", "ld-fin-0"]);
    assert.deepEqual(cancelled.totals, [10, 10, 10]);
  });

  test("retention deletes a finished job with its shards and the stream keeps nothing of it; a deposed leader deletes nothing", async () => {
    const jsm = await nc.jetstreamManager();
    const stream = `KV_${jobBucket}`;
    const subjects = async (filter: string) => Object.keys((await jsm.streams.info(stream, { subjects_filter: filter })).state.subjects ?? {});
    const store = await JobStore.open(nc.jetstream());
    await store.create(finished("gone-big", 6_000, 300));
    await store.create(finished("gone-small", 6_001));
    const shards = (await keysOf("gone-big")).length - 1;
    assert.ok(shards > 1, "sharded");
    assert.equal((await subjects(`$KV.${jobBucket}.gone-big.>`)).length, shards, "a subject per shard in the stream");
    const entries = store.expiredFinished(Date.now(), 1, 1).filter((e) => e.id.startsWith("gone-"));
    assert.deepEqual(entries.map((e) => [e.id, e.sharded]), [["gone-big", true], ["gone-small", false]]);

    const deposed = await JobStore.open(nc.jetstream(), () => false);
    await deposed.load();
    await assert.rejects(deposed.deleteFinished(entries), NotLeaderError);
    assert.ok((await keysOf("gone-big")).length > 1 && (await keysOf("gone-small")).length === 1, "nothing deleted");

    assert.equal(await store.deleteFinished(entries), 2);
    assert.deepEqual([await keysOf("gone-big"), await keysOf("gone-small")], [[], []]);
    for (const id of ["gone-big", "gone-small"]) assert.deepEqual(await subjects(`$KV.${jobBucket}.${id}`), [], `no delete marker left for ${id}`);
    assert.deepEqual(await subjects(`$KV.${jobBucket}.gone-big.>`), [], "nor for the shards");
    assert.equal(store.has("gone-big"), false);
    assert.equal(await store.full("gone-small"), undefined);
    const fresh = await JobStore.open(nc.jetstream());
    await fresh.load();
    assert.equal(fresh.has("gone-big") || fresh.has("gone-small"), false);
  });
});
