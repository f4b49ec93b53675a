// Reads one job's hit events back from the JetStream event stream: an ordered
// consumer filtered on the job, from the start of the stream (or a time), that
// either stops once caught up or keeps following until aborted.
import { fromBinary } from "@bufbuild/protobuf";
import { connect, type ConsumerMessages, type NatsConnection } from "nats";
import { HitBatchSchema, eventStream, jobEventFilter, type HitBatch, type HitEvent } from "../proto/index.js";
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

async function connectNats(url: string): Promise<NatsConnection> {
  try {
    return await connect({ servers: url, name: "fleetwatch-cli", timeout: connectTimeoutMs });
  } catch (err) {
    throw new NatsUnreachableError(url, { cause: err });
  }
}

function isStreamNotFound(err: unknown): boolean {
  const e = err as { message?: string; code?: string; api_error?: { err_code?: number } } | null;
  // 10059 is JetStream's "stream not found"; a server without JetStream answers 503.
  return e?.api_error?.err_code === 10059 || e?.message === "stream not found" || e?.code === "503";
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
