// Fencing end to end: an agent that follows a new leader refuses the leader
// it deposed, and the armed target never notices. Real nats-server, two real
// controller processes, a real agent with its helper, a real C target.
//
// Why part of it is played by the controller core in this process: a leader
// frozen with SIGSTOP cannot be caught acting on its old epoch from outside.
// Its agent cancels the session while it is frozen, and once resumed its
// overdue timers (the lease check) run before it reads anything new from the
// network, so it steps down before it can serve a session or a request; this
// test asserts exactly that. "A resumed without noticing" is then the real
// Controller core with A's epoch over the same job store, served by the real
// AgentService code on A's address once A's process has gone. The agent's own
// address rotation reaches it (its host stalls past the session lease, so B
// drops the session), and the agent must refuse it and go back to B.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { status } from "@grpc/grpc-js";
import { connect, type NatsConnection } from "nats";
import { startNatsServer, type RunningNatsServer } from "../../cli/nats-server.js";
import { plaintextCaller } from "../../controller/access.js";
import { Controller } from "../../controller/controller.js";
import { statusFor } from "../../controller/errors.js";
import { JobStore } from "../../controller/job-store.js";
import { agentService } from "../../controller/service.js";
import { AgentService, Backend, ControllerService, JobState, RpcError, TargetState, WatchMode, addService, bindServer, createClient, createServer, type ServiceClient } from "../../proto/index.js";
import { Daemons, type Daemon } from "../support/cluster.js";
import { helperPath } from "../support/paths.js";
import { buildFixtures, startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

// Agent sessions and the leader lease, as `fleetwatch controller` takes them.
const sessionLeaseMs = 2_000;
const electionLease = "1s";

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const count = (text: string, re: RegExp) => text.match(new RegExp(re.source, "g"))?.length ?? 0;

/** A deposed leader term that has not noticed: the controller core with its old epoch, serving agents. */
interface DeposedTerm {
  readonly log: string[];
  stop(): Promise<void>;
}

describe("stale leader epoch", () => {
  let dir: string;
  let nats: RunningNatsServer;
  const daemons = new Daemons();
  const clients: Array<{ close(): void }> = [];
  let target: Target | undefined;
  let deposed: DeposedTerm | undefined;

  before(async () => {
    await buildFixtures();
    dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-stale-epoch-"));
    nats = await startNatsServer({ dataDir: path.join(dir, "nats") });
  });

  after(async () => {
    for (const c of clients) c.close();
    // A stopped process cannot act on SIGTERM: let it run before stopping it.
    for (const d of daemons.all) if (d.running) d.child.kill("SIGCONT");
    await target?.kill();
    await deposed?.stop();
    await daemons.stop();
    await nats?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const daemon = (name: string, args: string[]): Daemon => daemons.start(name, args);
  const controller = (name: string) => daemons.controller(name, nats.url, `${sessionLeaseMs}ms`, electionLease);

  function api(address: string): ServiceClient<typeof ControllerService> {
    const client = createClient(ControllerService, address);
    clients.push(client);
    return client;
  }

  /** Serves the controller core at `epoch` on `address`, as the controller's own term would. */
  async function serveDeposedTerm(address: string, epoch: bigint): Promise<DeposedTerm> {
    const nc: NatsConnection = await connect({ servers: nats.url });
    const log: string[] = [];
    // Its store is fenced as a real term's is: the election's lease clock says the term is over.
    const core = new Controller(await JobStore.open(nc.jetstream(), () => false), { leaseMs: sessionLeaseMs, heartbeatMs: Math.floor(sessionLeaseMs / 3), requestTimeoutMs: 15_000, epoch, log: (line) => log.push(line) });
    await core.start();
    const server = createServer();
    addService(server, AgentService, agentService(() => core, { authorize: async () => plaintextCaller }), statusFor);
    await bindServer(server, address);
    return {
      log,
      async stop() {
        core.stop();
        server.forceShutdown();
        await nc.close();
      },
    };
  }

  test("an agent refuses the leader it saw deposed; the target stays armed under the new one", async () => {
    const a = await controller("controller a");
    const [, epochA] = await a.daemon.waitForOutput(/leading with epoch (\d+)/);
    const b = await controller("controller b");
    await b.daemon.waitForOutput(/standing by/);
    const agent = daemon("agent", ["agent", "--controller", `${a.address},${b.address}`, "--nats", nats.url, "--host-id", "host-a", "--helper", helperPath]);
    await agent.waitForOutput(new RegExp(`registered with ${escape(a.address)} \\(epoch ${epochA}\\)`));

    target = await startTarget("demo-counter");
    const viaA = api(a.address);
    const viaB = api(b.address);
    const submitted = await viaA.submitJob({ spec: { target: { pid: target.pid }, watches: [{ location: { case: "symbol", value: "demo_counter" }, mode: WatchMode.WRITE }], stackDepth: 0, backend: Backend.PTRACE } });
    const id = submitted.job!.id;
    const delivered = async () => (await viaB.getJob({ id })).job!.counts?.delivered ?? 0n;
    await waitFor("hits delivered under leader a", async () => ((await viaA.getJob({ id })).job!.counts?.delivered ?? 0n) > 0n);

    // A freezes and cannot notice that its lease runs out; B takes over and the agent follows it.
    a.daemon.child.kill("SIGSTOP");
    const [, epochB] = await b.daemon.waitForOutput(/leading with epoch (\d+)/, 15_000);
    assert.ok(BigInt(epochB!) > BigInt(epochA!), `epoch ${epochB} after ${epochA}`);
    const registeredWithB = new RegExp(`registered with ${escape(b.address)} \\(epoch ${epochB}\\)`);
    await agent.waitForOutput(registeredWithB, 15_000);
    await waitFor("leader b reconciled the target as armed", async () => (await viaB.getJob({ id })).job!.targets[0]!.state === TargetState.ARMED);
    const takenOver = await delivered();
    await waitFor("hits delivered under leader b", async () => (await delivered()) > takenOver);

    // A resumes: it steps down before serving anything and names B to whoever asks.
    a.daemon.child.kill("SIGCONT");
    await a.daemon.waitForOutput(new RegExp(`stepped down from epoch ${epochA} \\((expired|superseded)\\)`));
    await a.daemon.waitForOutput(new RegExp(`standing by; the leader is \\S+ at ${escape(b.address)}`));
    await assert.rejects(viaA.cancelJob({ id }), (err: unknown) => {
      assert.ok(err instanceof RpcError, String(err));
      assert.equal(err.code, status.UNAVAILABLE);
      assert.match(err.details, new RegExp(`standing by: the leader is \\S+ at ${escape(b.address)}`));
      return true;
    });
    assert.equal(count(agent.output, new RegExp(`registered with ${escape(a.address)}`)), 1, agent.output);
    // Stopping the deposed A must not release the lease it no longer holds.
    await a.daemon.stop();
    assert.doesNotMatch(a.daemon.output, /released the lease/);

    // A's term as it would be had it not noticed, on A's address; the agent's host stalls past the session lease.
    agent.child.kill("SIGSTOP");
    await b.daemon.waitForOutput(/agent host-a: lease expired/);
    deposed = await serveDeposedTerm(a.address, BigInt(epochA!));
    agent.child.kill("SIGCONT");
    await agent.waitForOutput(new RegExp(`${escape(a.address)} leads with epoch ${epochA}, older than ${epochB}: a deposed leader; moving on`));
    assert.ok(deposed.log.some((line) => /agent host-a: connected/.test(line)), deposed.log.join("\n"));
    await waitFor("agent back with leader b", () => count(agent.output, registeredWithB) === 2);
    await deposed.stop();
    deposed = undefined;

    // Under B the target is still armed (never disarmed on the host), its registers are B's and hits go on;
    // the deposed term wrote nothing over B's job (its store is fenced).
    assert.notEqual(await target.tracerPid(), 0);
    await waitFor("leader b shows the target armed", async () => (await viaB.getJob({ id })).job!.targets[0]!.state === TargetState.ARMED);
    assert.doesNotMatch(agent.output, /disarmed by the agent/);
    const { agents } = await viaB.listAgents({});
    const host = agents.find((x) => x.info?.hostId === "host-a");
    assert.equal(host?.connected, true);
    assert.deepEqual(host.targets.find((t) => t.pid === target!.pid)?.slots.filter((s) => s.jobId !== "").map((s) => s.jobId), [id]);
    const returned = await delivered();
    await waitFor("hits delivered under leader b after the refusal", async () => (await delivered()) > returned);

    const cancelled = await viaB.cancelJob({ id });
    assert.equal(cancelled.job!.state, JobState.CANCELLED);
    assert.equal(await target.tracerPid(), 0);
    target.child.kill("SIGTERM");
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });
});
