import { test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { RpcError } from "../../proto/index.js";
import { describeReadFailure } from "../../cli/console/fleet-reader.js";
import { JobFeed, JobFeeds } from "../../cli/console/job-feed.js";
import type { EventSink } from "../../cli/console/sse.js";
import { reportJson } from "../../cli/report/render.js";
import { WritersAggregator } from "../../cli/report/writers.js";
import { FakeFleetReader } from "../support/fake-fleet-reader.js";
import { armedJob, countEvent, twoWriters, writerHit } from "../support/console-events.js";
import { waitFor } from "../support/wait.js";

/** A page that records what it was sent; `blocked` makes it congested. */
class RecordingSink implements EventSink {
  readonly sent: Array<{ event: string; data: any }> = [];
  blocked = false;
  send(event: string, data: unknown): void {
    this.sent.push({ event, data });
  }
  congested(): boolean {
    return this.blocked;
  }
  last(event: string): any {
    return this.sent.findLast((s) => s.event === event)?.data;
  }
  /** Rows the page would show: replaced on `replace`, added otherwise. */
  rows(): any[] {
    let rows: any[] = [];
    for (const { event, data } of this.sent) {
      if (event !== "hits") continue;
      rows = data.replace ? [...data.rows] : [...rows, ...data.rows];
    }
    return rows;
  }
}

const fast = { flushMs: 10, writersEveryMs: 0, settledAfterMs: 100 };

test("job feed - the writers are reportJson of WritersAggregator over the same events, as report computes them", async () => {
  const reader = new FakeFleetReader();
  reader.jobs.set("j1", armedJob("j1", 5n));
  for (const event of twoWriters("j1", 3, 2)) reader.emit("j1", event);
  const feed = new JobFeed(reader, "j1", ["stack"], fast);
  const sink = new RecordingSink();
  feed.start();
  feed.attach(sink);
  try {
    await waitFor("the five hits in the writers", () => sink.last("writers")?.report.hits === "5");
    const aggregator = new WritersAggregator(["stack"]);
    for (const event of twoWriters("j1", 3, 2)) if (event.kind === "hit") aggregator.addHit(event.hit);
    assert.deepEqual(sink.last("writers").report, reportJson({ job: armedJob("j1", 5n), snapshot: aggregator.snapshot(50) }));
    assert.deepEqual(
      sink.last("writers").report.groups.map((g: any) => [g.key.stack, g.hits]),
      [
        ["start_thread;fw_alpha_loop;fw_write_alpha", 3],
        ["start_thread;fw_beta_loop;fw_write_beta", 2],
      ],
    );
    assert.equal(sink.last("hits").total, 5);
    assert.deepEqual(sink.rows().map((r) => r.sequence), ["1", "2", "3", "4", "5"]);
    assert.equal(sink.last("job").state, "armed");
    assert.match(feed.flameSvg() ?? "", /fw_write_alpha/);
    // Live: a hit that arrives now is one more row and one more count.
    reader.emit("j1", writerHit("j1", 6, "fw_write_beta"));
    await waitFor("the sixth hit", () => sink.last("hits")?.total === 6);
    assert.deepEqual(sink.rows().map((r) => r.n), [1, 2, 3, 4, 5, 6]);
    assert.equal(sink.sent.filter((s) => s.event === "hits" && s.data.replace).length, 1, "rows are replaced only on the first send");
  } finally {
    await feed.close();
  }
  assert.equal(reader.openFollows, 0, "the event reading ended");
  assert.equal(reader.openWatches, 0, "WatchJob ended");
});

test("job feed - keeps the latest rows only, and counts every hit", async () => {
  const reader = new FakeFleetReader();
  reader.jobs.set("j1", armedJob("j1", 30n));
  for (const event of twoWriters("j1", 20, 10)) reader.emit("j1", event);
  const feed = new JobFeed(reader, "j1", ["frame"], { ...fast, hitRows: 8 });
  const sink = new RecordingSink();
  feed.start();
  try {
    await waitFor("30 hits read", () => feed.flameSvg()?.includes("30 hits"));
    feed.attach(sink);
    assert.equal(sink.last("hits")?.total, 30);
    assert.deepEqual(sink.rows().map((r) => r.n), [23, 24, 25, 26, 27, 28, 29, 30]);
  } finally {
    await feed.close();
  }
});

test("job feed - a job the controller does not have is gone, and nothing is read", async () => {
  const reader = new FakeFleetReader();
  const feed = new JobFeed(reader, "nope", ["stack"], fast);
  const sink = new RecordingSink();
  feed.start();
  feed.attach(sink);
  try {
    await waitFor("gone", () => sink.last("gone"));
    assert.deepEqual(sink.last("gone"), { message: "no job nope" });
    await waitFor("no reading left", () => reader.openFollows === 0 && reader.openWatches === 0);
  } finally {
    await feed.close();
  }
});

test("job feed - a controller that does not answer is on the banner until it does", async () => {
  const reader = new FakeFleetReader();
  reader.jobs.set("j1", armedJob("j1", 0n));
  reader.controllerFailure = new RpcError(status.UNAVAILABLE, "No connection established. Last error: connect ECONNREFUSED 127.0.0.1:7070");
  const feed = new JobFeed(reader, "j1", ["stack"], fast);
  const sink = new RecordingSink();
  feed.start();
  feed.attach(sink);
  try {
    await waitFor("the banner", () => sink.last("status")?.problems.length === 1);
    assert.deepEqual(sink.last("status").problems, ["controller unavailable: No connection established. Last error: connect ECONNREFUSED 127.0.0.1:7070, reconnecting"]);
    reader.controllerFailure = undefined;
    await waitFor("the job, and no banner", () => sink.last("job") && sink.last("status")?.problems.length === 0, 10_000);
  } finally {
    await feed.close();
  }
});

test("job feed - a dropped event stream is said, read again from its start, and pages replace their rows: no hit counts twice", async () => {
  const reader = new FakeFleetReader();
  reader.jobs.set("j1", armedJob("j1", 4n));
  for (const event of twoWriters("j1", 2, 2)) reader.emit("j1", event);
  const feed = new JobFeed(reader, "j1", ["stack"], fast);
  const sink = new RecordingSink();
  feed.start();
  feed.attach(sink);
  try {
    await waitFor("four hits", () => sink.last("hits")?.total === 4);
    reader.eventsFailure = new Error("cannot reach NATS at nats://127.0.0.1:4222");
    reader.breakFollows(new Error("lost the NATS connection"));
    await waitFor("the banner", () => sink.last("status")?.problems.length === 1);
    assert.match(sink.last("status").problems[0], /NATS/);
    reader.emit("j1", writerHit("j1", 5, "fw_write_alpha"));
    reader.eventsFailure = undefined;
    await waitFor("five hits after reading again", () => sink.last("hits")?.total === 5 && sink.last("writers")?.report.hits === "5", 10_000);
    await waitFor("no banner", () => sink.last("status")?.problems.length === 0);
    assert.deepEqual(sink.rows().map((r) => r.sequence), ["1", "2", "3", "4", "5"], "the rows were replaced, not doubled");
    assert.deepEqual(sink.last("writers").report.groups.map((g: any) => g.hits), [3, 2]);
  } finally {
    await feed.close();
  }
});

test("job feed - a page that does not keep up is skipped, then gets the newest rows and state", async () => {
  const reader = new FakeFleetReader();
  reader.jobs.set("j1", armedJob("j1", 0n));
  const feed = new JobFeed(reader, "j1", ["stack"], { ...fast, hitRows: 5 });
  const sink = new RecordingSink();
  feed.start();
  feed.attach(sink);
  try {
    await waitFor("the job", () => sink.last("job"));
    sink.blocked = true;
    const before = sink.sent.length;
    for (const event of twoWriters("j1", 6, 6)) reader.emit("j1", event);
    reader.updateJob(armedJob("j1", 12n));
    await waitFor("twelve read", () => feed.flameSvg()?.includes("12 hits"));
    assert.equal(sink.sent.length, before, "nothing was sent to the congested page");
    sink.blocked = false;
    await waitFor("caught up", () => sink.last("hits")?.total === 12 && sink.last("job")?.counts.delivered === "12");
    assert.deepEqual(sink.rows().map((r) => r.n), [8, 9, 10, 11, 12], "the newest rows, without the ones it missed");
  } finally {
    await feed.close();
  }
});

test("job feed - a counting job shows its count reports and counting rows", async () => {
  const reader = new FakeFleetReader();
  reader.jobs.set("c1", armedJob("c1", 12n, true));
  reader.emit("c1", countEvent(1, 5n, 5n));
  reader.emit("c1", countEvent(2, 7n, 12n));
  const feed = new JobFeed(reader, "c1", ["stack"], fast);
  const sink = new RecordingSink();
  feed.start();
  feed.attach(sink);
  try {
    await waitFor("the counting rows", () => sink.last("writers")?.report.counting);
    assert.equal(sink.last("hits").countOnly, true);
    assert.deepEqual(sink.rows().map((r) => [r.hits, r.total, r.tids]), [["5", "5", "43:5"], ["7", "12", "43:7"]]);
    const counting = sink.last("writers").report.counting;
    assert.deepEqual(counting.processes.map((r: any) => [r.key, r.hits]), [["host-a/42", "12"]]);
    assert.deepEqual(counting.threads.map((r: any) => [r.key, r.hits]), [["host-a/42/43", "12"]]);
  } finally {
    await feed.close();
  }
});

test("job feeds - pages of one job and grouping share one reading, which stops when the last goes", async () => {
  const reader = new FakeFleetReader();
  reader.jobs.set("j1", armedJob("j1", 0n));
  const feeds = new JobFeeds(reader, fast);
  const a = feeds.open("j1", ["stack"]);
  const b = feeds.open("j1", ["stack"]);
  const byFrame = feeds.open("j1", ["frame"]);
  assert.equal(a.feed, b.feed);
  assert.notEqual(a.feed, byFrame.feed);
  assert.equal(feeds.size, 2);
  await waitFor("two readings", () => reader.openFollows === 2);
  a.release();
  a.release();
  assert.equal(feeds.find("j1", ["stack"]), b.feed, "one page still shows it");
  b.release();
  byFrame.release();
  assert.equal(feeds.size, 0);
  await waitFor("no reading left", () => reader.openFollows === 0 && reader.openWatches === 0);
  assert.equal(reader.calls.filter((c) => c === "readEvents(follow)").length, 2);
});

test("banner wording - unreachable controllers reconnect, other answers are named, grpc-js's empty resolution note is left out", () => {
  assert.equal(
    describeReadFailure(new RpcError(status.UNAVAILABLE, "No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:7070. Resolution note: ")),
    "controller unavailable: No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:7070, reconnecting",
  );
  assert.equal(describeReadFailure(new RpcError(status.DEADLINE_EXCEEDED, "")), "controller unavailable: DEADLINE_EXCEEDED, reconnecting");
  assert.equal(describeReadFailure(new RpcError(status.PERMISSION_DENIED, "user vera may not list agents")), "controller answered PERMISSION_DENIED: user vera may not list agents, retrying");
  assert.equal(describeReadFailure(new Error("cannot reach NATS at nats://127.0.0.1:4222")), "cannot reach NATS at nats://127.0.0.1:4222, retrying");
});
