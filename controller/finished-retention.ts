// Retention of finished jobs: the leader deletes from the store the jobs that
// ended longer ago than --keep-finished, and the oldest beyond
// --keep-finished-count, in sweeps on a timer of its term.
import { formatDuration } from "../proto/index.js";
import type { JobStore } from "./job-store.js";

/** How long, and how many, finished jobs the store keeps (whichever is reached first deletes the oldest). */
export interface RetentionOptions {
  keepFinishedMs: number;
  keepFinishedCount: number;
}

/** The controller's defaults: a day, and 100,000 jobs. */
export const defaultRetention: RetentionOptions = { keepFinishedMs: 24 * 3_600_000, keepFinishedCount: 100_000 };

/** Jobs one sweep deletes at most: a backlog (a lower count, a first start) goes over several sweeps. */
const maxPerSweep = 10_000;

/** How often the sweep runs: a quarter of the time kept, between half a second and a minute. */
export function sweepEveryMs(keepFinishedMs: number): number {
  return Math.min(60_000, Math.max(500, Math.floor(keepFinishedMs / 4)));
}

/** The sweeps of one leader term. */
export class FinishedRetention {
  private timer: NodeJS.Timeout | undefined;
  private sweeping = false;
  private readonly stopped = new AbortController();

  constructor(
    private readonly store: Pick<JobStore, "expiredFinished" | "deleteFinished">,
    private readonly options: RetentionOptions,
    private readonly log: (line: string) => void,
  ) {}

  /** Sweeps now (a controller that starts over its limits lets go at once), then every sweepEveryMs until stop(); the timer does not keep the process alive. */
  start(): void {
    void this.sweep();
    this.timer = setInterval(() => void this.sweep(), sweepEveryMs(this.options.keepFinishedMs));
    this.timer.unref();
  }

  /** No sweep starts after this; one under way stops before its next deletion. */
  stop(): void {
    clearInterval(this.timer);
    this.stopped.abort();
  }

  /** Deletes what retention lets go now; returns how many jobs were deleted (0 while another sweep runs). */
  async sweep(nowMs = Date.now()): Promise<number> {
    if (this.sweeping || this.stopped.signal.aborted) return 0;
    this.sweeping = true;
    try {
      const { keepFinishedMs, keepFinishedCount } = this.options;
      const expired = this.store.expiredFinished(nowMs, keepFinishedMs, keepFinishedCount).slice(0, maxPerSweep);
      if (expired.length === 0) return 0;
      const deleted = await this.store.deleteFinished(expired, this.stopped.signal);
      this.log(`retention: deleted ${deleted} finished job(s) that ended over ${formatDuration(BigInt(keepFinishedMs))} ago or beyond the ${keepFinishedCount} kept`);
      return deleted;
    } catch (err) {
      this.log(`retention: deleting finished jobs failed (tried again at the next sweep): ${err instanceof Error ? err.message : String(err)}`);
      return 0;
    } finally {
      this.sweeping = false;
    }
  }
}
