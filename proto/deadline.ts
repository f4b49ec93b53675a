// A deadline for a request to NATS: a request that never answers (a server
// that went away mid-request) must fail, not hold up everything queued behind it.

/** `pending`, or the error `onTimeout` makes once `timeoutMs` passed. */
export function withDeadline<T>(pending: Promise<T>, timeoutMs: number, onTimeout: (ms: number) => Error): Promise<T> {
  const ms = Math.max(1, Math.floor(timeoutMs));
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(onTimeout(ms)), ms);
    pending.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
