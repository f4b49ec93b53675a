// Publishes hit batches to JetStream with a bounded number of unacknowledged
// messages: fast enough for tens of thousands of hits a second, and every
// publish ends as acknowledged (delivered) or failed (dropped), never unknown.
import type { JetStreamClient } from "nats";

export interface PublishOutcome {
  (ok: boolean): void;
}

/** Pipelined JetStream publishing with backpressure. */
export class HitPublisher {
  private inFlight = 0;
  private readonly roomWaiters: Array<() => void> = [];

  constructor(
    private readonly js: JetStreamClient,
    /** Unacknowledged publishes (hit batches) allowed at once. */
    private readonly maxInFlight = 256,
    /** How long a publish may wait for its acknowledgement before it counts as dropped. */
    private readonly ackTimeoutMs = 10_000,
  ) {}

  /**
   * Publishes one message; `settle` is called exactly once with the outcome.
   * Resolves when there is room for the next one (backpressure).
   */
  async publish(subject: string, data: Uint8Array, settle: PublishOutcome): Promise<void> {
    while (this.inFlight >= this.maxInFlight) await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
    this.inFlight++;
    this.js.publish(subject, data, { timeout: this.ackTimeoutMs }).then(
      () => this.done(settle, true),
      () => this.done(settle, false),
    );
  }

  private done(settle: PublishOutcome, ok: boolean): void {
    this.inFlight--;
    settle(ok);
    this.roomWaiters.shift()?.();
  }
}
