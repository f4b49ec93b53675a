// Reads one job's events back from the JetStream event stream (hits, or a
// counting job's count reports): an ordered consumer filtered on the job, from
// the start of the stream (or a time), that either stops once caught up or
// keeps following until aborted.
import { fromBinary } from "@bufbuild/protobuf";
import { connect, type ConsumerMessages, type NatsConnection } from "nats";
import {
  HitBatchSchema,
  SequenceTracker,
  eventStream,
  failFirstCreation,
  isAuthorizationViolation,
  isPermissionViolation,
  isStreamNotFound,
  jobEventFilter,
  NatsRefusals,
  natsAuthOptions,
  readNatsCredentials,
  violationContext,
  type CountReport,
  type HitBatch,
  type HitEvent,
} from "../proto/index.js";
import { CliError, EventStreamMissingError, NatsAuthError, NatsPermissionError, NatsUnreachableError, UsageError } from "./errors.js";

/** One event of a job: a hit, or a counting job's count report of one target. */
export type JobEvent = { kind: "hit"; hit: HitEvent } | { kind: "count"; report: CountReport };

/** What to read. */
export interface JobEventsOptions {
  natsUrl: string;
  /** This user's NATS nkey seed file; unset: connect unauthenticated. */
  natsCredsPath?: string | undefined;
  jobId: string;
  /** Start at this instant instead of the start of the stream. */
  since?: Date;
  /** Keep reading new hits after catching up, until `signal` aborts. */
  follow: boolean;
  /** Ends the reading (the iterator then returns). */
  signal?: AbortSignal;
}

// How long connecting to NATS may take before the CLI says it is unreachable.
const connectTimeoutMs = 5_000;

async function connectNats(url: string, credsPath: string | undefined): Promise<NatsConnection> {
  let credentials;
  try {
    credentials = credsPath === undefined ? undefined : readNatsCredentials(credsPath);
  } catch (err) {
    throw new UsageError((err as Error).message, { cause: err });
  }
  try {
    return await connect({ servers: url, name: "fleetwatch-cli", timeout: connectTimeoutMs, ...natsAuthOptions(credentials) });
  } catch (err) {
    if (isAuthorizationViolation(err)) throw new NatsAuthError(url, credsPath, { cause: err });
    throw new NatsUnreachableError(url, { cause: err });
  }
}

/** A refusal under the user's permissions, said as what was refused. */
function refused(err: unknown, what: string, credsPath: string | undefined): unknown {
  if (!isPermissionViolation(err)) return err;
  const context = violationContext(err);
  return new NatsPermissionError(what, credsPath, context?.operation, context?.subject, { cause: err });
}

/**
 * Hits and count reports of one job in stream order, each once. Without
 * `follow` the iterator ends when it has delivered everything the stream
 * held when reading started.
 */
export async function* readJobEvents(options: JobEventsOptions): AsyncGenerator<JobEvent> {
  if (options.signal?.aborted) return;
  const nc = await connectNats(options.natsUrl, options.natsCredsPath);
  const what = `read the events of job ${options.jobId}`;
  let messages: ConsumerMessages | undefined;
  const stop = () => messages?.stop();
  options.signal?.addEventListener("abort", stop, { once: true });
  // A refused subject ends the reading with what was lacking, at any step.
  const refusals = new NatsRefusals(nc);
  try {
    const js = nc.jetstream();
    // One filter subject only: nats-server 2.9 refuses consumers with several.
    // No deliver_policy: the ordered consumer then starts at sequence 1 by
    // itself, and DeliverPolicy.All together with that start sequence is refused.
    const consumer = await refusals
      .guard(
        js.consumers.get(eventStream, {
          filterSubjects: jobEventFilter(options.jobId),
          ...(options.since ? { opt_start_time: options.since.toISOString() } : {}),
        }),
      )
      .catch((err: unknown) => {
        if (isStreamNotFound(err)) throw new EventStreamMissingError(options.natsUrl, { cause: err });
        throw refused(err, what, options.natsCredsPath);
      });
    const consumed: ConsumerMessages = await refusals.guard(failFirstCreation(consumer).consume({ max_messages: 256 })).catch((err: unknown) => Promise.reject(refused(err, what, options.natsCredsPath)));
    messages = consumed;
    if (options.signal?.aborted) return;
    refusals.onNext((err) => messages?.stop(refused(err, what, options.natsCredsPath) as Error));
    // A dead connection must end a follow with an error, not hang it.
    void nc.closed().then((err) => messages?.stop(err ? new CliError(`lost the NATS connection to ${options.natsUrl}: ${err.message}`, 1, { cause: err }) : undefined));
    if (!options.follow) {
      const info = await refusals.guard(consumer.info(true)).catch((err: unknown) => Promise.reject(refused(err, what, options.natsCredsPath)));
      if (info.num_pending === 0) return;
    }
    const seen = new SequenceTracker();
    for await (const message of consumed) {
      let batch: HitBatch;
      try {
        batch = fromBinary(HitBatchSchema, message.data);
      } catch (err) {
        throw new CliError(`message ${message.info.streamSequence} on ${message.subject} is not a HitBatch: ${(err as Error).message}`, 1, { cause: err });
      }
      for (const hit of batch.hits) if (seen.add(hit.hostId, hit.sequence)) yield { kind: "hit", hit };
      // Reports draw on the host's hit sequence: a resent one is dropped like a resent hit.
      for (const report of batch.counts) if (seen.add(report.hostId, report.sequence)) yield { kind: "count", report };
      if (!options.follow && message.info.pending === 0) return;
    }
  } finally {
    options.signal?.removeEventListener("abort", stop);
    messages?.stop();
    await nc.close().catch(() => {});
  }
}
