// What agents report of their targets as they go: counters, threads and
// reserved registers, and targets that ended by themselves (an exit also
// ends other jobs' targets that waited for that process's registers).
import { JobState, TargetState, type TargetReport } from "../proto/index.js";
import type { ControllerCore } from "./controller-core.js";
import type { JobEnding } from "./job-ending.js";
import type { JobQueue } from "./job-queue.js";
import { isJobFinal, isTargetActive, isTargetWaiting, notBehind, rollUp } from "./job-state.js";

/** Applies agents' target reports to the jobs. */
export class TargetReports {
  constructor(
    private readonly core: ControllerCore,
    private readonly ending: Pick<JobEnding, "end" | "forgetJobTimers">,
    private readonly queue: Pick<JobQueue, "drainSoon">,
  ) {}

  /** A target changed on its host: counters moved, or it ended by itself. */
  async onTargetReport(hostId: string, report: TargetReport): Promise<void> {
    if (report.state === TargetState.EXITED) {
      this.core.ledger.forgetProcess(hostId, report.pid);
      await this.exitWaiting(hostId, report.pid, report.reason);
    }
    // A finished job too: a target's last counts may come after its end (the change reads the job back).
    if (!this.core.store.has(report.jobId)) return;
    const ends = report.state !== TargetState.ARMED && report.state !== TargetState.UNSPECIFIED;
    const job = await this.core.store.mutate(report.jobId, (j) => {
      const t = j.targets.find((x) => x.hostId === hostId && x.pid === report.pid);
      // A preempted target's counters were settled when it was disarmed.
      if (!t || isTargetWaiting(t)) return;
      // An ended target's counts only move forward: a report sent before its final counts must not undo them.
      if (report.counts && (isTargetActive(t) || !t.counts || notBehind(report.counts, t.counts))) t.counts = report.counts;
      if (report.threadsTotal > 0) {
        t.threadsTotal = report.threadsTotal;
        t.threadsArmed = report.threadsArmed;
      }
      if (report.reservedMask) t.reservedMask |= report.reservedMask;
      // An armed report describes an armed target; a lost one keeps saying why it is lost.
      if (report.state === TargetState.ARMED && report.reason && t.state === TargetState.ARMED) t.reason = report.reason;
      if (ends && isTargetActive(t)) {
        t.state = report.state;
        t.reason = report.reason;
      }
      rollUp(j);
    }, [hostId]);
    if (report.state === TargetState.EXITED) this.core.ledger.forgetProcess(hostId, report.pid);
    else this.core.ledger.noteReserved(hostId, report.pid, report.reservedMask);
    if (ends) {
      const t = job.targets.find((x) => x.hostId === hostId && x.pid === report.pid);
      if (!t || !isTargetActive(t)) this.core.ledger.release(hostId, report.pid, report.jobId);
      this.queue.drainSoon();
    }
    if (isJobFinal(job)) this.ending.forgetJobTimers(job);
    this.core.publish(job);
    const budget = job.spec?.maxHits ?? 0n;
    if (!isJobFinal(job) && budget > 0n && (job.counts?.delivered ?? 0n) >= budget) {
      await this.ending.end(job.id, JobState.COMPLETED, `max hits reached (${budget})`);
    }
  }

  /** A process exited: targets of other jobs still waiting for its registers end with it. */
  private async exitWaiting(hostId: string, pid: number, why: string): Promise<void> {
    for (const job of this.core.store.active()) {
      if (!job.targets.some((t) => t.hostId === hostId && t.pid === pid && isTargetWaiting(t))) continue;
      const updated = await this.core.store.mutate(job.id, (j) => {
        for (const t of j.targets) {
          if (t.hostId !== hostId || t.pid !== pid || !isTargetWaiting(t)) continue;
          t.state = TargetState.EXITED;
          t.reason = `${why} while waiting for debug registers`;
        }
        rollUp(j);
      }, [hostId]);
      if (isJobFinal(updated)) this.ending.forgetJobTimers(updated);
      this.core.publish(updated);
    }
  }
}
