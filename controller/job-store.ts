// Durable job state in a JetStream KV bucket, changed only by compare-and-set
// (create, or update with the revision last read) with a bounded retry on
// conflicts. A job with up to `inlineTargets` targets is one protobuf Job
// value under its id. A bigger one (a fleet-wide job on thousands of hosts)
// is its Job without targets under its id plus TargetShard values under
// "<id>.<n>", about `targetsPerShard` targets each, a host's targets always
// in the same shard: a change on one target rewrites one small shard and the
// job, not every target. Memory holds the active jobs whole and of finished
// ones an index entry (job-cache.ts); finished jobs are read back when asked
// for, and deleted with their shards once retention lets them go.
import { clone, create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { JetStreamClient, JetStreamManager, KV, KvEntry, QueuedIterator } from "nats";
import { JobSchema, TargetShardSchema, isFinalJobState, jobBucket, type Job, type JobState, type Target } from "../proto/index.js";
import { withDeadline } from "../proto/index.js";
import { JobCache, finishedEntry } from "./job-cache.js";
import { FinishedIndex, type FinishedEntry, type ListPosition } from "./job-index.js";
import { listPage, type ListQuery } from "./job-listing.js";
import { openBucket } from "./kv-bucket.js";
import { NotLeaderError } from "./leader-election.js";

/** A read or write of the bucket got no answer in time (NATS away). */
export class JobStoreTimeoutError extends Error {
  override readonly name = "JobStoreTimeoutError";
}

/** How long one read or write of the bucket may take. */
const requestTimeoutMs = 10_000;
/** Pause before trying again after a read or write timed out. */
const retryPauseMs = 500;

/** The bucket refused a write after every retry. */
export class JobStoreConflictError extends Error {
  override readonly name = "JobStoreConflictError";
}

// JetStream's "wrong last sequence" error: a CAS update lost the race.
const wrongLastSequence = 10071;
const maxAttempts = 5;
/** Jobs with more targets than this keep them in shards. */
export const inlineTargets = 256;
/** Targets a shard holds on average when a job becomes sharded: a value of a few KB. */
export const targetsPerShard = 64;
/** Shards of one job at most (a job that grows later fills its shards further). */
const maxShards = 4_096;
/** Shards of jobs stored before TargetShard.shard_count was recorded. */
const legacyShardCount = 64;

/** How many shards a job gets when it becomes sharded with this many targets (a 40,000-target job: 625). */
export function shardsFor(targets: number): number {
  return Math.min(maxShards, Math.max(1, Math.ceil(targets / targetsPerShard)));
}

function isCasConflict(err: unknown): boolean {
  const api = (err as { api_error?: { err_code?: number } })?.api_error;
  return api?.err_code === wrongLastSequence || /wrong last sequence/i.test(String((err as Error)?.message));
}

/** The shard a host's targets live in, of a job's `count` (FNV-1a of the host id). */
export function shardOf(hostId: string, count: number = legacyShardCount): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < hostId.length; i++) {
    h ^= hostId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % count;
}

const shardKey = (id: string, n: number) => `${id}.${n}`;

/** The stored value of one shard of a job with `count` shards. */
const shardValue = (targets: Target[], count: number): Uint8Array => toBinary(TargetShardSchema, create(TargetShardSchema, { targets, shardCount: count }));

/** The bucket's stream, and the subject of a key in it (retention purges by subject). */
const bucketStream = `KV_${jobBucket}`;
const keySubject = (key: string) => `$KV.${jobBucket}.${key}`;
/** Finished jobs deleted at once by a retention sweep. */
const deleteConcurrency = 16;

/** Targets of the cache are frozen: a change must go through mutate with their host in its scope. */
function deepFreeze<T>(value: T): T {
  // Bytes (a message's unknown fields from a newer client, bytes fields) cannot be frozen: Object.freeze throws on them.
  if (ArrayBuffer.isView(value)) return value;
  if (value && typeof value === "object" && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as object)) deepFreeze(v);
  }
  return value;
}

/**
 * A mutable copy of a (frozen) target: what mutate hands a change. Only the
 * target itself is copied; its counts, slots and chunks stay shared and
 * frozen, so a change replaces them (`t.slots = [...]`, `t.counts = ...`)
 * and one that edits them in place throws, as one outside its scope does.
 * The reflective clone of protobuf-es cost ~7 µs a target, 0.3 s for a
 * 40,000-target job on every change that touches all of it; copying and
 * freezing again every nested value was most of what was left (seven
 * objects a target, each frozen on the write).
 */
export function copyTarget(t: Target): Target {
  return { ...t };
}

/** A change waiting for its job's next write. */
interface PendingChange {
  change: (job: Job) => void;
  /** Hosts it may touch; undefined = every host. */
  scope: ReadonlySet<string> | undefined;
  resolve: (job: Job) => void;
  reject: (err: unknown) => void;
}

/** What the cache keeps of an entry: a finished job with many targets only as its summary (memory stays flat as fleet-wide jobs come and go). */
function settled(entry: Entry): Entry {
  if (!isFinalJobState(entry.job.state) || entry.job.targets.length <= inlineTargets) return entry;
  return { ...entry, job: deepFreeze(clone(JobSchema, { ...entry.job, targets: [] })), evicted: true };
}

interface Entry {
  /** The job; for a big finished job only its summary (targets left in the store: see full()). */
  job: Job;
  /** Not in the bucket yet (see stage): its next write creates it. */
  staged?: boolean;
  /** The targets are not in memory (a finished sharded job). */
  evicted?: boolean;
  /** Revision of the job's own value. */
  revision: number;
  /** Revisions of its shard values; empty while its targets are inline. */
  shards: Map<number, number>;
  /** How many shards its targets are spread over; 0 while they are inline. */
  shardCount: number;
}

/** The hosts any of the changes may touch; undefined when one may touch every host. */
function unionOfScopes(changes: readonly PendingChange[]): ReadonlySet<string> | undefined {
  if (changes.length === 1) return changes[0]!.scope;
  const union = new Set<string>();
  for (const c of changes) {
    if (c.scope === undefined) return undefined;
    for (const host of c.scope) union.add(host);
  }
  return union;
}

/** A page of `jobs ls`: the jobs, how many match over every page, and where the next page starts. */
export interface JobsPage {
  jobs: Job[];
  total: number;
  next: ListPosition | undefined;
}

/** Jobs with their KV revisions: active ones cached after every read and write, finished ones indexed. */
export class JobStore {
  private readonly cache = new JobCache<Entry>();
  /** Changes waiting for their job's next write, by job id, in the order they were asked for. */
  private readonly pending = new Map<string, PendingChange[]>();
  /** Jobs with a write in flight: their next changes wait for it. */
  private readonly writing = new Set<string>();
  /** Jobs whose pending changes the next flush writes. */
  private readonly due = new Set<string>();
  private flushTimer: NodeJS.Immediate | undefined;
  /** New jobs waiting for the next flush to be written. */
  private readonly flushWaiters: Array<() => void> = [];
  private manager: Promise<JetStreamManager> | undefined;

  private constructor(
    private readonly kv: KV,
    private readonly fence: () => boolean | Promise<boolean>,
    private readonly onConflict: () => void,
    private readonly js: JetStreamClient,
  ) {}

  /**
   * Opens (or creates) the jobs bucket. `fence` says (or, while its lease
   * is being confirmed, will say) whether this controller still leads: a deposed leader that has not noticed yet
   * (paused, partitioned) must not write over its successor's jobs, so
   * every write checks it first. `onConflict` hears each write that lost a
   * compare-and-set race (tried again up to a few times), for the metrics.
   */
  static async open(js: JetStreamClient, fence: () => boolean | Promise<boolean> = () => true, onConflict: () => void = () => {}): Promise<JobStore> {
    return new JobStore(await openBucket(js, jobBucket), fence, onConflict, js);
  }

  private timed<T>(what: string, pending: Promise<T>): Promise<T> {
    return withDeadline(pending, requestTimeoutMs, (ms) => new JobStoreTimeoutError(`${what}: no answer from NATS within ${ms} ms`));
  }

  private async checkFence(id: string): Promise<void> {
    if (!(await this.fence())) throw new NotLeaderError(`not writing job ${id}: this controller's leader term ended`, undefined);
  }

  /**
   * Reads the stored jobs: the jobs' last values streamed once through one
   * ordered consumer (not a read per key), the shard keys listed once.
   * Active jobs are kept whole, with their shards; finished ones become
   * index entries, their records dropped as they are read. Returns the
   * active jobs.
   */
  async load(): Promise<Job[]> {
    // Which jobs have shards: keys only, no values.
    const shardKeys = new Map<string, string[]>();
    for await (const key of await this.timed("list the shard keys", this.kv.keys("*.*"))) {
      const id = key.slice(0, key.indexOf("."));
      const list = shardKeys.get(id);
      if (list) list.push(key);
      else shardKeys.set(id, [key]);
    }
    const finished: FinishedEntry[] = [];
    const active: Entry[] = [];
    await this.streamJobs((head) => {
      if (head.operation !== "PUT" || head.value.length === 0) return;
      const job = fromBinary(JobSchema, head.value);
      if (isFinalJobState(job.state)) finished.push(finishedEntry(job, shardKeys.has(job.id)));
      else active.push({ job, revision: head.revision, shards: new Map(), shardCount: 0 });
    });
    this.cache.finished = FinishedIndex.of(finished);
    const jobs: Job[] = [];
    for (const entry of active) {
      const keys = shardKeys.get(entry.job.id);
      // A sharded job is read again with its shards (shards win over the head's inline targets: see read).
      const loaded = keys ? await this.read(entry.job.id, keys) : { ...entry, job: deepFreeze(entry.job) };
      if (!loaded) continue;
      if (!keys) this.cache.set(entry.job.id, loaded);
      jobs.push(loaded.job);
    }
    return jobs;
  }

  /** Calls `each` with the last value of every job key (not the shards), in stream order; fails when the stream stalls. */
  private async streamJobs(each: (head: KvEntry) => void): Promise<void> {
    let initialized = false;
    let values: QueuedIterator<KvEntry> | undefined;
    // Called in order after the last value that existed when the watch began.
    const done = () => {
      initialized = true;
      values?.stop();
    };
    values = await this.timed("watch the jobs", this.kv.watch({ key: "*", initializedFn: done }));
    if (initialized) values.stop();
    const stalled = setTimeout(() => values.stop(new JobStoreTimeoutError(`load the jobs: no value from NATS within ${requestTimeoutMs} ms`)), requestTimeoutMs);
    try {
      for await (const head of values) {
        stalled.refresh();
        each(head);
      }
    } finally {
      clearTimeout(stalled);
      values.stop();
    }
    if (!initialized) throw new JobStoreTimeoutError("load the jobs: the watch ended before every job was read");
  }

  /** Reads one job and the shards named (when `shardKeys` is undefined: all of its shards, none for a finished job the index says has none). */
  private async read(id: string, shardKeys?: string[]): Promise<Entry | undefined> {
    const head = await this.readHead(id);
    if (!head) return undefined;
    const job = fromBinary(JobSchema, head.value);
    const shards = new Map<number, number>();
    let count = 0;
    /** One shard's targets (undefined when it is not stored); the first read tells how many shards there are. */
    const readShard = async (n: number): Promise<Target[] | undefined> => {
      const key = shardKey(id, n);
      const value = await this.timed(`read ${key}`, this.kv.get(key));
      if (!value || value.operation !== "PUT") return undefined;
      const shard = fromBinary(TargetShardSchema, value.value);
      count ||= shard.shardCount || legacyShardCount;
      shards.set(n, value.revision);
      return shard.targets;
    };
    const readAll = (ns: number[]) => Promise.all(ns.map(readShard));
    const range = (from: number, to: number) => Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);
    // A finished job the index says has no shards: none to read.
    const inline = shardKeys === undefined && this.cache.finished.get(id)?.sharded === false;
    const named = shardKeys?.map((key) => Number(key.slice(id.length + 1))).filter((n) => Number.isInteger(n) && n >= 0 && n < maxShards);
    let parts: Array<Target[] | undefined> = [];
    if (named) parts = await readAll(named.sort((a, b) => a - b));
    else if (!inline) {
      // Shard 0 is always written: it says how many there are.
      const first = await readShard(0);
      if (first) parts = [first, ...(await readAll(range(1, count)))];
      // A job stored before shard counts were recorded has 64, not each written.
      else if (job.targets.length === 0) parts = await readAll(range(1, legacyShardCount));
    }
    const targets: Target[] = [];
    for (const part of parts) if (part) for (const t of part) targets.push(t);
    // Shards win over inline targets: a crash between writing the shards and the job leaves the shards newer.
    if (shards.size > 0) job.targets = targets;
    const entry = { job: deepFreeze(job), revision: head.revision, shards, shardCount: shards.size > 0 ? count : 0 };
    this.cache.set(id, settled(entry));
    return entry;
  }

  /**
   * The job when memory has it (an active one, or one that finished lately):
   * read-only (its targets are frozen). A finished job with more than
   * `inlineTargets` targets comes without them: see full(). Undefined for
   * other finished jobs: see has(), summary() and full().
   */
  get(id: string): Job | undefined {
    return this.cache.get(id)?.job;
  }

  /** Whether the store has this job, active or finished (no read). */
  has(id: string): boolean {
    return this.cache.has(id);
  }

  /** The job with every target, read back from the bucket when they are not in memory; undefined for an unknown id. */
  async full(id: string): Promise<Job | undefined> {
    const entry = this.cache.get(id);
    if (entry && !entry.evicted) return entry.job;
    if (!entry && !this.cache.has(id)) return undefined;
    return (await this.read(id))?.job;
  }

  /** The job as memory has it, else its stored record without its shards (a big job without targets); undefined for an unknown id. */
  async summary(id: string): Promise<Job | undefined> {
    const cached = this.cache.get(id);
    if (cached) return cached.job;
    if (!this.cache.has(id)) return undefined;
    const head = await this.readHead(id);
    return head && fromBinary(JobSchema, head.value);
  }

  /** The job's own value (without its shards); undefined, and forgotten here, when the bucket no longer has it. */
  private async readHead(id: string): Promise<KvEntry | undefined> {
    const head = await this.timed(`read job ${id}`, this.kv.get(id));
    if (head && head.operation === "PUT" && head.value.length > 0) return head;
    this.cache.forget(id);
    return undefined;
  }

  /** Every active job (not final). */
  active(): Job[] {
    return Array.from(this.cache.active(), (e) => e.job);
  }

  /** Finished jobs in these states (every final state when undefined), from the index. */
  countFinished(states?: ReadonlySet<JobState>): number {
    return this.cache.finished.countIn(states);
  }

  /** One page of jobs, newest first: active ones from memory, finished ones read from the bucket (big ones without their targets). */
  async list(query: ListQuery): Promise<JobsPage> {
    const page = listPage(this.active(), this.cache.finished, query);
    const jobs = await Promise.all(page.items.map((item) => ("job" in item ? item.job : this.summary(item.finished.id))));
    // A finished job deleted meanwhile by retention is left out.
    return { jobs: jobs.filter((j): j is Job => j !== undefined), total: page.total, next: page.next };
  }

  /** Finished jobs retention lets go now, oldest end first (see FinishedIndex.expired). */
  expiredFinished(nowMs: number, keepMs: number, keepCount: number): FinishedEntry[] {
    return this.cache.finished.expired(nowMs, keepMs, keepCount);
  }

  /**
   * Deletes finished jobs from the bucket, their shards first (a job is never
   * left with some of its targets), then the job; fenced like every write.
   * Purged, not marked deleted: the stream keeps nothing of them. Returns
   * how many were deleted; stops when `signal` aborts, and at the first
   * failure (the fence, NATS away).
   */
  async deleteFinished(entries: readonly FinishedEntry[], signal?: AbortSignal): Promise<number> {
    const manager = await (this.manager ??= this.js.jetstreamManager());
    let deleted = 0;
    let next = 0;
    let failure: { err: unknown } | undefined;
    const lane = async () => {
      while (next < entries.length && !signal?.aborted && !failure) {
        const entry = entries[next++]!;
        if (!this.cache.finished.has(entry.id)) continue;
        try {
          await this.checkFence(entry.id);
          if (entry.sharded) await this.timed(`delete the shards of job ${entry.id}`, manager.streams.purge(bucketStream, { filter: keySubject(`${entry.id}.>`) }));
          await this.timed(`delete job ${entry.id}`, manager.streams.purge(bucketStream, { filter: keySubject(entry.id) }));
        } catch (err) {
          failure ??= { err };
          return;
        }
        this.cache.forget(entry.id);
        deleted++;
      }
    };
    await Promise.all(Array.from({ length: Math.min(deleteConcurrency, entries.length) }, lane));
    if (failure) throw failure.err;
    return deleted;
  }

  /** Stores a new job; fails if the id exists. Written with the next flush's writes (see mutate). */
  async create(job: Job): Promise<Job> {
    await this.checkFence(job.id);
    await this.nextFlush();
    const shards = new Map<number, number>();
    const count = job.targets.length > inlineTargets ? shardsFor(job.targets.length) : 0;
    if (count > 0) {
      // All at once: NATS takes the values of a 40,000-target job in one go.
      await Promise.all(
        [...this.split(job.targets, count)].map(async ([n, targets]) => {
          shards.set(n, await this.timed(`write ${shardKey(job.id, n)}`, this.kv.create(shardKey(job.id, n), shardValue(targets, count))));
        }),
      );
    }
    const revision = await this.timed(`write job ${job.id}`, this.kv.create(job.id, toBinary(JobSchema, shards.size > 0 ? { ...job, targets: [] } : job)));
    this.cache.set(job.id, settled({ job: deepFreeze(job), revision, shards, shardCount: count }));
    return job;
  }

  /**
   * Puts a new job in memory without writing it: the first change asked of
   * it (mutate) writes it, change included, with create (fails if the id
   * exists), coalesced like any change. Until then every reader here sees it
   * (get, active, list, mutate) and the bucket does not: a controller that
   * stops first leaves nothing of it. A first write that fails drops it
   * from memory too (the job never existed); see isStaged. Fenced like
   * create: a deposed leader stages nothing.
   */
  async stage(job: Job): Promise<Job> {
    await this.checkFence(job.id);
    if (this.cache.has(job.id)) throw new JobStoreConflictError(`job ${job.id} exists`);
    this.cache.set(job.id, { job: deepFreeze(job), staged: true, revision: 0, shards: new Map(), shardCount: 0 });
    return job;
  }

  /** Whether memory holds the job staged, not written yet. */
  isStaged(id: string): boolean {
    return this.cache.get(id)?.staged === true;
  }

  /** Targets by shard of `count`, in their order: the shards in `only`, or every shard (empty ones too). */
  private split(targets: readonly Target[], count: number, only?: ReadonlySet<number>): Map<number, Target[]> {
    const byShard = new Map<number, Target[]>();
    if (only) for (const n of only) byShard.set(n, []);
    else for (let n = 0; n < count; n++) byShard.set(n, []);
    for (const t of targets) {
      const list = byShard.get(shardOf(t.hostId, count));
      if (list) list.push(t);
    }
    return byShard;
  }

  /**
   * Applies `change` to a copy of the job and writes it with CAS; on a lost
   * race it re-reads and re-applies, at most a few times. Changes to one job
   * are serialized, so this controller never races itself, and coalesced:
   * those asked for in the same turn of the event loop, or while the job's
   * previous write is in flight, are applied in order to one copy and
   * written once (every caller gets the job as written). `hosts` are the
   * hosts whose targets the change may touch or add (undefined: every
   * host); the others stay frozen, so a change outside its scope throws
   * rather than go unsaved. A change that throws fails alone; the others
   * are written without it.
   */
  mutate(id: string, change: (job: Job) => void, hosts?: Iterable<string>): Promise<Job> {
    const scope = hosts === undefined ? undefined : new Set(hosts);
    return new Promise<Job>((resolve, reject) => {
      const list = this.pending.get(id);
      const item = { change, scope, resolve, reject };
      if (list) list.push(item);
      else this.pending.set(id, [item]);
      if (!this.writing.has(id)) this.markDue(id);
    });
  }

  /** Schedules the job's pending changes for the next flush. */
  private markDue(id: string): void {
    this.due.add(id);
    this.scheduleFlush();
  }

  /**
   * The next flush runs after the promise continuations of this turn of the
   * event loop. A wait of a few ms gathered more changes but halved
   * single-target submits (each waits for two flushes).
   */
  private scheduleFlush(): void {
    this.flushTimer ??= setImmediate(() => this.flush());
  }

  /** Resolves when the next flush starts its writes. */
  private nextFlush(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.flushWaiters.push(resolve);
      this.scheduleFlush();
    });
  }

  /**
   * Starts the writes of every new job and of each job with pending changes
   * at once: issued in one turn of the event loop, they reach NATS in one
   * socket write (a write to the socket costs more than a small KV value).
   */
  private flush(): void {
    this.flushTimer = undefined;
    for (const resolve of this.flushWaiters.splice(0)) resolve();
    const ids = [...this.due];
    this.due.clear();
    for (const id of ids) {
      const changes = this.pending.get(id);
      this.pending.delete(id);
      if (!changes || changes.length === 0) continue;
      this.writing.add(id);
      void this.mutateNow(id, changes).finally(() => {
        this.writing.delete(id);
        if (this.pending.has(id)) this.markDue(id);
      });
    }
  }

  private async mutateNow(id: string, changes: PendingChange[]): Promise<void> {
    let live = changes;
    try {
      for (let attempt = 1; ; attempt++) {
        await this.checkFence(id);
        const cached = this.cache.get(id);
        const current = cached && !cached.evicted ? cached : await this.read(id);
        if (!current) throw new JobStoreConflictError(`job ${id} is not in the store`);
        const applied = this.applyChanges(current, live);
        live = applied.live;
        if (live.length === 0) return;
        try {
          const entry = await this.write(current, applied.job, applied.scope);
          this.cache.set(id, settled(entry));
          for (const c of live) c.resolve(entry.job);
          return;
        } catch (err) {
          if (current.staged) {
            // Its first write is not tried again (as create is not). Whether one that timed out landed
            // is asked once; if not, the job is dropped from memory below: it never existed.
            const landed = err instanceof JobStoreTimeoutError ? await this.read(id).catch(() => undefined) : undefined;
            if (landed) {
              for (const c of live) c.resolve(landed.job);
              return;
            }
            throw err;
          }
          // A lost race, or NATS away for a moment (a write that timed out may have landed: the re-read tells).
          const conflict = isCasConflict(err);
          if (conflict) this.onConflict();
          const retry = conflict || err instanceof JobStoreTimeoutError;
          if (!retry || attempt >= maxAttempts) {
            if (conflict) throw new JobStoreConflictError(`job ${id} changed under ${maxAttempts} attempts to update it`, { cause: err });
            throw err;
          }
          if (err instanceof JobStoreTimeoutError) await new Promise((resolve) => setTimeout(resolve, retryPauseMs));
          await this.read(id).catch(() => this.cache.delete(id));
        }
      }
    } catch (err) {
      // A staged job whose first write failed (the fence, a lost race, NATS away) was never stored.
      if (this.cache.get(id)?.staged) this.cache.forget(id);
      for (const c of live) c.reject(err);
    }
  }

  /**
   * The job with every change applied in order, on a copy whose targets in
   * the changes' scopes are mutable (the others shared, frozen). A change
   * that throws is rejected and the copy made again without it.
   */
  private applyChanges(current: Entry, changes: readonly PendingChange[]): { job: Job; scope: ReadonlySet<string> | undefined; live: PendingChange[] } {
    let live = [...changes];
    for (;;) {
      const scope = unionOfScopes(live);
      // Field by field, as copyTarget; the spec never changes once submitted: shared (frozen), not copied.
      const job: Job = { ...current.job, targets: [], counts: current.job.counts && { ...current.job.counts } };
      if (job.spec) deepFreeze(job.spec);
      job.targets = current.job.targets.map((t) => (scope === undefined || scope.has(t.hostId) ? copyTarget(t) : t));
      const failed = live.findIndex((c) => {
        try {
          c.change(job);
          return false;
        } catch (err) {
          c.reject(err);
          return true;
        }
      });
      if (failed === -1) return { job, scope, live };
      live = live.filter((_, i) => i !== failed);
      if (live.length === 0) return { job, scope, live };
    }
  }

  /** Writes a changed job: inline, or its scope's shards (every shard when it becomes sharded) and then the job. */
  private async write(current: Entry, job: Job, scope: ReadonlySet<string> | undefined): Promise<Entry> {
    const sharded = current.shardCount > 0 || job.targets.length > inlineTargets;
    // A staged job's first write creates its value (its shards are new too).
    const put = (value: Uint8Array) => (current.staged ? this.kv.create(job.id, value) : this.kv.update(job.id, value, current.revision));
    if (!sharded) {
      const revision = await this.timed(`write job ${job.id}`, put(toBinary(JobSchema, job)));
      return { job: deepFreeze(job), revision, shards: current.shards, shardCount: 0 };
    }
    const count = current.shardCount || shardsFor(job.targets.length);
    const dirty = current.shardCount === 0 || scope === undefined ? undefined : new Set([...scope].map((host) => shardOf(host, count)));
    const shards = new Map(current.shards);
    await Promise.all(
      [...this.split(job.targets, count, dirty)].map(async ([n, targets]) => {
        const value = shardValue(targets, count);
        const known = shards.get(n);
        shards.set(n, await this.timed(`write ${shardKey(job.id, n)}`, known === undefined ? this.kv.create(shardKey(job.id, n), value) : this.kv.update(shardKey(job.id, n), value, known)));
      }),
    );
    const revision = await this.timed(`write job ${job.id}`, put(toBinary(JobSchema, { ...job, targets: [] })));
    for (const t of job.targets) deepFreeze(t);
    Object.freeze(job.targets);
    return { job, revision, shards, shardCount: count };
  }
}
