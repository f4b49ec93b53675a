// Everything the console may ask, and nothing more: the controller's read
// methods (ListAgents, ListJobs, GetJob, WatchJob), each with a deadline, and
// a job's events from JetStream. The server is handed only this, so no page
// can reach a method that changes state.
import { status } from "@grpc/grpc-js";
import { RpcError, type Agent, type Job, type JobState } from "../../proto/index.js";
import { readJobEvents, type JobEvent } from "../events.js";
import { isUnreachableStatus } from "../exit-codes.js";
import type { ControllerClient } from "../main.js";

/** One page of jobs the console asks for: the newest `limit` in these states (every state when empty). */
export interface JobsPageQuery {
  limit: number;
  states: JobState[];
}

/** The read-only view of the fleet the console serves. */
export interface FleetReader {
  listAgents(signal?: AbortSignal): Promise<Agent[]>;
  /** One page of jobs, newest first (never every job: a controller may have run hundreds of thousands). */
  listJobs(query: JobsPageQuery, signal?: AbortSignal): Promise<Job[]>;
  /** Rejects with the controller's NOT_FOUND when it has no such job. */
  getJob(id: string, signal?: AbortSignal): Promise<Job>;
  /** The job now, then after every change; ends after a final state, or when the call's deadline passes. */
  watchJob(id: string, signal: AbortSignal): AsyncIterable<Job>;
  /** The job's events from the start of the stream; with `follow`, new ones until `signal` aborts. */
  readEvents(jobId: string, follow: boolean, signal: AbortSignal): AsyncIterable<JobEvent>;
}

/** The controller methods the console calls: read methods only. */
export type ReadOnlyControllerClient = Pick<ControllerClient, "getJob" | "listJobs" | "listAgents" | "watchJob">;

/** Where the user's events are read, with the user's NATS credentials. */
export interface NatsAccess {
  url: string;
  credsPath?: string | undefined;
}

// Listings and one job are small unary calls; a page asks again within
// seconds, so a controller that does not answer in 5 s is shown as such.
const readDeadlineMs = 5_000;
// WatchJob is long-lived; each call still has a deadline and is opened again
// when it passes (the controller sends the job first on every call).
const watchJobDeadlineMs = 60_000;

/** The reader over the user's own controller client and NATS credentials. */
export function fleetReader(client: ReadOnlyControllerClient, nats: NatsAccess): FleetReader {
  const withSignal = (signal: AbortSignal | undefined) => (signal ? { signal } : {});
  return {
    listAgents: async (signal) => (await client.listAgents({}, { deadlineMs: readDeadlineMs, ...withSignal(signal) })).agents,
    listJobs: async (query, signal) => (await client.listJobs(query, { deadlineMs: readDeadlineMs, ...withSignal(signal) })).jobs,
    getJob: async (id, signal) => {
      const response = await client.getJob({ id }, { deadlineMs: readDeadlineMs, ...withSignal(signal) });
      if (!response.job) throw new Error(`the controller answered GetJob(${id}) without a job`);
      return response.job;
    },
    watchJob: (id, signal) =>
      (async function* () {
        for await (const response of client.watchJob({ id }, { deadlineMs: watchJobDeadlineMs, signal })) if (response.job) yield response.job;
      })(),
    readEvents: (jobId, follow, signal) => readJobEvents({ natsUrl: nats.url, natsCredsPath: nats.credsPath, jobId, follow, signal }),
  };
}

/** Whether a read failed because the controller has no such job. */
export function isNotFound(err: unknown): boolean {
  return err instanceof RpcError && err.code === status.NOT_FOUND;
}

/**
 * A failed read as the page's banner says it: `controller unavailable: …,
 * reconnecting` when the controller did not answer, what it answered
 * otherwise (a refusal: the user's own permissions), or NATS's problem.
 */
export function describeReadFailure(err: unknown): string {
  if (err instanceof RpcError) {
    // grpc-js ends its details with an empty "Resolution note: " when name resolution had nothing to add.
    const details = err.details.replace(/\.?\s*Resolution note:\s*$/, "") || err.codeName;
    if (isUnreachableStatus(err.code)) return `controller unavailable: ${details}, reconnecting`;
    return `controller answered ${err.codeName}: ${details}, retrying`;
  }
  return `${err instanceof Error ? err.message || err.name : String(err)}, retrying`;
}
