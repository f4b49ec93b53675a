// Pages of `jobs ls` (pure): the request checked, the page token that says
// where a page ended, and which jobs make one page, newest first, from the
// active jobs in memory and the finished index.
import { JobState, isFinalJobState, jobStateName, type Job } from "../proto/index.js";
import { InvalidRequestError } from "./errors.js";
import { listOrder, type FinishedEntry, type FinishedIndex, type ListPosition } from "./job-index.js";

/** Jobs per page when the request does not say (an older client's `{}`). */
export const defaultListLimit = 100;
/** Most jobs one page may ask for. */
export const maxListLimit = 1000;

/** A checked ListJobs request. */
export interface ListQuery {
  limit: number;
  /** Undefined: every state. */
  states: ReadonlySet<JobState> | undefined;
  /** Jobs after this one; undefined: from the newest. */
  after: ListPosition | undefined;
}

const jobStates = [JobState.PENDING, JobState.ARMED, JobState.DEGRADED, JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED];
const stateNames = jobStates.map(jobStateName);

// Version 1 of the token: "1:<created unix ms>:<job id>", base64url.
const tokenText = /^1:(\d{1,16}):([A-Za-z0-9_-]+)$/;

/** The opaque page token of a listing position. */
export function encodePageToken(position: ListPosition): string {
  return Buffer.from(`1:${position.createdUnixMs}:${position.id}`).toString("base64url");
}

/** The position a page token stands for; InvalidRequestError when it is not one this controller gave. */
export function decodePageToken(token: string): ListPosition {
  const text = /^[A-Za-z0-9_-]+$/.test(token) ? Buffer.from(token, "base64url").toString("latin1") : "";
  const m = tokenText.exec(text);
  if (!m) throw new InvalidRequestError(`page token '${token.length > 80 ? `${token.slice(0, 80)}…` : token}' is not one this controller gave: pass the next page token of the previous page as it was, or none for the newest jobs`);
  return { createdUnixMs: Number(m[1]), id: m[2]! };
}

/** Checks a ListJobs request: limit, states, page token. */
export function parseListQuery(request: { limit: number; states: readonly JobState[]; pageToken: string }): ListQuery {
  if (request.limit > maxListLimit) throw new InvalidRequestError(`limit ${request.limit} is more than ${maxListLimit} jobs per page: ask for at most ${maxListLimit} and continue with the next page token`);
  const states = new Set<JobState>();
  for (const s of request.states) {
    if (!jobStates.includes(s)) throw new InvalidRequestError(`state ${s} is not a job state: ask for ${stateNames.join(", ")}`);
    states.add(s);
  }
  return { limit: request.limit === 0 ? defaultListLimit : request.limit, states: states.size > 0 ? states : undefined, after: request.pageToken === "" ? undefined : decodePageToken(request.pageToken) };
}

/** A job's listing position. */
export function positionOf(job: Job): ListPosition {
  return { createdUnixMs: Number(job.createdUnixMs), id: job.id };
}

/** One page: active jobs as they are in memory, finished ones as their index entries (read by the caller). */
export interface ListPage {
  items: Array<{ job: Job } | { finished: FinishedEntry }>;
  /** Jobs matching the states, over every page. */
  total: number;
  /** Where the next page starts; undefined on the last page. */
  next: ListPosition | undefined;
}

/** The page a query asks for, from the active jobs (any order) and the finished index. */
export function listPage(active: Iterable<Job>, finished: FinishedIndex, query: ListQuery): ListPage {
  const wanted = (state: JobState) => !query.states || query.states.has(state);
  const live: Array<{ job: Job; at: ListPosition }> = [];
  let total = finished.countIn(query.states);
  for (const job of active) {
    // A job that just ended is listed as finished: the index has it.
    if (isFinalJobState(job.state) || !wanted(job.state)) continue;
    total++;
    const at = positionOf(job);
    if (!query.after || listOrder(at, query.after) > 0) live.push({ job, at });
  }
  live.sort((a, b) => listOrder(a.at, b.at));
  const items: ListPage["items"] = [];
  let l = 0;
  let f = finished.placeAfter(query.after);
  const nextFinished = () => {
    for (let e = finished.at(f); e; e = finished.at(++f)) if (wanted(e.state)) return e;
    return undefined;
  };
  let last: ListPosition | undefined;
  for (;;) {
    const a = live[l];
    const e = nextFinished();
    if (!a && !e) return { items, total, next: undefined };
    if (items.length === query.limit) return { items, total, next: last };
    if (a && (!e || listOrder(a.at, e) < 0)) {
      items.push({ job: a.job });
      last = a.at;
      l++;
    } else {
      items.push({ finished: e! });
      last = e!;
      f++;
    }
  }
}
