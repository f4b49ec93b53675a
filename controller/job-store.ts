// Durable job state in a JetStream KV bucket: protobuf Job values keyed by
// job id, changed only by compare-and-set (create, or update with the
// revision last read) with a bounded retry on conflicts.
import { clone, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { JetStreamClient, KV } from "nats";
import { JobSchema, jobBucket, type Job } from "../proto/index.js";
import { openBucket } from "./kv-bucket.js";
import { NotLeaderError } from "./leader-election.js";

/** The bucket refused a write after every retry. */
export class JobStoreConflictError extends Error {
  override readonly name = "JobStoreConflictError";
}

// JetStream's "wrong last sequence" error: a CAS update lost the race.
const wrongLastSequence = 10071;
const maxAttempts = 5;

function isCasConflict(err: unknown): boolean {
  const api = (err as { api_error?: { err_code?: number } })?.api_error;
  return api?.err_code === wrongLastSequence || /wrong last sequence/i.test(String((err as Error)?.message));
}

/** Jobs with their KV revisions, cached after every read and write. */
export class JobStore {
  private readonly cache = new Map<string, { job: Job; revision: number }>();
  private readonly chains = new Map<string, Promise<unknown>>();

  private constructor(
    private readonly kv: KV,
    private readonly fence: () => boolean,
  ) {}

  /**
   * Opens (or creates) the jobs bucket. `fence` says whether this
   * controller still leads: a deposed leader that has not noticed yet
   * (paused, partitioned) must not write over its successor's jobs, so
   * every write checks it first.
   */
  static async open(js: JetStreamClient, fence: () => boolean = () => true): Promise<JobStore> {
    return new JobStore(await openBucket(js, jobBucket), fence);
  }

  private checkFence(id: string): void {
    if (!this.fence()) throw new NotLeaderError(`not writing job ${id}: this controller's leader term ended`, undefined);
  }

  /** Reads every stored job into the cache. */
  async load(): Promise<Job[]> {
    const keys: string[] = [];
    for await (const key of await this.kv.keys()) keys.push(key);
    const jobs: Job[] = [];
    for (const key of keys) {
      const entry = await this.kv.get(key);
      if (!entry || entry.operation !== "PUT" || entry.value.length === 0) continue;
      const job = fromBinary(JobSchema, entry.value);
      this.cache.set(key, { job, revision: entry.revision });
      jobs.push(job);
    }
    return jobs;
  }

  /** The cached job (a copy is not made: treat it as read-only). */
  get(id: string): Job | undefined {
    return this.cache.get(id)?.job;
  }

  /** Every cached job. */
  all(): Job[] {
    return [...this.cache.values()].map((e) => e.job);
  }

  /** Stores a new job; fails if the id exists. */
  async create(job: Job): Promise<Job> {
    this.checkFence(job.id);
    const revision = await this.kv.create(job.id, toBinary(JobSchema, job));
    this.cache.set(job.id, { job, revision });
    return job;
  }

  /**
   * Applies `change` to a copy of the job and writes it with CAS. On a lost
   * race it re-reads and re-applies, at most a few times. Changes to one job
   * are serialized, so this controller never races itself.
   */
  mutate(id: string, change: (job: Job) => void): Promise<Job> {
    const previous = this.chains.get(id) ?? Promise.resolve();
    const next = previous.then(
      () => this.mutateNow(id, change),
      () => this.mutateNow(id, change),
    );
    this.chains.set(id, next);
    void next.finally(() => {
      if (this.chains.get(id) === next) this.chains.delete(id);
    }).catch(() => {});
    return next;
  }

  private async mutateNow(id: string, change: (job: Job) => void): Promise<Job> {
    for (let attempt = 1; ; attempt++) {
      this.checkFence(id);
      const current = this.cache.get(id) ?? (await this.reload(id));
      if (!current) throw new JobStoreConflictError(`job ${id} is not in the store`);
      const job = clone(JobSchema, current.job);
      change(job);
      try {
        const revision = await this.kv.update(id, toBinary(JobSchema, job), current.revision);
        this.cache.set(id, { job, revision });
        return job;
      } catch (err) {
        if (!isCasConflict(err) || attempt >= maxAttempts) {
          if (isCasConflict(err)) throw new JobStoreConflictError(`job ${id} changed under ${maxAttempts} attempts to update it`, { cause: err });
          throw err;
        }
        await this.reload(id);
      }
    }
  }

  private async reload(id: string): Promise<{ job: Job; revision: number } | undefined> {
    const entry = await this.kv.get(id);
    if (!entry || entry.operation !== "PUT" || entry.value.length === 0) {
      this.cache.delete(id);
      return undefined;
    }
    const fresh = { job: fromBinary(JobSchema, entry.value), revision: entry.revision };
    this.cache.set(id, fresh);
    return fresh;
  }
}
