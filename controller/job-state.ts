// Pure rules of job and target lifecycle: which states are final, and how
// the targets' states and counters roll up onto the job.
import { create } from "@bufbuild/protobuf";
import { HitCountsSchema, JobState, TargetState, isFinalJobState, type HitCounts, type Job, type Target } from "../proto/index.js";

/** A target that holds debug registers in the ledger (arming, armed, or lost: it keeps them until it returns). */
export function isTargetActive(target: Target): boolean {
  return target.state === TargetState.ARMING || target.state === TargetState.ARMED || target.state === TargetState.LOST;
}

/** A target waiting in the queue for registers: never placed yet, or preempted. It holds none. */
export function isTargetWaiting(target: Target): boolean {
  return target.state === TargetState.PENDING || target.state === TargetState.PREEMPTED;
}

/** A target that is not final: active or waiting. */
export function isTargetLive(target: Target): boolean {
  return isTargetActive(target) || isTargetWaiting(target);
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

/** Whether counters `a` are no older than `b`: the same watch's counters only grow. */
export function notBehind(a: HitCounts, b: HitCounts): boolean {
  return a.trapped >= b.trapped && a.delivered >= b.delivered && a.suppressed >= b.suppressed && a.dropped >= b.dropped && a.filtered >= b.filtered;
}

/** The first few targets named for a line of text, and how many more: `h1/42, h2/7 and 3 more` (not a line of megabytes for a fleet-wide job). */
export function nameTargets(targets: readonly Target[], name: (t: Target) => string, max = 8): string {
  const named = targets.slice(0, max).map(name);
  return named.join(", ") + (targets.length > named.length ? ` and ${targets.length - named.length} more` : "");
}

/** Which targets are not as wanted, for a degraded job's reason: `h1/42 lost, h2/7 preempted` (at most 8 named). */
function describeTroubled(job: Job): string {
  const troubled = job.targets.filter((t) => t.state === TargetState.LOST || t.state === TargetState.FAILED || isTargetWaiting(t));
  return nameTargets(troubled, (t) => `${t.hostId}/${t.pid} ${TargetState[t.state]!.toLowerCase()}`);
}

/**
 * Recomputes the job's state and counters from its targets. A final job stays
 * final. While any target is live: degraded if one is lost, or if armed
 * targets sit beside failed, pending or preempted ones; armed if one is
 * armed (others may be arming); else pending (arming, or waiting in the queue: the
 * controller keeps the queue's reason). Once every target is final the job
 * is failed (all failed) or completed.
 */
export function rollUp(job: Job, nowMs = Date.now()): void {
  job.counts = addCounts(job.targets.map((t) => t.counts));
  if (isJobFinal(job)) return;
  // No target yet, and may wait for a matching process to start: pending, with the reason submit gave.
  if (job.targets.length === 0 && job.queueDeadlineUnixMs > 0n) {
    job.state = JobState.PENDING;
    return;
  }
  const states = job.targets.map((t) => t.state);
  const armed = states.includes(TargetState.ARMED);
  const waiting = job.targets.some(isTargetWaiting);
  if (states.includes(TargetState.LOST) || (armed && (states.includes(TargetState.FAILED) || waiting))) {
    job.state = JobState.DEGRADED;
    job.reason = describeTroubled(job);
  } else if (armed) {
    job.state = JobState.ARMED;
    job.reason = "";
  } else if (states.includes(TargetState.ARMING)) {
    job.state = JobState.PENDING;
    job.reason = "arming";
  } else if (waiting) {
    job.state = JobState.PENDING;
    if (!job.reason || job.reason === "arming") job.reason = "waiting in the queue for debug registers";
  } else {
    job.state = states.length > 0 && states.every((s) => s === TargetState.FAILED) ? JobState.FAILED : JobState.COMPLETED;
    if (!job.reason) job.reason = job.targets.map((t) => t.reason).find((r) => r) ?? "";
    job.endedUnixMs = BigInt(nowMs);
  }
}

/** Marks the job final with a state and reason, ending every active target the same way. */
export function finish(job: Job, state: JobState.COMPLETED | JobState.CANCELLED | JobState.FAILED, reason: string, nowMs = Date.now()): void {
  const targetState = state === JobState.CANCELLED ? TargetState.CANCELLED : state === JobState.FAILED ? TargetState.FAILED : TargetState.COMPLETED;
  for (const target of job.targets) {
    if (!isTargetLive(target)) continue;
    target.state = targetState;
    target.reason = reason;
  }
  job.state = state;
  job.reason = reason;
  job.endedUnixMs = BigInt(nowMs);
  job.counts = addCounts(job.targets.map((t) => t.counts));
}
