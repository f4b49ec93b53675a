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

  /** The four registers of a target: a holding or undefined (free). */
  slotsOf(hostId: string, pid: number): ReadonlyArray<Holding | undefined> {
    return this.targets.get(targetKey(hostId, pid)) ?? new Array<undefined>(slotsPerThread).fill(undefined);
  }

  /** Every target with at least one register in use. */
  entries(): Array<{ hostId: string; pid: number; slots: ReadonlyArray<Holding | undefined> }> {
    return [...this.targets.entries()].map(([key, slots]) => {
      const at = key.lastIndexOf("/");
      return { hostId: key.slice(0, at), pid: Number(key.slice(at + 1)), slots };
    });
  }

  /**
   * Places all of a job's chunks on one target or none: each chunk takes the
   * lowest free register. Throws SlotsExhaustedError naming the holders.
   */
  reserve(hostId: string, pid: number, jobId: string, chunks: readonly Chunk[]): SlotAssignment[] {
    const key = targetKey(hostId, pid);
    const slots = [...(this.targets.get(key) ?? new Array<Holding | undefined>(slotsPerThread).fill(undefined))];
    const free = slots.flatMap((holding, dr) => (holding ? [] : [dr]));
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
