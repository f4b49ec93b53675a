// What the job store holds in memory: every active job whole, the few jobs
// that finished last (so answers right after an end need no read), and of
// every other finished job only its index entry. Memory follows what is
// active, not how many jobs have run.
import { isFinalJobState, type Job } from "../proto/index.js";
import { FinishedIndex, type FinishedEntry } from "./job-index.js";

/** Finished jobs kept whole (or, big ones, as their summary) after they end. */
export const recentFinished = 128;

/** What the cache needs of a store entry. */
export interface CachedJob {
  readonly job: Job;
  /** Revisions of its shard values; empty while its targets are inline. */
  readonly shards: ReadonlyMap<number, number>;
}

/** The index entry of a finished job. */
export function finishedEntry(job: Job, sharded: boolean): FinishedEntry {
  return { id: job.id, state: job.state, createdUnixMs: Number(job.createdUnixMs), endedUnixMs: Number(job.endedUnixMs), sharded };
}

/** Active jobs by id, a small LRU of finished ones, and the index of every finished job. */
export class JobCache<E extends CachedJob> {
  private readonly live = new Map<string, E>();
  /** Least recently used first. */
  private readonly recent = new Map<string, E>();
  /** Replaced wholesale by a load. */
  finished = new FinishedIndex();

  /** The job's entry when memory has it: active, or finished lately. */
  get(id: string): E | undefined {
    const live = this.live.get(id);
    if (live) return live;
    const recent = this.recent.get(id);
    if (recent) {
      this.recent.delete(id);
      this.recent.set(id, recent);
    }
    return recent;
  }

  /** Whether the store has the job (active or finished), as far as this controller knows. */
  has(id: string): boolean {
    return this.live.has(id) || this.finished.has(id);
  }

  /** Files a job just read or written: active ones stay; a final one goes to the index and the recent few. */
  set(id: string, entry: E): void {
    if (!isFinalJobState(entry.job.state)) {
      this.recent.delete(id);
      this.finished.remove(id);
      this.live.set(id, entry);
      return;
    }
    this.live.delete(id);
    this.finished.add(finishedEntry(entry.job, entry.shards.size > 0));
    this.recent.delete(id);
    this.recent.set(id, entry);
    if (this.recent.size > recentFinished) this.recent.delete(this.recent.keys().next().value!);
  }

  /** Drops the job from memory (the next use reads it); the index keeps a finished one. */
  delete(id: string): void {
    this.live.delete(id);
    this.recent.delete(id);
  }

  /** The job is gone from the store. */
  forget(id: string): void {
    this.delete(id);
    this.finished.remove(id);
  }

  /** Every active job. */
  active(): IterableIterator<E> {
    return this.live.values();
  }

  get activeCount(): number {
    return this.live.size;
  }
}
