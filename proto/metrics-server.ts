// The HTTP listener both daemons serve their metrics and health on: GET
// /metrics (the Prometheus text format of whatever registry it is given),
// /healthz (alive) and /readyz (the daemon's own readiness, with its reason).
// Loopback unless an address names a host: nobody is authenticated here.
import http from "node:http";
import type { AddressInfo } from "node:net";
import { withDeadline } from "./deadline.js";
import { isLoopbackAddress } from "./tls.js";

/** A bad `--metrics-listen` value, or an address that cannot be bound. */
export class MetricsListenError extends Error {
  override readonly name = "MetricsListenError";
}

/** Where the listener binds: a host (never empty) and a port (0 picks one). */
export interface MetricsListen {
  readonly host: string;
  readonly port: number;
}

/** The host a bare port binds to: metrics are served without authentication. */
export const defaultMetricsHost = "127.0.0.1";

/**
 * Parses `PORT`, `:PORT`, `HOST:PORT` or `[V6]:PORT`. Without a host it is
 * loopback (never every interface by accident); port 0 picks a free one.
 */
export function parseMetricsListen(text: string, flag = "--metrics-listen"): MetricsListen {
  const t = text.trim();
  const m = /^(?:(\[[0-9A-Fa-f:.]+\]|[^:[\]\s]*):)?(\d{1,5})$/.exec(t);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65_535) throw new MetricsListenError(`${flag} '${text}' is not PORT or HOST:PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464; port 0 picks a free one)`);
  const given = m[1] ?? "";
  const host = given === "" ? defaultMetricsHost : given.startsWith("[") ? given.slice(1, -1) : given;
  return { host, port };
}

/** host:port as a URL authority (IPv6 in brackets). */
export function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The warning for a listener anyone on the network can reach, or undefined on loopback. */
export function metricsListenWarning(listen: MetricsListen): string | undefined {
  const where = formatHostPort(listen.host, listen.port);
  if (isLoopbackAddress(where)) return undefined;
  return `warning: metrics and health on ${where} are served without authentication to anyone who can reach that address; bind to 127.0.0.1 and scrape through a local proxy unless the network is trusted`;
}

/** A daemon's readiness: ready, or why not in a few words. */
export type Readiness = { ready: true } | { ready: false; reason: string };

/** What a metrics registry offers (prom-client's Registry fits). */
export interface MetricsSource {
  readonly contentType: string;
  metrics(): Promise<string>;
}

export interface MetricsServerOptions {
  listen: MetricsListen;
  source: MetricsSource;
  /** Asked on every GET /readyz; a check that takes longer than readyTimeoutMs counts as not ready. */
  ready: () => Readiness | Promise<Readiness>;
  readyTimeoutMs?: number;
}

export interface RunningMetricsServer {
  /** host:port actually bound. */
  readonly address: string;
  /** http://host:port/metrics */
  readonly url: string;
  /** Closes the listener and every open connection (scrapers keep theirs alive). */
  stop(): Promise<void>;
}

// A readiness check that hangs (NATS half away) answers "not ready" rather than hanging the prober.
const defaultReadyTimeoutMs = 2_000;

function reply(res: http.ServerResponse, code: number, body: string, contentType = "text/plain; charset=utf-8"): void {
  res.writeHead(code, { "content-type": contentType, "cache-control": "no-store" });
  res.end(res.req.method === "HEAD" ? undefined : body);
}

/** The answer to one request; every failure is a short plain-text body, never a stack. */
async function handle(options: MetricsServerOptions, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const path = (req.url ?? "/").split("?")[0];
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.setHeader("allow", "GET, HEAD");
    reply(res, 405, "only GET and HEAD\n");
    return;
  }
  switch (path) {
    case "/metrics":
      try {
        reply(res, 200, await options.source.metrics(), options.source.contentType);
      } catch (err) {
        reply(res, 500, `collecting metrics failed: ${err instanceof Error ? err.message : String(err)}\n`);
      }
      return;
    case "/healthz":
      reply(res, 200, "ok\n");
      return;
    case "/readyz": {
      const ms = options.readyTimeoutMs ?? defaultReadyTimeoutMs;
      const readiness = await withDeadline(Promise.resolve().then(options.ready), ms, (t) => new Error(`the readiness check took longer than ${t} ms`)).catch(
        (err: unknown): Readiness => ({ ready: false, reason: err instanceof Error ? err.message : String(err) }),
      );
      if (readiness.ready) reply(res, 200, "ready\n");
      else reply(res, 503, `not ready: ${readiness.reason}\n`);
      return;
    }
    default:
      reply(res, 404, "not found: /metrics, /healthz, /readyz\n");
  }
}

/** Starts the listener; rejects when the address cannot be bound (in use, not this host's). */
export async function startMetricsServer(options: MetricsServerOptions): Promise<RunningMetricsServer> {
  const server = http.createServer((req, res) => void handle(options, req, res));
  // A scraper that opens a connection and sends nothing is cut loose.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    const failed = (err: NodeJS.ErrnoException) => {
      const why = err.code === "EADDRINUSE" ? "the address is in use (EADDRINUSE)" : err.code === "EADDRNOTAVAIL" ? "no interface of this host has that address (EADDRNOTAVAIL)" : err.message;
      reject(new MetricsListenError(`cannot serve metrics on ${formatHostPort(options.listen.host, options.listen.port)}: ${why}`, { cause: err }));
    };
    server.once("error", failed);
    server.listen(options.listen.port, options.listen.host, () => {
      server.off("error", failed);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const address = formatHostPort(options.listen.host, port);
  return {
    address,
    url: `http://${address}/metrics`,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
