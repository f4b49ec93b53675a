import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { AgentSchema, Backend, JobSchema, JobState, RpcError, WatchMode } from "../../proto/index.js";
import { main } from "../../cli/index.js";
import { ConsoleServer } from "../../cli/console/server.js";
import { FakeFleetReader } from "../support/fake-fleet-reader.js";
import { armedJob, twoWriters } from "../support/console-events.js";
import { openEventStream, probe } from "../support/http-probe.js";
import { waitFor } from "../support/wait.js";

const reader = new FakeFleetReader();
let server: ConsoleServer;
let port: number;

before(async () => {
  reader.agents = [
    create(AgentSchema, {
      info: { hostId: "host-a", backends: [Backend.PTRACE, Backend.PERF] },
      connected: true,
      targets: [{ pid: 42, slots: [{ dr: 0, jobId: "j1", jobIds: ["j1"], chunk: { address: 0x4010n, length: 8, mode: WatchMode.WRITE }, backend: Backend.PTRACE }] }],
    }),
  ];
  reader.jobs.set("j1", armedJob("j1", 5n));
  for (const event of twoWriters("j1", 3, 2)) reader.emit("j1", event);
  server = await ConsoleServer.start({
    reader,
    listen: { host: "127.0.0.1", port: 0 },
    context: { controller: "127.0.0.1:7070", nats: "nats://127.0.0.1:4222" },
    pollMs: 20,
    feed: { flushMs: 10, writersEveryMs: 0, settledAfterMs: 100 },
  });
  port = server.port;
});

after(async () => {
  await server?.close();
});

test("console server - the fleet and jobs pages are HTML shells with their scripts, a strict CSP and no caching", async () => {
  assert.equal(server.url, `http://127.0.0.1:${port}/`);
  for (const [path, script] of [
    ["/", "fleet"],
    ["/jobs", "jobs"],
  ] as const) {
    const page = await probe(port, path);
    assert.equal(page.status, 200, path);
    assert.equal(page.headers["content-type"], "text/html; charset=utf-8");
    assert.match(String(page.headers["content-security-policy"]), /default-src 'none'; script-src 'self'/);
    assert.equal(page.headers["x-frame-options"], "DENY");
    assert.equal(page.headers["cache-control"], "no-store");
    assert.match(page.body, new RegExp(`<script type="module" src="/static/${script}\\.js"></script>`));
    assert.match(page.body, /read-only/);
  }
  const head = await probe(port, "/", { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(head.body, "");
  assert.ok(Number(head.headers["content-length"]) > 0, "HEAD says how long the page is");
});

test("console server - a job's page is 200 when the controller has it, 404 'no job ID' when not, 400 for what is no job id", async () => {
  const page = await probe(port, "/jobs/j1");
  assert.equal(page.status, 200);
  assert.match(page.body, /data-job-id="j1"/);
  assert.match(page.body, /<option value="stack" selected>stack<\/option>/);
  const missing = await probe(port, "/jobs/nope");
  assert.equal(missing.status, 404);
  assert.match(missing.body, /<p class="error-message" id="error-message">no job nope<\/p>/);
  assert.equal((await probe(port, "/jobs/nope/flame.svg")).status, 404);
  for (const path of ["/jobs/a.b", "/jobs/a*", "/jobs/%3Cscript%3E", "/jobs/a.b/flame.svg", "/events/jobs/a.b", "/jobs/a%20b"]) {
    const bad = await probe(port, path);
    assert.equal(bad.status, 400, path);
    assert.match(bad.body, /is not a job id \(letters, digits, _ and - only\)/, path);
    assert.doesNotMatch(bad.body, /<script>/, "what was asked is escaped");
  }
  const badGrouping = await probe(port, "/jobs/j1?by=colour");
  assert.equal(badGrouping.status, 400);
  assert.match(badGrouping.body, /by: &#39;colour&#39; is not one of stack, frame, ip, tid, process, host, value/);
  assert.equal((await probe(port, "http://[")).status, 400, "a request target that is no URL");
  const other = await probe(port, "/nothing/here");
  assert.equal(other.status, 404);
  assert.match(other.body, /no page \/nothing\/here/);
});

test("console server - other methods are 405 and foreign Hosts 403 on every route, and the controller is not asked", async () => {
  const asked = reader.calls.length;
  for (const path of ["/", "/jobs", "/jobs/j1", "/jobs/j1/flame.svg", "/events/fleet", "/events/jobs/j1", "/static/style.css"]) {
    for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
      const refused = await probe(port, path, { method });
      assert.equal(refused.status, 405, `${method} ${path}`);
      assert.equal(refused.headers.allow, "GET, HEAD");
    }
    for (const host of ["evil.example", `evil.example:${port}`, `localhost:${port + 1}`]) {
      const refused = await probe(port, path, { host });
      assert.equal(refused.status, 403, `${path} Host ${host}`);
      assert.match(refused.body, /is not this console/);
    }
    assert.notEqual((await probe(port, path, { method: "HEAD", host: `localhost:${port}` })).status, 403, `${path} as localhost`);
  }
  assert.deepEqual(reader.calls.slice(asked).filter((c) => !["getJob", "watchJob", "listAgents", "listJobs", "readEvents", "readEvents(follow)"].includes(c)), [], "read methods only");
  const refusedCalls = reader.calls.length;
  await probe(port, "/jobs/j1", { method: "POST" });
  await probe(port, "/jobs/j1", { host: "evil.example" });
  assert.equal(reader.calls.length, refusedCalls, "a refused request reads nothing");
});

test("console server - static assets come from its own folder by plain names; dot-dot and encoded separators reach nothing", async () => {
  const css = await probe(port, "/static/style.css");
  assert.equal(css.status, 200);
  assert.equal(css.headers["content-type"], "text/css; charset=utf-8");
  for (const script of ["common.js", "fleet.js", "jobs.js", "job.js"]) assert.equal((await probe(port, `/static/${script}`)).headers["content-type"], "text/javascript; charset=utf-8", script);
  for (const path of [
    "/static/../package.json",
    "/static/../../package.json",
    "/static/..%2f..%2fpackage.json",
    "/static/%2e%2e/%2e%2e/package.json",
    "/static/%2e%2e%2f%2e%2e%2fpackage.json",
    "/static/..\\..\\package.json",
    "/static//etc/passwd",
    "/static/",
    "/static/server.js",
    "/static/style.css%00.js",
    "/../../../../etc/passwd",
  ]) {
    const response = await probe(port, path);
    assert.equal(response.status, 404, path);
    assert.doesNotMatch(response.body, /"name": "fleetwatch"|root:x:0/, path);
  }
});

test("console server - the fleet stream sends the fleet as the controller answers; a controller that goes away is on the banner, and it recovers by itself", async () => {
  const stream = await openEventStream(port, "/events/fleet");
  try {
    assert.equal(stream.status, 200);
    const fleet = await stream.next<any>("fleet");
    assert.deepEqual(fleet.hosts.map((h: any) => [h.hostId, h.connected, h.processes[0].registers[0].jobIds]), [["host-a", true, ["j1"]]]);
    reader.controllerFailure = new RpcError(status.UNAVAILABLE, "No connection established");
    const problem = await stream.next<any>("status", (s) => s.problems.length > 0);
    assert.deepEqual(problem.problems, ["controller unavailable: No connection established, reconnecting"]);
    const mark = stream.events.length;
    reader.controllerFailure = undefined;
    await stream.next<any>("status", (s) => s.problems.length === 0, mark, 10_000);
    await stream.next<any>("fleet", () => true, mark);
  } finally {
    reader.controllerFailure = undefined;
    stream.close();
  }
  const jobs = await openEventStream(port, "/events/jobs");
  try {
    const listing = await jobs.next<any>("jobs");
    assert.deepEqual(listing.jobs.map((j: any) => [j.id, j.state, j.counts.delivered]), [["j1", "armed", "5"]]);
  } finally {
    jobs.close();
  }
  await waitFor("both streams closed", () => server.openStreams === 0);
});

test("console server - a job's stream: state, hits with a running count and writers; two pages share one reading, which stops when they go", async () => {
  const follows = reader.calls.filter((c) => c === "readEvents(follow)").length;
  const replays = reader.calls.filter((c) => c === "readEvents").length;
  const first = await openEventStream(port, "/events/jobs/j1");
  const second = await openEventStream(port, "/events/jobs/j1?by=stack");
  try {
    for (const stream of [first, second]) {
      assert.equal((await stream.next<any>("job")).id, "j1");
      assert.equal((await stream.next<any>("hits", (h) => h.total === 5)).rows.length, 5);
      const writers = await stream.next<any>("writers", (w) => w.report.hits === "5");
      assert.deepEqual(writers.report.groups.map((g: any) => [g.key.stack.split(";").at(-1), g.hits]), [
        ["fw_write_alpha", 3],
        ["fw_write_beta", 2],
      ]);
    }
    assert.equal(server.openFeeds, 1);
    assert.equal(reader.calls.filter((c) => c === "readEvents(follow)").length, follows + 1, "one reading for both pages");
    const svg = await probe(port, "/jobs/j1/flame.svg");
    assert.equal(svg.status, 200);
    assert.equal(svg.headers["content-type"], "image/svg+xml; charset=utf-8");
    assert.equal(svg.headers["content-security-policy"], "default-src 'none'; style-src 'unsafe-inline'");
    assert.match(svg.body, /writers of job j1 \(armed\): 5 hits/);
    assert.equal(reader.calls.filter((c) => c === "readEvents").length, replays, "drawn from the open page's aggregation");
  } finally {
    first.close();
    second.close();
  }
  await waitFor("the reading stopped", () => server.openFeeds === 0 && reader.openFollows === 0 && reader.openWatches === 0 && server.openStreams === 0);
});

test("console server - with no page of the job open, the flame graph is drawn from one reading of its stream", async () => {
  const replays = reader.calls.filter((c) => c === "readEvents").length;
  const svg = await probe(port, "/jobs/j1/flame.svg?by=frame");
  assert.equal(svg.status, 200);
  assert.match(svg.body, /fw_write_alpha/);
  assert.match(svg.body, /fw_write_beta/);
  assert.equal(reader.calls.filter((c) => c === "readEvents").length, replays + 1);
  assert.equal(reader.openFollows, 0);
});

test("console server - a job page while the controller does not answer is a 503 that asks again by itself", async () => {
  reader.controllerFailure = new RpcError(status.UNAVAILABLE, "No connection established");
  try {
    const page = await probe(port, "/jobs/j1");
    assert.equal(page.status, 503);
    assert.equal(page.headers["retry-after"], "3");
    assert.match(page.body, /<meta http-equiv="refresh" content="3">/);
    assert.match(page.body, /controller unavailable: No connection established, reconnecting/);
  } finally {
    reader.controllerFailure = undefined;
  }
});

test("console server - close ends every open stream and reading", async () => {
  const other = await ConsoleServer.start({ reader, listen: { host: "127.0.0.1", port: 0 }, context: { controller: "c", nats: "n" }, feed: { flushMs: 10 } });
  const stream = await openEventStream(other.port, "/events/jobs/j1");
  await stream.next("job");
  await waitFor("reading", () => reader.openFollows === 1);
  await other.close();
  await waitFor("the stream ended", () => stream.ended);
  assert.equal(reader.openFollows, 0);
  assert.equal(reader.openWatches, 0);
});

async function run(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(["node", "fleetwatch", ...args], { stdout: { write: (t: string) => (stdout += t) }, stderr: { write: (t: string) => (stderr += t) } });
  return { code, stdout, stderr };
}

test("console command - a --listen that is not HOST:PORT is bad input (exit 3); one in use is said (exit 1)", async () => {
  const bad = await run("console", "--listen", "8080");
  assert.equal(bad.code, 3);
  assert.match(bad.stderr, /^fleetwatch: --listen '8080' is not HOST:PORT/);
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
  try {
    const busy = (taken.address() as net.AddressInfo).port;
    const result = await run("console", "--listen", `127.0.0.1:${busy}`);
    assert.equal(result.code, 1);
    assert.equal(result.stderr, `fleetwatch: console: cannot listen on 127.0.0.1:${busy}: the address is in use\n`);
    assert.equal(result.stdout, "");
  } finally {
    taken.close();
  }
});

test("console command - prints its URL once listening, warns on stderr when not on loopback, and ends with exit 0 on Ctrl-C", async () => {
  let stdout = "";
  let stderr = "";
  const running = main(["node", "fleetwatch", "--controller", "127.0.0.1:1", "console", "--listen", "0.0.0.0:0"], { stdout: { write: (t: string) => (stdout += t) }, stderr: { write: (t: string) => (stderr += t) } });
  const printed = await waitFor("the URL line", () => /^console: http:\/\/0\.0\.0\.0:(\d+)\/\n$/.exec(stdout)?.[1]);
  assert.match(stderr, new RegExp(`^warning: console listening on 0\\.0\\.0\\.0:${printed}, not loopback: anyone who reaches it sees every job, host and hit your credentials can read`));
  const page = await probe(Number(printed), "/jobs");
  assert.equal(page.status, 200);
  assert.match(page.body, /controller 127\.0\.0\.1:1 · events nats:\/\/127\.0\.0\.1:4222/);
  // What Ctrl-C does, without signalling the test runner itself.
  process.emit("SIGINT", "SIGINT");
  assert.equal(await running, 0, stderr);
  const refused = await new Promise<string>((resolve) => {
    const socket = net.connect(Number(printed), "127.0.0.1", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
  assert.equal(refused, "ECONNREFUSED", "it no longer listens");
});

test("console server - the jobs page lists one page of the newest jobs and every active one; the fleet page asks for pending jobs only", async () => {
  const fleet = new FakeFleetReader();
  // 300 finished jobs, and two active ones older than all of them.
  for (let i = 0; i < 300; i++) fleet.jobs.set(`f${i}`, create(JobSchema, { id: `f${i}`, state: JobState.COMPLETED, createdUnixMs: BigInt(2_000 + i) }));
  const armed = armedJob("old-armed", 1n);
  armed.createdUnixMs = 1_500n;
  fleet.jobs.set("old-armed", armed);
  fleet.jobs.set("old-pending", create(JobSchema, { id: "old-pending", state: JobState.PENDING, createdUnixMs: 1_000n }));
  const paged = await ConsoleServer.start({ reader: fleet, listen: { host: "127.0.0.1", port: 0 }, context: { controller: "c", nats: "n" }, pollMs: 20 });
  try {
    const jobs = await openEventStream(paged.port, "/events/jobs");
    try {
      const listed = (await jobs.next<any>("jobs")).jobs.map((j: any) => j.id);
      assert.equal(listed.length, 202);
      assert.deepEqual(listed.slice(0, 2), ["f299", "f298"], "newest first");
      assert.deepEqual(listed.slice(-3), ["f100", "old-armed", "old-pending"], "the newest 200, then the active ones beyond them");
    } finally {
      jobs.close();
    }
    const page = await openEventStream(paged.port, "/events/fleet");
    try {
      assert.deepEqual((await page.next<any>("fleet")).pending.map((j: any) => j.id), ["old-pending"]);
    } finally {
      page.close();
    }
    assert.deepEqual(new Set(fleet.jobQueries.map((q) => `${q.limit} ${q.states.map((s) => JobState[s]).join(",")}`)), new Set(["200 ", "1000 PENDING,ARMED,DEGRADED", "1000 PENDING"]));
  } finally {
    await paged.close();
  }
});
