// One job as its open pages see it live: its state from WatchJob, its events
// from JetStream (the latest rows and a running count), and its writers as
// `fleetwatch report` computes them (WritersAggregator, reportJson and
// renderReportSvg: the same code, one aggregation per job and grouping
// however many pages show it). Pages get what changed a few times a second;
// a page that does not keep up is skipped and gets the newest state later.
// Reading stops when the last page of the job goes.
import { status } from "@grpc/grpc-js";
import { RpcError, isFinalJobState, type Job } from "../../proto/index.js";
import { renderReportSvg, reportJson, type WritersReport } from "../report/render.js";
import { WritersAggregator, type GroupKind } from "../report/writers.js";
import { describeReadFailure, isNotFound, type FleetReader } from "./fleet-reader.js";
import { pause, retryDelayMs } from "./retry.js";
import type { EventSink } from "./sse.js";
import { countReportRow, hitRow, jobView, type CountReportRow, type HitRow } from "./views.js";

/** How a feed behaves; the defaults suit a person watching. */
export interface JobFeedOptions {
  /** The latest rows kept and shown. */
  hitRows?: number;
  /** How often pages get what changed. */
  flushMs?: number;
  /** How often the writers are aggregated again while hits arrive. */
  writersEveryMs?: number;
  /** Writer groups shown (the flame graph has every stack). */
  top?: number;
  /**
   * A reading of the event stream that has not failed this long after it
   * started is taken as connected: a banner about an earlier failure goes
   * even when the job has no event to show for it.
   */
  settledAfterMs?: number;
}

type Problem = "controller" | "events";

/** What one page was sent last. */
interface Cursor {
  epoch: number;
  /** Number of the last row sent. */
  row: number;
  job: number;
  writers: number;
  status: number;
  gone: boolean;
}

/** The live state of one job for the pages that show it. */
export class JobFeed {
  readonly #reader: FleetReader;
  readonly #hitRows: number;
  readonly #flushMs: number;
  readonly #writersEveryMs: number;
  readonly #top: number;
  readonly #settledAfterMs: number;
  readonly #stop = new AbortController();
  readonly #sinks = new Map<EventSink, Cursor>();
  readonly #problems = new Map<Problem, string>();
  #job: Job | undefined;
  #jobVersion = 0;
  #gone = false;
  #aggregator: WritersAggregator;
  /** Bumped when the event stream is read again from its start: pages replace their rows. */
  #epoch = 0;
  #rows: Array<HitRow | CountReportRow> = [];
  #read = 0;
  #writers: Record<string, unknown> | undefined;
  #writersVersion = 0;
  #writersDirty = false;
  #writersAtMs = 0;
  #statusVersion = 0;
  #timer: NodeJS.Timeout | undefined;
  #loops: Promise<void>[] = [];

  constructor(
    reader: FleetReader,
    readonly jobId: string,
    readonly by: readonly GroupKind[],
    options: JobFeedOptions = {},
  ) {
    this.#reader = reader;
    this.#hitRows = options.hitRows ?? 200;
    this.#flushMs = options.flushMs ?? 250;
    this.#writersEveryMs = options.writersEveryMs ?? 500;
    this.#top = options.top ?? 50;
    this.#settledAfterMs = options.settledAfterMs ?? 6_000;
    this.#aggregator = new WritersAggregator(by);
  }

  /** Starts reading the job and its events. */
  start(): void {
    this.#loops = [this.#followJob(), this.#followEvents()];
    this.#timer = setInterval(() => this.#flush(), this.#flushMs);
  }

  /** A page to keep current; it gets the whole state at once. */
  attach(sink: EventSink): void {
    this.#sinks.set(sink, { epoch: -1, row: 0, job: 0, writers: 0, status: 0, gone: false });
    this.#flushTo(sink, this.#sinks.get(sink)!);
  }

  detach(sink: EventSink): void {
    this.#sinks.delete(sink);
  }

  /** Pages attached now. */
  get sinkCount(): number {
    return this.#sinks.size;
  }

  /** The job as last read; undefined before the controller answered. */
  get job(): Job | undefined {
    return this.#job;
  }

  /** The flame graph of the writers so far, as `report --format svg` draws it; undefined before the job was read. */
  flameSvg(): string | undefined {
    if (!this.#job) return undefined;
    return renderReportSvg({ job: this.#job, snapshot: this.#aggregator.snapshot(this.#top) });
  }

  /** Stops reading; the pages' streams are ended by their owner. */
  async close(): Promise<void> {
    this.#stop.abort();
    clearInterval(this.#timer);
    await Promise.all(this.#loops.map((loop) => loop.catch(() => {})));
  }

  #setProblem(source: Problem, problem: string | undefined): void {
    if (problem === undefined ? !this.#problems.has(source) : this.#problems.get(source) === problem) return;
    if (problem === undefined) this.#problems.delete(source);
    else this.#problems.set(source, problem);
    this.#statusVersion++;
  }

  async #followJob(): Promise<void> {
    const signal = this.#stop.signal;
    let failures = 0;
    while (!signal.aborted) {
      let received = 0;
      try {
        for await (const job of this.#reader.watchJob(this.jobId, signal)) {
          received++;
          failures = 0;
          this.#job = job;
          this.#jobVersion++;
          this.#writersDirty = true;
          this.#setProblem("controller", undefined);
        }
        // WatchJob ends after a final state: nothing more will change.
        if (this.#job && isFinalJobState(this.#job.state)) return;
      } catch (err) {
        if (signal.aborted) return;
        if (isNotFound(err)) {
          this.#gone = true;
          this.#stop.abort();
          this.#flush();
          return;
        }
        // A long call that reached its own deadline is simply opened again.
        if (received > 0 && err instanceof RpcError && err.code === status.DEADLINE_EXCEEDED) continue;
        this.#setProblem("controller", describeReadFailure(err));
      }
      await pause(retryDelayMs(failures++), signal);
    }
  }

  async #followEvents(): Promise<void> {
    const signal = this.#stop.signal;
    let failures = 0;
    while (!signal.aborted) {
      const attempt = new AbortController();
      const reading = AbortSignal.any([signal, attempt.signal]);
      const settled = setTimeout(() => this.#setProblem("events", undefined), this.#settledAfterMs);
      try {
        for await (const event of this.#reader.readEvents(this.jobId, true, reading)) {
          failures = 0;
          this.#setProblem("events", undefined);
          this.#read++;
          this.#aggregator.add(event);
          this.#rows.push(event.kind === "hit" ? hitRow(this.#read, event.hit) : countReportRow(this.#read, event.report));
          if (this.#rows.length > this.#hitRows) this.#rows.splice(0, this.#rows.length - this.#hitRows);
          this.#writersDirty = true;
        }
        if (signal.aborted) return;
        this.#setProblem("events", "the event stream ended, reading it again");
      } catch (err) {
        if (signal.aborted) return;
        this.#setProblem("events", describeReadFailure(err));
      } finally {
        clearTimeout(settled);
        attempt.abort();
      }
      await pause(retryDelayMs(failures++), signal);
      // Read again from the start: every event comes again, so counting starts over.
      this.#aggregator = new WritersAggregator(this.by);
      this.#rows = [];
      this.#read = 0;
      this.#epoch++;
      this.#writersDirty = true;
    }
  }

  #refreshWriters(nowMs: number): void {
    if (!this.#writersDirty || !this.#job || nowMs - this.#writersAtMs < this.#writersEveryMs) return;
    const report: WritersReport = { job: this.#job, snapshot: this.#aggregator.snapshot(this.#top) };
    this.#writers = reportJson(report);
    this.#writersVersion++;
    this.#writersDirty = false;
    this.#writersAtMs = nowMs;
  }

  #flush(): void {
    this.#refreshWriters(Date.now());
    for (const [sink, cursor] of this.#sinks) this.#flushTo(sink, cursor);
  }

  #flushTo(sink: EventSink, cursor: Cursor): void {
    if (sink.congested()) return;
    if (this.#gone) {
      if (!cursor.gone) sink.send("gone", { message: `no job ${this.jobId}` });
      cursor.gone = true;
      return;
    }
    if (cursor.status !== this.#statusVersion || cursor.epoch === -1) {
      sink.send("status", { problems: [...this.#problems.values()] });
      cursor.status = this.#statusVersion;
    }
    if (this.#job && cursor.job !== this.#jobVersion) {
      sink.send("job", jobView(this.#job));
      cursor.job = this.#jobVersion;
    }
    const replace = cursor.epoch !== this.#epoch;
    const from = replace ? 0 : cursor.row;
    const last = this.#rows.at(-1)?.n ?? 0;
    if (replace || last > from) {
      sink.send("hits", { replace, total: this.#read, countOnly: this.#job?.spec?.countOnly === true, rows: this.#rows.filter((r) => r.n > from) });
      cursor.epoch = this.#epoch;
      cursor.row = last;
    }
    if (this.#writers && cursor.writers !== this.#writersVersion) {
      sink.send("writers", { version: this.#writersVersion, report: this.#writers });
      cursor.writers = this.#writersVersion;
    }
  }
}

/** The open feeds, one per job and grouping, shared by the pages that show it. */
export class JobFeeds {
  readonly #feeds = new Map<string, { feed: JobFeed; users: number }>();

  constructor(
    private readonly reader: FleetReader,
    private readonly options: JobFeedOptions = {},
  ) {}

  /** The feed of a job, started if no page had it open; `release` when the page goes. */
  open(jobId: string, by: readonly GroupKind[]): { feed: JobFeed; release: () => void } {
    const key = feedKey(jobId, by);
    let entry = this.#feeds.get(key);
    if (!entry) {
      const feed = new JobFeed(this.reader, jobId, by, this.options);
      entry = { feed, users: 0 };
      this.#feeds.set(key, entry);
      feed.start();
    }
    entry.users++;
    const held = entry;
    let released = false;
    return {
      feed: held.feed,
      release: () => {
        if (released) return;
        released = true;
        if (--held.users > 0) return;
        if (this.#feeds.get(key) === held) this.#feeds.delete(key);
        void held.feed.close();
      },
    };
  }

  /** The open feed of a job and grouping, if a page shows it. */
  find(jobId: string, by: readonly GroupKind[]): JobFeed | undefined {
    return this.#feeds.get(feedKey(jobId, by))?.feed;
  }

  /** Feeds open now. */
  get size(): number {
    return this.#feeds.size;
  }

  async closeAll(): Promise<void> {
    const feeds = [...this.#feeds.values()].map((e) => e.feed);
    this.#feeds.clear();
    await Promise.all(feeds.map((f) => f.close()));
  }
}

function feedKey(jobId: string, by: readonly GroupKind[]): string {
  return `${jobId}\u0000${by.join(",")}`;
}
