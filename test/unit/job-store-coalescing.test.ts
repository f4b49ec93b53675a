// Writes of the job store coalesced: changes to one job asked for together
// (or while its previous write is in flight) are applied in order and
// written once with compare-and-set; a change that throws fails alone; a lost
// race re-applies them all on what won; a deposed leader writes nothing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary } from "@bufbuild/protobuf";
import type { JetStreamClient } from "nats";
import { JobStore } from "../../controller/job-store.js";
import { NotLeaderError } from "../../controller/leader-election.js";
import { JobSchema, JobState, SlotAssignmentSchema, TargetState } from "../../proto/index.js";

/** A KV bucket in memory with JetStream's revisions and compare-and-set, counting writes. */
class MemoryKv {
  private readonly values = new Map<string, { value: Uint8Array; revision: number }>();
  private revision = 0;
  creates = 0;
  updates = 0;
  /** Updates to fail with a lost race before applying any. */
  loseRaces = 0;
  /** Called before each update lands (to let a test act while a write is in flight). */
  beforeUpdate: () => Promise<void> = async () => {};

  async get(key: string) {
    const v = this.values.get(key);
    return v ? { operation: "PUT", value: v.value, revision: v.revision } : null;
  }
  async create(key: string, value: Uint8Array): Promise<number> {
    if (this.values.has(key)) throw new Error("wrong last sequence: key exists");
    this.creates++;
    this.values.set(key, { value, revision: ++this.revision });
    return this.revision;
  }
  async update(key: string, value: Uint8Array, revision: number): Promise<number> {
    await this.beforeUpdate();
    if (this.loseRaces > 0) {
      this.loseRaces--;
      // Someone else wrote the key meanwhile.
      const held = this.values.get(key)!;
      this.values.set(key, { value: held.value, revision: ++this.revision });
      throw new Error(`wrong last sequence: ${revision}`);
    }
    if (this.values.get(key)?.revision !== revision) throw new Error(`wrong last sequence: ${revision}`);
    this.updates++;
    this.values.set(key, { value, revision: ++this.revision });
    return this.revision;
  }
  async keys() {
    const keys = [...this.values.keys()];
    return (async function* () {
      yield* keys;
    })();
  }
  stored(key: string) {
    return fromBinary(JobSchema, this.values.get(key)!.value);
  }
}

async function storeWith(kv: MemoryKv, fence: () => boolean = () => true) {
  let conflicts = 0;
  const js = { views: { kv: async () => kv } } as unknown as JetStreamClient;
  const store = await JobStore.open(js, fence, () => conflicts++);
  await store.create(
    create(JobSchema, {
      id: "j1",
      state: JobState.PENDING,
      targets: [
        { hostId: "h1", pid: 1, state: TargetState.PENDING, counts: {} },
        { hostId: "h2", pid: 2, state: TargetState.PENDING, counts: {} },
      ],
    }),
  );
  return { store, conflicts: () => conflicts };
}

test("job store - changes asked for together are applied in order and written once", async () => {
  const kv = new MemoryKv();
  const { store } = await storeWith(kv);
  const results = await Promise.all(Array.from({ length: 10 }, (_, i) => store.mutate("j1", (j) => void (j.reason += `${i},`), [])));
  assert.equal(kv.updates, 1);
  assert.equal(kv.stored("j1").reason, "0,1,2,3,4,5,6,7,8,9,");
  for (const job of results) assert.equal(job.reason, "0,1,2,3,4,5,6,7,8,9,", "every caller gets the job as written");
  assert.equal(store.get("j1")?.reason, "0,1,2,3,4,5,6,7,8,9,");
});

test("job store - changes asked for while a write is in flight go in the next write, after it", async () => {
  const kv = new MemoryKv();
  const { store } = await storeWith(kv);
  let release!: () => void;
  const inFlight = new Promise<void>((resolve) => (release = resolve));
  let entered!: () => void;
  const writing = new Promise<void>((resolve) => (entered = resolve));
  kv.beforeUpdate = async () => {
    kv.beforeUpdate = async () => {};
    entered();
    await inFlight;
  };
  const first = store.mutate("j1", (j) => void (j.reason = "first"), []);
  await writing;
  const later = [store.mutate("j1", (j) => void (j.reason += " second"), []), store.mutate("j1", (j) => void (j.reason += " third"), [])];
  release();
  assert.equal((await first).reason, "first");
  const [second, third] = await Promise.all(later);
  assert.equal(second.reason, "first second third");
  assert.equal(third.reason, "first second third");
  assert.equal(kv.updates, 2);
});

test("job store - a change that throws fails alone, and one outside its hosts cannot touch their targets", async () => {
  const kv = new MemoryKv();
  const { store } = await storeWith(kv);
  const ok = store.mutate("j1", (j) => void (j.targets[0]!.state = TargetState.ARMING), ["h1"]);
  const bad = store.mutate("j1", () => {
    throw new Error("no such target");
  });
  const outOfScope = store.mutate("j1", (j) => void (j.targets[1]!.state = TargetState.FAILED), ["h1"]);
  const okToo = store.mutate("j1", (j) => void (j.reason = "placed"), []);
  await assert.rejects(bad, /no such target/);
  await assert.rejects(outOfScope, TypeError, "h2's target is frozen in a change scoped to h1");
  const job = await ok;
  assert.equal((await okToo).reason, "placed");
  assert.deepEqual(job.targets.map((t) => t.state), [TargetState.ARMING, TargetState.PENDING]);
  assert.deepEqual(kv.stored("j1").targets.map((t) => t.state), [TargetState.ARMING, TargetState.PENDING]);
  assert.equal(kv.updates, 1);
});

test("job store - a change replaces a target's counts, slots and chunks: editing them in place throws, and nothing is written of it", async () => {
  const kv = new MemoryKv();
  const { store } = await storeWith(kv);
  const edits = [
    store.mutate("j1", (j) => void (j.targets[0]!.counts!.trapped = 5n), ["h1"]),
    store.mutate("j1", (j) => void j.targets[0]!.slots.push(create(SlotAssignmentSchema, { dr: 0 })), ["h1"]),
  ];
  for (const edit of edits) await assert.rejects(edit, TypeError);
  const replaced = await store.mutate("j1", (j) => void (j.targets[0]!.counts = { ...j.targets[0]!.counts!, trapped: 5n }), ["h1"]);
  assert.deepEqual(replaced.targets.map((t) => t.counts?.trapped ?? 0n), [5n, 0n]);
  assert.deepEqual(kv.stored("j1").targets.map((t) => t.counts?.trapped ?? 0n), [5n, 0n]);
  assert.equal(kv.updates, 1);
  assert.ok(Object.isFrozen(replaced.targets[0]!.counts), "what a change put in is frozen once written");
});

test("job store - a lost race re-reads and applies every coalesced change again on what won", async () => {
  const kv = new MemoryKv();
  const { store, conflicts } = await storeWith(kv);
  kv.loseRaces = 1;
  let applied = 0;
  const jobs = await Promise.all([
    store.mutate("j1", (j) => {
      applied++;
      const t = j.targets[0]!;
      t.counts = { ...t.counts!, trapped: t.counts!.trapped + 1n };
    }, ["h1"]),
    store.mutate("j1", (j) => {
      const t = j.targets[1]!;
      t.counts = { ...t.counts!, trapped: t.counts!.trapped + 2n };
    }, ["h2"]),
  ]);
  assert.equal(conflicts(), 1);
  assert.equal(applied, 2, "applied once per attempt");
  assert.deepEqual(jobs[0]!.targets.map((t) => t.counts?.trapped), [1n, 2n]);
  assert.deepEqual(kv.stored("j1").targets.map((t) => t.counts?.trapped), [1n, 2n]);
});

test("job store - a controller whose term ended writes none of its coalesced changes", async () => {
  const kv = new MemoryKv();
  let leading = true;
  const { store } = await storeWith(kv, () => leading);
  leading = false;
  const results = await Promise.allSettled([store.mutate("j1", (j) => void (j.reason = "a"), []), store.mutate("j1", (j) => void (j.reason = "b"), [])]);
  for (const r of results) assert.ok(r.status === "rejected" && r.reason instanceof NotLeaderError);
  assert.equal(kv.updates, 0);
  assert.equal(kv.stored("j1").reason, "");
});

/** A new job with two targets, as a submit stages it. */
const newJob = (id: string, targets = 2) =>
  create(JobSchema, { id, state: JobState.PENDING, targets: Array.from({ length: targets }, (_, i) => ({ hostId: `h${i}`, pid: 1, state: TargetState.ARMING, counts: {} })) });

test("job store - a staged job is in memory only until its first change, which creates it with that change in one write", async () => {
  const kv = new MemoryKv();
  const { store } = await storeWith(kv);
  const writesBefore = kv.creates;
  await store.stage(newJob("j2"));
  assert.equal(kv.creates, writesBefore, "nothing written yet");
  assert.equal(store.isStaged("j2"), true);
  assert.equal(store.get("j2")?.targets[0]?.state, TargetState.ARMING);
  assert.ok(store.active().some((j) => j.id === "j2"));
  const [armed, reported] = await Promise.all([
    store.mutate("j2", (j) => {
      for (const t of j.targets) t.state = TargetState.ARMED;
      j.state = JobState.ARMED;
    }),
    store.mutate("j2", (j) => void (j.targets[0]!.counts = { ...j.targets[0]!.counts!, trapped: 3n }), ["h0"]),
  ]);
  assert.equal(kv.creates, writesBefore + 1, "one create");
  assert.equal(kv.updates, 0);
  assert.equal(store.isStaged("j2"), false);
  assert.equal(armed.state, JobState.ARMED);
  assert.equal(reported.targets[0]!.counts!.trapped, 3n);
  const stored = kv.stored("j2");
  assert.equal(stored.state, JobState.ARMED);
  assert.deepEqual(stored.targets.map((t) => [t.state, t.counts?.trapped]), [[TargetState.ARMED, 3n], [TargetState.ARMED, 0n]]);
  // Written now: the next change is an update.
  await store.mutate("j2", (j) => void (j.reason = "later"));
  assert.equal(kv.updates, 1);
});

test("job store - a staged job whose first write fails (deposed, or its id taken) is dropped: it was never stored", async () => {
  const kv = new MemoryKv();
  let leading = true;
  const { store } = await storeWith(kv, () => leading);
  await store.stage(newJob("j3"));
  leading = false;
  await assert.rejects(store.mutate("j3", (j) => void (j.state = JobState.ARMED)), NotLeaderError);
  assert.equal(store.has("j3"), false);
  assert.equal(store.get("j3"), undefined);
  assert.equal(await kv.get("j3"), null, "nothing written");
  await assert.rejects(store.stage(newJob("j4")), NotLeaderError, "a deposed leader stages nothing");
  assert.equal(store.has("j4"), false);

  leading = true;
  await kv.create("j5", new Uint8Array([8, 1]));
  await store.stage(newJob("j5"));
  await assert.rejects(store.mutate("j5", (j) => void (j.state = JobState.ARMED)), /wrong last sequence/);
  assert.equal(store.has("j5"), false);
  assert.equal(kv.updates, 0, "what held the id was not overwritten");
});

test("job store - a big staged job's first write creates every shard and then the job", async () => {
  const kv = new MemoryKv();
  const { store } = await storeWith(kv);
  const creates = kv.creates;
  await store.stage(newJob("big", 300));
  const armed = await store.mutate("big", (j) => {
    for (const t of j.targets) t.state = TargetState.ARMED;
  });
  assert.equal(armed.targets.length, 300);
  const shards: string[] = [];
  for await (const key of await kv.keys()) if (key.startsWith("big.")) shards.push(key);
  assert.equal(shards.length, 5, "300 targets in ceil(300 / 64) shards");
  assert.equal(kv.creates, creates + shards.length + 1);
  assert.equal(kv.stored("big").targets.length, 0, "the job's own value holds no targets");
});
