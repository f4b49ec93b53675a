// The controller's end of one agent session: an arm it gave up on for want
// of an answer, answered armed after all, is disarmed, not left to trap for a
// job that took it for failed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { AgentSession } from "../../controller/agent-session.js";
import { AgentUnavailableError } from "../../controller/errors.js";
import { AgentInfoSchema, AgentErrorSchema, ArmResultSchema, DisarmAllResultSchema, type SessionResponse } from "../../proto/index.js";

async function next(session: AgentSession): Promise<SessionResponse> {
  const it = session.outbound[Symbol.asyncIterator]();
  const { value, done } = await it.next();
  assert.ok(!done, "a message was sent");
  return value;
}

function sessionFor(timeoutMs: number) {
  const lines: string[] = [];
  const session = new AgentSession(create(AgentInfoSchema, { hostId: "h1" }), timeoutMs, (line) => lines.push(line));
  return { session, lines };
}

test("agent session - an arm answered armed after it timed out is disarmed, with the job's epoch", async () => {
  const { session, lines } = sessionFor(50);
  const arming = session.arm({ jobId: "j1", pid: 4242, epoch: 7n });
  const sent = await next(session);
  assert.equal(sent.msg.case, "arm");
  const requestId = sent.msg.case === "arm" ? sent.msg.value.requestId : 0n;
  await assert.rejects(arming, (err: unknown) => err instanceof AgentUnavailableError && /did not answer arm within 50 ms/.test(err.message));
  assert.equal(session.answer(requestId, create(ArmResultSchema, { requestId, jobId: "j1", pid: 4242, threadsTotal: 1, threadsArmed: 1 })), true);
  const disarm = await next(session);
  assert.equal(disarm.msg.case, "disarm");
  if (disarm.msg.case === "disarm") assert.deepEqual([disarm.msg.value.jobId, disarm.msg.value.pid, disarm.msg.value.epoch], ["j1", 4242, 7n]);
  assert.match(lines.join("\n"), /job j1 was armed on pid 4242 after its arm timed out; disarming it/);
  session.close("test over");
});

test("agent session - a late arm that failed, and a late answer to anything else, send nothing", async () => {
  const { session } = sessionFor(50);
  const arming = session.arm({ jobId: "j1", pid: 4242, epoch: 7n });
  const sent = await next(session);
  const requestId = sent.msg.case === "arm" ? sent.msg.value.requestId : 0n;
  await assert.rejects(arming, AgentUnavailableError);
  session.answer(requestId, create(ArmResultSchema, { requestId, jobId: "j1", pid: 4242, error: create(AgentErrorSchema, { errnoName: "ESRCH", message: "gone" }) }));
  assert.equal(session.answer(999n, create(ArmResultSchema, { requestId: 999n, jobId: "j1", pid: 4242 })), false, "no request 999");
  assert.equal(session.outbound.size, 0, "no disarm");
  session.close("test over");
});

test("agent session - each command fails at its own deadline, in the order sent; answered ones resolve; the kill switch keeps its own timeout", async () => {
  const timeoutMs = 200;
  const { session } = sessionFor(timeoutMs);
  const started = performance.now();
  const first = session.discover({});
  const answered = session.arm({ jobId: "j1", pid: 1, epoch: 1n });
  // Sent later: its deadline is later than the first two's.
  await new Promise((resolve) => setTimeout(resolve, 80));
  const laterSent = performance.now();
  const later = session.disarm({ jobId: "j2", pid: 2, epoch: 1n });
  const killSwitch = session.disarmAll({ reason: "test" }, 600);
  const it = session.outbound[Symbol.asyncIterator]();
  const ids: bigint[] = [];
  for (let i = 0; i < 4; i++) {
    const { value } = await it.next();
    const m = (value as SessionResponse).msg;
    if (m.case === "arm" || m.case === "disarm" || m.case === "discover" || m.case === "disarmAll") ids.push(m.value.requestId);
  }
  assert.equal(ids.length, 4);
  assert.equal(session.answer(ids[1]!, create(ArmResultSchema, { requestId: ids[1]!, jobId: "j1", pid: 1, threadsTotal: 1, threadsArmed: 1 })), true);
  assert.equal((await answered).threadsArmed, 1);
  const failedAt = (p: Promise<unknown>): Promise<number> =>
    p.then(
      () => assert.fail("answered"),
      (err: unknown) => {
        assert.ok(err instanceof AgentUnavailableError, String(err));
        return performance.now();
      },
    );
  const [firstAt, laterAt] = await Promise.all([failedAt(first), failedAt(later)]);
  assert.ok(firstAt - started >= timeoutMs - 1, `the first failed after ${firstAt - started} ms`);
  assert.ok(laterAt - laterSent >= timeoutMs - 1, `the later one failed after ${laterAt - laterSent} ms, not with the first`);
  assert.ok(firstAt < laterAt);
  // The kill switch's 600 ms have not run out; an answer still reaches it.
  assert.equal(session.answer(ids[3]!, create(DisarmAllResultSchema, { requestId: ids[3]! })), true);
  await killSwitch;
  session.close("test over");
});

test("agent session - closing fails what waits, with or without a timeout of its own", async () => {
  const { session } = sessionFor(10_000);
  const arming = session.arm({ jobId: "j1", pid: 1, epoch: 1n });
  const killSwitch = session.disarmAll({ reason: "test" }, 20_000);
  session.close("agent gone");
  await assert.rejects(arming, /agent gone/);
  await assert.rejects(killSwitch, /agent gone/);
});
