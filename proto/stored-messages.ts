// Reading back what a JetStream stream holds now: the messages an ordered
// consumer had pending when it was made, and no more. Shared by the agent
// (its stored hits, before arming) and the controller (the audit trail):
// neither may chase messages written while it reads.
import type { Consumer, JsMsg } from "nats";

/** What to read and how to wait. */
export interface ReadPendingOptions {
  /** At most this many messages. */
  limit?: number;
  /** Wraps each wait on NATS (e.g. so a refused subject fails it at once). */
  guard?: <T>(work: Promise<T>) => Promise<T>;
}

/** Hands each message the consumer had pending at its creation to `take`, oldest first. */
export async function readPending(consumer: Consumer, take: (message: JsMsg) => void, options: ReadPendingOptions = {}): Promise<void> {
  const guard = options.guard ?? (<T>(work: Promise<T>) => work);
  const messages = await guard(consumer.consume({ max_messages: 256 }));
  try {
    const want = Math.min((await guard(consumer.info(true))).num_pending, options.limit ?? Number.POSITIVE_INFINITY);
    if (want === 0) return;
    let taken = 0;
    for await (const message of messages) {
      take(message);
      if (++taken >= want) break;
    }
  } finally {
    messages.stop();
  }
}
