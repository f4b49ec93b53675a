// Authorization over mutual TLS with a real controller, agent, helper and C
// targets: each role allowed and denied, scopes on processes and values,
// cancelling someone else's job, the kill switch, a policy reloaded without
// a restart, and the audit trail that records all of it.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fromJson } from "@bufbuild/protobuf";
import { freePort, startNatsServer, type RunningNatsServer } from "../../cli/nats-server.js";
import { AuditRecordSchema, HitEventSchema, JobSchema, JobState, ValueRedaction, type AuditRecord, type Job } from "../../proto/index.js";
import { Daemons, collectCli, type CliResult, type Daemon } from "../support/cluster.js";
import { cliPath, helperPath } from "../support/paths.js";
import { buildFixtures, fixturePath, startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

describe("authorization", () => {
  let dir: string;
  let certs: string;
  let policyFile: string;
  let nats: RunningNatsServer;
  const daemons = new Daemons();
  let controllerDaemon: Daemon;
  let controller = "";
  let demo: Target;
  let idler: Target;

  const policy = (viewerRole: string) => ({
    bindings: [
      { users: ["vera"], role: viewerRole },
      { users: ["olga"], role: "operator", hosts: "role=db", executables: [fixturePath("demo-counter")] },
      { users: ["omar"], role: "operator", values: false },
      { users: ["ada"], role: "admin" },
    ],
  });

  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^FLEETWATCH_(CA|CERT|KEY|INSECURE)$/.test(k)));
  const as = (user: string, args: string[]): Promise<CliResult> =>
    collectCli(
      spawn(process.execPath, [cliPath, "--controller", controller, "--nats", nats.url, "--ca", path.join(certs, "ca.crt"), "--cert", path.join(certs, `user-${user}.crt`), "--key", path.join(certs, `user-${user}.key`), ...args], { stdio: ["ignore", "pipe", "pipe"], env }),
      args,
      60_000,
    );
  const submit = async (user: string, target: Target, symbol: string, extra: string[] = []): Promise<Job> => {
    // ptrace: the kill switch test sees arming as the target being traced.
    const result = await as(user, ["watch", "--pid", String(target.pid), "--symbol", symbol, "--stack", "0", "--backend", "ptrace", "-o", "json", ...extra]);
    assert.equal(result.code, 0, result.stderr);
    return fromJson(JobSchema, JSON.parse(result.stdout));
  };
  const audit = async (): Promise<AuditRecord[]> => {
    const result = await as("ada", ["audit", "-o", "json"]);
    assert.equal(result.code, 0, result.stderr);
    return result.stdout.split("\n").filter(Boolean).map((l) => fromJson(AuditRecordSchema, JSON.parse(l)));
  };
  const denied = (result: CliResult, why: RegExp) => {
    assert.equal(result.code, 4, result.stderr);
    assert.match(result.stderr, why);
  };

  before(async () => {
    await buildFixtures();
    dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-authz-"));
    certs = path.join(dir, "certs");
    policyFile = path.join(dir, "access.json");
    await writeFile(policyFile, JSON.stringify(policy("viewer")));
    nats = await startNatsServer({ dataDir: path.join(dir, "nats"), port: await freePort() });
    const init = await collectCli(spawn(process.execPath, [cliPath, "certs", "init", "--dir", certs, "--agent", "h1", "--user", "vera", "--user", "olga", "--user", "omar", "--user", "ada", "--user", "mallory"], { stdio: ["ignore", "pipe", "pipe"], env }), [], 30_000);
    assert.equal(init.code, 0, init.stderr);
    const tls = (base: string) => ["--ca", path.join(certs, "ca.crt"), "--cert", path.join(certs, `${base}.crt`), "--key", path.join(certs, `${base}.key`)];
    controllerDaemon = daemons.start("controller", [...tls("controller"), "controller", "--listen", "127.0.0.1:0", "--nats", nats.url, "--access-policy", policyFile]);
    controller = (await controllerDaemon.waitForOutput(/listening on (\S+:\d+)/))[1]!;
    const agent = daemons.start("agent h1", [...tls("agent-h1"), "agent", "--controller", controller, "--nats", nats.url, "--host-id", "h1", "--label", "role=db", "--helper", helperPath]);
    await agent.waitForOutput(/registered with controller/);
    demo = await startTarget("demo-counter");
    await demo.waitForLine(/^ready /);
    idler = await startTarget("idler");
  });

  after(async () => {
    await demo?.kill();
    await idler?.kill();
    await daemons.stop();
    await nats?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test("a viewer sees jobs and agents, and may not submit, cancel, pull the kill switch or read the audit trail", async () => {
    assert.equal((await as("vera", ["jobs", "ls"])).code, 0);
    assert.equal((await as("vera", ["agents", "ls"])).code, 0);
    denied(await as("vera", ["watch", "--pid", String(demo.pid), "--symbol", "demo_counter"]), /user vera is viewer \(binding #1\); submit needs operator or admin/);
    denied(await as("vera", ["jobs", "cancel", "nosuchjob"]), /cancel needs operator or admin/);
    denied(await as("vera", ["disarm", "--all"]), /disarm-all needs admin/);
    denied(await as("vera", ["audit"]), /audit needs admin/);
    denied(await as("mallory", ["jobs", "ls"]), new RegExp(`access policy \\(${policyFile.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&")}\\): no binding for user mallory`));
    assert.equal(await demo.tracerPid(), 0, "nothing was armed");
  });

  test("an operator watches within its scope, is refused outside it naming the rule, and cancels only its own jobs", async () => {
    const job = await submit("olga", demo, "demo_counter");
    assert.equal(job.state, JobState.ARMED, job.reason);
    assert.equal(job.owner, "user olga");
    denied(await as("olga", ["watch", "--pid", String(idler.pid), "--symbol", "idle_counter"]), /user olga may not watch h1\/\d+ .*idler\): binding #2 \(olga: operator on hosts role=db, executables \S+demo-counter\): \S+idler is not in executables/);
    assert.equal(await idler.tracerPid(), 0);
    // Someone else's job takes an admin.
    const adas = await submit("ada", idler, "idle_counter").catch(() => undefined);
    const other = adas ?? (await submit("ada", demo, "demo_counter", ["--mode", "rw"]));
    denied(await as("olga", ["jobs", "cancel", other.id]), new RegExp(`job ${other.id} belongs to user ada; user olga may cancel its own jobs only`));
    const mine = await as("olga", ["jobs", "cancel", job.id, "-o", "json"]);
    assert.equal(mine.code, 0, mine.stderr);
    assert.equal(fromJson(JobSchema, JSON.parse(mine.stdout)).reason, "cancelled by user olga");
    const adaCancels = await as("ada", ["jobs", "cancel", other.id]);
    assert.equal(adaCancels.code, 0, adaCancels.stderr);
    await waitFor("the targets are free again", async () => (await demo.tracerPid()) === 0 && (await idler.tracerPid()) === 0);
  });

  test("a binding without values: hits leave the host masked", async () => {
    const result = await as("omar", ["watch", "--pid", String(demo.pid), "--symbol", "demo_counter", "--stack", "0", "--max-hits", "3", "--follow", "-o", "json"]);
    assert.equal(result.code, 0, result.stderr);
    const hits = result.stdout.split("\n").filter(Boolean).map((l) => fromJson(HitEventSchema, JSON.parse(l)));
    assert.equal(hits.length, 3);
    for (const h of hits) assert.deepEqual([h.oldValue, h.newValue, h.valueRedaction], [0n, 0n, ValueRedaction.MASKED]);
    const jobs = (JSON.parse((await as("ada", ["jobs", "ls", "-o", "json"])).stdout) as { jobs: unknown[] }).jobs.map((j) => fromJson(JobSchema, j as never));
    assert.equal(jobs.find((j) => j.owner === "user omar")?.redaction, ValueRedaction.MASKED);
  });

  test("a policy rewritten while the controller runs takes effect at once", async () => {
    await writeFile(policyFile, JSON.stringify(policy("operator")));
    await controllerDaemon.waitForOutput(/access policy \S+ reloaded \(the file changed\): binding #1 \(vera: operator\)/);
    const job = await submit("vera", demo, "demo_counter");
    assert.equal(job.state, JobState.ARMED, job.reason);
    assert.equal((await as("vera", ["jobs", "cancel", job.id])).code, 0);
    await writeFile(policyFile, "{ not json");
    await controllerDaemon.waitForOutput(/access policy \S+: reload \(the file changed\) failed, keeping the access policy in effect: access policy \S+: not JSON/);
    await writeFile(policyFile, JSON.stringify(policy("viewer")));
    await controllerDaemon.waitForOutput(/reloaded \(the file changed\): binding #1 \(vera: viewer\)/);
    denied(await as("vera", ["watch", "--pid", String(demo.pid), "--symbol", "demo_counter"]), /submit needs operator or admin/);
  });

  test("the kill switch clears every register and cancels every job; the audit trail holds who did what, where, and every denial", async () => {
    const a = await submit("olga", demo, "demo_counter");
    const b = await submit("ada", idler, "idle_counter").catch(() => undefined);
    assert.notEqual(await demo.tracerPid(), 0);
    const pulled = await as("ada", ["disarm", "--all", "--reason", "drill", "-o", "json"]);
    assert.equal(pulled.code, 0, pulled.stderr + pulled.stdout);
    const answer = JSON.parse(pulled.stdout) as { cancelledJobIds: string[]; agents: Array<{ hostId: string; confirmed: boolean; disarmed: number }> };
    assert.deepEqual(answer.agents.map((x) => [x.hostId, x.confirmed]), [["h1", true]]);
    assert.ok(answer.cancelledJobIds.includes(a.id));
    assert.equal(await demo.tracerPid(), 0, "untraced once the agent confirmed");
    const after = fromJson(JobSchema, JSON.parse((await as("ada", ["jobs", "get", a.id, "-o", "json"])).stdout));
    assert.equal(after.state, JobState.CANCELLED);
    assert.equal(after.reason, "disarmed fleet-wide by user ada: drill");
    const c = after.targets[0]!.counts!;
    assert.equal(c.trapped, c.delivered + c.suppressed + c.dropped + c.filtered, JSON.stringify(after.targets, (_k, v) => (typeof v === "bigint" ? String(v) : v)));

    const records = await audit();
    const find = (pred: (r: AuditRecord) => boolean, what: string) => {
      const r = records.find(pred);
      assert.ok(r, `audit has ${what}: ${records.map((x) => `${x.who} ${x.action} ${x.result}`).join("; ")}`);
      return r;
    };
    const submitted = find((r) => r.action === "submit" && r.jobId === a.id, "olga's submit");
    assert.deepEqual([submitted.who, submitted.result, submitted.where], ["user olga", "ok", [`h1/${demo.pid}`]]);
    assert.match(submitted.what, /^demo_counter \(write\) in pid \d+, ptrace$/, "the audit names the backend the job arms with");
    const refused = find((r) => r.action === "submit" && r.who === "user olga" && r.result === "PERMISSION_DENIED", "olga's refused submit");
    assert.match(refused.reason, /idler is not in executables/);
    find((r) => r.action === "submit" && r.who === "user vera" && r.result === "PERMISSION_DENIED" && /submit needs operator or admin/.test(r.reason), "vera's denied submit");
    find((r) => r.action === "cancel" && r.who === "user olga" && r.result === "PERMISSION_DENIED", "olga's denied cancel of ada's job");
    find((r) => r.action === "cancel" && r.who === "user olga" && r.result === "ok", "olga's own cancel");
    find((r) => r.action === "list" && r.who === "user mallory" && r.result === "PERMISSION_DENIED", "mallory's denied list");
    find((r) => r.action === "disarm-all" && r.who === "user vera" && r.result === "PERMISSION_DENIED", "vera's denied kill switch");
    const killed = find((r) => r.action === "disarm-all" && r.result === "ok", "the kill switch");
    assert.equal(killed.who, "user ada");
    assert.equal(killed.what, "disarmed fleet-wide by user ada: drill");
    assert.match(killed.where[0]!, /^h1 confirmed \d+ after \d+ ms$/);
    if (b) assert.ok(answer.cancelledJobIds.includes(b.id));
    // Oldest first, and --since narrows it.
    assert.deepEqual(records.map((r) => r.timeUnixMs), [...records.map((r) => r.timeUnixMs)].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)));
    const recent = await as("ada", ["audit", "--since", "1h"]);
    assert.equal(recent.code, 0, recent.stderr);
    assert.match(recent.stdout, /^TIME\s+WHO\s+ACTION\s+JOB\s+RESULT\s+DETAILS\n/);
  });
});
