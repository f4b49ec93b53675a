// Where a target's counters and its job's hit sequence go on from when this
// agent arms it with no earlier watch of it here (it may have started again):
// the job's hits from this host already in the event stream, read once per job.
import { withDeadline, type Arm, type HitCounts } from "../proto/index.js";
import { AgentCommandError } from "./errors.js";
import { resumeCounts, resumeCountingTotals, type StoredHits, type StoredHitsReader } from "./stored-hits.js";

// How long reading a job's stored hits before arming it may take (the controller waits 15 s for the arm).
const storedHitsTimeoutMs = 10_000;

/** The stored hits of each job armed here, read before the first of its targets is armed. */
export class StoredHitResume {
  /** Per job: its hits from this host already in the event stream when this agent first armed it. */
  private readonly stored = new Map<string, Promise<StoredHits>>();

  /** `continueAfter` makes the job's hit sequence go on after the last one stored. */
  constructor(
    private readonly readStoredHits: StoredHitsReader,
    private readonly hostId: string,
    private readonly continueAfter: (jobId: string, lastSequence: bigint) => void,
  ) {}

  /**
   * Where a target's counters go on from when this agent has no earlier
   * watch of it: what the controller last heard and what the event stream
   * holds of it (stored hits, or a counting job's last report).
   */
  async counts(request: Arm): Promise<HitCounts> {
    const stored = await this.storedHits(request.jobId);
    if (request.countOnly) return resumeCountingTotals(request.counts, stored.countedByPid.get(request.pid));
    return resumeCounts(request.counts, stored.byPid.get(request.pid) ?? 0n);
  }

  /** Forgets a job's stored hits: nothing here produces its hits any more. */
  forget(jobId: string): void {
    this.stored.delete(jobId);
  }

  /**
   * The job's hits from this host already in the event stream, read once
   * per job before this agent arms any of its targets; the hit sequence goes
   * on after the last of them.
   */
  private storedHits(jobId: string): Promise<StoredHits> {
    let loading = this.stored.get(jobId);
    if (!loading) {
      loading = withDeadline(this.readStoredHits(jobId, this.hostId), storedHitsTimeoutMs, (ms) => new Error(`no answer within ${ms} ms`)).then(
        (found) => {
          this.continueAfter(jobId, found.lastSequence);
          return found;
        },
        (err: unknown) => {
          this.stored.delete(jobId);
          throw new AgentCommandError(`cannot read job ${jobId}'s stored hits from NATS (needed to go on counting where they end): ${err instanceof Error ? err.message : String(err)}`, "EAGAIN");
        },
      );
      this.stored.set(jobId, loading);
    }
    return loading;
  }
}
