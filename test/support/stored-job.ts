// A job as the store and the event stream hold it once it has run: its Job
// record written to the jobs bucket while no controller runs (the controller
// started afterwards loads it like any other), and its hits published as
// HitBatches on the job's event subjects, as agents publish them. Reports
// over stored hits need no debug trap this way.
import { create, toBinary } from "@bufbuild/protobuf";
import { connect } from "nats";
import { HitBatchSchema, JobSchema, JobState, TargetState, eventSubject, type CountReport, type HitEvent, type Job } from "../../proto/index.js";
import { JobStore } from "../../controller/job-store.js";
import { ensureStreams } from "../../controller/streams.js";

/** Hits per published batch, as an agent batches a busy watch. */
const batchHits = 100;
/** Publishes in flight at once. */
const window = 64;

/**
 * Writes `job` to the store and publishes `hits` (in order, per host in
 * batches) and `reports` to its event subjects. Call while no controller
 * runs on this nats-server, then start one.
 */
export async function storeJob(natsUrl: string, job: Job, hits: Iterable<HitEvent>, reports: Iterable<CountReport> = []): Promise<void> {
  const nc = await connect({ servers: natsUrl, name: "stored-job" });
  try {
    await ensureStreams(nc);
    const store = await JobStore.open(nc.jetstream());
    await store.create(job);
    const js = nc.jetstream();
    const inFlight = new Set<Promise<unknown>>();
    const publish = async (hostId: string, batch: { hits?: HitEvent[]; counts?: CountReport[] }) => {
      const sent = js.publish(eventSubject(job.id, hostId), toBinary(HitBatchSchema, create(HitBatchSchema, batch)));
      inFlight.add(sent);
      void sent.finally(() => inFlight.delete(sent)).catch(() => {});
      if (inFlight.size >= window) await Promise.race(inFlight);
    };
    const pending = new Map<string, HitEvent[]>();
    for (const hit of hits) {
      const batch = pending.get(hit.hostId) ?? [];
      batch.push(hit);
      pending.set(hit.hostId, batch);
      if (batch.length >= batchHits) {
        pending.delete(hit.hostId);
        await publish(hit.hostId, { hits: batch });
      }
    }
    for (const [hostId, batch] of pending) await publish(hostId, { hits: batch });
    for (const report of reports) await publish(report.hostId, { counts: [report] });
    await Promise.all(inFlight);
  } finally {
    await nc.close();
  }
}

/** Writes job records to the store at once, as a controller would have (call while none runs). */
export async function storeJobs(natsUrl: string, jobs: readonly Job[]): Promise<void> {
  const nc = await connect({ servers: natsUrl, name: "stored-jobs" });
  try {
    const store = await JobStore.open(nc.jetstream());
    for (let i = 0; i < jobs.length; i += window) await Promise.all(jobs.slice(i, i + window).map((job) => store.create(job)));
  } finally {
    await nc.close();
  }
}

/** A finished job record with these counters and targets. */
export function storedJob(id: string, init: { countOnly?: boolean; state?: JobState; counts: { trapped?: bigint; delivered: bigint; dropped?: bigint; suppressed?: bigint; filtered?: bigint }; targets: Array<{ hostId: string; pid: number }> }): Job {
  return create(JobSchema, {
    id,
    state: init.state ?? JobState.COMPLETED,
    reason: "stored for a report",
    spec: { countOnly: init.countOnly ?? false },
    createdUnixMs: BigInt(Date.now() - 60_000),
    endedUnixMs: BigInt(Date.now()),
    counts: { trapped: init.counts.trapped ?? init.counts.delivered, delivered: init.counts.delivered, dropped: init.counts.dropped ?? 0n, suppressed: init.counts.suppressed ?? 0n, filtered: init.counts.filtered ?? 0n },
    targets: init.targets.map((t) => ({ hostId: t.hostId, pid: t.pid, state: TargetState.COMPLETED, reason: "stored", counts: {} })),
  });
}
