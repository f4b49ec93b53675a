// A counting watch's numbers: its totals (its earlier watches' plus the
// helper's, which only grow) and the CountReport that carries them, with the
// interval's hits per thread, on the job's event subject.
import { create } from "@bufbuild/protobuf";
import { CountReportSchema, HitCountsSchema, type CountReport, type HitCounts } from "../proto/index.js";
import type { GroupCounts, ThreadHits } from "./helper-process.js";

/** A counting watch's totals: its earlier watches' plus the helper's (delivered = hits counted; lost samples are dropped). */
export function countingTotals(base: HitCounts, counts: GroupCounts): HitCounts {
  return create(HitCountsSchema, {
    trapped: base.trapped + counts.trapped,
    delivered: base.delivered + counts.delivered,
    suppressed: base.suppressed + counts.suppressed,
    filtered: base.filtered + counts.filtered,
    dropped: base.dropped + counts.lost,
  });
}

/** Who a count report is of, and how often the helper counts. */
export interface CountingWatch {
  readonly jobId: string;
  readonly pid: number;
  readonly base: HitCounts;
  readonly countIntervalMs: bigint;
}

/** One COUNTS from the helper as the CountReport published for it. */
export function countReport(watch: CountingWatch, hostId: string, timeNs: bigint, counts: GroupCounts, threads: readonly ThreadHits[], sequence: bigint): CountReport {
  return create(CountReportSchema, {
    jobId: watch.jobId,
    hostId,
    pid: watch.pid,
    timeUnixNano: timeNs,
    intervalMs: watch.countIntervalMs,
    totals: countingTotals(watch.base, counts),
    threads: threads.map((t) => ({ tid: t.tid, hits: t.hits })),
    sequence,
  });
}
