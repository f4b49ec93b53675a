// Pure rules of job and target lifecycle: which states are final, and how
// the targets' states and counters roll up onto the job.
import { create } from "@bufbuild/protobuf";
import { HitCountsSchema, JobState, TargetState, isFinalJobState, type HitCounts, type Job, type Target } from "../proto/index.js";

/** A target that holds (or is about to hold) debug registers. */
export function isTargetActive(target: Target): boolean {
  return target.state === TargetState.PENDING || target.state === TargetState.ARMED;
}

/** A job that will not change any more. */
export function isJobFinal(job: Job): boolean {
  return isFinalJobState(job.state);
}

/** Sum of counters. */
export function addCounts(items: ReadonlyArray<HitCounts | undefined>): HitCounts {
  const sum = create(HitCountsSchema);
  for (const c of items) {
    if (!c) continue;
    sum.trapped += c.trapped;
    sum.delivered += c.delivered;
    sum.suppressed += c.suppressed;
    sum.dropped += c.dropped;
    sum.filtered += c.filtered;
  }
  return sum;
}

/**
 * Recomputes the job's state and counters from its targets. A cancelled job
 * stays cancelled; otherwise any armed target makes it armed, any pending one
 * pending, and once every target is final the job is failed (all failed) or
 * completed.
 */
export function rollUp(job: Job, nowMs = Date.now()): void {
  job.counts = addCounts(job.targets.map((t) => t.counts));
  if (isJobFinal(job)) return;
  const states = job.targets.map((t) => t.state);
  if (states.includes(TargetState.ARMED)) job.state = JobState.ARMED;
  else if (states.includes(TargetState.PENDING)) job.state = JobState.PENDING;
  else {
    job.state = states.length > 0 && states.every((s) => s === TargetState.FAILED) ? JobState.FAILED : JobState.COMPLETED;
    if (!job.reason) job.reason = job.targets.map((t) => t.reason).find((r) => r) ?? "";
    job.endedUnixMs = BigInt(nowMs);
  }
}

/** Marks the job final with a state and reason, ending every active target the same way. */
export function finish(job: Job, state: JobState.COMPLETED | JobState.CANCELLED | JobState.FAILED, reason: string, nowMs = Date.now()): void {
  const targetState = state === JobState.CANCELLED ? TargetState.CANCELLED : state === JobState.FAILED ? TargetState.FAILED : TargetState.COMPLETED;
  for (const target of job.targets) {
    if (!isTargetActive(target)) continue;
    target.state = targetState;
    target.reason = reason;
  }
  job.state = state;
  job.reason = reason;
  job.endedUnixMs = BigInt(nowMs);
  job.counts = addCounts(job.targets.map((t) => t.counts));
}
