// A follower of a job that never reads while the job changes thousands of
// times: the controller keeps one unsent state for it, not a backlog, counts
// what it skipped, and the follower, once it reads, ends with the final state.
// The controller and NATS are real; the agent is a scripted session over the
// real AgentService protocol, so the job can change faster than any target.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import http2 from "node:http2";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { startNatsServer, type RunningNatsServer } from "../../cli/nats-server.js";
import { startController, type RunningController } from "../../controller/index.js";
import {
  AgentService,
  AsyncQueue,
  Backend,
  ControllerService,
  JobState,
  SessionRequestSchema,
  TargetState,
  WatchJobRequestSchema,
  WatchJobResponseSchema,
  WatchMode,
  createClient,
  type SessionRequest,
  type ServiceClient,
} from "../../proto/index.js";
import { waitFor } from "../support/wait.js";

/** Job changes while the follower does not read: far more than gRPC's buffers and flow-control window hold. */
const CHANGES = 3_000;
const HOST = "slow-host";
const PID = 4242;
const ADDRESS = 0x601000n;

describe("slow follower", { timeout: 180_000 }, () => {
  let dataDir: string;
  let nats: RunningNatsServer;
  let controller: RunningController;
  let api: ServiceClient<typeof ControllerService>;
  const log: string[] = [];

  before(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-slow-follower-"));
    nats = await startNatsServer({ dataDir: path.join(dataDir, "nats") });
    controller = await startController({ listen: "127.0.0.1:0", natsUrl: nats.url, log: (line) => log.push(line) });
    api = createClient(ControllerService, controller.address);
  });

  after(async () => {
    api?.close();
    await controller?.stop();
    await nats?.stop();
    await rm(dataDir, { recursive: true, force: true });
  });

  test("controller - a follower that never reads holds at most one state; reading again, it gets the final one", async () => {
    // The agent: answers discover with one process, finds every address mapped, and answers every arm and disarm with success.
    const agentClient = createClient(AgentService, controller.address);
    const toController = new AsyncQueue<SessionRequest>();
    const send = (msg: MessageInitShape<typeof SessionRequestSchema>["msg"]) => toController.push(create(SessionRequestSchema, { msg }));
    send({ case: "register", value: { info: { hostId: HOST, slotsPerThread: 4, backends: [Backend.PTRACE, Backend.PERF] } } });
    const agentDone = (async () => {
      for await (const m of agentClient.session(toController)) {
        const c = m.msg;
        if (c.case === "discover") send({ case: "discoverResult", value: { requestId: c.value.requestId, processes: [{ pid: PID, comm: "scripted" }] } });
        if (c.case === "resolve") send({ case: "resolveResult", value: { requestId: c.value.requestId, address: c.value.address, size: BigInt(c.value.length), module: "[heap]" } });
        if (c.case === "arm") send({ case: "armResult", value: { requestId: c.value.requestId, jobId: c.value.jobId, pid: c.value.pid, threadsTotal: 1, threadsArmed: 1, slots: c.value.slots } });
        if (c.case === "disarm") send({ case: "disarmResult", value: { requestId: c.value.requestId, jobId: c.value.jobId, pid: c.value.pid, counts: { trapped: BigInt(CHANGES), delivered: BigInt(CHANGES) } } });
      }
    })().catch(() => undefined);
    try {
      await waitFor(`agent ${HOST} connected`, async () => (await api.listAgents({})).agents.some((a) => a.info?.hostId === HOST && a.connected));
      const { job } = await api.submitJob({ spec: { watches: [{ location: { case: "address", value: ADDRESS }, length: 8, mode: WatchMode.WRITE }], target: { pid: PID } } });
      assert.equal(job!.state, JobState.ARMED, job!.reason);

      // The follower: a raw HTTP/2 stream that is never read, so flow control stops the controller's writes.
      const follower = http2.connect(`http://${controller.address}`);
      const request = Buffer.from(toBinary(WatchJobRequestSchema, create(WatchJobRequestSchema, { id: job!.id })));
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(request.length, 1);
      const stream = follower.request({ ":method": "POST", ":path": "/fleetwatch.v1.ControllerService/WatchJob", "content-type": "application/grpc", te: "trailers" });
      stream.pause();
      stream.end(Buffer.concat([prefix, request]));
      const received: Buffer[] = [];
      const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) => stream.on("trailers", resolve));
      const closed = new Promise<void>((resolve) => stream.on("close", resolve));
      await waitFor("the follower registered", () => controller.followerBacklog().followers === 1);

      // The job changes CHANGES times: each report moves its counts.
      for (let i = 1; i <= CHANGES; i++) {
        send({ case: "targetReport", value: { jobId: job!.id, pid: PID, state: TargetState.ARMED, reason: `report ${i} `.padEnd(2048, "."), counts: { trapped: BigInt(i), delivered: BigInt(i) }, threadsTotal: 1, threadsArmed: 1 } });
      }
      await waitFor(`the job's counts at ${CHANGES}`, async () => (await api.getJob({ id: job!.id })).job?.counts?.delivered === BigInt(CHANGES), 120_000);
      const backlog = controller.followerBacklog();
      assert.ok(backlog.pending <= 1, `one state at most waits for the follower, not ${backlog.pending}`);
      assert.ok(backlog.skipped > 0, "the states it could not take were counted as skipped");

      await api.cancelJob({ id: job!.id });
      // Now it reads: the newest state comes last, with how many it skipped on the way.
      stream.on("data", (b: Buffer) => received.push(b));
      stream.resume();
      const end = await trailers;
      await closed;
      assert.equal(end["grpc-status"], "0", String(end["grpc-message"]));
      const body = Buffer.concat(received);
      const messages: Buffer[] = [];
      for (let at = 0; at < body.length; at += 5 + body.readUInt32BE(at + 1)) messages.push(body.subarray(at + 5, at + 5 + body.readUInt32BE(at + 1)));
      const responses = messages.map((b) => fromBinary(WatchJobResponseSchema, b));
      const last = responses.at(-1)!;
      assert.equal(last.job?.state, JobState.CANCELLED);
      assert.equal(last.job?.counts?.delivered, BigInt(CHANGES));
      const skipped = responses.reduce((sum, r) => sum + r.skipped, 0n);
      assert.ok(skipped > 0n, "the follower is told it skipped states");
      assert.equal(skipped, BigInt(controller.followerBacklog().skipped), "what it was told it skipped is what the controller counted");
      assert.ok(responses.length < CHANGES, `${responses.length} responses for ${CHANGES} changes`);
      assert.equal(controller.followerBacklog().followers, 0, "the follower's queue is gone with its call");
      follower.close();
    } finally {
      toController.close();
      agentClient.close();
      await agentDone;
    }
  });
});
