// One job's watch on one process of this host as the helper side knows it:
// its group and slots, whether the helper still has it armed, its timers and
// threads, and what the target report says. Its hits are the pipeline's.
import { constants as osConstants } from "node:os";
import type { Arm, SlotAssignment, TimerAt } from "../proto/index.js";
import type { ExitKind, HelperBackend } from "./helper-process.js";
import type { WatchHits } from "./hit-pipeline.js";

/** One job's watch on one process of this host. */
export interface Watch {
  readonly jobId: string;
  readonly pid: number;
  readonly group: bigint;
  readonly slots: SlotAssignment[];
  readonly backend: HelperBackend;
  /** Its counters and hits on their way, in the hit pipeline. */
  readonly hits: WatchHits;
  deadlineTimer: TimerAt | undefined;
  /** Set once the helper no longer has the group armed. */
  ended: boolean;
  lastReported: string;
  /** What the target report says while armed (rate limited, forked, ...). */
  status: string;
  /** With no session for this long the agent disarms it itself (0 = at the lease). */
  readonly lostAfterMs: number;
  threadsTotal: number;
  threadsArmed: number;
}

/** A watch being armed: its threads are known once the helper replies. */
export function newWatch(request: Arm, group: bigint, backend: HelperBackend, hits: WatchHits): Watch {
  return {
    jobId: request.jobId,
    pid: request.pid,
    group,
    slots: request.slots,
    backend,
    hits,
    deadlineTimer: undefined,
    ended: false,
    lastReported: "",
    status: "armed",
    lostAfterMs: Number(request.lostAfterMs),
    threadsTotal: 0,
    threadsArmed: 0,
  };
}

/** The key of a job's watch on a pid. */
export function watchKey(jobId: string, pid: number): string {
  return `${jobId}/${pid}`;
}

/** What a progress report says; unchanged means nothing to send. */
export function progressKey(w: Watch): string {
  const c = w.hits.counts;
  return `${c.trapped}/${c.delivered}/${c.suppressed}/${c.dropped}/${c.filtered} ${w.threadsArmed}/${w.threadsTotal}`;
}

/** Signal numbers to names (9 → SIGKILL). */
const signalNames = new Map(Object.entries(osConstants.signals).map(([name, n]) => [n, name]));

/**
 * Why a watched process is gone, in words: perf watches a process without
 * tracing it, so its exit status may be unknown. A perf watch cannot stop
 * the SIGTRAP some virtual machines raise for a debug exception with no
 * cause (README, "Safety"): a process it kills that way is told so.
 */
export function exitReason(how: ExitKind, code: number, backend?: HelperBackend): string {
  if (how === "gone") return "process exited (its status unknown: its parent reaped it first)";
  if (how === "exited") return `process exited with code ${code}`;
  const name = signalNames.get(code);
  const text = `process killed by signal ${code}${name ? ` (${name})` : ""}`;
  if (name !== "SIGTRAP" || backend !== "perf") return text;
  return `${text}: a perf watch cannot keep from it the SIGTRAP of a debug exception with no cause, which some virtual machines raise now and then (README, "Safety"); --backend ptrace intercepts it`;
}
