// The slot ledger: which jobs hold which debug register of which target
// process, what the kernel keeps reserved there, what is held outside
// fleetwatch, and who else traces it. Pure bookkeeping, no I/O: the
// controller rebuilds it from the job store at start, asks the placement
// core (placement.ts) for decisions on its snapshots, and changes it only
// together with the stored jobs.
import { create } from "@bufbuild/protobuf";
import { SlotAssignmentSchema, formatChunk, sameChunk, slotsPerThread, type Chunk, type SlotAssignment } from "../proto/index.js";
import { SlotsExhaustedError } from "./errors.js";
import { applyPlacement, releaseJob } from "./placement.js";
import type { HeldSlot, PlacementJob, TargetPlacement, TargetSnapshot } from "./placement-types.js";

/** The ledger key of a target process. */
export function targetKey(hostId: string, pid: number): string {
  return `${hostId}/${pid}`;
}

/** How long a register that met ENOSPC is kept out of placement before it is tried again. */
export const foreignHoldMs = 60_000;

interface Entry {
  snapshot: TargetSnapshot;
  /** When each foreign register was last seen busy (index = DR). */
  foreignSinceMs: number[];
}

const emptySlots = (): Array<HeldSlot | null> => new Array<HeldSlot | null>(slotsPerThread).fill(null);

/** Debug-register bookkeeping per (host, pid); at most `slotsPerThread` registers each, shared by identical chunks of ptrace jobs. */
export class SlotLedger {
  private readonly targets = new Map<string, Entry>();

  constructor(private readonly now: () => number = Date.now) {}

  private entry(hostId: string, pid: number): Entry {
    const key = targetKey(hostId, pid);
    let entry = this.targets.get(key);
    if (!entry) {
      entry = { snapshot: { hostId, pid, slots: emptySlots(), reservedMask: 0, foreignMask: 0 }, foreignSinceMs: [] };
      this.targets.set(key, entry);
    }
    return entry;
  }

  /** Drops a target the ledger no longer has anything to say about. */
  private prune(hostId: string, pid: number): void {
    const key = targetKey(hostId, pid);
    const s = this.targets.get(key)?.snapshot;
    if (s && s.slots.every((x) => !x) && s.reservedMask === 0 && s.foreignMask === 0 && !s.tracedBy) this.targets.delete(key);
  }

  /** The target as the placement core sees it; foreign marks older than foreignHoldMs are tried again. */
  snapshot(hostId: string, pid: number): TargetSnapshot {
    const entry = this.targets.get(targetKey(hostId, pid));
    if (!entry) return { hostId, pid, slots: emptySlots(), reservedMask: 0, foreignMask: 0 };
    const s = entry.snapshot;
    if (s.foreignMask !== 0) {
      const now = this.now();
      let mask = s.foreignMask;
      for (let dr = 0; dr < slotsPerThread; dr++) if ((mask >> dr) & 1 && now - (entry.foreignSinceMs[dr] ?? 0) >= foreignHoldMs) mask &= ~(1 << dr);
      if (mask !== s.foreignMask) entry.snapshot = { ...s, foreignMask: mask };
    }
    return entry.snapshot;
  }

  /**
   * Records which registers the kernel keeps reserved in a process for
   * fleetwatch: a ptrace-reserved slot stays taken until the thread exits,
   * even after DR7 = 0 and detach, so reusing it costs other tools nothing.
   */
  noteReserved(hostId: string, pid: number, mask: number): void {
    if (mask === 0) return;
    const entry = this.entry(hostId, pid);
    entry.snapshot = { ...entry.snapshot, reservedMask: entry.snapshot.reservedMask | mask };
  }

  /** Registers an arm met ENOSPC on: something outside fleetwatch (perf, a debugger) holds kernel breakpoint slots there. */
  noteForeign(hostId: string, pid: number, mask: number): void {
    if (mask === 0) return;
    const entry = this.entry(hostId, pid);
    const now = this.now();
    for (let dr = 0; dr < slotsPerThread; dr++) if ((mask >> dr) & 1) entry.foreignSinceMs[dr] = now;
    entry.snapshot = { ...entry.snapshot, foreignMask: entry.snapshot.foreignMask | mask };
  }

  /** Another tracer owns the process (or, with undefined, no longer does). */
  noteTracer(hostId: string, pid: number, tracedBy: { pid: number; comm: string } | undefined): void {
    const current = this.targets.get(targetKey(hostId, pid))?.snapshot.tracedBy;
    if (!tracedBy && !current) return;
    const entry = this.entry(hostId, pid);
    const { tracedBy: _old, ...rest } = entry.snapshot;
    entry.snapshot = tracedBy ? { ...rest, tracedBy } : rest;
    this.prune(hostId, pid);
  }

  /** The process is gone (exit, exec): reservations, foreign marks and tracers went with it. */
  forgetProcess(hostId: string, pid: number): void {
    const entry = this.targets.get(targetKey(hostId, pid));
    if (!entry) return;
    entry.snapshot = { hostId, pid, slots: entry.snapshot.slots, reservedMask: 0, foreignMask: 0 };
    entry.foreignSinceMs = [];
    this.prune(hostId, pid);
  }

  /** Puts back a snapshot taken earlier (undoing decisions whose job could not be stored). */
  put(snapshot: TargetSnapshot): void {
    const entry = this.entry(snapshot.hostId, snapshot.pid);
    entry.snapshot = snapshot;
    this.prune(snapshot.hostId, snapshot.pid);
  }

  /** Reserved mask of a process (bit i = DRi). */
  reservedMask(hostId: string, pid: number): number {
    return this.targets.get(targetKey(hostId, pid))?.snapshot.reservedMask ?? 0;
  }

  /** Every target the ledger knows something about. */
  entries(): TargetSnapshot[] {
    return [...this.targets.values()].map((e) => this.snapshot(e.snapshot.hostId, e.snapshot.pid));
  }

  /** Takes one placement of a decision made on this ledger's snapshot: victims leave, the job takes a reference on each register. */
  take(job: PlacementJob, placement: TargetPlacement): void {
    const entry = this.entry(placement.hostId, placement.pid);
    entry.snapshot = applyPlacement(entry.snapshot, job, placement);
  }

  /** take(), and the job's slot assignments it made. */
  apply(job: PlacementJob, placement: TargetPlacement): SlotAssignment[] {
    this.take(job, placement);
    return assignmentsOf(placement.assignments);
  }

  /** Records registers a stored job already holds (rebuild after restart). Throws on a conflict. */
  restore(hostId: string, pid: number, job: PlacementJob, assignments: readonly SlotAssignment[]): void {
    const entry = this.entry(hostId, pid);
    for (const { dr, chunk } of assignments) {
      if (!chunk) continue;
      const held = entry.snapshot.slots[dr];
      if (held && sameChunk(held.chunk, chunk) && held.holders.some((h) => h.jobId === job.id)) continue;
      if (held && (!sameChunk(held.chunk, chunk) || held.exclusive || job.backend === "perf")) {
        throw new SlotsExhaustedError(
          `DR${dr} of pid ${pid} on ${hostId} is claimed by ${held.holders.map((h) => h.jobId).join(", ")} (${formatChunk(held.chunk)}) and by ${job.id} (${formatChunk(chunk)})`,
          hostId,
          pid,
          held.holders.map((h) => h.jobId),
        );
      }
    }
    entry.snapshot = applyPlacement(entry.snapshot, job, { hostId, pid, evicts: [], assignments: assignments.flatMap((a) => (a.chunk ? [{ dr: a.dr, chunk: a.chunk, shared: false }] : [])) });
  }

  /** The job gives up its references on one target; returns the registers nobody holds any more. */
  release(hostId: string, pid: number, jobId: string): number[] {
    const entry = this.targets.get(targetKey(hostId, pid));
    if (!entry) return [];
    const { target, cleared } = releaseJob(entry.snapshot, jobId);
    entry.snapshot = target;
    this.prune(hostId, pid);
    return cleared;
  }

  /** Free registers on a target (neither held nor foreign; with `excludeReserved`, nor reserved by an earlier ptrace watch, as a perf job sees them). */
  freeCount(hostId: string, pid: number, excludeReserved = false): number {
    const s = this.snapshot(hostId, pid);
    const blocked = s.foreignMask | (excludeReserved ? s.reservedMask : 0);
    let n = 0;
    for (let dr = 0; dr < slotsPerThread; dr++) if (!s.slots[dr] && !((blocked >> dr) & 1)) n++;
    return n;
  }

  /** Who holds what on a target, for refusals: `DR0 a 0x1000/8 w #0; DR1 a,b 0x2000/4 w #0`. */
  describe(hostId: string, pid: number): { text: string; holders: string[] } {
    const s = this.snapshot(hostId, pid);
    const holders = new Set<string>();
    const used: string[] = [];
    s.slots.forEach((slot, dr) => {
      if (slot) {
        const ids = slot.holders.map((h) => h.jobId);
        ids.forEach((id) => holders.add(id));
        used.push(`DR${dr} ${ids.join(",")} ${formatChunk(slot.chunk)}`);
      } else if ((s.foreignMask >> dr) & 1) used.push(`DR${dr} outside fleetwatch`);
    });
    return { text: used.join("; "), holders: [...holders] };
  }
}

/** One SlotAssignment per register: a chunk repeated within a job shares its first copy's register. */
export function assignmentsOf(assignments: ReadonlyArray<{ dr: number; chunk: Chunk }>): SlotAssignment[] {
  const seen = new Set<number>();
  const out: SlotAssignment[] = [];
  for (const a of assignments) {
    if (seen.has(a.dr)) continue;
    seen.add(a.dr);
    out.push(create(SlotAssignmentSchema, { dr: a.dr, chunk: a.chunk }));
  }
  return out;
}
