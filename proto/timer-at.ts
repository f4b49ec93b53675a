// A timer for an absolute time however far ahead. setTimeout fires at once
// for delays past 2^31-1 ms (a job of a month would end now), so a far time
// is waited for in steps. Shared by the controller's job deadlines and the
// agent's watch deadlines.

/** Longest delay setTimeout keeps. */
const maxTimerMs = 2_147_483_647;

/** A pending timer; cancel() stops it (again: no effect). */
export interface TimerAt {
  cancel(): void;
}

/** Calls `fire` once the wall clock reaches `atUnixMs` (at once if it has). */
export function timerAt(atUnixMs: number, fire: () => void): TimerAt {
  let handle: NodeJS.Timeout;
  const arm = (): void => {
    const leftMs = atUnixMs - Date.now();
    handle = setTimeout(() => (leftMs > maxTimerMs ? arm() : fire()), Math.min(maxTimerMs, Math.max(0, leftMs)));
  };
  arm();
  return { cancel: () => clearTimeout(handle) };
}
