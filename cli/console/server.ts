// The console's HTTP server: the guards (GET and HEAD only, this console's
// Host only), the routes (pages, their event streams, the flame graph, static
// assets) and the answers to bad input (400 for what is not a job id, 404
// for a job the controller does not have, 503 while it does not answer).
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { JobState, isSubjectToken, type Job } from "../../proto/index.js";
import { renderReportSvg } from "../report/render.js";
import { WritersAggregator, parseGroupBy, type GroupKind } from "../report/writers.js";
import { ConsoleListenError } from "../errors.js";
import { describeReadFailure, isNotFound, type FleetReader } from "./fleet-reader.js";
import { JobFeeds, type JobFeedOptions } from "./job-feed.js";
import { consoleUrl, type ListenAddress } from "./listen-address.js";
import { errorPage, fleetPage, jobPage, jobsPage, type PageContext } from "./pages.js";
import { pollInto } from "./poll-stream.js";
import { refusalOf } from "./request-guard.js";
import { SseStream } from "./sse.js";
import { defaultStaticDir, readStaticAsset } from "./static-files.js";
import { fleetView, jobView } from "./views.js";

/** What the server needs. */
export interface ConsoleServerOptions {
  /** The only way it reads the fleet. */
  reader: FleetReader;
  listen: ListenAddress;
  /** What the pages' footer says. */
  context: PageContext;
  /** Where the assets are; default: the console's own folder. */
  staticDir?: string;
  /** How often the fleet and jobs pages are read again. */
  pollMs?: number;
  feed?: JobFeedOptions;
  /** Where unexpected failures are said. */
  log?: (line: string) => void;
}

// Pages load only what the console serves; no inline script, no framing.
const pageSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
// The flame graph is drawn with presentation attributes and <title>s only.
const svgSecurityPolicy = "default-src 'none'; style-src 'unsafe-inline'";
// A one-off flame graph (no page of the job open) reads the stream once, within this.
const flameReadTimeoutMs = 30_000;
// Targets of each job the jobs page lists; a job's own page shows them all.
const listedTargets = 10;
// How long the 503 page waits before it asks again.
const unavailableRefreshSeconds = 3;
// The jobs page lists the newest jobs and every active one (up to a page each); the fleet page the pending ones.
const newestJobsListed = 200;
const activeJobsListed = 1000;
const activeStates = [JobState.PENDING, JobState.ARMED, JobState.DEGRADED];

const commonHeaders = {
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "X-Frame-Options": "DENY",
};

/** A running console. */
export class ConsoleServer {
  readonly #server: Server;
  readonly #options: ConsoleServerOptions;
  readonly #staticDir: string;
  readonly #feeds: JobFeeds;
  readonly #streams = new Set<SseStream>();
  #port = 0;

  private constructor(options: ConsoleServerOptions) {
    this.#options = options;
    this.#staticDir = options.staticDir ?? defaultStaticDir();
    this.#feeds = new JobFeeds(options.reader, options.feed ?? {});
    this.#server = createServer((req, res) => {
      this.#handle(req, res).catch((err: unknown) => {
        options.log?.(`console: ${req.method} ${req.url}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
        if (!res.headersSent) this.#page(res, 500, errorPage(options.context, 500, "console error", "the console failed to answer this request; its log says why"));
        else res.end();
      });
    });
  }

  /** Listens on `options.listen`; rejects with a {@link ConsoleListenError} when it cannot. */
  static async start(options: ConsoleServerOptions): Promise<ConsoleServer> {
    const server = new ConsoleServer(options);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(new ConsoleListenError(`${options.listen.host}:${options.listen.port}`, { cause: err }));
      server.#server.once("error", onError);
      server.#server.listen(options.listen.port, options.listen.host, () => {
        server.#server.removeListener("error", onError);
        resolve();
      });
    });
    const address = server.#server.address();
    server.#port = typeof address === "object" && address ? address.port : options.listen.port;
    return server;
  }

  /** The port it listens on (the one picked, with port 0). */
  get port(): number {
    return this.#port;
  }

  /** Where people open it. */
  get url(): string {
    return consoleUrl(this.#options.listen.host, this.#port);
  }

  /** Job feeds open now (one per job and grouping shown). */
  get openFeeds(): number {
    return this.#feeds.size;
  }

  /** Event streams open now. */
  get openStreams(): number {
    return this.#streams.size;
  }

  /** Ends every stream and feed and stops listening. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const stream of this.#streams) stream.close();
    await this.#feeds.closeAll();
    this.#server.closeAllConnections();
    await closed;
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const context = this.#options.context;
    const refusal = refusalOf(req.method, req.headers.host, this.#options.listen, this.#port);
    if (refusal) {
      this.#page(res, refusal.status, errorPage(context, refusal.status, refusal.status === 405 ? "method not allowed" : "forbidden", refusal.message), refusal.headers);
      return;
    }
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://console.invalid");
    } catch {
      return this.#page(res, 400, errorPage(context, 400, "bad request", "the request's path is not a URL path"));
    }
    const route = url.pathname;
    if (route === "/") return this.#page(res, 200, fleetPage(context));
    if (route === "/jobs") return this.#page(res, 200, jobsPage(context));
    if (route === "/events/fleet") return this.#pollStream(req, res, "fleet", async (signal) => {
      const [agents, jobs] = await Promise.all([this.#options.reader.listAgents(signal), this.#options.reader.listJobs({ limit: activeJobsListed, states: [JobState.PENDING] }, signal)]);
      return fleetView(agents, jobs, Date.now());
    });
    if (route === "/events/jobs") return this.#pollStream(req, res, "jobs", async (signal) => ({ jobs: (await this.#listedJobs(signal)).map((job) => jobView(job, listedTargets)) }));
    const asset = /^\/static\/([^/]+)$/.exec(route);
    if (asset) return this.#static(res, asset[1]!);
    const job = /^\/(events\/)?jobs\/([^/]+)(\/flame\.svg)?$/.exec(route);
    if (job && !(job[1] && job[3])) {
      const [, events, rawId, flame] = job;
      const jobId = rawId!;
      if (!isSubjectToken(jobId)) return this.#page(res, 400, errorPage(context, 400, "bad job id", `'${safeDecode(jobId)}' is not a job id (letters, digits, _ and - only)`));
      let by: GroupKind[];
      try {
        by = parseGroupBy(url.searchParams.get("by") ?? "stack");
      } catch (err) {
        return this.#page(res, 400, errorPage(context, 400, "bad grouping", (err as Error).message.replace(/^--by/, "by")));
      }
      if (events) return this.#jobStream(req, res, jobId, by);
      if (flame) return this.#flame(req, res, jobId, by);
      return this.#jobPage(res, jobId, by);
    }
    this.#page(res, 404, errorPage(context, 404, "not found", `no page ${safeDecode(route)}`));
  }

  /** What the jobs page lists: the newest jobs and the active ones, newest first, each once. */
  async #listedJobs(signal: AbortSignal): Promise<Job[]> {
    const reader = this.#options.reader;
    const [newest, active] = await Promise.all([reader.listJobs({ limit: newestJobsListed, states: [] }, signal), reader.listJobs({ limit: activeJobsListed, states: activeStates }, signal)]);
    const byId = new Map([...newest, ...active].map((job) => [job.id, job]));
    return [...byId.values()].sort((a, b) => Number(b.createdUnixMs - a.createdUnixMs) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  #page(res: ServerResponse, status: number, html: string, headers: Record<string, string> = {}): void {
    res.writeHead(status, {
      ...commonHeaders,
      "Content-Type": "text/html; charset=utf-8",
      "Content-Length": String(Buffer.byteLength(html)),
      "Cache-Control": "no-store",
      "Content-Security-Policy": pageSecurityPolicy,
      ...headers,
    });
    res.end(html);
  }

  async #static(res: ServerResponse, name: string): Promise<void> {
    const asset = await readStaticAsset(this.#staticDir, name);
    if (!asset) return this.#page(res, 404, errorPage(this.#options.context, 404, "not found", `no asset ${safeDecode(name)}`));
    res.writeHead(200, { ...commonHeaders, "Content-Type": asset.contentType, "Content-Length": String(asset.body.length), "Cache-Control": "no-cache" });
    res.end(asset.body);
  }

  async #jobPage(res: ServerResponse, jobId: string, by: GroupKind[]): Promise<void> {
    const context = this.#options.context;
    try {
      await this.#options.reader.getJob(jobId);
    } catch (err) {
      if (isNotFound(err)) return this.#page(res, 404, errorPage(context, 404, "not found", `no job ${jobId}`));
      return this.#page(res, 503, errorPage(context, 503, "unavailable", describeReadFailure(err), unavailableRefreshSeconds), { "Retry-After": String(unavailableRefreshSeconds) });
    }
    this.#page(res, 200, jobPage(context, jobId, by));
  }

  /** The flame graph from the job's open feed, or (no page of it open) from one reading of its stream. */
  async #flame(req: IncomingMessage, res: ServerResponse, jobId: string, by: GroupKind[]): Promise<void> {
    const context = this.#options.context;
    let svg = this.#feeds.find(jobId, by)?.flameSvg();
    if (svg === undefined) {
      const gone = new AbortController();
      req.once("close", () => gone.abort());
      const signal = AbortSignal.any([gone.signal, AbortSignal.timeout(flameReadTimeoutMs)]);
      try {
        const job = await this.#options.reader.getJob(jobId, signal);
        const aggregator = new WritersAggregator(by);
        for await (const event of this.#options.reader.readEvents(jobId, false, signal)) {
          aggregator.add(event);
        }
        if (signal.aborted) return void res.destroy();
        svg = renderReportSvg({ job, snapshot: aggregator.snapshot() });
      } catch (err) {
        if (isNotFound(err)) return this.#page(res, 404, errorPage(context, 404, "not found", `no job ${jobId}`));
        return this.#page(res, 503, errorPage(context, 503, "unavailable", describeReadFailure(err)), { "Retry-After": String(unavailableRefreshSeconds) });
      }
    }
    res.writeHead(200, {
      ...commonHeaders,
      "Content-Type": "image/svg+xml; charset=utf-8",
      "Content-Length": String(Buffer.byteLength(svg)),
      "Cache-Control": "no-store",
      "Content-Security-Policy": svgSecurityPolicy,
    });
    res.end(svg);
  }

  #openStream(req: IncomingMessage, res: ServerResponse): SseStream | undefined {
    if (req.method === "HEAD") {
      res.writeHead(200, { ...commonHeaders, "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store" });
      res.end();
      return undefined;
    }
    const stream = new SseStream(req, res);
    this.#streams.add(stream);
    stream.closed.addEventListener("abort", () => this.#streams.delete(stream), { once: true });
    return stream;
  }

  #pollStream(req: IncomingMessage, res: ServerResponse, event: string, collect: (signal: AbortSignal) => Promise<unknown>): void {
    const stream = this.#openStream(req, res);
    if (!stream) return;
    void pollInto(stream, event, collect, this.#options.pollMs ?? 1_000, stream.closed);
  }

  #jobStream(req: IncomingMessage, res: ServerResponse, jobId: string, by: GroupKind[]): void {
    const stream = this.#openStream(req, res);
    if (!stream) return;
    const { feed, release } = this.#feeds.open(jobId, by);
    feed.attach(stream);
    stream.closed.addEventListener(
      "abort",
      () => {
        feed.detach(stream);
        release();
      },
      { once: true },
    );
  }
}

/** A path segment for people: decoded when it decodes. */
function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
