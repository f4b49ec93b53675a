// Job events for console tests: hits of two writers with their own stacks
// (as test/fixtures/two-writers.c makes them) and count reports.
import { create } from "@bufbuild/protobuf";
import { CountReportSchema, HitEventSchema, JobSchema, JobState, WatchMode, type Job } from "../../proto/index.js";
import type { JobEvent } from "../../cli/events.js";

/** Hit `sequence` of host-a/42 written by `writer` (fw_write_alpha or fw_write_beta) through its loop. */
export function writerHit(jobId: string, sequence: number, writer: "fw_write_alpha" | "fw_write_beta"): JobEvent {
  const loop = writer === "fw_write_alpha" ? "fw_alpha_loop" : "fw_beta_loop";
  const ip = writer === "fw_write_alpha" ? 0x401136n : 0x401176n;
  return {
    kind: "hit",
    hit: create(HitEventSchema, {
      jobId,
      hostId: "host-a",
      pid: 42,
      tid: writer === "fw_write_alpha" ? 43 : 44,
      address: 0x4010n,
      length: 8,
      mode: WatchMode.WRITE,
      oldValue: BigInt(sequence - 1),
      newValue: BigInt(sequence),
      ip,
      sequence: BigInt(sequence),
      timeUnixNano: 1_700_000_000_000_000_000n + BigInt(sequence) * 1_000_000n,
      stack: [
        { ip, function: writer, offset: 6n },
        { ip: ip + 0x40n, function: loop, offset: 0x20n },
        { ip: 0x7f0000001000n, function: "start_thread", offset: 0x100n },
      ],
    }),
  };
}

/** `alpha` hits of fw_write_alpha, then `beta` of fw_write_beta, numbered from `first`. */
export function twoWriters(jobId: string, alpha: number, beta: number, first = 1): JobEvent[] {
  return [...Array.from({ length: alpha }, (_, i) => writerHit(jobId, first + i, "fw_write_alpha")), ...Array.from({ length: beta }, (_, i) => writerHit(jobId, first + alpha + i, "fw_write_beta"))];
}

/** A count report of host-a/42: `hits` in the interval by tid 43, `total` delivered so far. */
export function countEvent(sequence: number, hits: bigint, total: bigint): JobEvent {
  return {
    kind: "count",
    report: create(CountReportSchema, {
      hostId: "host-a",
      pid: 42,
      sequence: BigInt(sequence),
      intervalMs: 1_000n,
      timeUnixNano: 1_700_000_000_000_000_000n + BigInt(sequence) * 1_000_000_000n,
      totals: { trapped: total, delivered: total },
      threads: [{ tid: 43, hits }],
    }),
  };
}

/** An armed job of fw_counter on host-a/42 that delivered `delivered` hits. */
export function armedJob(id: string, delivered: bigint, countOnly = false): Job {
  return create(JobSchema, {
    id,
    state: JobState.ARMED,
    spec: { watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], countOnly },
    counts: { trapped: delivered, delivered },
    createdUnixMs: 1_700_000_000_000n,
  });
}
