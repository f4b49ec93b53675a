// A FleetReader for console tests: agents, jobs and events set by the test,
// follows the test can push to, failures it can switch on and off, and a
// record of every call and of the readings still open.
import { status } from "@grpc/grpc-js";
import { AsyncQueue, RpcError, type Agent, type Job } from "../../proto/index.js";
import type { JobEvent } from "../../cli/events.js";
import type { FleetReader, JobsPageQuery } from "../../cli/console/fleet-reader.js";

interface OpenRead<T> {
  jobId: string;
  queue: AsyncQueue<T>;
}

/** A controller and event stream in memory. */
export class FakeFleetReader implements FleetReader {
  agents: Agent[] = [];
  readonly jobs = new Map<string, Job>();
  readonly events = new Map<string, JobEvent[]>();
  /** Every controller read fails with this while set. */
  controllerFailure: unknown;
  /** Every event reading fails with this while set. */
  eventsFailure: unknown;
  /** Method names in call order. */
  readonly calls: string[] = [];
  readonly #follows = new Set<OpenRead<JobEvent>>();
  readonly #watches = new Set<OpenRead<Job>>();

  /** Event readings that follow and have not ended. */
  get openFollows(): number {
    return this.#follows.size;
  }

  /** WatchJob calls that have not ended. */
  get openWatches(): number {
    return this.#watches.size;
  }

  #controller(method: string): void {
    this.calls.push(method);
    if (this.controllerFailure) throw this.controllerFailure;
  }

  async listAgents(): Promise<Agent[]> {
    this.#controller("listAgents");
    return this.agents;
  }

  /** Every query asked, in order. */
  readonly jobQueries: JobsPageQuery[] = [];

  /** The newest `limit` jobs in the states asked, as the controller pages them. */
  async listJobs(query: JobsPageQuery): Promise<Job[]> {
    this.#controller("listJobs");
    this.jobQueries.push(query);
    return [...this.jobs.values()]
      .filter((j) => query.states.length === 0 || query.states.includes(j.state))
      .sort((a, b) => Number(b.createdUnixMs - a.createdUnixMs) || (a.id < b.id ? -1 : 1))
      .slice(0, query.limit);
  }

  async getJob(id: string): Promise<Job> {
    this.#controller("getJob");
    const job = this.jobs.get(id);
    if (!job) throw new RpcError(status.NOT_FOUND, `no job ${id}`);
    return job;
  }

  watchJob(id: string, signal: AbortSignal): AsyncIterable<Job> {
    const open: OpenRead<Job> = { jobId: id, queue: new AsyncQueue<Job>() };
    const self = this;
    return (async function* () {
      const first = await self.getJob(id);
      self.calls.push("watchJob");
      self.#watches.add(open);
      const stop = () => open.queue.close();
      signal.addEventListener("abort", stop, { once: true });
      try {
        yield first;
        for await (const job of open.queue) yield job;
      } finally {
        signal.removeEventListener("abort", stop);
        self.#watches.delete(open);
      }
    })();
  }

  readEvents(jobId: string, follow: boolean, signal: AbortSignal): AsyncIterable<JobEvent> {
    const open: OpenRead<JobEvent> = { jobId, queue: new AsyncQueue<JobEvent>() };
    const self = this;
    return (async function* () {
      self.calls.push(follow ? "readEvents(follow)" : "readEvents");
      if (self.eventsFailure) throw self.eventsFailure;
      const stored = [...(self.events.get(jobId) ?? [])];
      if (follow) self.#follows.add(open);
      const stop = () => open.queue.close();
      signal.addEventListener("abort", stop, { once: true });
      try {
        for (const event of stored) yield event;
        if (!follow) return;
        for await (const event of open.queue) yield event;
      } finally {
        signal.removeEventListener("abort", stop);
        self.#follows.delete(open);
      }
    })();
  }

  /** Stores an event and hands it to every open follow of its job. */
  emit(jobId: string, event: JobEvent): void {
    this.events.set(jobId, [...(this.events.get(jobId) ?? []), event]);
    for (const open of this.#follows) if (open.jobId === jobId) open.queue.push(event);
  }

  /** Ends every open follow with an error (a NATS connection that dropped). */
  breakFollows(err: unknown): void {
    for (const open of this.#follows) open.queue.fail(err);
  }

  /** Replaces a job and hands it to every open WatchJob of it. */
  updateJob(job: Job): void {
    this.jobs.set(job.id, job);
    for (const open of this.#watches) if (open.jobId === job.id) open.queue.push(job);
  }
}
