// One direction of an AgentService session: messages queued for the stream,
// coalesced into batch envelopes when the other side reads them. Many
// commands to one agent (a fleet-wide job's arms, a queue drain's placements)
// or many answers from it then cost one frame, one gRPC write and one
// envelope to decode instead of one each.
import { AsyncQueue } from "./async-queue.js";

/** Messages in one envelope at most: bounds a frame's size and the latency of its first message. */
export const maxBatchMessages = 512;

/** How to put messages into one envelope and count those an item carries. */
export interface Batching<M> {
  /** One message standing for `messages` (two or more). */
  wrap(messages: M[]): M;
  /** The messages an item carries: its batch's, or 1. */
  count(item: M): number;
}

/**
 * A push-driven queue read by one consumer (the gRPC stream). With batching
 * on, the messages pushed in one turn of the event loop go out as one
 * envelope (several when there are more than maxBatchMessages); order is
 * kept. `size` counts messages, not envelopes, pushed and not yet read.
 */
export class MessageQueue<M> implements AsyncIterable<M> {
  private readonly queue = new AsyncQueue<M>();
  private pending: M[] = [];
  private flushScheduled = false;
  private unread = 0;
  /** Whether the reader on the other side takes envelopes; off until it says so. */
  batching = false;

  constructor(private readonly envelope: Batching<M>) {}

  /** Messages pushed and not yet taken by the stream. */
  get size(): number {
    return this.unread;
  }

  get closed(): boolean {
    return this.queue.closed;
  }

  /** Queues a message; false (dropped) once closed. */
  push(message: M): boolean {
    if (this.queue.closed) return false;
    this.unread++;
    if (!this.batching) return this.queue.push(message);
    this.pending.push(message);
    if (this.pending.length >= maxBatchMessages) this.flush();
    else if (!this.flushScheduled) {
      this.flushScheduled = true;
      // After the promise continuations of this turn: the commands a Promise.all fans out land in one envelope.
      setImmediate(() => {
        this.flushScheduled = false;
        this.flush();
      });
    }
    return true;
  }

  /** Sends what is pending now. */
  flush(): void {
    if (this.pending.length === 0) return;
    const messages = this.pending;
    this.pending = [];
    this.queue.push(messages.length === 1 ? messages[0]! : this.envelope.wrap(messages));
  }

  /** Ends the stream after what was queued (pending messages included). */
  close(): void {
    this.flush();
    this.queue.close();
  }

  [Symbol.asyncIterator](): AsyncIterator<M> {
    const inner = this.queue[Symbol.asyncIterator]();
    return {
      next: async () => {
        const result = await inner.next();
        if (!result.done) this.unread -= this.envelope.count(result.value);
        return result;
      },
      return: async () => {
        this.pending = [];
        this.unread = 0;
        return inner.return!();
      },
    };
  }
}
