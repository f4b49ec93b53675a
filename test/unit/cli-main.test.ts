import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { status, type Server } from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import {
  ControllerService,
  JobSchema,
  JobState,
  RpcError,
  addService,
  bindServer,
  createServer,
  type ServiceImpl,
} from "../../proto/index.js";
import { main } from "../../cli/index.js";
import { freePort } from "../../cli/nats-server.js";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(...args: string[]): Promise<Run> {
  let stdout = "";
  let stderr = "";
  const code = await main(["node", "fleetwatch", ...args], { stdout: { write: (t: string) => (stdout += t) }, stderr: { write: (t: string) => (stderr += t) } });
  return { code, stdout, stderr };
}

// A controller that answers from a script, so exit codes and output can be
// checked through the real program and the real gRPC adapter.
let server: Server;
let address: string;
let deadAddress: string;
const job = create(JobSchema, { id: "j-1", state: JobState.COMPLETED, createdUnixMs: 1_700_000_000_000n });
const fail = (code: status, details: string) => Promise.reject(new RpcError(code, details));
const impl: ServiceImpl<typeof ControllerService> = {
  submitJob: () => fail(status.RESOURCE_EXHAUSTED, "h1/4242 has 1 free debug register, the job needs 2"),
  getJob: (request) => (request.id === "j-1" ? Promise.resolve({ job }) : fail(status.NOT_FOUND, `no job ${request.id}`)),
  // One job a page: page 1 says where page 2 starts; a token it did not give is refused as the controller does.
  listJobs: (request) => {
    if (request.pageToken === "garbled") return fail(status.INVALID_ARGUMENT, "page token 'garbled' is not one this controller gave: pass the next page token of the previous page as it was, or none for the newest jobs");
    if (request.limit === 1 && request.pageToken === "") return Promise.resolve({ jobs: [job], nextPageToken: `p2-${request.states.join("-")}`, total: 2 });
    return Promise.resolve({ jobs: [job] });
  },
  cancelJob: () => fail(status.FAILED_PRECONDITION, "job j-1 is completed"),
  listAgents: () => Promise.resolve({ agents: [] }),
  // eslint-disable-next-line require-yield
  watchJob: async function* () {
    throw new RpcError(status.UNIMPLEMENTED, "not in this test");
  },
  disarmAll: () => fail(status.PERMISSION_DENIED, "access policy (p.json): user bob is viewer (binding #1); disarm-all needs admin"),
  listAudit: () => Promise.resolve({ records: [] }),
};

before(async () => {
  server = createServer();
  addService(server, ControllerService, impl, (err) => (err instanceof RpcError ? { code: err.code, details: err.details } : { code: status.INTERNAL, details: "internal error" }));
  address = `127.0.0.1:${await bindServer(server, "127.0.0.1:0")}`;
  deadAddress = `127.0.0.1:${await freePort()}`;
});

after(() => server.forceShutdown());

test("cli main - local validation fails with exit 3 before any call", async () => {
  const result = await run("--controller", deadAddress, "watch", "--pid", "42", "--address", "0x4010", "--length", "3");
  assert.deepEqual(result, { code: 3, stdout: "", stderr: "fleetwatch: length 3 is not 1, 2, 4 or 8 bytes\n" });
});

test("cli main - commander usage errors exit 3 with commander's message", async () => {
  assert.deepEqual(await run("jobs", "ls", "--bogus"), { code: 3, stdout: "", stderr: "fleetwatch: unknown option '--bogus'\n" });
  const badFormat = await run("jobs", "ls", "-o", "yaml");
  assert.equal(badFormat.code, 3);
  assert.match(badFormat.stderr, /^fleetwatch: option '-o, --output <format>' argument 'yaml' is invalid\. Allowed choices are table, json\.\n$/);
  const missing = await run("jobs", "get");
  assert.deepEqual(missing, { code: 3, stdout: "", stderr: "fleetwatch: missing required argument 'id'\n" });
  const unknown = await run("wtach");
  assert.equal(unknown.code, 3);
  assert.match(unknown.stderr, /^fleetwatch: unknown command 'wtach'/);
});

test("cli main - --help prints usage on stdout and exits 0; a bare group exits 3 with help on stderr", async () => {
  const help = await run("--help");
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: fleetwatch \[options\] \[command\]/);
  const watchHelp = await run("watch", "--help");
  assert.equal(watchHelp.code, 0);
  assert.match(watchHelp.stdout, /--controller <addr>/);
  const bare = await run("jobs");
  assert.equal(bare.code, 3);
  assert.equal(bare.stdout, "");
  assert.match(bare.stderr, /^Usage: fleetwatch jobs/);
});

test("cli main - an unreachable controller is exit 1 with advice", async () => {
  assert.deepEqual(await run("--controller", deadAddress, "jobs", "ls"), {
    code: 1,
    stdout: "",
    stderr: `fleetwatch: cannot reach the controller at ${deadAddress}: is \`fleetwatch up\` or \`fleetwatch controller\` running? (one that serves mutual TLS needs --ca, --cert and --key)\n`,
  });
});

test("cli main - placement refusals exit 2 with the status details verbatim", async () => {
  assert.deepEqual(await run("--controller", address, "watch", "--pid", "4242", "--symbol", "counter"), {
    code: 2,
    stdout: "",
    stderr: "fleetwatch: h1/4242 has 1 free debug register, the job needs 2\n",
  });
  assert.deepEqual(await run("--controller", address, "jobs", "get", "j-9"), { code: 2, stdout: "", stderr: "fleetwatch: no job j-9\n" });
  assert.deepEqual(await run("--controller", address, "jobs", "cancel", "j-1"), { code: 2, stdout: "", stderr: "fleetwatch: job j-1 is completed\n" });
});

test("cli main - jobs ls: a page, then on stderr how to ask for the next; bad flags exit 3 before any call, a bad token with the controller's words", async () => {
  const first = await run("--controller", address, "jobs", "ls", "--limit", "1", "--state", "completed,FAILED");
  assert.equal(first.code, 0);
  assert.match(first.stdout, /^ID\s+STATE.*\nj-1\s+completed/);
  assert.equal(first.stderr, "1 of 2 jobs shown; the next page: fleetwatch jobs ls --limit 1 --state completed,failed --continue p2-3-5\n");
  const json = await run("--controller", address, "jobs", "ls", "--limit", "1", "-o", "json");
  assert.deepEqual({ code: json.code, stderr: json.stderr, page: JSON.parse(json.stdout) }, { code: 0, stderr: "", page: { jobs: [{ id: "j-1", state: "JOB_STATE_COMPLETED", createdUnixMs: "1700000000000" }], nextPageToken: "p2-", total: 2 } });
  assert.deepEqual(await run("--controller", address, "jobs", "ls", "--continue", "p2-"), { code: 0, stdout: first.stdout, stderr: "" }, "the last page says nothing more");
  assert.deepEqual(await run("--controller", deadAddress, "jobs", "ls", "--state", "armed,done"), {
    code: 3,
    stdout: "",
    stderr: "fleetwatch: --state 'done' is not a job state: use pending, armed, degraded, completed, cancelled, failed (several comma-separated)\n",
  });
  for (const limit of ["0", "ten", "-5"]) {
    const bad = await run("--controller", deadAddress, "jobs", "ls", "--limit", limit);
    assert.deepEqual(bad, { code: 3, stdout: "", stderr: `fleetwatch: --limit '${limit}' is not a number of jobs: give a whole number from 1 (the controller allows up to 1000 a page)\n` });
  }
  assert.deepEqual(await run("--controller", address, "jobs", "ls", "--continue", "garbled"), {
    code: 3,
    stdout: "",
    stderr: "fleetwatch: page token 'garbled' is not one this controller gave: pass the next page token of the previous page as it was, or none for the newest jobs\n",
  });
});

test("cli main - -o json prints protobuf JSON and nothing else", async () => {
  const list = await run("--controller", address, "jobs", "ls", "-o", "json");
  assert.equal(list.code, 0);
  assert.deepEqual(JSON.parse(list.stdout), { jobs: [{ id: "j-1", state: "JOB_STATE_COMPLETED", createdUnixMs: "1700000000000" }] });
  const one = await run("--controller", address, "jobs", "get", "j-1", "-o", "json");
  assert.deepEqual(JSON.parse(one.stdout), { id: "j-1", state: "JOB_STATE_COMPLETED", createdUnixMs: "1700000000000" });
  const agents = await run("--controller", address, "agents", "ls", "-o", "json");
  assert.deepEqual({ code: agents.code, json: JSON.parse(agents.stdout) }, { code: 0, json: {} });
  assert.deepEqual(await run("--controller", address, "agents", "ls"), { code: 0, stdout: "no agents\n", stderr: "" });
});
