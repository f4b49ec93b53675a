// One server-sent-events response: named events with JSON data, a comment
// now and then so proxies and the browser keep the connection, and an
// AbortSignal that fires when the browser goes away (the feeds behind the
// stream stop reading then).
import type { IncomingMessage, ServerResponse } from "node:http";

/** Where a feed sends its events. */
export interface EventSink {
  send(event: string, data: unknown): void;
  /** The browser has not taken what was sent (a state sent now would only queue behind it). */
  congested(): boolean;
}

/** How a stream behaves. */
export interface SseOptions {
  /** How long the browser waits before it connects again after a drop. */
  retryMs?: number;
  /** How often a comment line is sent while nothing else is. */
  heartbeatMs?: number;
  /** Unsent bytes past which the stream counts as congested. */
  congestedBytes?: number;
}

/** An open event stream to one browser. */
export class SseStream implements EventSink {
  readonly #res: ServerResponse;
  readonly #closed = new AbortController();
  readonly #heartbeat: NodeJS.Timeout;
  readonly #congestedBytes: number;

  constructor(req: IncomingMessage, res: ServerResponse, options: SseOptions = {}) {
    this.#res = res;
    this.#congestedBytes = options.congestedBytes ?? 1024 * 1024;
    res.writeHead(200, {
      "Content-Type": "text/event-stream; charset=utf-8",
      "Cache-Control": "no-store",
      Connection: "keep-alive",
      "X-Content-Type-Options": "nosniff",
    });
    res.write(`retry: ${options.retryMs ?? 2_000}\n\n`);
    this.#heartbeat = setInterval(() => res.write(": keep-alive\n\n"), options.heartbeatMs ?? 15_000);
    const close = () => this.close();
    req.once("close", close);
    res.once("close", close);
  }

  /** Aborted once the browser disconnected or the stream was closed. */
  get closed(): AbortSignal {
    return this.#closed.signal;
  }

  send(event: string, data: unknown): void {
    if (this.#closed.signal.aborted) return;
    // JSON has no raw newlines, so the data is one `data:` line.
    this.#res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  congested(): boolean {
    return this.#res.writableLength > this.#congestedBytes;
  }

  /** Ends the response (the browser connects again after `retry` unless its page is gone). */
  close(): void {
    if (this.#closed.signal.aborted) return;
    clearInterval(this.#heartbeat);
    this.#closed.abort();
    this.#res.end();
  }
}
