// The slot ledger: which job holds which debug register of which target
// process. Pure bookkeeping, no I/O: the controller rebuilds it from the job
// store at start and changes it only together with the stored jobs.
import { create } from "@bufbuild/protobuf";
import { SlotAssignmentSchema, formatChunk, slotsPerThread, type Chunk, type SlotAssignment } from "../proto/index.js";
import { SlotsExhaustedError } from "./errors.js";

/** One register in use. */
export interface Holding {
  readonly jobId: string;
  readonly chunk: Chunk;
}

/** The ledger key of a target process. */
export function targetKey(hostId: string, pid: number): string {
  return `${hostId}/${pid}`;
}

/** Debug-register bookkeeping per (host, pid); at most `slotsPerThread` each. */
export class SlotLedger {
  private readonly targets = new Map<string, Array<Holding | undefined>>();
  /** Registers the kernel keeps reserved per process for earlier watches (bit i = DRi). */
  private readonly reserved = new Map<string, number>();

  /**
   * Records which registers the kernel keeps reserved in a process for
   * fleetwatch: a ptrace-reserved slot stays taken until the thread exits,
   * even after DR7 = 0 and detach, so reusing it costs other tools nothing.
   */
  noteReserved(hostId: string, pid: number, mask: number): void {
    if (mask === 0) return;
    const key = targetKey(hostId, pid);
    this.reserved.set(key, (this.reserved.get(key) ?? 0) | mask);
  }

  /** The process is gone (exit, exec): its reservations went with it. */
  forgetReserved(hostId: string, pid: number): void {
    this.reserved.delete(targetKey(hostId, pid));
  }

  /** Reserved mask of a process (bit i = DRi). */
  reservedMask(hostId: string, pid: number): number {
    return this.reserved.get(targetKey(hostId, pid)) ?? 0;
  }

  /** The four registers of a target: a holding or undefined (free). */
  slotsOf(hostId: string, pid: number): ReadonlyArray<Holding | undefined> {
    return this.targets.get(targetKey(hostId, pid)) ?? new Array<undefined>(slotsPerThread).fill(undefined);
  }

  /** Every target with a register in use or reserved, with its reserved mask. */
  entries(): Array<{ hostId: string; pid: number; slots: ReadonlyArray<Holding | undefined>; reservedMask: number }> {
    const keys = new Set([...this.targets.keys(), ...this.reserved.keys()]);
    return [...keys].map((key) => {
      const at = key.lastIndexOf("/");
      const hostId = key.slice(0, at);
      const pid = Number(key.slice(at + 1));
      return { hostId, pid, slots: this.slotsOf(hostId, pid), reservedMask: this.reserved.get(key) ?? 0 };
    });
  }

  /**
   * Places all of a job's chunks on one target or none: each chunk takes a
   * free register the kernel already reserved for us there, else the lowest
   * free one. Throws SlotsExhaustedError naming the holders.
   */
  reserve(hostId: string, pid: number, jobId: string, chunks: readonly Chunk[]): SlotAssignment[] {
    const key = targetKey(hostId, pid);
    const slots = [...(this.targets.get(key) ?? new Array<Holding | undefined>(slotsPerThread).fill(undefined))];
    const mask = this.reserved.get(key) ?? 0;
    const isReserved = (dr: number) => ((mask >> dr) & 1) === 1;
    const free = slots.flatMap((holding, dr) => (holding ? [] : [dr])).sort((a, b) => Number(isReserved(b)) - Number(isReserved(a)) || a - b);
    if (chunks.length > free.length) {
      const holders = [...new Set(slots.flatMap((h) => (h ? [h.jobId] : [])))];
      const used = slots.flatMap((h, dr) => (h ? [`DR${dr} ${h.jobId} ${formatChunk(h.chunk)}`] : []));
      throw new SlotsExhaustedError(
        `pid ${pid} on ${hostId} has ${free.length} free debug register(s) of ${slotsPerThread} and the job needs ${chunks.length}; held by ${used.join("; ")}. Cancel one of ${holders.join(", ")} or wait for it to end`,
        hostId,
        pid,
        holders,
      );
    }
    const assignments = chunks.map((chunk, i) => {
      const dr = free[i]!;
      slots[dr] = { jobId, chunk };
      return create(SlotAssignmentSchema, { dr, chunk });
    });
    this.targets.set(key, slots);
    return assignments;
  }

  /** Records registers a stored job already holds (rebuild after restart). Throws on a conflict. */
  restore(hostId: string, pid: number, jobId: string, assignments: readonly SlotAssignment[]): void {
    const key = targetKey(hostId, pid);
    const slots = [...(this.targets.get(key) ?? new Array<Holding | undefined>(slotsPerThread).fill(undefined))];
    for (const { dr, chunk } of assignments) {
      const held = slots[dr];
      if (held && held.jobId !== jobId) throw new SlotsExhaustedError(`DR${dr} of pid ${pid} on ${hostId} is claimed by both ${held.jobId} and ${jobId}`, hostId, pid, [held.jobId]);
      if (!chunk) continue;
      slots[dr] = { jobId, chunk };
    }
    this.targets.set(key, slots);
  }

  /** Frees every register a job holds on one target. */
  release(hostId: string, pid: number, jobId: string): void {
    const key = targetKey(hostId, pid);
    const slots = this.targets.get(key);
    if (!slots) return;
    const left = slots.map((h) => (h?.jobId === jobId ? undefined : h));
    if (left.every((h) => h === undefined)) this.targets.delete(key);
    else this.targets.set(key, left);
  }

  /** Free registers on a target. */
  freeCount(hostId: string, pid: number): number {
    return this.slotsOf(hostId, pid).filter((h) => h === undefined).length;
  }
}
