// Hostile clients of a real controller (with a real agent, helper and C
// target): every ControllerService method gets valid messages with hostile
// values, random and corrupted protobuf bytes and oversized frames; agent
// sessions get hostile registrations, answers nobody asked for and garbage.
// Every call ends with a status that says what was wrong (never INTERNAL or
// UNKNOWN), the daemons stay up and still serve a watch, and the target is
// never harmed.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import {
  Backend,
  CancelJobRequestSchema,
  ConditionOp,
  GetJobRequestSchema,
  JobState,
  ListAuditRequestSchema,
  SessionRequestSchema,
  SubmitJobRequestSchema,
  SubmitJobResponseSchema,
  TargetState,
  WatchJobRequestSchema,
  WatchMode,
  JobSpecSchema,
} from "../../proto/index.js";
import { Cluster } from "../support/cluster.js";
import { caseNumbers, fuzzConfig, replayHint, Rng, varint, type FuzzConfig } from "../support/fuzz.js";
import { buildFixtures, startTarget, type Target } from "../support/targets.js";
import { scaled, waitFor } from "../support/wait.js";

/** Default cases per run: with fuzz-helper's, over 10,000 in CI. */
const DEFAULT_CASES = 5_000;
const IN_FLIGHT = 16;
/** Above PID_MAX_LIMIT (2^22): never a process. */
const NEVER_A_PID = 4_194_305;
const CALL_DEADLINE_MS = scaled(20_000);
/** A follower of a live job is left by its deadline. */
const WATCH_DEADLINE_MS = scaled(3_000);
// Cancelling waits for the agent to disarm, behind whatever hostile commands its helper is working through.
const CANCEL_DEADLINE_MS = scaled(60_000);
/** gRPC's default limit on a request the server accepts. */
const SERVER_MAX_REQUEST_BYTES = 4 * 1024 * 1024;

const S = grpc.status;
/** Statuses any call may end with: each says what was wrong with the request or the fleet. */
const ANSWERS = new Set([S.OK, S.INVALID_ARGUMENT, S.NOT_FOUND, S.FAILED_PRECONDITION, S.PERMISSION_DENIED, S.RESOURCE_EXHAUSTED, S.UNAVAILABLE, S.ALREADY_EXISTS, S.OUT_OF_RANGE]);

// DisarmAll is not drawn: it waits up to 10 s for each connected agent, and the
// fuzz's own hostile agents never answer (authz.test and multihost-security.test cover it).
const controllerMethods = ["SubmitJob", "GetJob", "ListJobs", "CancelJob", "ListAgents", "WatchJob", "ListAudit"] as const;
type ControllerMethod = (typeof controllerMethods)[number];
const path = (m: ControllerMethod) => `/fleetwatch.v1.ControllerService/${m}`;
const sessionPath = "/fleetwatch.v1.AgentService/Session";

interface Outcome {
  code: grpc.status;
  details: string;
  messages: Buffer[];
}

const identity = (b: Buffer) => b;

function unary(client: grpc.Client, method: string, bytes: Buffer): Promise<Outcome> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(method, identity, identity, bytes, new grpc.Metadata(), { deadline: Date.now() + CALL_DEADLINE_MS }, (err, response) => {
      if (err) resolve({ code: err.code, details: err.details, messages: [] });
      else resolve({ code: S.OK, details: "", messages: response ? [response] : [] });
    });
  });
}

function serverStream(client: grpc.Client, method: string, bytes: Buffer, deadlineMs: number): Promise<Outcome> {
  return new Promise((resolve) => {
    const call = client.makeServerStreamRequest(method, identity, identity, bytes, new grpc.Metadata(), { deadline: Date.now() + deadlineMs });
    const messages: Buffer[] = [];
    call.on("data", (m: Buffer) => messages.push(m));
    call.on("error", () => undefined);
    call.on("status", (s: grpc.StatusObject) => resolve({ code: s.code, details: s.details, messages }));
  });
}

/** A session that sends `requests` (raw bytes) and half-closes. */
function session(client: grpc.Client, requests: Buffer[]): Promise<Outcome> {
  return new Promise((resolve) => {
    const call = client.makeBidiStreamRequest(sessionPath, identity, identity, new grpc.Metadata(), { deadline: Date.now() + CALL_DEADLINE_MS });
    const messages: Buffer[] = [];
    call.on("data", (m: Buffer) => messages.push(m));
    call.on("error", () => undefined);
    call.on("status", (s: grpc.StatusObject) => resolve({ code: s.code, details: s.details, messages }));
    for (const r of requests) call.write(r);
    call.end();
  });
}

interface Scene {
  target: Target;
  counterAddress: bigint;
  /** Ids of jobs the fuzz created, cancelled at once. */
  created: string[];
  /** Ids to ask about: created ones and made-up ones. */
  deadPid: number;
  /** Submits whose answer the client lost (see isClientRstArtifact): each may have made a job nobody named. */
  answersLost: number;
}

/** Hosts and processes a hostile job may name: the test's own target, or none at all (never another process of this machine). */
function pid(rng: Rng, scene: Scene): number {
  return rng.chance(0.6) ? scene.target.pid : rng.pick([0, 1, scene.deadPid, NEVER_A_PID, 0x7fffffff, 0x80000000, 0xffffffff]);
}

/** A path or name that matches no process here (a selector must not pick up other tests' processes). */
function noMatch(rng: Rng, absolute: boolean): string {
  const prefix = absolute && rng.chance(0.9) ? "/fz-" : "fz-";
  return rng.pick([`${prefix}${rng.word()}`, `${prefix}${"x".repeat(rng.size(100_000))}`, `${prefix}\0${rng.word()}`, `${prefix}é☃`]);
}

function many<T>(rng: Rng, make: () => T, small = 3): T[] {
  const n = rng.chance(0.9) ? rng.int(small + 1) : rng.pick([5, 17, 100, 100_000]);
  if (n > 1000) {
    // 100,000 copies of one small element: the message stays near the server's limit, not gigabytes.
    const before = rng.maxStringLength;
    rng.maxStringLength = 16;
    const one = make();
    rng.maxStringLength = before;
    return Array.from({ length: n }, () => one);
  }
  return Array.from({ length: n }, make);
}

/** One of the jobs this run created, else a made-up id; the draws are the same either way, so a case replayed alone stays in step. */
function someJob(rng: Rng, scene: Scene, made: () => string): string {
  const useCreated = rng.chance(0.3);
  const index = rng.u32();
  const madeUp = made();
  return useCreated && scene.created.length > 0 ? scene.created[index % scene.created.length]! : madeUp;
}

function enumValue(rng: Rng, max: number): number {
  return rng.chance(0.8) ? rng.int(max + 1) : rng.pick([max + 1, 99, -1, 0x7fffffff, -0x80000000]);
}

type SpecInit = MessageInitShape<typeof JobSpecSchema>;

/** Half the specs are a valid watch of the target with one hostile field: they get past validation to placement and the agent. */
function hostileSpec(rng: Rng, scene: Scene): SpecInit {
  const hostile = anySpec(rng, scene);
  if (rng.chance(0.5)) return hostile;
  const sane: SpecInit = {
    watches: [rng.chance(0.5) ? { location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE } : { location: { case: "address", value: scene.counterAddress }, length: 8, mode: WatchMode.READ_WRITE }],
    target: { pid: scene.target.pid },
  };
  const field = rng.pick(Object.keys(hostile) as (keyof SpecInit)[]);
  return { ...sane, [field]: hostile[field] };
}

function anySpec(rng: Rng, scene: Scene): SpecInit {
  const watch = () => ({
    location: rng.chance(0.5)
      ? { case: "symbol" as const, value: rng.chance(0.5) ? rng.pick(["fw_counter", "fw_counter+8", "fw_other", "fw_bytes+0x4", "fw_counter+0xffffffffffffffff"]) : rng.string() }
      : { case: "address" as const, value: rng.chance(0.4) ? scene.counterAddress + BigInt(rng.pick([0, 1, 4, 8])) : rng.address() },
    length: rng.chance(0.7) ? rng.pick([0, 1, 2, 4, 8]) : rng.u32Edge(),
    mode: enumValue(rng, 4) as WatchMode,
  });
  return {
    watches: rng.chance(0.85) ? Array.from({ length: 1 + rng.int(2) }, watch) : many(rng, watch, 6),
    target: rng.chance(0.95)
      ? {
          pid: pid(rng, scene),
          exe: rng.chance(0.9) ? "" : noMatch(rng, true),
          comm: rng.chance(0.9) ? "" : noMatch(rng, false),
          cgroup: rng.chance(0.9) ? "" : noMatch(rng, true),
          hostIds: rng.chance(0.7) ? [] : rng.chance(0.5) ? ["host-a"] : many(rng, () => rng.pick(["host-a", rng.string(200), noMatch(rng, false)])),
          hostSelector: rng.chance(0.85) ? "" : rng.pick(["role=db", "zone in (a,b)", "!x", rng.string(5000)]),
          allHosts: rng.chance(0.1),
        }
      : undefined,
    maxHits: rng.chance(0.5) ? 0n : rng.u64Edge(),
    durationMs: rng.chance(0.7) ? 0n : rng.u64Edge(),
    conditions: rng.chance(0.8) ? [] : many(rng, () => ({ op: enumValue(rng, 8) as ConditionOp, value: rng.u64Edge() }), 5),
    tids: rng.chance(0.8) ? [] : many(rng, () => rng.u32Edge(), 17),
    maxHitsPerSecond: rng.chance(0.7) ? 0 : rng.u32Edge(),
    backoffMs: rng.chance(0.7) ? 0 : rng.u32Edge(),
    ...(rng.chance(0.5) ? {} : { stackDepth: rng.chance(0.5) ? rng.int(70) : rng.u32Edge() }),
    placement: rng.chance(0.7) ? "" : rng.pick(["all", "any", "sample:1", "sample:0", "sample:1:zone", "sample:999999", rng.string()]),
    priority: rng.chance(0.7) ? 0 : rng.i32Edge(),
    queueTimeoutMs: rng.chance(0.8) ? 0n : rng.chance(0.5) ? BigInt(1 + rng.int(100)) : rng.u64Edge(),
    lostAfterMs: rng.chance(0.8) ? 0n : rng.u64Edge(),
    replaceLost: rng.chance(0.1),
    backend: enumValue(rng, 2) as Backend,
    countOnly: rng.chance(0.15),
    countIntervalMs: rng.chance(0.8) ? 0n : rng.chance(0.5) ? BigInt(rng.pick([5, 10, 250, 3_600_000, 3_600_001])) : rng.u64Edge(),
  };
}

/** An id to ask about: a job the fuzz made, or one that never existed. */
function jobId(rng: Rng, scene: Scene): string {
  return someJob(rng, scene, () => (rng.chance(0.5) ? rng.string() : rng.pick(["", "0000000000", "*", ">", "a.b", "..", "\0"])));
}

/** The request bytes of a case: a hostile message, or bytes that are none. */
function requestBytes(rng: Rng, method: ControllerMethod, scene: Scene): Buffer {
  const r = rng.int(100);
  let bytes: Uint8Array;
  switch (method) {
    case "SubmitJob":
      bytes = toBinary(SubmitJobRequestSchema, create(SubmitJobRequestSchema, rng.chance(0.97) ? { spec: hostileSpec(rng, scene) } : {}));
      break;
    case "GetJob":
      bytes = toBinary(GetJobRequestSchema, create(GetJobRequestSchema, { id: jobId(rng, scene) }));
      break;
    case "CancelJob":
      bytes = toBinary(CancelJobRequestSchema, create(CancelJobRequestSchema, { id: jobId(rng, scene) }));
      break;
    case "WatchJob":
      bytes = toBinary(WatchJobRequestSchema, create(WatchJobRequestSchema, { id: jobId(rng, scene) }));
      break;
    case "ListAudit":
      bytes = toBinary(ListAuditRequestSchema, create(ListAuditRequestSchema, { sinceUnixMs: rng.chance(0.5) ? 0n : BigInt.asIntN(64, rng.u64Edge()) }));
      break;
    default:
      bytes = new Uint8Array(0);
  }
  if (r < 60) return Buffer.from(bytes);
  if (r < 75) return rng.corrupt(bytes);
  if (r < 99) return rng.protobufish();
  // Past the server's limit on requests.
  return Buffer.concat([Buffer.from(bytes), Buffer.alloc(SERVER_MAX_REQUEST_BYTES + rng.int(1024), 0x41)]);
}

type Tally = Map<string, number>;

/** A SubmitJobRequest whose spec carries field 99 (unknown here): JobSpec is field 1, length-delimited. */
function withUnknownField(request: Buffer): Buffer {
  const spec = fromBinary(SubmitJobRequestSchema, request).spec!;
  const specBytes = Buffer.concat([Buffer.from(toBinary(JobSpecSchema, spec)), Buffer.from([0x9a, 0x06, 0x03, 0x61, 0x62, 0x63])]);
  return Buffer.concat([Buffer.from([0x0a]), varint(BigInt(specBytes.length)), specBytes]);
}

function submit(spec: SpecInit): Buffer {
  return Buffer.from(toBinary(SubmitJobRequestSchema, create(SubmitJobRequestSchema, { spec })));
}

async function controllerCase(client: grpc.Client, cluster: Cluster, config: FuzzConfig, caseNo: number, scene: Scene, tally: Tally): Promise<void> {
  const rng = Rng.forCase(config.seed, caseNo);
  const method = rng.pick(controllerMethods);
  const bytes = requestBytes(rng, method, scene);
  const call = () => (method === "WatchJob" ? serverStream(client, path(method), bytes, WATCH_DEADLINE_MS) : unary(client, path(method), bytes));
  let outcome = await call();
  if (isClientRstArtifact(outcome)) {
    // A submit is not sent twice: its job may exist already. The jobs no answer named are cancelled at the end.
    if (method === "SubmitJob") {
      tally.set("client-side RST artifact, submit answer lost", (tally.get("client-side RST artifact, submit answer lost") ?? 0) + 1);
      scene.answersLost++;
      return;
    }
    tally.set("client-side RST artifact, retried", (tally.get("client-side RST artifact, retried") ?? 0) + 1);
    outcome = await call();
  }
  const what = `${method} with ${bytes.length} bytes: ${S[outcome.code]} '${outcome.details.slice(0, 300)}'; ${replayHint(config, caseNo)}`;
  tally.set(`${method} ${S[outcome.code]}`, (tally.get(`${method} ${S[outcome.code]}`) ?? 0) + 1);
  // A follower of a job still live is left by its deadline, which the case set.
  const allowed = outcome.code === S.DEADLINE_EXCEEDED ? method === "WatchJob" : ANSWERS.has(outcome.code);
  assert.ok(allowed, `unexpected status: ${what}${internalErrors(cluster)}`);
  if (outcome.code !== S.OK) assert.ok(outcome.details.trim().length > 0, `a refusal says why: ${what}`);
  if (method === "SubmitJob" && outcome.code === S.OK) {
    const job = fromBinary(SubmitJobResponseSchema, outcome.messages[0]!).job!;
    scene.created.push(job.id);
    // The controller's state is left as found: every job the fuzz made ends now.
    await cluster.api().cancelJob({ id: job.id }, { deadlineMs: CANCEL_DEADLINE_MS }).catch((err: unknown) => assert.fail(`cancelling job ${job.id} (${job.state === JobState.PENDING ? "pending" : JobState[job.state]}) failed: ${String(err)}; ${what}${internalErrors(cluster)}`));
  }
}

/**
 * grpc-js's client, under load, can take the server's RST_STREAM(NO_ERROR)
 * (sent after the status, when the server answered before reading the end of
 * a large request) for a call that ended without status, and makes up this
 * INTERNAL itself (grpc/grpc-node#1532). The server did answer; the case is
 * sent again once and must then get its status.
 */
function isClientRstArtifact(outcome: Outcome): boolean {
  return outcome.code === S.INTERNAL && outcome.details === "Received RST_STREAM with code 0 (Call ended without gRPC status)";
}

/** What the controller logged about its internal errors (their stacks), for a failure message. */
function internalErrors(cluster: Cluster): string {
  const at = cluster.controller!.output.indexOf("internal error:");
  return at < 0 ? "" : `; the controller logged: ${cluster.controller!.output.slice(at, at + 1500)}`;
}

/** A SessionRequest of any kind with hostile values, as bytes (sometimes not one at all). */
function sessionRequest(rng: Rng, scene: Scene, hostId: string): Buffer {
  const counts = () => ({ trapped: rng.u64Edge(), delivered: rng.u64Edge(), suppressed: rng.u64Edge(), dropped: rng.u64Edge(), filtered: rng.u64Edge() });
  const error = () => (rng.chance(0.5) ? { errnoName: rng.pick(["ESRCH", "EPERM", "", rng.string(200)]), message: rng.string() } : undefined);
  const aJob = () => someJob(rng, scene, () => rng.string(300));
  const msg: MessageInitShape<typeof SessionRequestSchema>["msg"] = rng.pick([
    () => ({
      case: "register" as const,
      value: {
        info: {
          hostId: rng.chance(0.8) ? hostId : rng.string(),
          labels: Object.fromEntries(many(rng, () => [rng.string(100), rng.string(100)] as const, 4)),
          hostname: rng.string(),
          kernel: rng.string(),
          arch: rng.string(100),
          slotsPerThread: rng.u32Edge(),
          agentVersion: rng.string(100),
          helperVersion: rng.string(100),
        },
        armed: many(rng, () => ({ jobId: aJob(), pid: pid(rng, scene), slots: [{ dr: rng.u32Edge(), chunk: { address: rng.address(), length: rng.u32Edge(), mode: enumValue(rng, 4) } }], counts: counts() })),
      },
    }),
    () => ({ case: "heartbeat" as const, value: { sentUnixMs: BigInt.asIntN(64, rng.u64Edge()) } }),
    () => ({ case: "resolveResult" as const, value: { requestId: rng.u64Edge(), error: error(), address: rng.address(), size: rng.u64Edge(), module: rng.string() } }),
    () => ({ case: "armResult" as const, value: { requestId: rng.u64Edge(), jobId: aJob(), pid: pid(rng, scene), error: error(), threadsTotal: rng.u32Edge(), threadsArmed: rng.u32Edge(), reservedMask: rng.u32Edge() } }),
    () => ({ case: "disarmResult" as const, value: { requestId: rng.u64Edge(), jobId: aJob(), pid: pid(rng, scene), error: error(), counts: counts(), reservedMask: rng.u32Edge() } }),
    () => ({ case: "targetReport" as const, value: { jobId: aJob(), pid: pid(rng, scene), state: enumValue(rng, 9) as TargetState, reason: rng.string(), counts: counts(), threadsTotal: rng.u32Edge(), threadsArmed: rng.u32Edge(), reservedMask: rng.u32Edge() } }),
    () => ({ case: "discoverResult" as const, value: { requestId: rng.u64Edge(), error: error(), processes: many(rng, () => ({ pid: pid(rng, scene), comm: rng.string(100), exe: rng.string(100), startTime: rng.u64Edge(), tracerPid: rng.u32Edge(), tracerComm: rng.string(100) })) } }),
    () => ({ case: "processAppeared" as const, value: { jobId: rng.string(300), process: { pid: pid(rng, scene), comm: rng.string(100), exe: rng.string(100), startTime: rng.u64Edge() } } }),
    () => ({ case: undefined }),
  ])();
  const bytes = toBinary(SessionRequestSchema, create(SessionRequestSchema, { msg }));
  const r = rng.int(100);
  if (r < 75) return Buffer.from(bytes);
  if (r < 85) return rng.corrupt(bytes);
  return rng.protobufish();
}

async function sessionCase(client: grpc.Client, config: FuzzConfig, caseNo: number, scene: Scene, tally: Tally): Promise<void> {
  const rng = Rng.forCase(config.seed, caseNo);
  // A few host ids of their own: a fuzz session never replaces the real agent's.
  const hostId = `fz-agent-${rng.int(4)}`;
  const requests: Buffer[] = [];
  if (rng.chance(0.8)) requests.push(Buffer.from(toBinary(SessionRequestSchema, create(SessionRequestSchema, { msg: { case: "register", value: { info: { hostId } } } }))));
  for (let i = rng.int(6); i > 0; i--) requests.push(sessionRequest(rng, scene, hostId));
  const outcome = await session(client, requests);
  const what = `Session with ${requests.length} requests: ${S[outcome.code]} '${outcome.details.slice(0, 300)}'; ${replayHint(config, caseNo)}`;
  tally.set(`Session ${S[outcome.code]}`, (tally.get(`Session ${S[outcome.code]}`) ?? 0) + 1);
  assert.ok(ANSWERS.has(outcome.code), `unexpected status: ${what}`);
  if (outcome.code !== S.OK) assert.ok(outcome.details.trim().length > 0, `a refusal says why: ${what}`);
}

async function runAll(numbers: readonly number[], inFlight: number, run: (caseNo: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < numbers.length) await run(numbers[next++]!);
    }),
  );
}

describe("fuzz - the gRPC API", { timeout: 300_000 }, () => {
  const config = fuzzConfig(DEFAULT_CASES);
  let cluster: Cluster;
  let target: Target;
  let client: grpc.Client;

  before(async () => {
    await buildFixtures();
    cluster = await Cluster.start();
    target = await startTarget("counter", ["--writes", "1000"]);
    client = new grpc.Client(cluster.controllerAddress, grpc.credentials.createInsecure());
  });

  after(async () => {
    client?.close();
    await target?.kill();
    await cluster?.stop();
  });

  test("controller - regressions: each ends with the status that names the problem", async () => {
    const cases: { what: string; method: ControllerMethod | "Session"; bytes: Buffer; code: grpc.status; details: RegExp }[] = [
      // grpc-js answers a request it cannot decode INTERNAL unless the adapter does.
      { what: "bytes that are no message", method: "GetJob", bytes: Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]), code: S.INVALID_ARGUMENT, details: /^malformed fleetwatch\.v1\.GetJobRequest: / },
      { what: "a wrong wire type for a known field", method: "SubmitJob", bytes: Buffer.from([0x0b, 0x0c]), code: S.INVALID_ARGUMENT, details: /^malformed fleetwatch\.v1\.SubmitJobRequest: / },
      { what: "a session whose first message is garbage", method: "Session", bytes: Buffer.from([0x0a, 0x05, 0x01]), code: S.INVALID_ARGUMENT, details: /^malformed fleetwatch\.v1\.SessionRequest: / },
      // A 100k-character id quoted in NOT_FOUND made a trailer clients refuse.
      { what: "a huge job id", method: "GetJob", bytes: Buffer.from(toBinary(GetJobRequestSchema, create(GetJobRequestSchema, { id: "x".repeat(100_000) }))), code: S.NOT_FOUND, details: /^no job 'x+… \(\d+ more characters\)$/ },
      // Cutting those details split a surrogate pair; grpc-js's encodeURI threw on it and the controller died.
      { what: "a huge id of emoji", method: "GetJob", bytes: Buffer.from(toBinary(GetJobRequestSchema, create(GetJobRequestSchema, { id: `xy${"\u{1F600}".repeat(2_000)}` }))), code: S.NOT_FOUND, details: /^no job 'xy\u{1F600}+\uFFFD… \(\d+ more characters\)$/u },
      // now + 2^64-1 ms is no int64: storing the job failed.
      { what: "a duration past 64-bit time", method: "SubmitJob", bytes: submit({ watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], target: { pid: target.pid }, durationMs: 0xffff_ffff_ffff_ffffn }), code: S.INVALID_ARGUMENT, details: /^duration \d+ ms is above one year/ },
      // Each symbol watch was resolved on the agent before the chunk count refused the job.
      { what: "100,000 symbol watches", method: "SubmitJob", bytes: submit({ watches: Array.from({ length: 100_000 }, () => ({ location: { case: "symbol" as const, value: "fw_counter" }, mode: WatchMode.WRITE })), target: { pid: target.pid } }), code: S.INVALID_ARGUMENT, details: /^100000 watches need more debug registers than a thread has/ },
      // A spec bigger than a store value failed when the job was stored.
      { what: "a spec of 3 MB", method: "SubmitJob", bytes: submit({ watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], target: { pid: target.pid, hostIds: Array.from({ length: 500_000 }, () => "host-a") } }), code: S.INVALID_ARGUMENT, details: /^the job spec is \d+ bytes; at most 524288/ },
      // Unknown fields (a newer client's) are bytes in the message; freezing the stored job threw on them.
      { what: "a spec with an unknown field", method: "SubmitJob", bytes: withUnknownField(submit({ watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], target: { pid: target.pid } })), code: S.OK, details: /^$/ },
      { what: "a back-off the helper refuses", method: "SubmitJob", bytes: submit({ watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], target: { pid: target.pid }, maxHitsPerSecond: 1, backoffMs: 0xffffffff }), code: S.INVALID_ARGUMENT, details: /^back-off 4294967295 ms is above one hour/ },
      // A time past what a Date holds threw RangeError in the audit reader: INTERNAL.
      // A start time far ahead made the server refuse the ordered consumer, which nats.js then retried past every deadline.
      { what: "an audit since in the year 16743", method: "ListAudit", bytes: Buffer.from(toBinary(ListAuditRequestSchema, create(ListAuditRequestSchema, { sinceUnixMs: 466_192_930_177_023n }))), code: S.OK, details: /^$/ },
      { what: "an audit since past 64-bit time", method: "ListAudit", bytes: Buffer.from(toBinary(ListAuditRequestSchema, create(ListAuditRequestSchema, { sinceUnixMs: 0x7fff_ffff_ffff_ffffn }))), code: S.INVALID_ARGUMENT, details: /^since 9223372036854775807 is not a time/ },
    ];
    for (const c of cases) {
      const outcome = c.method === "Session" ? await session(client, [c.bytes]) : await unary(client, path(c.method), c.bytes);
      if (c.method === "SubmitJob" && outcome.code === S.OK) await cluster.api().cancelJob({ id: fromBinary(SubmitJobResponseSchema, outcome.messages[0]!).job!.id });
      assert.equal(S[outcome.code], S[c.code], `${c.what}: ${outcome.details.slice(0, 300)}`);
      assert.match(outcome.details, c.details, c.what);
      assert.ok(Buffer.byteLength(outcome.details) <= 1100, `${c.what}: details of ${outcome.details.length} characters`);
    }
    assert.ok(cluster.controller!.running);
  });

  test(`controller - every hostile call ends with a status that says why, and the fleet still works (${config.only === undefined ? `${config.cases} cases` : `case ${config.only}`}, seed ${config.seed})`, async (t) => {
    const dead = await startTarget("counter", ["--writes", "1"]);
    const deadPid = dead.pid;
    dead.send("go");
    await dead.waitForExit();
    const scene: Scene = { target, counterAddress: BigInt(target.lines[0]!.split(" ")[2]!), created: [], deadPid, answersLost: 0 };
    const numbers = caseNumbers(config);
    // Most cases call ControllerService; the rest are agent sessions, run after them (a fuzz agent connected meanwhile would be one more host to place jobs on).
    const sessions = numbers.filter((n) => Rng.forCase(config.seed ^ 0x5e55, n).chance(0.15));
    const calls = numbers.filter((n) => !sessions.includes(n));
    const tally: Tally = new Map();
    const startedMs = Date.now();
    try {
      await runAll(calls, IN_FLIGHT, (n) => controllerCase(client, cluster, config, n, scene, tally));
      await runAll(sessions, IN_FLIGHT, (n) => sessionCase(client, config, n, scene, tally));
    } catch (err) {
      // A call that failed because the controller died: say how it ended and what it printed last.
      const died = await waitFor("the controller's exit, if it is dying", () => !cluster.controller!.running, 2_000).catch(() => false);
      if (died) assert.fail(`the controller died (${JSON.stringify(await cluster.controller!.exited)}, ${String(err)}): ${cluster.controller!.output.slice(-1500)}`);
      throw err;
    }
    t.diagnostic(`fuzz-grpc: ${numbers.length} cases (${sessions.length} sessions), seed ${config.seed}, ${Date.now() - startedMs} ms, ${scene.created.length} jobs created and cancelled; ${[...tally].sort().map(([k, n]) => `${k} ${n}`).join(", ")}`);

    if (!cluster.controller!.running) assert.fail(`the controller died (${JSON.stringify(await cluster.controller!.exited)}): ${cluster.controller!.output.slice(-1500)}`);
    assert.ok(cluster.agents.get("host-a")!.running, `the agent is alive: ${cluster.agents.get("host-a")!.output.slice(-3000)}`);
    assert.doesNotMatch(cluster.controller!.output, /internal error/, "no internal error in the controller's log");
    // Every job the fuzz made is final, and the target untraced once they are.
    const isLive = (j: { state: JobState }) => j.state === JobState.PENDING || j.state === JobState.ARMED || j.state === JobState.DEGRADED;
    // The active jobs, however many finished ones the fuzz left after them.
    const activeJobs = { states: [JobState.PENDING, JobState.ARMED, JobState.DEGRADED], limit: 1000 };
    const unnamed = (await cluster.api().listJobs(activeJobs)).jobs.filter((j) => !scene.created.includes(j.id));
    // Jobs of submits whose answer the client lost: no more of them than such answers.
    assert.ok(unnamed.length <= scene.answersLost, `live jobs nobody named: ${unnamed.map((j) => j.id).join(", ")} (${scene.answersLost} submit answers lost)`);
    for (const j of unnamed) await cluster.api().cancelJob({ id: j.id }, { deadlineMs: CANCEL_DEADLINE_MS });
    const { jobs } = await cluster.api().listJobs(activeJobs);
    assert.deepEqual(jobs.filter(isLive).map((j) => `${j.id} ${JobState[j.state]}`), []);
    await waitFor("the target untraced", async () => (await target.tracerPid()) === 0);
    await cluster.waitForAgent("host-a");

    // A normal watch end to end.
    // ptrace: every write a hit, whatever the pace (perf may lose samples and count them dropped).
    const watch = cluster.cli(["watch", "--host", "host-a", "--pid", String(target.pid), "--symbol", "fw_counter", "--max-hits", "1000", "--backend", "ptrace", "--follow", "-o", "json"], { timeoutMs: 60_000 });
    await waitFor(`a job armed on pid ${target.pid}`, async () => {
      const listed = await cluster.api().listJobs({});
      return listed.jobs.some((j) => j.state === JobState.ARMED && j.targets.some((x) => x.pid === target.pid && x.state === TargetState.ARMED));
    });
    target.send("go");
    const result = await watch;
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout.trim().split("\n").length, 1000, "every write of the target is a hit");
    assert.match(await target.waitForLine(/^done$/), /done/);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });
});
