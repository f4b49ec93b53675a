// Finished jobs out of memory (pure parts): the index in listing order, pages
// of `jobs ls` and their tokens, the cache that files jobs as they end, and
// the retention sweep over a scripted store.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { parseControllerArgs } from "../../cli/commands/controller.js";
import { parseUpArgs } from "../../cli/commands/up.js";
import { UsageError } from "../../cli/errors.js";
import { InvalidRequestError, statusFor } from "../../controller/errors.js";
import { FinishedRetention, sweepEveryMs } from "../../controller/finished-retention.js";
import { JobCache, recentFinished } from "../../controller/job-cache.js";
import { FinishedIndex, type FinishedEntry, type ListPosition } from "../../controller/job-index.js";
import { decodePageToken, defaultListLimit, encodePageToken, listPage, maxListLimit, parseListQuery, type ListQuery } from "../../controller/job-listing.js";
import { JobSchema, JobState, type Job } from "../../proto/index.js";

const S = JobState;

function entry(id: string, createdUnixMs: number, state = S.COMPLETED, endedUnixMs = createdUnixMs + 10, sharded = false): FinishedEntry {
  return { id, state, createdUnixMs, endedUnixMs, sharded };
}

function active(id: string, createdUnixMs: number, state = S.ARMED): Job {
  return create(JobSchema, { id, state, createdUnixMs: BigInt(createdUnixMs) });
}

/** Ids of a page's items. */
const ids = (page: ReturnType<typeof listPage>) => page.items.map((i) => ("job" in i ? i.job.id : i.finished.id));

/** Every page from the start, `limit` at a time; `between` runs after each page (jobs coming and going meanwhile). */
function everyPage(activeJobs: () => Job[], index: FinishedIndex, limit: number, states?: ReadonlySet<JobState>, between: (page: number) => void = () => {}): { ids: string[][]; totals: number[] } {
  const out: string[][] = [];
  const totals: number[] = [];
  let after: ListPosition | undefined;
  for (let n = 0; ; n++) {
    const page = listPage(activeJobs(), index, { limit, states, after });
    out.push(ids(page));
    totals.push(page.total);
    if (!page.next) return { ids: out, totals };
    after = decodePageToken(encodePageToken(page.next));
    between(n);
  }
}

test("job index - keeps finished jobs newest first (then by id), counts them by state, replaces and removes", () => {
  const index = FinishedIndex.of([entry("b", 200), entry("a", 100, S.FAILED), entry("c", 200, S.CANCELLED), entry("d", 300)]);
  const order = () => Array.from({ length: index.size }, (_, i) => index.at(i)!.id);
  assert.deepEqual(order(), ["d", "b", "c", "a"]);
  index.add(entry("e", 150));
  index.add(entry("b", 200, S.COMPLETED, 999));
  assert.deepEqual(order(), ["d", "b", "c", "e", "a"]);
  assert.equal(index.get("b")!.endedUnixMs, 999, "the entry replaced in place");
  assert.deepEqual([index.countIn(undefined), index.countIn(new Set([S.COMPLETED])), index.countIn(new Set([S.CANCELLED, S.FAILED])), index.countIn(new Set([S.ARMED]))], [5, 3, 2, 0]);
  index.remove("c");
  index.remove("nope");
  assert.deepEqual(order(), ["d", "b", "e", "a"]);
  assert.equal(index.countIn(new Set([S.CANCELLED])), 0);
  assert.deepEqual([index.placeAfter(undefined), index.placeAfter({ createdUnixMs: 200, id: "b" }), index.placeAfter({ createdUnixMs: 200, id: "a" }), index.placeAfter({ createdUnixMs: 1, id: "z" })], [0, 2, 1, 4]);
});

test("job index - retention takes those ended before the time kept, and the oldest ended beyond the count kept", () => {
  // Created 1..10; ended in another order (j3 ended last); j0 has no end time (its creation counts).
  const ended = [0, 50, 40, 1000, 20, 60, 70, 80, 90, 95];
  const index = FinishedIndex.of(ended.map((end, i) => entry(`j${i}`, i, S.COMPLETED, end)));
  const expired = (now: number, keepMs: number, keepCount: number) => index.expired(now, keepMs, keepCount).map((e) => e.id);
  assert.deepEqual(expired(100, 50, 100), ["j0", "j4", "j2", "j1"], "ended at or before 50");
  assert.deepEqual(expired(100, 1000, 7), ["j0", "j4", "j2"], "beyond 7 kept: the three oldest ended");
  assert.deepEqual(expired(100, 50, 8), ["j0", "j4", "j2", "j1"], "the count and the time: whichever takes more");
  assert.deepEqual(expired(100, 1000, 100), []);
  assert.deepEqual(expired(2000, 1, 100).at(-1), "j3", "oldest end first");
});

test("job listing - a page token round-trips; anything else is INVALID_ARGUMENT saying what to pass", () => {
  const at = { createdUnixMs: 1_767_225_600_123, id: "3fa2c9b1d0" };
  const token = encodePageToken(at);
  assert.match(token, /^[A-Za-z0-9_-]+$/);
  assert.deepEqual(decodePageToken(token), at);
  for (const bad of ["x", "!!", Buffer.from("2:1:a").toString("base64url"), Buffer.from("1:12:a.b").toString("base64url"), Buffer.from("1::a").toString("base64url"), `${token}=`]) {
    assert.throws(
      () => decodePageToken(bad),
      (err: unknown) => {
        assert.ok(err instanceof InvalidRequestError, bad);
        assert.equal(statusFor(err).code, status.INVALID_ARGUMENT);
        assert.match(err.message, /^page token '.*' is not one this controller gave: pass the next page token of the previous page as it was, or none for the newest jobs$/);
        return true;
      },
    );
  }
});

test("job listing - a request: {} is the newest 100 of every state; a limit over 1000 or an unknown state is refused with what to ask", () => {
  assert.deepEqual(parseListQuery({ limit: 0, states: [], pageToken: "" }), { limit: defaultListLimit, states: undefined, after: undefined });
  assert.deepEqual(parseListQuery({ limit: maxListLimit, states: [S.ARMED, S.ARMED, S.FAILED], pageToken: encodePageToken({ createdUnixMs: 5, id: "a" }) }), { limit: 1000, states: new Set([S.ARMED, S.FAILED]), after: { createdUnixMs: 5, id: "a" } });
  assert.throws(() => parseListQuery({ limit: 1001, states: [], pageToken: "" }), /^InvalidRequestError: limit 1001 is more than 1000 jobs per page: ask for at most 1000 and continue with the next page token$/);
  for (const state of [S.UNSPECIFIED, 42 as JobState]) {
    assert.throws(() => parseListQuery({ limit: 0, states: [state], pageToken: "" }), /^InvalidRequestError: state \d+ is not a job state: ask for pending, armed, degraded, completed, cancelled, failed$/);
  }
});

test("job listing - 250 jobs, 100 a page: each once, newest first, active and finished merged; total on every page", () => {
  const jobs: Job[] = [];
  const finished: FinishedEntry[] = [];
  // Every seventh is active; several share a creation time (the id orders them).
  for (let i = 0; i < 250; i++) {
    const id = `j${String(i).padStart(3, "0")}`;
    const created = 1_000 + Math.floor(i / 3);
    if (i % 7 === 0) jobs.push(active(id, created, i % 2 ? S.ARMED : S.PENDING));
    else finished.push(entry(id, created, i % 5 === 0 ? S.FAILED : S.COMPLETED));
  }
  const index = FinishedIndex.of(finished);
  const { ids: pages, totals } = everyPage(() => jobs, index, 100);
  assert.deepEqual(pages.map((p) => p.length), [100, 100, 50]);
  assert.deepEqual(totals, [250, 250, 250]);
  const want = Array.from({ length: 250 }, (_, i) => ({ id: `j${String(i).padStart(3, "0")}`, created: 1_000 + Math.floor(i / 3) }))
    .sort((a, b) => b.created - a.created || (a.id < b.id ? -1 : 1))
    .map((x) => x.id);
  assert.deepEqual(pages.flat(), want);

  const live = everyPage(() => jobs, index, 10, new Set([S.PENDING, S.ARMED]));
  assert.deepEqual(live.ids.flat(), want.filter((id) => jobs.some((j) => j.id === id)));
  assert.deepEqual(new Set(live.totals), new Set([jobs.length]));
  assert.deepEqual(listPage(jobs, index, { limit: 5, states: new Set([S.DEGRADED]), after: undefined }), { items: [], total: 0, next: undefined });
});

test("job listing - jobs submitted and ended between pages: no job twice, none of the first listing skipped", () => {
  let jobs = Array.from({ length: 30 }, (_, i) => active(`a${String(i).padStart(2, "0")}`, 100 + i));
  const index = FinishedIndex.of(Array.from({ length: 30 }, (_, i) => entry(`f${String(i).padStart(2, "0")}`, 100 + i)));
  const first = new Set([...jobs.map((j) => j.id), ...Array.from({ length: 30 }, (_, i) => `f${String(i).padStart(2, "0")}`)]);
  const { ids: pages } = everyPage(() => jobs, index, 8, undefined, (n) => {
    // A newer job arrives, and an active one of every page ends (it moves to the index, keeping its place).
    jobs.push(active(`new${n}`, 10_000 + n));
    const ending = jobs[0]!;
    jobs = jobs.slice(1);
    index.add(entry(ending.id, Number(ending.createdUnixMs), S.CANCELLED));
  });
  const listed = pages.flat();
  assert.equal(new Set(listed).size, listed.length, "no job twice");
  assert.deepEqual([...first].filter((id) => !listed.includes(id)), [], "every job of the first listing");
  assert.deepEqual(listed.filter((id) => id.startsWith("new")), [], "newer jobs are on the pages before");
});

test("job cache - an active job stays whole; a finished one goes to the index and the last few to end; the rest leave memory", () => {
  const cache = new JobCache<{ job: Job; shards: Map<number, number> }>();
  const put = (job: Job, shards = 0) => cache.set(job.id, { job, shards: new Map(Array.from({ length: shards }, (_, n) => [n, 1])) });
  put(active("a", 1));
  assert.equal(cache.get("a")?.job.state, S.ARMED);
  for (let i = 0; i <= recentFinished; i++) put(create(JobSchema, { id: `f${i}`, state: S.COMPLETED, createdUnixMs: BigInt(i) }), i === 0 ? 3 : 0);
  put(create(JobSchema, { id: "a", state: S.CANCELLED, createdUnixMs: 1n }));
  assert.deepEqual([...cache.active()], []);
  assert.equal(cache.finished.size, recentFinished + 2);
  assert.equal(cache.get("f0"), undefined, "the first to end left memory");
  assert.deepEqual([cache.has("f0"), cache.finished.get("f0")?.sharded, cache.finished.get("f1")?.sharded], [true, true, false]);
  assert.equal(cache.get("a")?.job.state, S.CANCELLED, "the last to end is kept");
  cache.forget("a");
  assert.deepEqual([cache.has("a"), cache.get("a")], [false, undefined]);
});

test("retention - a sweep every quarter of the time kept (half a second to a minute); it deletes what the index lets go and says so once", async () => {
  assert.deepEqual([sweepEveryMs(1_000), sweepEveryMs(60_000), sweepEveryMs(24 * 3_600_000)], [500, 15_000, 60_000]);
  const asked: Array<[number, number, number]> = [];
  const deleted: string[][] = [];
  let fail: Error | undefined;
  const store = {
    expiredFinished: (now: number, keepMs: number, keepCount: number) => {
      asked.push([now, keepMs, keepCount]);
      return now > 500 ? [entry("old1", 1), entry("old2", 2)] : [];
    },
    deleteFinished: async (entries: readonly FinishedEntry[]) => {
      if (fail) throw fail;
      deleted.push(entries.map((e) => e.id));
      return entries.length;
    },
  };
  const log: string[] = [];
  const retention = new FinishedRetention(store, { keepFinishedMs: 3_600_000, keepFinishedCount: 10 }, (line) => log.push(line));
  assert.equal(await retention.sweep(100), 0);
  assert.equal(await retention.sweep(1_000), 2);
  assert.deepEqual(asked, [
    [100, 3_600_000, 10],
    [1_000, 3_600_000, 10],
  ]);
  assert.deepEqual(deleted, [["old1", "old2"]]);
  assert.deepEqual(log, ["retention: deleted 2 finished job(s) that ended over 1h ago or beyond the 10 kept"]);
  fail = new Error("no answer from NATS within 10000 ms");
  assert.equal(await retention.sweep(1_000), 0);
  assert.equal(log.at(-1), "retention: deleting finished jobs failed (tried again at the next sweep): no answer from NATS within 10000 ms");
  retention.stop();
  fail = undefined;
  assert.equal(await retention.sweep(1_000), 0, "no sweep after stop");
  assert.equal(deleted.length, 1);
});

test("job listing - limit and states of a query are applied to the active jobs too", () => {
  const query: ListQuery = { limit: 2, states: new Set([S.PENDING]), after: undefined };
  const page = listPage([active("p1", 3, S.PENDING), active("a1", 4), active("p2", 2, S.PENDING), active("p3", 1, S.PENDING)], new FinishedIndex(), query);
  assert.deepEqual(ids(page), ["p1", "p2"]);
  assert.deepEqual(page.next, { createdUnixMs: 2, id: "p2" });
  assert.equal(page.total, 3);
});

test("retention flags - controller and up take --keep-finished and --keep-finished-count; bad values are usage errors saying what to give", () => {
  const controllerOpts = { listen: "127.0.0.1:0", lease: "15s", electionLease: "5s" };
  assert.deepEqual(pick(parseControllerArgs({ ...controllerOpts, keepFinished: "24h", keepFinishedCount: "100000" }, "nats://n")), { keepFinishedMs: 86_400_000, keepFinishedCount: 100_000 });
  assert.deepEqual(pick(parseControllerArgs(controllerOpts, "nats://n")), {}, "unset: the controller's defaults");
  assert.deepEqual(pick(parseUpArgs({ dataDir: "d", listen: "127.0.0.1:7070", natsPort: "4222", keepFinished: "1h30m", keepFinishedCount: "5" }, "/", "h")), { keepFinishedMs: 5_400_000, keepFinishedCount: 5 });
  const table: Array<[Record<string, string>, string]> = [
    [{ keepFinished: "0s" }, "--keep-finished '0s' must be longer than 0 (e.g. 24h, 30m)"],
    [{ keepFinished: "a day" }, "--keep-finished 'a day' is not a duration: use a number with ms, s, m or h (e.g. 500ms, 30s, 10m, 1h)"],
    [{ keepFinishedCount: "0" }, "--keep-finished-count '0' is not a number of jobs: give a whole number of at least 1 (e.g. 100000)"],
    [{ keepFinishedCount: "1e5" }, "--keep-finished-count '1e5' is not a number of jobs: give a whole number of at least 1 (e.g. 100000)"],
  ];
  for (const [flags, message] of table) {
    assert.throws(
      () => parseControllerArgs({ ...controllerOpts, ...flags }, "nats://n"),
      (err: unknown) => err instanceof UsageError && err.message === message,
      JSON.stringify(flags),
    );
  }
});

/** The retention fields of a parsed command line. */
function pick(request: { keepFinishedMs?: number; keepFinishedCount?: number }): object {
  return Object.fromEntries(Object.entries({ keepFinishedMs: request.keepFinishedMs, keepFinishedCount: request.keepFinishedCount }).filter(([, v]) => v !== undefined));
}
