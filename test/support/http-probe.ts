// Raw HTTP for console tests: requests sent exactly as written (any method,
// any Host header, paths with `..` left in), and a server-sent-events reader
// that collects named events until closed.
import http from "node:http";
import { waitFor } from "./wait.js";

/** One answer, its body as text. */
export interface ProbeResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** Sends one request to 127.0.0.1:port; `host` overrides the Host header. */
export function probe(port: number, path: string, options: { method?: string; host?: string } = {}): Promise<ProbeResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path, method: options.method ?? "GET", headers: { Host: options.host ?? `127.0.0.1:${port}` }, timeout: 10_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("timeout", () => req.destroy(new Error(`${options.method ?? "GET"} ${path} did not answer within 10 s`)));
    req.on("error", reject);
    req.end();
  });
}

/** One server-sent event. */
export interface StreamEvent {
  event: string;
  data: unknown;
}

/** An open event stream and what it has received. */
export interface EventStreamProbe {
  readonly status: number;
  readonly events: StreamEvent[];
  /** Whether the server ended the stream. */
  readonly ended: boolean;
  /** The first event (from `from` on) named `event` whose data passes `accept`. */
  next<T>(event: string, accept?: (data: T) => boolean, from?: number, timeoutMs?: number): Promise<T>;
  close(): void;
}

/** Opens `path` as an event stream. */
export function openEventStream(port: number, path: string): Promise<EventStreamProbe> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path, headers: { Host: `127.0.0.1:${port}`, Accept: "text/event-stream" } }, (res) => {
      const events: StreamEvent[] = [];
      let ended = false;
      let buffer = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buffer += chunk;
        for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event !== undefined && data !== undefined) events.push({ event, data: JSON.parse(data) });
        }
      });
      res.on("end", () => (ended = true));
      res.on("error", () => (ended = true));
      resolve({
        status: res.statusCode ?? 0,
        events,
        get ended() {
          return ended;
        },
        next: <T>(event: string, accept: (data: T) => boolean = () => true, from = 0, timeoutMs = 5_000) =>
          waitFor(`event '${event}' on ${path}`, () => events.slice(from).find((e) => e.event === event && accept(e.data as T))?.data as T | undefined, timeoutMs),
        close: () => req.destroy(),
      });
    });
    req.on("error", reject);
  });
}
