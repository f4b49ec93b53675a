// Hit sequences: each agent numbers a job's hits on its host 1, 2, 3, ...
// (HitEvent.sequence), so whoever reads them back drops a hit stored twice.

/**
 * Remembers which per-host sequences were already seen, so a hit published
 * twice (an agent retrying after a reconnect) is shown and counted once. Keeps
 * a contiguous watermark per host and only the out-of-order rest, so memory
 * stays small when hits arrive in order.
 */
export class SequenceTracker {
  readonly #hosts = new Map<string, { upTo: bigint; ahead: Set<bigint> }>();

  /** Records a hit; false when this host's sequence was seen before. Sequence 0 (unset) is always new. */
  add(hostId: string, sequence: bigint): boolean {
    if (sequence === 0n) return true;
    let host = this.#hosts.get(hostId);
    if (!host) {
      host = { upTo: 0n, ahead: new Set() };
      this.#hosts.set(hostId, host);
    }
    if (sequence <= host.upTo || host.ahead.has(sequence)) return false;
    host.ahead.add(sequence);
    while (host.ahead.delete(host.upTo + 1n)) host.upTo += 1n;
    return true;
  }
}
