// What the event stream already holds of one job's hits from this host: an
// agent that starts again after a crash reads it before arming the job, so
// the hit sequence goes on where the stream ends (readers drop a host's
// sequence seen before) and each target's delivered count includes every
// hit stored in its name, also those stored after the last count the
// controller heard. A counting job's reports carry cumulative totals: its
// targets go on from the last one stored.
import { create, fromBinary } from "@bufbuild/protobuf";
import type { NatsConnection } from "nats";
import { HitBatchSchema, HitCountsSchema, SequenceTracker, eventStream, eventSubject, failFirstCreation, isStreamNotFound, readPending, type HitCounts, type NatsRefusals } from "../proto/index.js";

export interface StoredHits {
  /** The highest hit sequence stored for the job and host (0: none). */
  lastSequence: bigint;
  /** Hits stored per process, each once. */
  byPid: Map<number, bigint>;
  /** A counting job's totals per process, from the last count report stored. */
  countedByPid: Map<number, HitCounts>;
}

export type StoredHitsReader = (jobId: string, hostId: string) => Promise<StoredHits>;

/**
 * Reads the stored hits of one job from one host, in stream order: those
 * stored when reading began (nobody publishes them meanwhile: this agent has
 * not armed the job yet). With `refusals`, a subject the server
 * refuses fails the read at once instead of leaving nats.js retrying.
 */
export function storedHitsReader(nc: NatsConnection, refusals?: NatsRefusals): StoredHitsReader {
  const guard = <T>(work: Promise<T>): Promise<T> => (refusals ? refusals.guard(work) : work);
  return async (jobId, hostId) => {
    const found: StoredHits = { lastSequence: 0n, byPid: new Map(), countedByPid: new Map() };
    const countSequence = new Map<number, bigint>();
    const subject = eventSubject(jobId, hostId);
    // An ordered consumer filtered on this host's own subject: what the agent's NATS permissions allow, and no more.
    let consumer;
    try {
      consumer = failFirstCreation(await guard(nc.jetstream().consumers.get(eventStream, { filterSubjects: subject })));
    } catch (err) {
      if (isStreamNotFound(err)) return found;
      throw err;
    }
    const seen = new SequenceTracker();
    await readPending(
      consumer,
      (message) => {
        const batch = fromBinary(HitBatchSchema, message.data);
        for (const hit of batch.hits) {
          if (!seen.add(hostId, hit.sequence)) continue;
          found.byPid.set(hit.pid, (found.byPid.get(hit.pid) ?? 0n) + 1n);
          if (hit.sequence > found.lastSequence) found.lastSequence = hit.sequence;
        }
        // Resent reports may land after later ones: the highest sequence is the latest.
        for (const report of batch.counts) {
          if (!seen.add(hostId, report.sequence)) continue;
          if (report.sequence > found.lastSequence) found.lastSequence = report.sequence;
          if (report.totals && report.sequence > (countSequence.get(report.pid) ?? 0n)) {
            countSequence.set(report.pid, report.sequence);
            found.countedByPid.set(report.pid, report.totals);
          }
        }
      },
      { guard },
    );
    return found;
  };
}

/**
 * Where a target's counters go on from when an agent that started again arms
 * it: the counts the controller last heard (`last`) and the hits the stream
 * holds for it (`stored`). Every stored hit was delivered; hits the last
 * counts knew as trapped but that are neither stored nor counted otherwise
 * were lost with the earlier agent, and count as dropped.
 */
export function resumeCounts(last: HitCounts | undefined, stored: bigint): HitCounts {
  const suppressed = last?.suppressed ?? 0n;
  const filtered = last?.filtered ?? 0n;
  const delivered = max(last?.delivered ?? 0n, stored);
  const dropped = max(last?.dropped ?? 0n, (last?.trapped ?? 0n) - delivered - suppressed - filtered);
  return create(HitCountsSchema, { trapped: delivered + dropped + suppressed + filtered, delivered, suppressed, dropped, filtered });
}

/**
 * Where a counting job's target goes on from: the later of the counts the
 * controller last heard and the totals of the last count report stored
 * (both only grow; each adds up on its own), so its totals stay continuous
 * across an agent restart.
 */
export function resumeCountingTotals(last: HitCounts | undefined, stored: HitCounts | undefined): HitCounts {
  const later = !stored ? last : !last || stored.trapped >= last.trapped ? stored : last;
  return resumeCounts(later, later?.delivered ?? 0n);
}

function max(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}
