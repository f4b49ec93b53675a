// Waiting on named conditions with deadlines: tests never sleep and hope.
import { setTimeout as delay } from "node:timers/promises";

/**
 * How many times slower than a native host this machine runs the suite:
 * FLEETWATCH_TIME_SCALE, set by scripts/test.sh inside the emulated machine
 * (Node.js there is 10-20x slower). Every deadline of the test support is
 * stretched by it; what is asserted is not.
 */
export const timeScale = ((): number => {
  const raw = process.env.FLEETWATCH_TIME_SCALE;
  if (raw === undefined || raw === "") return 1;
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 1) throw new Error(`FLEETWATCH_TIME_SCALE=${raw}: must be a number >= 1`);
  return n;
})();

/** A deadline of a native host, stretched by {@link timeScale}. */
export function scaled(ms: number): number {
  return Math.round(ms * timeScale);
}

/** Polls `check` until it returns a value other than undefined/false, or fails naming the condition. */
export async function waitFor<T>(name: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 10_000, everyMs = 25): Promise<T> {
  timeoutMs = scaled(timeoutMs);
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

/**
 * Polls `check` for `forMs` and fails, naming the condition, as soon as it
 * is false: for what must not happen (a loop, a second arm) in a window
 * long enough for it to show.
 */
export async function holdsFor(name: string, check: () => boolean | Promise<boolean>, forMs: number, everyMs = 25): Promise<void> {
  const until = Date.now() + scaled(forMs);
  for (;;) {
    if (!(await check())) throw new Error(`no longer true: ${name}`);
    if (Date.now() >= until) return;
    await delay(everyMs);
  }
}
