// How a job ends: at its deadline, cancelled, or done. Its active targets are
// disarmed through their agents for their final counts; its registers, its
// timers, its place in the queue and the agents' following are let go.
import { JobState, timerAt, type HitCounts, type Job, type Target, type TimerAt } from "../proto/index.js";
import type { ControllerCore } from "./controller-core.js";
import { errorText } from "./errors.js";
import { finish, isJobFinal, isTargetActive, isTargetLive } from "./job-state.js";
import { targetIndex } from "./job-targets.js";

/** One target's outcome of a disarm: its final counts, or a note on why there are none. */
export interface Final {
  hostId: string;
  pid: number;
  counts?: HitCounts | undefined;
  note: string;
}

/** Puts disarm outcomes' counts on a job's targets (where `take` agrees). */
export function applyFinals(job: Job, finals: readonly Final[], take: (t: Target, counts: HitCounts) => boolean): void {
  const byKey = targetIndex(job);
  for (const f of finals) {
    const t = byKey.get(f.hostId, f.pid);
    if (t && f.counts && take(t, f.counts)) t.counts = f.counts;
  }
}

/** Appends disarm outcomes' notes to the reasons of a job's targets (where `to` agrees). */
export function applyNotes(job: Job, finals: readonly Final[], to: (t: Target) => boolean): void {
  const byKey = targetIndex(job);
  for (const f of finals) {
    const t = byKey.get(f.hostId, f.pid);
    if (t && f.note && to(t)) t.reason += f.note;
  }
}

/** What ending a job asks of the parts wired after this one: the queue and the followers. */
export interface EndingParts {
  /** The job no longer waits for registers. */
  dequeue(id: string): void;
  /** Registers were freed: the queue may move. */
  drainSoon(): void;
  /** Agents stop looking for the job's late joiners. */
  unfollow(job: Job): void;
}

/** Deadlines of jobs, and the end of a job whatever ends it. */
export class JobEnding {
  private readonly deadlines = new Map<string, TimerAt>();

  constructor(
    private readonly core: ControllerCore,
    private readonly parts: EndingParts,
  ) {}

  /** Ends the job, completed, once its duration has elapsed. */
  scheduleDeadline(job: Job): void {
    if (job.deadlineUnixMs === 0n || isJobFinal(job) || this.deadlines.has(job.id)) return;
    this.deadlines.set(
      job.id,
      timerAt(Number(job.deadlineUnixMs), () => {
        this.deadlines.delete(job.id);
        this.end(job.id, JobState.COMPLETED, "duration elapsed").catch((err) => this.core.options.log(`job ${job.id}: ending at its deadline failed: ${String(err)}`));
      }),
    );
  }

  /** Disarms every active target of a job (agents answer with final counts) and stores the final state. */
  async end(id: string, state: JobState.COMPLETED | JobState.CANCELLED, reason: string): Promise<Job> {
    this.deadlines.get(id)?.cancel();
    this.deadlines.delete(id);
    this.parts.dequeue(id);
    const finals = await this.disarmTargets(id, (await this.core.get(id)).targets.filter(isTargetActive));
    const ended = await this.core.store.mutate(id, (j) => {
      if (isJobFinal(j)) return;
      const live = new Set(j.targets.filter(isTargetLive).map((t) => `${t.hostId}/${t.pid}`));
      applyFinals(j, finals, () => true);
      finish(j, state, reason);
      // After finish, which gives every live target the job's reason: what went wrong on the way stays said.
      applyNotes(j, finals, (t) => live.has(`${t.hostId}/${t.pid}`));
    });
    this.afterEnd(ended, reason);
    return ended;
  }

  /** Disarms targets of a job through their agents: each one's final counts, or a note on why there are none. */
  disarmTargets(id: string, targets: readonly Target[]): Promise<Final[]> {
    return Promise.all(
      targets.map(async (t): Promise<Final> => {
        const session = this.core.sessions.get(t.hostId);
        // Without the agent's answer the counts are the last it reported; they are made final when it reconnects.
        const later = "; counts as last reported until it reconnects";
        if (!session?.isOpen) return { hostId: t.hostId, pid: t.pid, note: `; agent ${t.hostId} not connected: it disarms when it reconnects${later}` };
        try {
          const result = await session.disarm({ jobId: id, pid: t.pid, epoch: this.core.options.epoch });
          this.core.ledger.noteReserved(t.hostId, t.pid, result.reservedMask);
          if (result.error) return { hostId: t.hostId, pid: t.pid, note: `; disarm failed: ${result.error.message}` };
          return { hostId: t.hostId, pid: t.pid, counts: result.counts, note: "" };
        } catch (err) {
          return { hostId: t.hostId, pid: t.pid, note: `; disarm failed: ${errorText(err)}${later}` };
        }
      }),
    );
  }

  /** A job just ended: its registers go back to the ledger, its timers stop, and the queue may move. */
  afterEnd(ended: Job, reason: string): void {
    for (const t of ended.targets) this.core.ledger.release(t.hostId, t.pid, ended.id);
    this.forgetJobTimers(ended);
    this.core.publish(ended);
    this.core.options.log(`job ${ended.id}: ${reason}`);
    this.parts.drainSoon();
  }

  /** A final job needs no deadline, no queue place, and no agent looking for its late joiners. */
  forgetJobTimers(job: Job): void {
    this.deadlines.get(job.id)?.cancel();
    this.deadlines.delete(job.id);
    this.parts.dequeue(job.id);
    this.parts.unfollow(job);
  }

  /** Stops every deadline (the jobs stay as stored; the next term schedules them again). */
  stop(): void {
    for (const timer of this.deadlines.values()) timer.cancel();
    this.deadlines.clear();
  }
}
