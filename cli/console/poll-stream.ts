// The fleet and jobs pages' live data: the controller asked again every
// interval for as long as the page is open, each answer sent as one event;
// a failed read puts the reason on the page's banner and is tried again
// with growing pauses until it succeeds (the banner then goes).
import { describeReadFailure } from "./fleet-reader.js";
import { pause, retryDelayMs } from "./retry.js";
import type { EventSink } from "./sse.js";

/** Reads with `collect` and sends each answer as `event` until `signal` aborts. */
export async function pollInto(sink: EventSink, event: string, collect: (signal: AbortSignal) => Promise<unknown>, intervalMs: number, signal: AbortSignal): Promise<void> {
  let failures = 0;
  let problem: string | undefined = "";
  while (!signal.aborted) {
    try {
      const data = await collect(signal);
      if (signal.aborted) return;
      failures = 0;
      // A page that has not taken the last answer gets the next one instead.
      if (!sink.congested()) {
        if (problem !== undefined) sink.send("status", { problems: [] });
        problem = undefined;
        sink.send(event, data);
      }
      await pause(intervalMs, signal);
    } catch (err) {
      if (signal.aborted) return;
      const now = describeReadFailure(err);
      if (now !== problem && !sink.congested()) {
        sink.send("status", { problems: [now] });
        problem = now;
      }
      await pause(retryDelayMs(failures++), signal);
    }
  }
}
