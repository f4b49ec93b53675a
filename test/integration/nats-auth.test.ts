// NATS with nkey credentials and the generated permissions: a real
// nats-server on a free port started with nats-auth.conf, a real controller
// and agent signed in with their seeds, and each party's reach checked
// against the server itself: what it may do works, the rest is refused.
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { connect, type NatsConnection } from "nats";
import { HitPublisher } from "../../agent/hit-publisher.js";
import { storedHitsReader } from "../../agent/stored-hits.js";
import { HitBatchSchema, HitEventSchema, NatsRefusals, eventStream, eventSubject, isPermissionViolation, jobBucket, natsAuthOptions, readNatsCredentials, violationContext, type Identity } from "../../proto/index.js";
import { Cluster, collectCli } from "../support/cluster.js";
import { cliPath } from "../support/paths.js";
import { buildFixtures, startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

const h1: Identity = { kind: "agent", name: "h1" };
const h2: Identity = { kind: "agent", name: "h2" };
const operator: Identity = { kind: "user", name: "operator" };

/** One batch of one hit, as an agent publishes it. */
function batch(jobId: string, hostId: string, sequence: bigint): Uint8Array {
  return toBinary(HitBatchSchema, create(HitBatchSchema, { hits: [create(HitEventSchema, { jobId, hostId, pid: 4242, tid: 4242, sequence })] }));
}

/** The permission violation a refused attempt ended with; fails if it succeeded or failed otherwise. */
async function refusal(attempt: Promise<unknown>): Promise<{ operation: string; subject: string }> {
  const outcome = await attempt.then(
    () => undefined,
    (err: unknown) => err,
  );
  assert.ok(outcome !== undefined, "the server allowed it");
  assert.ok(isPermissionViolation(outcome), `not a permissions violation: ${String(outcome)}`);
  const context = violationContext(outcome);
  assert.ok(context, `the violation names no subject: ${String(outcome)}`);
  return { operation: context.operation, subject: context.subject };
}

describe("NATS credentials and permissions", () => {
  let cluster: Cluster;
  const connections: NatsConnection[] = [];
  const targets: Target[] = [];

  before(async () => {
    await buildFixtures();
    cluster = await Cluster.start({ hosts: ["h1"], natsAuth: { agents: ["h1", "h2"] } });
  });

  after(async () => {
    for (const nc of connections) await nc.close().catch(() => {});
    for (const t of targets) await t.kill();
    await cluster?.stop();
  });

  async function connectAs(identity: Identity): Promise<NatsConnection> {
    const nc = await connect({ servers: cluster.natsUrl, name: `test-${identity.kind}-${identity.name}`, ...natsAuthOptions(readNatsCredentials(cluster.natsCreds(identity))) });
    connections.push(nc);
    return nc;
  }

  test("certs init writes a private seed per party and a nats-auth.conf naming each; certs issue adds to it", async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-nkeys-"));
    try {
      const certs = path.join(dir, "certs");
      const init = await collectCli(spawn(process.execPath, [cliPath, "certs", "init", "--dir", certs, "--agent", "h1", "--user", "alice", "-o", "json"], { stdio: ["ignore", "pipe", "pipe"] }), [], 30_000);
      assert.equal(init.code, 0, init.stderr);
      const issue = await collectCli(spawn(process.execPath, [cliPath, "certs", "issue", "--dir", certs, "--agent", "h3"], { stdio: ["ignore", "pipe", "pipe"] }), [], 30_000);
      assert.equal(issue.code, 0, issue.stderr);
      const conf = await readFile(path.join(certs, "nats-auth.conf"), "utf8");
      for (const seed of ["controller.nk", "agent-h1.nk", "user-alice.nk", "agent-h3.nk"]) {
        assert.equal((await stat(path.join(certs, seed))).mode & 0o777, 0o600, seed);
        const { publicKey } = readNatsCredentials(path.join(certs, seed));
        assert.equal(conf.split(publicKey).length - 1, 2, `${seed}: its public key names it and its inbox once each`);
      }
      assert.match(conf, /"fleetwatch\.events\.\*\.h3"/);
      const again = await collectCli(spawn(process.execPath, [cliPath, "certs", "issue", "--dir", certs, "--agent", "h3"], { stdio: ["ignore", "pipe", "pipe"] }), [], 30_000);
      assert.equal(again.code, 3);
      assert.match(again.stderr, /agent-h3\.nk exists already/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("an end-to-end watch with every party signed in delivers exact counts", async () => {
    const writes = 2_000;
    const target = await startTarget("counter", ["--threads", "1", "--writes", String(writes)]);
    targets.push(target);
    await target.waitForLine(/^ready /);
    // ptrace: every write a hit (perf may lose samples of a writer that outruns its ring buffer, and counts them dropped).
    const watch = cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--max-hits", String(writes), "--backend", "ptrace", "--follow", "-o", "json"], { timeoutMs: 120_000 });
    const jobId = await waitFor(`a job armed on pid ${target.pid}`, async () => {
      const { jobs } = await cluster.api().listJobs({});
      return jobs.find((j) => j.targets.some((t) => t.pid === target.pid && t.state === 2))?.id;
    });
    target.send("go");
    const result = await watch;
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
    assert.equal(result.stdout.trim().split("\n").length, writes);
    const replay = await cluster.cli(["events", jobId, "-o", "json"]);
    assert.equal(replay.code, 0, replay.stderr);
    assert.equal(replay.stdout.trim().split("\n").length, writes);
    const job = (await cluster.api().getJob({ id: jobId })).job!;
    assert.deepEqual([job.counts?.trapped, job.counts?.delivered, job.counts?.suppressed, job.counts?.dropped], [BigInt(writes), BigInt(writes), 0n, 0n]);
    assert.doesNotMatch(cluster.agents.get("h1")!.output + cluster.controller!.output, /NATS refused/);
  });

  test("agent h1 publishes its own hits and reads them back, and is refused another host's, the jobs bucket and stream administration", async () => {
    const nc = await connectAs(h1);
    const js = nc.jetstream();
    const ack = await js.publish(eventSubject("auth-j1", "h1"), batch("auth-j1", "h1", 1n), { msgID: "auth-j1.h1.1" });
    assert.equal(ack.stream, eventStream);

    assert.deepEqual(await refusal(js.publish(eventSubject("auth-j1", "h2"), batch("auth-j1", "h2", 1n))), { operation: "publish", subject: "fleetwatch.events.auth-j1.h2" });
    assert.deepEqual(await refusal(js.publish(`$KV.${jobBucket}.forged`, new Uint8Array([1]))), { operation: "publish", subject: `$KV.${jobBucket}.forged` });
    const jsm = await nc.jetstreamManager();
    assert.deepEqual(await refusal(jsm.streams.add({ name: "FORGED", subjects: ["forged.>"] })), { operation: "publish", subject: "$JS.API.STREAM.CREATE.FORGED" });
    assert.deepEqual(await refusal(jsm.streams.delete(eventStream)), { operation: "publish", subject: `$JS.API.STREAM.DELETE.${eventStream}` });
    assert.deepEqual(await refusal(js.views.kv(jobBucket)), { operation: "publish", subject: `$JS.API.STREAM.INFO.KV_${jobBucket}` });

    // A message get would read any host's hits: refused.
    assert.deepEqual(await refusal(jsm.streams.getMessage(eventStream, { last_by_subj: eventSubject("auth-j1", "h2") })), { operation: "publish", subject: `$JS.API.STREAM.MSG.GET.${eventStream}` });

    // What an agent does before arming: its own stored hits read back; another host's consumer is refused, not retried.
    assert.deepEqual(await storedHitsReader(nc)("auth-none", "h1"), { lastSequence: 0n, byPid: new Map(), countedByPid: new Map() }, "a job with nothing stored yet");
    await (await connectAs(h2)).jetstream().publish(eventSubject("auth-j1", "h2"), batch("auth-j1", "h2", 1n));
    const refusals = new NatsRefusals(nc);
    const stored = await storedHitsReader(nc, refusals)("auth-j1", "h1");
    assert.deepEqual([stored.lastSequence, [...stored.byPid]], [1n, [[4242, 1n]]]);
    const other = await storedHitsReader(nc, refusals)("auth-j1", "h2").then(
      () => undefined,
      (err: unknown) => err,
    );
    assert.ok(isPermissionViolation(other), `reading h2's hits: ${String(other)}`);
    assert.match(violationContext(other)!.subject, /^\$JS\.API\.CONSUMER\.CREATE\.FLEETWATCH_EVENTS\.[^.]+\.fleetwatch\.events\.auth-j1\.h2$/);

    // A refused batch is dropped at once, not resent for a minute.
    const settled = await new Promise<boolean>((resolve) => new HitPublisher(js).publish(eventSubject("auth-j1", "h2"), batch("auth-j1", "h2", 2n), "auth-j1.2", resolve));
    assert.equal(settled, false);

    // Nobody else's replies: h1 may subscribe only under its own inbox.
    const snoop = nc.subscribe("fleetwatch.events.>");
    const ended = await (async () => {
      try {
        for await (const _ of snoop) return "message";
        return "closed";
      } catch (err) {
        return err;
      }
    })();
    assert.ok(isPermissionViolation(ended), `subscribing to every event: ${String(ended)}`);

    // The stream and the controller are unharmed.
    assert.equal((await (await (await connectAs({ kind: "controller", name: "controller" })).jetstreamManager()).streams.info(eventStream)).config.name, eventStream);
  });

  test("a user reads events but publishes nothing under fleetwatch.> and cannot touch the jobs bucket", async () => {
    const nc = await connectAs(operator);
    const js = nc.jetstream();
    assert.deepEqual(await refusal(js.publish(eventSubject("auth-j2", "h1"), batch("auth-j2", "h1", 1n))), { operation: "publish", subject: "fleetwatch.events.auth-j2.h1" });
    assert.deepEqual(await refusal(js.publish("fleetwatch.anything", new Uint8Array([1]))), { operation: "publish", subject: "fleetwatch.anything" });
    assert.deepEqual(await refusal(js.publish(`$KV.${jobBucket}.forged`, new Uint8Array([1]))), { operation: "publish", subject: `$KV.${jobBucket}.forged` });
    // Opening the bucket stops at the account check; reading a key straight away is refused too.
    assert.deepEqual(await refusal(js.views.kv(jobBucket)), { operation: "publish", subject: "$JS.API.INFO" });
    const get = `$JS.API.STREAM.MSG.GET.KV_${jobBucket}`;
    assert.deepEqual(await refusal(nc.request(get, new TextEncoder().encode(JSON.stringify({ last_by_subj: `$KV.${jobBucket}.x` })))), { operation: "publish", subject: get });
    // Hits h1 published are the user's to read, through the real command.
    const agent = await connectAs(h1);
    for (const sequence of [1n, 2n, 3n]) await agent.jetstream().publish(eventSubject("auth-j2", "h1"), batch("auth-j2", "h1", sequence));
    const read = await cluster.cli(["events", "auth-j2", "-o", "json"]);
    assert.equal(read.code, 0, read.stderr);
    assert.deepEqual(read.stdout.trim().split("\n").map((line) => (JSON.parse(line) as { sequence: string }).sequence), ["1", "2", "3"]);
  });

  test("the CLI with an agent's credentials says which subject it lacked", async () => {
    const read = await cluster.cli(["events", "auth-j2"], { env: { FLEETWATCH_NATS_CREDS: cluster.natsCreds(h2) } });
    assert.equal(read.code, 1);
    assert.match(read.stderr, /NATS refused to read the events of job auth-j2: the credentials in \S+agent-h2\.nk lack permission to publish \$JS\.API\.CONSUMER\.CREATE\.FLEETWATCH_EVENTS\.\S+\.fleetwatch\.events\.auth-j2\.>/);
  });

  test("no credentials at all are refused", async () => {
    const outcome = await connect({ servers: cluster.natsUrl, name: "test-anonymous", reconnect: false }).then(
      async (nc) => {
        await nc.close();
        return undefined;
      },
      (err: unknown) => err,
    );
    assert.equal((outcome as { code?: string } | undefined)?.code, "AUTHORIZATION_VIOLATION");
    const read = await cluster.cli(["events", "auth-j2"], { env: { FLEETWATCH_NATS_CREDS: "" } });
    assert.equal(read.code, 1);
    assert.match(read.stderr, /NATS at \S+ requires credentials: give this party's nkey seed with --nats-creds/);
  });
});
