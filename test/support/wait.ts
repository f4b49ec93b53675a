// Waiting on named conditions with deadlines: tests never sleep and hope.
import { setTimeout as delay } from "node:timers/promises";

/** Polls `check` until it returns a value other than undefined/false, or fails naming the condition. */
export async function waitFor<T>(name: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 10_000, everyMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined && value !== false) return value;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for: ${name}${last ? ` (last error: ${String(last)})` : ""}`);
    await delay(everyMs);
  }
}
