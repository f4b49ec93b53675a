// Publishes hit batches to JetStream: pipelined (a bounded number of
// unacknowledged messages), resent when NATS is away (each batch carries a
// message id, so JetStream stores a resent copy once), and bounded in memory:
// past the bound, or after trying for `retryForMs`, a batch counts as
// dropped; a subject the server refuses (permissions) is dropped at once,
// since resending cannot help. Every batch ends acknowledged (delivered) or
// dropped, never unknown, and publishing never waits on NATS: the helper is
// never held up.
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { JetStreamClient } from "nats";
import { isPermissionViolation } from "../proto/index.js";

export interface PublishOutcome {
  (ok: boolean): void;
}

/** How one batch ended, for the metrics: acknowledged or dropped, its hits, and how long it waited from publish() to the end. */
export interface PublishSettled {
  readonly ok: boolean;
  readonly hits: number;
  readonly waitedMs: number;
}

export interface HitPublisherOptions {
  /** Unacknowledged publishes (hit batches) at once. */
  maxInFlight?: number;
  /** Bytes of batches waiting to be sent or resent; past it new batches are dropped. */
  maxQueuedBytes?: number;
  /** How long one publish may wait for its acknowledgement. */
  ackTimeoutMs?: number;
  /** How long a batch is resent before it counts as dropped. */
  retryForMs?: number;
  /** Hears how each batch ended (once per batch, never per hit). */
  onSettled?: (settled: PublishSettled) => void;
}

interface Item {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly msgID: string;
  readonly settle: PublishOutcome;
  readonly firstTryMs: number;
  readonly hits: number;
  /** performance.now() at publish(), for the latency. */
  readonly queuedAt: number;
}

const maxPauseMs = 2_000;

/** Pipelined JetStream publishing that survives a NATS restart. */
export class HitPublisher {
  private inFlight = 0;
  private readonly queue: Item[] = [];
  private queuedBytes = 0;
  /** After a failed publish, sending pauses (doubling up to maxPauseMs) rather than hammer a server that is away. */
  private pauseMs = 0;
  private pauseTimer: NodeJS.Timeout | undefined;
  /** Message ids are this agent's own: a restarted agent's sequences start again at 1. */
  private readonly nonce = randomBytes(6).toString("hex");
  private readonly maxInFlight: number;
  private readonly maxQueuedBytes: number;
  private readonly ackTimeoutMs: number;
  private readonly retryForMs: number;
  private readonly onSettled: ((settled: PublishSettled) => void) | undefined;

  constructor(
    private readonly js: JetStreamClient,
    options: HitPublisherOptions = {},
  ) {
    this.maxInFlight = options.maxInFlight ?? 256;
    this.maxQueuedBytes = options.maxQueuedBytes ?? 64 * 1024 * 1024;
    this.ackTimeoutMs = options.ackTimeoutMs ?? 5_000;
    this.retryForMs = options.retryForMs ?? 60_000;
    this.onSettled = options.onSettled;
  }

  /** Bytes of batches not yet acknowledged: waiting, in flight or being resent. */
  get pendingBytes(): number {
    return this.queuedBytes;
  }

  /**
   * Publishes one batch; `settle` is called exactly once with the outcome.
   * `id` names the batch uniquely for this agent (job, pid, first sequence);
   * `hits` is how many hits it carries (0 for a count report).
   */
  publish(subject: string, data: Uint8Array, id: string, settle: PublishOutcome, hits = 0): void {
    const queuedAt = performance.now();
    if (this.queuedBytes + data.byteLength > this.maxQueuedBytes) {
      settle(false);
      this.onSettled?.({ ok: false, hits, waitedMs: 0 });
      return;
    }
    this.queue.push({ subject, data, msgID: `${this.nonce}.${id}`, settle, firstTryMs: Date.now(), hits, queuedAt });
    this.queuedBytes += data.byteLength;
    this.pump();
  }

  private pump(): void {
    while (this.pauseTimer === undefined && this.inFlight < this.maxInFlight && this.queue.length > 0) this.send(this.queue.shift()!);
  }

  private send(item: Item): void {
    this.inFlight++;
    let ack: Promise<unknown>;
    try {
      ack = this.js.publish(item.subject, item.data, { timeout: this.ackTimeoutMs, msgID: item.msgID });
    } catch (err) {
      // The client refused at once (closed, reconnecting): the same as a failed publish.
      ack = Promise.reject(err);
    }
    ack.then(
      () => {
        // A duplicate acknowledgement means an earlier copy of this batch is stored: delivered too.
        this.inFlight--;
        this.queuedBytes -= item.data.byteLength;
        this.pauseMs = 0;
        item.settle(true);
        this.onSettled?.({ ok: true, hits: item.hits, waitedMs: performance.now() - item.queuedAt });
        this.pump();
      },
      (err: unknown) => {
        this.inFlight--;
        if (!isPermissionViolation(err) && Date.now() - item.firstTryMs < this.retryForMs) {
          this.queue.unshift(item);
          this.pause();
        } else {
          this.queuedBytes -= item.data.byteLength;
          item.settle(false);
          this.onSettled?.({ ok: false, hits: item.hits, waitedMs: performance.now() - item.queuedAt });
        }
        this.pump();
      },
    );
  }

  private pause(): void {
    if (this.pauseTimer !== undefined) return;
    this.pauseMs = Math.min(maxPauseMs, Math.max(100, this.pauseMs * 2));
    this.pauseTimer = setTimeout(() => {
      this.pauseTimer = undefined;
      this.pump();
    }, this.pauseMs);
  }
}
