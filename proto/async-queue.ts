// An unbounded async queue: producers push, one consumer iterates. Used for
// gRPC stream directions that are fed from callbacks (sessions, watchers).

/** A push-driven AsyncIterable with close and fail. */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private readonly waiters: Array<{ resolve: (r: IteratorResult<T>) => void; reject: (err: unknown) => void }> = [];
  private ended = false;
  private failure: { err: unknown } | undefined;

  /** Items waiting for the consumer. */
  get size(): number {
    return this.items.length;
  }

  /** True once closed or failed. */
  get closed(): boolean {
    return this.ended;
  }

  /** Adds an item; returns false (and drops it) when the queue is closed. */
  push(item: T): boolean {
    if (this.ended) return false;
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve({ value: item, done: false });
    else this.items.push(item);
    return true;
  }

  /** Ends the iteration after the queued items. */
  close(): void {
    if (this.ended) return;
    this.ended = true;
    for (const waiter of this.waiters.splice(0)) waiter.resolve({ value: undefined, done: true });
  }

  /** Ends the iteration with an error after the queued items. */
  fail(err: unknown): void {
    if (this.ended) return;
    this.failure = { err };
    this.ended = true;
    for (const waiter of this.waiters.splice(0)) waiter.reject(err);
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: () => {
        const item = this.items.shift();
        if (item !== undefined || this.items.length > 0) return Promise.resolve({ value: item as T, done: false });
        if (this.failure) return Promise.reject(this.failure.err);
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
      },
      return: () => {
        this.close();
        this.items.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
