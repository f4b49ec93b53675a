// The agent's end of the session: an arm begun for a session that ended is
// in the next registration's armed list, so the controller neither arms it
// again nor gives its registers to another job.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { AgentInfoSchema, AgentService, ArmResultSchema, ArmedTargetSchema, SessionResponseSchema, addService, bindServer, createServer, type Arm, type ArmResult, type ArmedTarget, type SessionRequest, type SessionResponse } from "../../proto/index.js";
import { SessionClient } from "../../agent/session-client.js";
import type { AgentCore } from "../../agent/agent.js";

/** The parts of AgentCore a session uses; arm() finishes when the test says. */
class SlowArmCore {
  onReport: unknown;
  onAppeared: unknown;
  onSuspended: unknown;
  readonly held: ArmedTarget[] = [];
  private finishArm: (() => void) | undefined;
  armStarted = false;

  armed(): ArmedTarget[] {
    return [...this.held];
  }
  arm(request: Arm): Promise<ArmResult> {
    this.armStarted = true;
    return new Promise((resolve) => {
      this.finishArm = () => {
        this.held.push(create(ArmedTargetSchema, { jobId: request.jobId, pid: request.pid }));
        resolve(create(ArmResultSchema, { requestId: request.requestId, jobId: request.jobId, pid: request.pid, threadsTotal: 1, threadsArmed: 1 }));
      };
    });
  }
  finish(): void {
    this.finishArm?.();
  }
  sessionRestored(): void {}
}

/** Registrations as the server received them; waits have deadlines. */
class Registrations {
  readonly list: SessionRequest[] = [];
  private wake: (() => void) | undefined;

  push(r: SessionRequest): void {
    this.list.push(r);
    this.wake?.();
  }

  /** Whether there are n within ms. */
  async reach(n: number, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (this.list.length < n && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, deadline - Date.now());
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.list.length >= n;
  }
}

test("session client - an arm still under way when its session ends is in the next registration's armed list", async (t) => {
  const registrations = new Registrations();
  let sessions = 0;
  const server = createServer();
  addService(
    server,
    AgentService,
    {
      // The first session registers, gets one arm and ends; later ones stay open.
      async *session(requests: AsyncIterable<SessionRequest>, ctx: { signal: AbortSignal }): AsyncGenerator<SessionResponse> {
        const n = ++sessions;
        const it = requests[Symbol.asyncIterator]();
        const first = await it.next();
        if (first.done) return;
        registrations.push(first.value);
        yield create(SessionResponseSchema, { msg: { case: "registered", value: { heartbeatMs: 60_000, leaseMs: 0, epoch: 1n, readsBatches: false } } });
        if (n === 1) {
          yield create(SessionResponseSchema, { msg: { case: "arm", value: { requestId: 1n, jobId: "j1", pid: 4242, epoch: 1n } } });
          return;
        }
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve, { once: true }));
      },
    } as never,
    () => ({ code: grpc.status.INTERNAL, details: "test server" }),
  );
  const port = await bindServer(server, "127.0.0.1:0");
  const core = new SlowArmCore();
  const lines: string[] = [];
  const client = new SessionClient(core as unknown as AgentCore, {
    controllers: [`127.0.0.1:${port}`],
    info: create(AgentInfoSchema, { hostId: "h1" }),
    log: (line) => lines.push(line),
    transport: { plaintext: true },
    minBackoffMs: 1,
    maxBackoffMs: 1,
  });
  t.after(async () => {
    await client.stop();
    server.forceShutdown();
  });
  client.start();
  assert.ok(await registrations.reach(1, 10_000), "the first registration within 10 s");
  const first = registrations.list[0];
  assert.ok(first?.msg.case === "register");
  assert.deepEqual(first.msg.value.armed, []);
  // The session ends with the arm under way: no registration until it settles.
  assert.equal(await registrations.reach(2, 500), false, "registered again while the arm was under way");
  assert.ok(core.armStarted, "the arm reached the core");
  core.finish();
  assert.ok(await registrations.reach(2, 10_000), `a second registration within 10 s after the arm settled (log: ${lines.join(" | ")})`);
  const second = registrations.list[1];
  assert.ok(second?.msg.case === "register");
  assert.deepEqual(second.msg.value.armed.map((a) => `${a.jobId}/${a.pid}`), ["j1/4242"]);
});
