// Debug registers held outside fleetwatch, as this agent learns of them: an
// arm that met ENOSPC names registers another tracer or perf user holds.
// They count as foreign for a minute, the same rule the controller's ledger
// keeps, and are forgotten with their process.

/** How long registers an arm found busy count as held outside fleetwatch. */
const foreignHoldMs = 60_000;

/** One process's debug registers as this agent knows them, each a DR bit mask. */
export interface ProcessRegisters {
  /** Held by this agent's armed watches. */
  ours: number;
  /** Kept reserved by the kernel for our earlier watches. */
  reserved: number;
  /** Found busy by an arm in the last minute: held outside fleetwatch. */
  foreign: number;
}

/** The registers arms found busy, per pid. */
export class ForeignRegisters {
  private readonly byPid = new Map<number, { mask: number; atMs: number }>();

  /** An arm asked for `wanted` (a DR mask) in `pid` and met ENOSPC; `ours` is what our watches hold there. */
  note(pid: number, wanted: number, ours: number, nowMs = Date.now()): void {
    const mask = wanted & ~ours;
    if (mask === 0) return;
    this.byPid.set(pid, { mask: (this.byPid.get(pid)?.mask ?? 0) | mask, atMs: nowMs });
  }

  /** The process is gone. */
  forget(pid: number): void {
    this.byPid.delete(pid);
  }

  /** Pids with foreign registers now; older notes are dropped. */
  pids(nowMs = Date.now()): number[] {
    for (const [pid, f] of this.byPid) if (nowMs - f.atMs >= foreignHoldMs) this.byPid.delete(pid);
    return [...this.byPid.keys()];
  }

  /** The foreign mask of a pid (0: none known). */
  of(pid: number): number {
    return this.byPid.get(pid)?.mask ?? 0;
  }
}

/** A DR bit mask of the slots named. */
export function slotMask(slots: Iterable<{ dr: number }>): number {
  let mask = 0;
  for (const s of slots) mask |= 1 << s.dr;
  return mask;
}
