// A one-slot async queue for state streams: a push replaces the state not yet
// taken, so a consumer that does not keep up gets the newest state, never a
// backlog that grows with every change. Replaced states are counted.

/** A push-driven AsyncIterable that keeps only the newest unconsumed item. */
export class LatestQueue<T> implements AsyncIterable<T> {
  private pending: { item: T } | undefined;
  private waiter: ((r: IteratorResult<T>) => void) | undefined;
  private failWaiter: ((err: unknown) => void) | undefined;
  private ended = false;
  private failure: { err: unknown } | undefined;
  private replacedCount = 0;

  /** Items waiting for the consumer: 0 or 1. */
  get size(): number {
    return this.pending ? 1 : 0;
  }

  /** Items replaced by a newer one before the consumer took them, since the start. */
  get replaced(): number {
    return this.replacedCount;
  }

  /** Adds an item, replacing one the consumer has not taken; false once closed. */
  push(item: T): boolean {
    if (this.ended) return false;
    if (this.waiter) {
      const resolve = this.waiter;
      this.waiter = this.failWaiter = undefined;
      resolve({ value: item, done: false });
      return true;
    }
    if (this.pending) this.replacedCount++;
    this.pending = { item };
    return true;
  }

  /** Ends the iteration after the pending item. */
  close(): void {
    if (this.ended) return;
    this.ended = true;
    const resolve = this.waiter;
    this.waiter = this.failWaiter = undefined;
    resolve?.({ value: undefined, done: true });
  }

  /** Ends the iteration with an error after the pending item. */
  fail(err: unknown): void {
    if (this.ended) return;
    this.failure = { err };
    this.ended = true;
    const reject = this.failWaiter;
    this.waiter = this.failWaiter = undefined;
    reject?.(err);
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        const pending = this.pending;
        if (pending) {
          this.pending = undefined;
          return Promise.resolve({ value: pending.item, done: false });
        }
        if (this.failure) return Promise.reject(this.failure.err);
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => {
          this.waiter = resolve;
          this.failWaiter = reject;
        });
      },
      return: () => {
        this.close();
        this.pending = undefined;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
