// Reads one job's hit events back from the JetStream event stream: an ordered
// consumer filtered on the job, from the start of the stream (or a time), that
// either stops once caught up or keeps following until aborted.
import { fromBinary } from "@bufbuild/protobuf";
import { connect, type ConsumerMessages, type NatsConnection } from "nats";
import { HitBatchSchema, SequenceTracker, eventStream, isStreamNotFound, jobEventFilter, type HitBatch, type HitEvent } from "../proto/index.js";
import { CliError, EventStreamMissingError, NatsUnreachableError } from "./errors.js";

/** What to read. */
export interface JobEventsOptions {
  natsUrl: string;
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

async function connectNats(url: string): Promise<NatsConnection> {
  try {
    return await connect({ servers: url, name: "fleetwatch-cli", timeout: connectTimeoutMs });
  } catch (err) {
    throw new NatsUnreachableError(url, { cause: err });
  }
}

/**
 * Hits of one job in stream order, each once. Without `follow` the iterator
 * ends when it has delivered everything the stream held when reading started.
 */
export async function* readJobEvents(options: JobEventsOptions): AsyncGenerator<HitEvent> {
  if (options.signal?.aborted) return;
  const nc = await connectNats(options.natsUrl);
  let messages: ConsumerMessages | undefined;
  const stop = () => messages?.stop();
  options.signal?.addEventListener("abort", stop, { once: true });
  try {
    const js = nc.jetstream();
    // One filter subject only: nats-server 2.9 refuses consumers with several.
    // No deliver_policy: the ordered consumer then starts at sequence 1 by
    // itself, and DeliverPolicy.All together with that start sequence is refused.
    const consumer = await js.consumers
      .get(eventStream, {
        filterSubjects: jobEventFilter(options.jobId),
        ...(options.since ? { opt_start_time: options.since.toISOString() } : {}),
      })
      .catch((err: unknown) => {
        if (isStreamNotFound(err)) throw new EventStreamMissingError(options.natsUrl, { cause: err });
        throw err;
      });
    messages = await consumer.consume({ max_messages: 256 });
    if (options.signal?.aborted) return;
    // A dead connection must end a follow with an error, not hang it.
    void nc.closed().then((err) => messages?.stop(err ? new CliError(`lost the NATS connection to ${options.natsUrl}: ${err.message}`, 1, { cause: err }) : undefined));
    if (!options.follow) {
      const info = await consumer.info(true);
      if (info.num_pending === 0) return;
    }
    const seen = new SequenceTracker();
    for await (const message of messages) {
      let batch: HitBatch;
      try {
        batch = fromBinary(HitBatchSchema, message.data);
      } catch (err) {
        throw new CliError(`message ${message.info.streamSequence} on ${message.subject} is not a HitBatch: ${(err as Error).message}`, 1, { cause: err });
      }
      for (const hit of batch.hits) if (seen.add(hit.hostId, hit.sequence)) yield hit;
      if (!options.follow && message.info.pending === 0) return;
    }
  } finally {
    options.signal?.removeEventListener("abort", stop);
    messages?.stop();
    await nc.close().catch(() => {});
  }
}
