// The fake register backend of one simulated process for the scale bench:
// four debug registers with the kernel's rules as the agent meets them (a
// register held by another watch is EBUSY, all of a job's registers or none,
// a ptrace arm leaves its registers reserved, a perf arm nothing), and
// counters. Pure bookkeeping, no I/O.
import { slotsPerThread } from "../proto/index.js";

/** Why an arm or disarm was refused, as an agent reports it (errno name first). */
export interface SimRefusal {
  readonly errnoName: "EBUSY" | "EEXIST" | "EINVAL" | "ENOENT" | "ENOSPC";
  readonly message: string;
}

/** Counters of one process's registers since it was created. */
export interface SimRegisterCounts {
  arms: number;
  disarms: number;
  /**
   * Arms refused, by errno name. EBUSY means the controller handed out a
   * register that was in use; ENOSPC, a perf arm on a register a ptrace
   * watch had reserved.
   */
  refused: Record<string, number>;
  /** Most registers in use at once. */
  peakUsed: number;
}

/** How a watch is armed: the agent's two backends. */
export type SimBackend = "ptrace" | "perf";

/** DR0-DR3 of one simulated process: which job holds each, and what the kernel keeps reserved. */
export class SimRegisters {
  private readonly holders: Array<string | undefined> = new Array<string | undefined>(slotsPerThread).fill(undefined);
  /**
   * Registers a ptrace arm ever used here (bit i = DRi): ptrace keeps a
   * register once written reserved for its tracer until the thread exits.
   * A perf event gives its register back when it is closed.
   */
  reservedMask = 0;
  readonly counts: SimRegisterCounts = { arms: 0, disarms: 0, refused: {}, peakUsed: 0 };

  /** Registers held now. */
  get used(): number {
    return this.holders.filter((h) => h !== undefined).length;
  }

  /** Takes every register in `drs` for `jobId` with `backend`, or none of them. */
  arm(jobId: string, drs: readonly number[], backend: SimBackend): SimRefusal | undefined {
    const refusal = this.check(jobId, drs, backend);
    if (refusal) {
      this.counts.refused[refusal.errnoName] = (this.counts.refused[refusal.errnoName] ?? 0) + 1;
      return refusal;
    }
    for (const dr of drs) {
      this.holders[dr] = jobId;
      if (backend === "ptrace") this.reservedMask |= 1 << dr;
    }
    this.counts.arms++;
    this.counts.peakUsed = Math.max(this.counts.peakUsed, this.used);
    return undefined;
  }

  /** Frees every register of `jobId`. */
  disarm(jobId: string): SimRefusal | undefined {
    if (!this.holders.includes(jobId)) return { errnoName: "ENOENT", message: `job ${jobId} holds no register here` };
    for (let dr = 0; dr < slotsPerThread; dr++) if (this.holders[dr] === jobId) this.holders[dr] = undefined;
    this.counts.disarms++;
    return undefined;
  }

  private check(jobId: string, drs: readonly number[], backend: SimBackend): SimRefusal | undefined {
    if (drs.length === 0) return { errnoName: "EINVAL", message: "an arm needs at least one register" };
    if (this.holders.includes(jobId)) return { errnoName: "EEXIST", message: `job ${jobId} is already armed here` };
    const seen = new Set<number>();
    for (const dr of drs) {
      if (!Number.isInteger(dr) || dr < 0 || dr >= slotsPerThread) return { errnoName: "EINVAL", message: `DR${dr} is not a debug address register` };
      if (seen.has(dr)) return { errnoName: "EINVAL", message: `DR${dr} is assigned twice` };
      seen.add(dr);
      const holder = this.holders[dr];
      if (holder !== undefined) return { errnoName: "EBUSY", message: `DR${dr} is in use by job ${holder}` };
      // The kernel counts a register ptrace reserved as taken: a perf breakpoint finds no slot for it.
      if (backend === "perf" && (this.reservedMask >> dr) & 1) return { errnoName: "ENOSPC", message: `DR${dr} is reserved by an earlier ptrace watch` };
    }
    return undefined;
  }
}
