// The one place the bench calls HelperProcess.arm, whose options keep growing:
// keep this file in step with agent/helper-process.ts and everything else
// stays as it is.
import type { ArmResult, HelperChunk, HelperProcess } from "../agent/helper-process.js";

/** What the bench asks of one arm. */
export interface BenchArmOptions {
  /** Hit budget; 0n = none. */
  maxHits: bigint;
  /** Rate limit; only when {@link helperSupportsRateLimit}. */
  maxHitsPerSecond?: number;
}

/**
 * Whether this helper takes options.maxHitsPerSecond. While it did not, the
 * rate-limited case reported "not supported by this helper" instead of
 * measuring something else.
 */
export const helperSupportsRateLimit = true;

/** Arms one 8-byte write watch on `address` in DR0 of every thread of pid. */
export function armWrite8(helper: HelperProcess, pid: number, group: bigint, address: bigint, options: BenchArmOptions): Promise<ArmResult> {
  const chunks: HelperChunk[] = [{ dr: 0, mode: "w", length: 8, address }];
  return helper.arm(pid, group, chunks, {
    maxHits: options.maxHits,
    ...(options.maxHitsPerSecond === undefined ? {} : { maxHitsPerSecond: options.maxHitsPerSecond }),
  });
}
