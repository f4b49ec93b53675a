// Fencing on the receiving side: a command carries the epoch of the leader
// that sent it, and a deposed leader's commands (a lower epoch) are refused.

/**
 * The agent's fencing check: remembers the highest epoch seen and refuses
 * commands carrying a lower one (a deposed leader that has not noticed yet).
 * The same epoch again is accepted: one leader sends many commands.
 */
export class EpochGuard {
  private top: bigint | undefined;

  /** `highest`: an epoch remembered from before (e.g. stored by the agent). */
  constructor(highest?: bigint) {
    this.top = highest;
  }

  /** True if `epoch` is not older than any seen so far (and remembers it). */
  accept(epoch: bigint): boolean {
    if (this.top !== undefined && epoch < this.top) return false;
    this.top = epoch;
    return true;
  }

  /** The highest epoch accepted so far. */
  get highest(): bigint | undefined {
    return this.top;
  }
}
