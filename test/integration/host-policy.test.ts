// Host policy end to end: a real agent with --policy decides which
// processes may be watched whatever the controller asks, reloads its policy
// on SIGHUP and on a file change without restarting, disarms (never kills)
// a target a reload forbids, and keeps the watched values off NATS when the
// policy says so.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFile, mkdir, mkdtemp, rename, rm, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { status } from "@grpc/grpc-js";
import { create, fromBinary } from "@bufbuild/protobuf";
import { connect, type NatsConnection, type Subscription } from "nats";
import { Backend, HitBatchSchema, JobSpecSchema, JobState, RpcError, TargetState, ValueRedaction, WatchMode, eventSubjects, type HitEvent, type Job } from "../../proto/index.js";
import { Cluster, type Daemon } from "../support/cluster.js";
import { buildFixtures, childPids, fixturePath, procState, startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

/** The counter fixture's writes: thread 1 writes (1 << 32) | i for i = 1..N. */
function writtenValues(n: number): bigint[] {
  return Array.from({ length: n }, (_, i) => (1n << 32n) | BigInt(i + 1));
}

function littleEndian(value: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(value);
  return b;
}

/** The protobuf varint of a value: how a uint64 field carries it on the wire. */
function varint(value: bigint): Buffer {
  const bytes: number[] = [];
  let v = value;
  do {
    const low = Number(v & 0x7fn);
    v >>= 7n;
    bytes.push(v > 0n ? low | 0x80 : low);
  } while (v > 0n);
  return Buffer.from(bytes);
}

describe("host policy", () => {
  let cluster: Cluster;
  let agent: Daemon;
  let nc: NatsConnection;
  let dir: string;
  /** The path the agent is given: a symlink, swapped to change the policy the way config managers do. */
  let policyFile: string;
  let okDemo: string;
  let noDemo: string;
  let okCounter: string;
  const targets: Target[] = [];
  let version = 0;

  before(async () => {
    await buildFixtures();
    dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-policy-"));
    await Promise.all(["ok", "no", "etc", "versions"].map((d) => mkdir(path.join(dir, d))));
    // One name in two directories: a comm selector picks both, the policy only one.
    const name = `fwpol${process.pid % 100000}`;
    okDemo = path.join(dir, "ok", name);
    noDemo = path.join(dir, "no", name);
    okCounter = path.join(dir, "ok", `fwcnt${process.pid % 100000}`);
    await copyFile(fixturePath("demo-counter"), okDemo);
    await copyFile(fixturePath("demo-counter"), noDemo);
    await copyFile(fixturePath("counter"), okCounter);
    policyFile = path.join(dir, "etc", "policy.json");
    await symlink(await writeVersion(okOnly()), policyFile);
    cluster = await Cluster.start({ hosts: [] });
    agent = await cluster.startAgent("host-a", [], ["--policy", policyFile]);
    nc = await connect({ servers: cluster.natsUrl });
  });

  after(async () => {
    for (const t of targets) await t.kill();
    await nc?.close();
    await cluster?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  function okOnly(values = "capture"): object {
    return { allow: { executables: [path.join(dir, "ok", "*")] }, values };
  }

  /** A new file under versions/; returns its path. */
  async function writeVersion(policy: object | string): Promise<string> {
    const file = path.join(dir, "versions", `policy-${++version}.json`);
    await writeFile(file, typeof policy === "string" ? policy : JSON.stringify(policy));
    return file;
  }

  /** A reload's log line, whether it took or was refused. */
  const reloadLine = /host policy \S+?(?: reloaded|: reload) \(/;

  function reloads(): number {
    return agent.output.split("\n").filter((l) => reloadLine.test(l)).length;
  }

  /** Runs `change` and waits for the agent to have read the policy again; returns the log line. */
  async function reloaded(change: () => Promise<void>, expect: RegExp): Promise<string> {
    const before = reloads();
    await change();
    await waitFor(`the agent reads ${policyFile} again`, () => reloads() > before);
    const line = agent.output.split("\n").filter((l) => reloadLine.test(l)).at(-1)!;
    assert.match(line, expect);
    return line;
  }

  /** Points the policy symlink at a new file in one rename (what a ConfigMap update does). */
  async function swapPolicy(policy: object | string, expect: RegExp): Promise<string> {
    return reloaded(async () => {
      const next = `${policyFile}.next`;
      await symlink(await writeVersion(policy), next);
      await rename(next, policyFile);
    }, expect);
  }

  async function start(program: string, args: string[] = []): Promise<Target> {
    const target = await startTarget(path.basename(program), args, { path: program });
    targets.push(target);
    await target.waitForLine(/^ready /);
    return target;
  }

  // ptrace: these tests see arming and disarming as the target being traced.
  const demoSpec = (target: { pid?: number; comm?: string }) => create(JobSpecSchema, { watches: [{ location: { case: "symbol", value: "demo_counter" }, mode: WatchMode.WRITE }], target, stackDepth: 0, backend: Backend.PTRACE });

  async function submit(target: { pid?: number; comm?: string }): Promise<Job> {
    return (await cluster.api().submitJob({ spec: demoSpec(target) })).job!;
  }

  async function refused(target: { pid?: number; comm?: string }, details: RegExp): Promise<void> {
    await assert.rejects(submit(target), (err: unknown) => {
      assert.ok(err instanceof RpcError, String(err));
      assert.equal(err.code, status.PERMISSION_DENIED, err.details);
      assert.match(err.details, details);
      return true;
    });
  }

  async function cancel(job: Job): Promise<void> {
    assert.equal((await cluster.api().cancelJob({ id: job.id })).job?.state, JobState.CANCELLED);
  }

  const job = async (id: string): Promise<Job> => (await cluster.api().getJob({ id })).job!;
  const rule = (exe: string) => `host policy (${policyFile}): ${exe} is not in allow.executables`;
  const escaped = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

  const policyShown = async (): Promise<string | undefined> => (await cluster.api().listAgents({})).agents.find((a) => a.info?.hostId === "host-a")?.info?.policy;

  test("host policy - the agent logs the policy in effect at start and the controller lists it", async () => {
    assert.match(agent.output, new RegExp(`agent host-a: host policy ${escaped(policyFile)}: exe 1, values capture`));
    assert.equal(await policyShown(), "exe 1, values capture");
  });

  test("host policy - an allowed executable is armed; a denied one is PERMISSION_DENIED naming the file and rule; a job on both fails only the denied target", async () => {
    const ok = await start(okDemo);
    const no = await start(noDemo);
    const armed = await submit({ pid: ok.pid });
    assert.equal(armed.state, JobState.ARMED, armed.reason);
    assert.notEqual(await ok.tracerPid(), 0);
    await cancel(armed);
    assert.equal(await ok.tracerPid(), 0);

    await refused({ pid: no.pid }, new RegExp(`^host-a: ${escaped(rule(noDemo))}$`));
    // The same refusal through the CLI: exit 4 (permission denied), naming the file and the rule.
    const cli = await cluster.cli(["watch", "--pid", String(no.pid), "--symbol", "demo_counter", "--stack", "0", "--backend", "ptrace"]);
    assert.equal(cli.code, 4, cli.stderr);
    assert.match(cli.stderr, new RegExp(escaped(rule(noDemo))));
    assert.equal(await no.tracerPid(), 0, "the denied process was never attached");
    const { jobs } = await cluster.api().listJobs({});
    assert.ok(!jobs.some((j) => j.targets.some((t) => t.pid === no.pid)), "a refused submit stores no job");

    const both = await submit({ comm: path.basename(okDemo) });
    assert.equal(both.state, JobState.DEGRADED, both.reason);
    assert.deepEqual(
      both.targets.map((t) => [t.pid, t.state, t.state === TargetState.FAILED ? t.reason : ""]).sort(),
      [
        [ok.pid, TargetState.ARMED, ""],
        [no.pid, TargetState.FAILED, `host-a: ${rule(noDemo)}`],
      ].sort(),
    );
    assert.equal(await no.tracerPid(), 0);
    await cancel(both);
    assert.equal(await ok.tracerPid(), 0);
  });

  test("host policy - pid 1, the agent and its helper are refused even when the policy allows every executable", async () => {
    await swapPolicy({ allow: { executables: ["/**"] } }, /reloaded \(the file changed\): exe 1, values capture$/);
    const agentPid = agent.child.pid!;
    const [helperPid] = await childPids(agentPid);
    assert.ok(helperPid, "the agent runs its helper");
    await refused({ pid: 1 }, /^host-a: selector\.pid 1 is never watched \(host policy: the init process is not a target\)$/);
    await refused({ pid: agentPid }, new RegExp(`^host-a: host policy \\(${escaped(policyFile)}\\): pid ${agentPid} is the fleetwatch agent itself and is never watched$`));
    await refused({ pid: helperPid }, new RegExp(`^host-a: host policy \\(${escaped(policyFile)}\\): pid ${helperPid} is the fleetwatch helper and is never watched$`));
  });

  test("host policy - a file change and SIGHUP each change the decision without a restart; a bad file keeps the policy in effect", async () => {
    const agentPid = agent.child.pid;
    const ok = await start(okDemo);
    const no = await start(noDemo);
    await swapPolicy(okOnly(), /reloaded \(the file changed\): exe 1, values capture$/);
    await refused({ pid: no.pid }, new RegExp(escaped(rule(noDemo))));

    await swapPolicy("{ not json", /: reload \(the file changed\) failed, keeping the host policy in effect: host policy \S+: not JSON: /);
    await swapPolicy({ allow: { exe: ["/**"] } }, /: reload \(the file changed\) failed, keeping the host policy in effect: host policy \S+: unknown key "allow\.exe"/);
    await refused({ pid: no.pid }, new RegExp(escaped(rule(noDemo))));
    const stillOk = await submit({ pid: ok.pid });
    assert.equal(stillOk.state, JobState.ARMED, stillOk.reason);
    await cancel(stillOk);

    // Rewritten behind the symlink, the file's directory sees no change: only SIGHUP makes the agent read it.
    const changes = agent.output.match(/reloaded \(the file changed\)/g)?.length ?? 0;
    await reloaded(async () => {
      await writeFile(path.join(dir, "versions", `policy-${version}.json`), JSON.stringify({ allow: { executables: [path.join(dir, "*", path.basename(noDemo))] } }));
      agent.kill("SIGHUP");
    }, /reloaded \(SIGHUP\): exe 1, values capture$/);
    assert.equal(agent.output.match(/reloaded \(the file changed\)/g)?.length ?? 0, changes);
    const nowAllowed = await submit({ pid: no.pid });
    assert.equal(nowAllowed.state, JobState.ARMED, nowAllowed.reason);
    await cancel(nowAllowed);
    assert.equal(await no.tracerPid(), 0);
    assert.equal(agent.child.pid, agentPid);
    assert.ok(agent.running, "the same agent process throughout");
  });

  test("host policy - a reload that forbids an armed target disarms it: the target runs on untraced, its job target FAILED with the rule", async () => {
    const no = await start(noDemo);
    await swapPolicy({ allow: { executables: [path.join(dir, "*", "*")] } }, /reloaded \(the file changed\)/);
    const armed = await submit({ pid: no.pid });
    assert.equal(armed.state, JobState.ARMED, armed.reason);
    assert.notEqual(await no.tracerPid(), 0);

    await swapPolicy(okOnly(), /reloaded \(the file changed\): exe 1/);
    const failed = await waitFor("the forbidden target is reported failed", async () => {
      const j = await job(armed.id);
      return j.targets[0]?.state === TargetState.FAILED ? j : undefined;
    });
    assert.equal(failed.targets[0]!.reason, rule(noDemo));
    assert.equal(failed.state, JobState.FAILED);
    assert.equal(await no.tracerPid(), 0, "disarmed and detached");
    assert.equal(no.child.exitCode, null, "the target was not harmed");
    assert.ok(["R", "S"].includes((await procState(no.rootPid)) ?? "gone"), "running, not stopped");
    const { agents } = await cluster.api().listAgents({});
    assert.equal(agents[0]?.targets.find((t) => t.pid === no.pid)?.slots.some((s) => s.jobIds.length > 0) ?? false, false, "no register held for it");
    no.child.kill("SIGTERM");
    assert.deepEqual(await no.waitForExit(), { code: 0, signal: null });
  });

  for (const [values, redaction] of [
    ["capture", ValueRedaction.UNSPECIFIED],
    ["hash", ValueRedaction.HASHED],
    ["mask", ValueRedaction.MASKED],
    ["off", ValueRedaction.OFF],
  ] as const) {
    test(`host policy - values "${values}": ${values === "capture" ? "the written values are on NATS (the scan finds them)" : "the written values never appear on NATS"}, and every hit is counted`, async () => {
      const writes = 200;
      // The counter itself is listed too: a policy text of its own, so each mode is a real change.
      await swapPolicy({ allow: { executables: [path.join(dir, "ok", "*"), okCounter] }, values }, new RegExp(`reloaded \\(the file changed\\): exe 2, values ${values}$`));
      const target = await start(okCounter, ["--writes", String(writes)]);
      const raw: Buffer[] = [];
      const sub: Subscription = nc.subscribe(eventSubjects);
      const collecting = (async () => {
        for await (const message of sub) raw.push(Buffer.from(message.data));
      })();
      try {
        await nc.flush();
        const spec = create(JobSpecSchema, { watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], target: { pid: target.pid }, maxHits: BigInt(writes), stackDepth: 0, backend: Backend.PTRACE });
        const submitted = (await cluster.api().submitJob({ spec })).job!;
        assert.equal(submitted.state, JobState.ARMED, submitted.reason);
        target.send("go");
        assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
        const done = await waitFor(`job ${submitted.id} completed`, async () => {
          const j = await job(submitted.id);
          return j.state === JobState.COMPLETED ? j : undefined;
        });
        assert.deepEqual([done.counts?.trapped, done.counts?.delivered, done.counts?.dropped, done.counts?.suppressed], [BigInt(writes), BigInt(writes), 0n, 0n]);
        const hitsOf = (): HitEvent[] => raw.flatMap((data) => fromBinary(HitBatchSchema, data).hits).filter((h) => h.jobId === submitted.id);
        await waitFor(`all ${writes} hits of job ${submitted.id} seen on ${eventSubjects}`, () => hitsOf().length >= writes);
        const hits = hitsOf();
        assert.equal(hits.length, writes);
        assert.deepEqual(hits.map((h) => h.sequence), writtenValues(writes).map((_, i) => BigInt(i + 1)));
        assert.ok(hits.every((h) => h.valueRedaction === redaction), "every hit says how its values were treated");

        const real = writtenValues(writes);
        const onWire = (needle: Buffer) => raw.some((data) => data.includes(needle));
        if (values === "capture") {
          assert.deepEqual(hits.map((h) => h.newValue), real);
          assert.ok(real.every((v) => onWire(varint(v))), "captured values are on the wire, and the scan finds them");
          return;
        }
        const realSet = new Set(real);
        assert.ok(hits.every((h) => !realSet.has(h.newValue) && !realSet.has(h.oldValue)), "no decoded value is a written one");
        for (const v of real) {
          assert.ok(!onWire(littleEndian(v)), `${v} as 8 little-endian bytes`);
          assert.ok(!onWire(varint(v)), `${v} as a varint`);
        }
        if (values === "hash") {
          await waitFor("agents ls shows the reloaded policy", async () => (await policyShown()) === "exe 2, values hash", 20_000);
          // Equal values hash equal: each write's old value is the previous write's new value.
          for (let i = 1; i < hits.length; i++) assert.equal(hits[i]!.oldValue, hits[i - 1]!.newValue, `hit ${i}`);
          assert.equal(new Set(hits.map((h) => h.newValue)).size, writes, "distinct values hash apart");
        } else {
          assert.ok(hits.every((h) => h.oldValue === 0n && h.newValue === 0n));
        }
      } finally {
        sub.unsubscribe();
        await collecting;
      }
    });
  }
});
