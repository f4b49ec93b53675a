// Waiting on an AbortSignal: the daemons run until Ctrl-C or SIGTERM aborts theirs.

/** Resolves once the signal is aborted (at once if it already is). */
export function untilAborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
}
