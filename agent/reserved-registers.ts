// Debug registers the kernel keeps reserved in a process for this agent's
// earlier watches, until that process exits: the controller's slot ledger
// hears them with every report, and hears when they are free again.
import { isAlive, processStartTime } from "./process-liveness.js";

/** Reserved registers per process, each with the start time that tells a reused pid apart. */
export class ReservedRegisters {
  private readonly masks = new Map<number, number>();
  /** Start time of each such process, so a reused pid is not taken for it. */
  private readonly startTimes = new Map<number, number | undefined>();

  /** Records debug registers the kernel keeps reserved in a process for us. */
  note(pid: number, mask: number): void {
    if (!mask) return;
    this.masks.set(pid, (this.masks.get(pid) ?? 0) | mask);
    if (!this.startTimes.has(pid)) this.startTimes.set(pid, processStartTime(pid));
  }

  /** The registers reserved in pid (a DR bit mask; 0 = none). */
  of(pid: number): number {
    return this.masks.get(pid) ?? 0;
  }

  /** Processes with reservations. */
  pids(): IterableIterator<number> {
    return this.masks.keys();
  }

  /** The process and its kernel reservations are gone. */
  forget(pid: number): void {
    this.masks.delete(pid);
    this.startTimes.delete(pid);
  }

  /**
   * The processes holding reservations that have exited, each forgotten as
   * it is yielded; a pid that is `busy` is left for its own exit event.
   */
  *exited(busy: (pid: number) => boolean): Generator<{ pid: number; mask: number }> {
    for (const [pid, mask] of this.masks) {
      if (busy(pid) || isAlive(pid, this.startTimes.get(pid))) continue;
      this.forget(pid);
      yield { pid, mask };
    }
  }
}
