// Mutual TLS on every gRPC link: certificates made by `fleetwatch certs
// init`, a controller and an agent that speak only TLS, a user who can work,
// and every misuse refused: a certificate of another CA, an expired one, an
// agent's certificate used as a user's (and the reverse), an agent speaking
// for another host, plaintext to a TLS controller, and plaintext off loopback.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { freePort, startNatsServer, type RunningNatsServer } from "../../cli/nats-server.js";
import { readAuthority, issueCertificate, writeIssued } from "../../cli/certificates.js";
import { AgentService, ControllerService, RpcError, createClient, type ServiceClient } from "../../proto/index.js";
import { Daemons, collectCli, type CliResult } from "../support/cluster.js";
import { cliPath, helperPath } from "../support/paths.js";
import { spawn } from "node:child_process";

describe("mutual TLS", () => {
  let dir: string;
  let certs: string;
  let otherCerts: string;
  let nats: RunningNatsServer;
  const daemons = new Daemons();
  let controller = "";

  const tls = (base: string, inDir = certs) => ["--ca", path.join(inDir, "ca.crt"), "--cert", path.join(inDir, `${base}.crt`), "--key", path.join(inDir, `${base}.key`)];
  // Only what the test names: no TLS settings from the environment.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^FLEETWATCH_(CA|CERT|KEY|INSECURE)$/.test(k)));
  const cli = (args: string[]): Promise<CliResult> => collectCli(spawn(process.execPath, [cliPath, "--controller", controller, "--nats", nats.url, ...args], { stdio: ["ignore", "pipe", "pipe"], env }), args, 30_000);

  /** A raw client presenting any certificate (no local checks): what the controller itself enforces. */
  const rawClient = async <S extends typeof ControllerService | typeof AgentService>(service: S, base: string, caDir = certs, certDir = certs): Promise<ServiceClient<S>> => {
    const [ca, key, cert] = await Promise.all([readFile(path.join(caDir, "ca.crt")), readFile(path.join(certDir, `${base}.key`)), readFile(path.join(certDir, `${base}.crt`))]);
    // The server's identity is not what these cases are about: accept any certificate of the CA.
    return createClient(service, controller, grpc.credentials.createSsl(ca, key, cert, { checkServerIdentity: () => undefined }), { "grpc.ssl_target_name_override": "fleetwatch-controller" });
  };
  const statusOf = async (call: Promise<unknown>): Promise<RpcError> => {
    try {
      await call;
    } catch (err) {
      assert.ok(err instanceof RpcError, String(err));
      return err;
    }
    assert.fail("the call succeeded");
  };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-tls-"));
    certs = path.join(dir, "certs");
    otherCerts = path.join(dir, "other");
    nats = await startNatsServer({ dataDir: path.join(dir, "nats"), port: await freePort() });
    const init = await collectCli(spawn(process.execPath, [cliPath, "certs", "init", "--dir", certs, "--agent", "h1", "--user", "alice", "-o", "json"], { stdio: ["ignore", "pipe", "pipe"] }), [], 30_000);
    assert.equal(init.code, 0, init.stderr);
    assert.deepEqual(init.stdout.trim().split("\n").map((l) => (JSON.parse(l) as { identity: string }).identity), ["CA", "controller controller", "agent h1", "user alice"]);
    const other = await collectCli(spawn(process.execPath, [cliPath, "certs", "init", "--dir", otherCerts, "--agent", "h1", "--user", "alice"], { stdio: ["ignore", "pipe", "pipe"] }), [], 30_000);
    assert.equal(other.code, 0, other.stderr);
    // Expired: valid for a day, two years ago, under the right CA.
    await writeIssued(certs, await issueCertificate(await readAuthority(certs), { kind: "user", name: "old" }, { notBefore: new Date(Date.now() - 730 * 86_400_000), days: 1 }), "user-old");

    const c = daemons.start("controller", [...tls("controller"), "controller", "--listen", "127.0.0.1:0", "--nats", nats.url]);
    controller = (await c.waitForOutput(/listening on (\S+:\d+) \(mutual TLS/))[1]!;
    const agent = daemons.start("agent h1", [...tls("agent-h1"), "agent", "--controller", controller, "--nats", nats.url, "--host-id", "h1", "--helper", helperPath]);
    await agent.waitForOutput(/registered with controller/);
  });

  after(async () => {
    await daemons.stop();
    await nats?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  test("certs init writes keys only their owner can read", async () => {
    const { stat } = await import("node:fs/promises");
    for (const key of ["ca.key", "controller.key", "agent-h1.key", "user-alice.key"]) assert.equal((await stat(path.join(certs, key))).mode & 0o777, 0o600, key);
    const again = await cli(["certs", "init", "--dir", certs]);
    assert.equal(again.code, 3);
    assert.match(again.stderr, /already holds a CA: issue more certificates under it with `fleetwatch certs issue/);
  });

  test("a user with a certificate of the CA works; the agent is connected over TLS", async () => {
    const listed = await cli([...tls("user-alice"), "agents", "ls", "-o", "json"]);
    assert.equal(listed.code, 0, listed.stderr);
    // Dialled by IP: the controller is checked by the identity in its certificate, with nothing to warn about.
    assert.equal(listed.stderr, "");
    const agents = (JSON.parse(listed.stdout) as { agents: Array<{ info: { hostId: string }; connected: boolean }> }).agents;
    assert.deepEqual(agents.map((a) => [a.info.hostId, a.connected]), [["h1", true]]);
  });

  test("plaintext to a TLS controller fails, saying so, and is refused off loopback before any connection", async () => {
    const plain = await cli(["jobs", "ls"]);
    assert.equal(plain.code, 1);
    assert.match(plain.stderr, /cannot reach the controller at 127\.0\.0\.1:\d+: .*one that serves mutual TLS needs --ca, --cert and --key/);
    const remote = await collectCli(spawn(process.execPath, [cliPath, "--controller", "192.0.2.1:7070", "jobs", "ls"], { stdio: ["ignore", "pipe", "pipe"] }), [], 30_000);
    assert.equal(remote.code, 3);
    assert.match(remote.stderr, /192\.0\.2\.1:7070 is not on loopback: give --ca, --cert and --key .*or --insecure/);
    const controllerOff = await collectCli(spawn(process.execPath, [cliPath, "controller", "--listen", "0.0.0.0:0", "--nats", nats.url], { stdio: ["ignore", "pipe", "pipe"] }), [], 30_000);
    assert.equal(controllerOff.code, 3);
    assert.match(controllerOff.stderr, /0\.0\.0\.0:0 is not on loopback/);
  });

  test("a certificate of another CA: refused by the CLI before connecting, and by the controller's handshake", async () => {
    const local = await cli(["--ca", path.join(certs, "ca.crt"), "--cert", path.join(otherCerts, "user-alice.crt"), "--key", path.join(otherCerts, "user-alice.key"), "jobs", "ls"]);
    assert.equal(local.code, 3);
    assert.match(local.stderr, /user-alice\.crt is not signed by the CA .*ca\.crt/);
    // Presented anyway: the controller does not let it in.
    const client = await rawClient(ControllerService, "user-alice", certs, otherCerts);
    try {
      const err = await statusOf(client.listJobs({}, { deadlineMs: 5_000 }));
      assert.equal(err.code, grpc.status.UNAVAILABLE, err.details);
    } finally {
      client.close();
    }
    // And a controller of another CA is not trusted by the CLI.
    const wrongServer = await cli(tls("user-alice", otherCerts).concat(["jobs", "ls"]));
    assert.equal(wrongServer.code, 1);
    assert.match(wrongServer.stderr, /^fleetwatch: TLS with the controller at 127\.0\.0\.1:\d+ failed \(self-signed certificate in certificate chain\): --ca must be the CA that issued the controller's certificate\n$/);
  });

  test("an expired certificate: refused by the CLI with its date, and by the controller's handshake", async () => {
    const local = await cli([...tls("user-old"), "jobs", "ls"]);
    assert.equal(local.code, 3);
    assert.match(local.stderr, /user-old\.crt expired on \d{4}-\d\d-\d\dT.*issue a new one with `fleetwatch certs issue`/);
    const client = await rawClient(ControllerService, "user-old");
    try {
      const err = await statusOf(client.listJobs({}, { deadlineMs: 5_000 }));
      assert.equal(err.code, grpc.status.UNAVAILABLE, err.details);
    } finally {
      client.close();
    }
  });

  test("an agent's certificate used as a user's: refused by the CLI, and PERMISSION_DENIED from the controller", async () => {
    const local = await cli([...tls("agent-h1"), "jobs", "ls"]);
    assert.equal(local.code, 3);
    assert.match(local.stderr, /agent-h1\.crt identifies agent h1, but this needs a user certificate/);
    const client = await rawClient(ControllerService, "agent-h1");
    try {
      for (const call of [() => client.listJobs({}), () => client.listAgents({}), () => client.cancelJob({ id: "x" }), () => client.submitJob({ spec: {} })]) {
        const err = await statusOf(call());
        assert.equal(err.code, grpc.status.PERMISSION_DENIED);
        assert.equal(err.details, "this service is for user certificates; the caller presented one of agent h1");
      }
    } finally {
      client.close();
    }
  });

  test("a user's certificate cannot open an agent session, and an agent cannot speak for another host", async () => {
    const register = (hostId: string) =>
      (async function* () {
        yield { msg: { case: "register" as const, value: { info: { hostId, slotsPerThread: 4 }, armed: [] } } };
        await new Promise((resolve) => setTimeout(resolve, 5_000));
      })();
    const asUser = await rawClient(AgentService, "user-alice");
    const asAgent = await rawClient(AgentService, "agent-h1");
    try {
      const userErr = await statusOf((async () => {
        for await (const _ of asUser.session(register("h9"))) break;
      })());
      assert.equal(userErr.code, grpc.status.PERMISSION_DENIED);
      assert.match(userErr.details, /this service is for agent certificates; the caller presented one of user alice/);
      const otherHost = await statusOf((async () => {
        for await (const _ of asAgent.session(register("h2"))) break;
      })());
      assert.equal(otherHost.code, grpc.status.PERMISSION_DENIED);
      assert.equal(otherHost.details, "the certificate of agent h1 may not register host h2");
      // Both refusals are in the audit trail, with who presented what.
      const trail = await cli([...tls("user-alice"), "audit", "-o", "json"]);
      assert.equal(trail.code, 0, trail.stderr);
      const records = trail.stdout.split("\n").filter(Boolean).map((l) => JSON.parse(l) as { who?: string; action: string; result: string; reason: string });
      assert.ok(records.some((r) => r.who === "user alice" && r.action === "agent-session" && r.result === "PERMISSION_DENIED" && /this service is for agent certificates/.test(r.reason)), trail.stdout);
      assert.ok(records.some((r) => r.who === "agent h1" && r.action === "agent-session" && r.reason === "the certificate of agent h1 may not register host h2"), trail.stdout);
    } finally {
      asUser.close();
      asAgent.close();
    }
    const local = await cli([...tls("agent-h1"), "agent", "--host-id", "h2", "--helper", helperPath]);
    assert.equal(local.code, 3);
    assert.match(local.stderr, /agent-h1\.crt is agent h1's, not host h2's/);
  });

  test("a controller will not serve with a certificate that is not a controller's", async () => {
    const result = await cli([...tls("agent-h1"), "controller", "--listen", "127.0.0.1:0", "--nats", nats.url]);
    assert.equal(result.code, 3);
    assert.match(result.stderr, /agent-h1\.crt identifies agent h1, but this needs a controller certificate/);
  });
});
