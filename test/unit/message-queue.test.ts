// Session messages coalesced into batch envelopes: what one turn of the
// event loop queues goes out as one envelope, in order, counted by message;
// nothing is batched for a peer that did not say it reads batches.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { AgentSession } from "../../controller/agent-session.js";
import { AgentInfoSchema, ArmResultSchema, SessionResponseSchema, maxBatchMessages, sessionResponseQueue, unbatched, type SessionResponse } from "../../proto/index.js";

const ack = (ms: number): SessionResponse => create(SessionResponseSchema, { msg: { case: "heartbeatAck", value: { sentUnixMs: BigInt(ms) } } });
const msOf = (m: SessionResponse): number => (m.msg.case === "heartbeatAck" ? Number(m.msg.value.sentUnixMs) : -1);

/** Reads what the queue holds now (after one turn, so scheduled envelopes are in). */
async function drain(queue: AsyncIterable<SessionResponse> & { size: number; close(): void }): Promise<SessionResponse[]> {
  await new Promise((resolve) => setImmediate(resolve));
  queue.close();
  const out: SessionResponse[] = [];
  for await (const m of queue) out.push(m);
  return out;
}

test("message queue - without batching every message goes out on its own", async () => {
  const queue = sessionResponseQueue();
  for (let i = 0; i < 3; i++) queue.push(ack(i));
  assert.equal(queue.size, 3);
  const sent = await drain(queue);
  assert.deepEqual(sent.map((m) => m.msg.case), ["heartbeatAck", "heartbeatAck", "heartbeatAck"]);
  assert.equal(queue.size, 0);
});

test("message queue - messages of one turn go out as one envelope, in order; size counts messages until read", async () => {
  const queue = sessionResponseQueue();
  queue.batching = true;
  for (let i = 0; i < 5; i++) queue.push(ack(i));
  assert.equal(queue.size, 5);
  await new Promise((resolve) => setImmediate(resolve));
  queue.push(ack(5));
  assert.equal(queue.size, 6, "an envelope not yet read still counts its messages");
  const sent = await drain(queue);
  assert.deepEqual(sent.map((m) => m.msg.case), ["batch", "heartbeatAck"], "a turn with one message sends it bare");
  assert.deepEqual(sent.flatMap((m) => unbatched(m)).map(msOf), [0, 1, 2, 3, 4, 5]);
  assert.equal(queue.size, 0);
});

test("message queue - a turn with more than maxBatchMessages is split, and close sends what is pending", async () => {
  const queue = sessionResponseQueue();
  queue.batching = true;
  const n = maxBatchMessages * 2 + 3;
  for (let i = 0; i < n; i++) queue.push(ack(i));
  queue.close();
  assert.equal(queue.push(ack(-1)), false, "nothing is queued after close");
  const sent: SessionResponse[] = [];
  for await (const m of queue) sent.push(m);
  assert.deepEqual(sent.map((m) => unbatched(m).length), [maxBatchMessages, maxBatchMessages, 3]);
  assert.deepEqual(sent.flatMap((m) => unbatched(m)).map(msOf), Array.from({ length: n }, (_, i) => i));
});

test("message queue - a batch inside a batch is not taken apart", () => {
  const inner = create(SessionResponseSchema, { msg: { case: "batch", value: { messages: [ack(1)] } } });
  const outer = create(SessionResponseSchema, { msg: { case: "batch", value: { messages: [ack(0), inner, ack(2)] } } });
  assert.deepEqual(unbatched(outer).map(msOf), [0, 2]);
});

test("agent session - commands to an agent that reads batches in one turn go in one envelope, and each answer finds its request", async () => {
  const session = new AgentSession(create(AgentInfoSchema, { hostId: "h1" }), 5_000, () => {}, true);
  const arms = [1001, 1002, 1003, 1004].map((pid) => session.arm({ jobId: "j1", pid, epoch: 1n }));
  const it = session.outbound[Symbol.asyncIterator]();
  const first = await it.next();
  assert.equal(first.value?.msg.case, "batch");
  const commands = unbatched(first.value!);
  assert.deepEqual(commands.map((c) => (c.msg.case === "arm" ? c.msg.value.pid : 0)), [1001, 1002, 1003, 1004]);
  for (const c of [...commands].reverse()) {
    if (c.msg.case !== "arm") continue;
    session.answer(c.msg.value.requestId, create(ArmResultSchema, { requestId: c.msg.value.requestId, jobId: "j1", pid: c.msg.value.pid, threadsArmed: 1, threadsTotal: 1 }));
  }
  assert.deepEqual((await Promise.all(arms)).map((r) => r.pid), [1001, 1002, 1003, 1004]);
  session.close("test over");
});
