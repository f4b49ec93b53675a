// The placement contract: what the controller hands the pure scheduler (a
// snapshot of candidate targets and the job) and the decision it gets back.
// Plain readonly data, no I/O, so decisions can be tested by tables and replayed.
import type { Chunk, PlacementMode } from "../proto/index.js";

export type { PlacementMode };

/** A job holding a debug register; several jobs share a register that watches an identical chunk. */
export interface SlotHolder {
  readonly jobId: string;
  /** Higher wins; only strictly lower priorities can be preempted. */
  readonly priority: number;
  /** Among equal candidates for eviction the newest goes first. */
  readonly createdUnixMs: number;
}

/**
 * How a job's targets are armed. Both draw on the same kernel pool of four
 * registers per thread; ptrace jobs watching an identical chunk share one
 * register, while each perf job opens events of its own, so a perf register
 * is never shared.
 */
export type PlacementBackend = "ptrace" | "perf";

/** A register in use: one chunk (address, length, mode) and the jobs holding it. Its reference count is `holders.length`. */
export interface HeldSlot {
  readonly chunk: Chunk;
  readonly holders: readonly SlotHolder[];
  /** Held by one perf job: no other job shares it, whatever it watches. */
  readonly exclusive?: boolean;
}

/** The fleet's view of one target process (one host, one pid), as the ledger knows it. */
export interface TargetSnapshot {
  readonly hostId: string;
  readonly pid: number;
  /** The host's labels; only read when a sample spreads by a label. */
  readonly hostLabels?: Readonly<Record<string, string>>;
  /** DR0..DR3 in order: `null` is free. Missing entries count as free. */
  readonly slots: ReadonlyArray<HeldSlot | null>;
  /** Registers the kernel keeps reserved in this process for fleetwatch (bit i = DRi): reused first, costing other tools nothing. */
  readonly reservedMask: number;
  /** Registers held outside fleetwatch (perf, another debugger: the agent met ENOSPC there) (bit i = DRi): never used. */
  readonly foreignMask: number;
  /** Another tracer owns the process: it cannot be watched at all. */
  readonly tracedBy?: { readonly pid: number; readonly comm: string };
}

/** A target the job could go to, with the job's chunks there (symbols resolve per process, so they may differ between targets). */
export interface Candidate extends TargetSnapshot {
  readonly chunks: readonly Chunk[];
}


/** The job being placed. */
export interface PlacementJob {
  readonly id: string;
  /** Higher wins. Equal priority never preempts: the controller's FIFO queue orders those. */
  readonly priority: number;
  readonly createdUnixMs: number;
  readonly placement: PlacementMode;
  /** ptrace jobs share registers watching identical chunks; perf jobs never do. */
  readonly backend: PlacementBackend;
}

/** A (host, pid) pair. */
export interface TargetRef {
  readonly hostId: string;
  readonly pid: number;
}

/** One of the job's chunks in a register. */
export interface Assignment {
  /** 0..3 for DR0..DR3. */
  readonly dr: number;
  readonly chunk: Chunk;
  /** The register already watched this identical chunk (for another ptrace job, or for an earlier chunk of this job): a new reference, no new slot. */
  readonly shared: boolean;
}

/** Everything the job gets on one target. */
export interface TargetPlacement extends TargetRef {
  /** One per chunk of the candidate, in the candidate's chunk order. */
  readonly assignments: readonly Assignment[];
  /** Jobs evicted from this whole target to make room (ids, sorted). */
  readonly evicts: readonly string[];
}

/** A job evicted from one target: the controller disarms it there, tells it, and requeues it. */
export interface Eviction extends TargetRef {
  readonly jobId: string;
}

/** Candidates that do not fit, by cause. */
/** Candidates that do not fit for a cause other than `cause`. */
export function otherShortfalls(counts: ShortfallCounts, cause: keyof ShortfallCounts): number {
  let n = 0;
  for (const [k, v] of Object.entries(counts) as Array<[keyof ShortfallCounts, number]>) if (k !== cause) n += v;
  return n;
}

export interface ShortfallCounts {
  /** Every usable register is held by jobs of equal or higher priority. */
  readonly full: number;
  /** Would fit if registers held outside fleetwatch (foreignMask) were free. */
  readonly foreign: number;
  /** A perf job that would fit if registers earlier ptrace watches reserved in the kernel were free. */
  readonly reserved: number;
  /** Another tracer owns the process. */
  readonly traced: number;
  /** Needs more registers than a thread has, even with sharing. */
  readonly tooMany: number;
}

/** Why a job got fewer targets than it wants, in words and numbers. */
export interface Shortfall {
  /** Like a scheduler's: `0/12 targets have 2 free debug registers: 9 full (jobs a, b), 3 traced by pid 77 (gdb)`. */
  readonly reason: string;
  /** Candidates that fit: already placed, in free or shared registers, or after preempting lower priorities. */
  readonly fits: number;
  /** Targets the mode wants: every candidate for `all` and `any`, `count` for `sample`. */
  readonly needed: number;
  readonly counts: ShortfallCounts;
}

/**
 * What to do for one job. `outcome`:
 * - `placed`: the mode is satisfied (with `kept`, placements made earlier);
 * - `partial`: `any` or `sample` got some targets but fewer than `needed`;
 * - `pending`: nothing new and nothing kept, or an `all` gang that cannot
 *   be completed: no placement and no eviction; the job waits in the queue.
 * `shortfall` is present unless the outcome is `placed`.
 */
export interface PlacementDecision {
  readonly outcome: "placed" | "partial" | "pending";
  /** New placements, sorted by host id then pid. */
  readonly placed: readonly TargetPlacement[];
  /** Evictions the placements need, sorted by host id, pid, job id. */
  readonly preempted: readonly Eviction[];
  /** Candidates where the job already holds its registers: left as they are and counted as placed. */
  readonly kept: readonly TargetRef[];
  readonly shortfall?: Shortfall;
}
