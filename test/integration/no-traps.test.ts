// What fleetwatch says about this host's debug traps, end to end: real
// nats-server, controller, agent and helper. Where the host delivers none (a
// hypervisor that does not virtualize the debug registers) every watch is
// refused naming the reason, `agents ls` says why, `up` warns, and the target
// is left untraced. Where it delivers them, `agents ls` shows the cost of a
// trap per backend. Which kind of host this is comes from FLEETWATCH_EXPECT_TRAPS,
// set by scripts/test.sh from an independent probe (test/fixtures/trap-probe.c).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { freePort } from "../../cli/nats-server.js";
import { Cluster, Daemon } from "../support/cluster.js";
import { cliPath } from "../support/paths.js";
import { buildFixtures, childPids, startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

// fleetwatch-helper as /proc/PID/comm holds it (15 bytes).
const helperComm = "fleetwatch-helper".slice(0, 15);

/** A process's command name, or "" once it is gone. */
function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return "";
  }
}

const expectTraps = process.env.FLEETWATCH_EXPECT_TRAPS;

interface TrapCheckJson {
  backend: string;
  delivery?: string;
  writes?: number;
  traps?: number;
  nsPerTrap?: number;
  detail?: string;
}

/** `agents ls -o json`: each host's trap checks. */
function trapChecksOf(stdout: string, hostId: string): TrapCheckJson[] {
  const listing = JSON.parse(stdout) as { agents: Array<{ info: { hostId: string; trapChecks?: TrapCheckJson[] } }> };
  const agent = listing.agents.find((a) => a.info.hostId === hostId);
  assert.ok(agent, `agents ls lists ${hostId}: ${stdout}`);
  return agent.info.trapChecks ?? [];
}

if (expectTraps !== "0" && expectTraps !== "1") {
  test("hosts without debug traps - needs to know what kind of host this is", () => {
    assert.fail(
      `FLEETWATCH_EXPECT_TRAPS is ${expectTraps === undefined ? "unset" : `'${expectTraps}'`}: run this file through scripts/test.sh, which sets it from an independent probe (test/fixtures/trap-probe.c), or set it to 1 (this host delivers debug-register traps) or 0 (it does not)`,
    );
  });
} else {
  describe(`hosts without debug traps (this host ${expectTraps === "1" ? "delivers them" : "delivers none"})`, () => {
    let cluster: Cluster;
    let target: Target | undefined;

    before(async () => {
      await buildFixtures();
      cluster = await Cluster.start({ hosts: ["host-a"] });
      target = await startTarget("demo-counter");
    });

    after(async () => {
      await target?.kill();
      await cluster?.stop();
    });

    if (expectTraps === "0") {
      test("every watch is refused naming host, backend and what the probe saw; the target stays untraced", async () => {
        const pid = String(target!.pid);
        for (const backend of ["perf", "ptrace"]) {
          const result = await cluster.cli(["watch", "--pid", pid, "--symbol", "demo_counter", "--backend", backend, "--duration", "10s"]);
          assert.equal(result.code, 2, `--backend ${backend}: ${result.stdout}${result.stderr}`);
          assert.match(result.stderr, new RegExp(`^fleetwatch: host host-a: ${backend} watch traps are not delivered: .*\\b0 of \\d+ probe writes trapped.*; no hit could be seen there`, "m"), `--backend ${backend}`);
        }
        // The automatic choice (perf) is refused too: ptrace does not trap here either, so no other backend is offered.
        const auto = await cluster.cli(["watch", "--pid", pid, "--symbol", "demo_counter", "--duration", "10s"]);
        assert.equal(auto.code, 2, auto.stderr);
        assert.match(auto.stderr, /^fleetwatch: host host-a: perf watch traps are not delivered: .*; no hit could be seen there\n$/m);
        assert.doesNotMatch(auto.stderr, /use --backend/);
        assert.equal(await target!.tracerPid(), 0, "the target was never traced");
        const { jobs } = await cluster.api().listJobs({});
        assert.deepEqual(jobs, [], "a refused job is not stored");
        assert.match(cluster.agents.get("host-a")!.output, /^agent host-a: ptrace watch traps are not delivered: DR0 armed, 0 of \d+ probe writes trapped.*; nothing is armed with ptrace here$/m);
      });

      test("agents ls says per backend that no traps are delivered, and why", async () => {
        const table = await cluster.cli(["agents", "ls"]);
        assert.equal(table.code, 0, table.stderr);
        assert.match(table.stdout, /^host-a\s.*\sptrace: NO TRAPS, perf: NO TRAPS\s/m);
        assert.match(table.stdout, /^host-a: no ptrace traps: DR0 armed, 0 of \d+ probe writes trapped.*; watches with ptrace are refused there$/m);
        const json = await cluster.cli(["agents", "ls", "-o", "json"]);
        assert.equal(json.code, 0, json.stderr);
        const checks = trapChecksOf(json.stdout, "host-a");
        assert.deepEqual(checks.map((c) => [c.backend, c.delivery, c.traps ?? 0]), [
          ["BACKEND_PTRACE", "TRAP_DELIVERY_NOT_DELIVERED", 0],
          ["BACKEND_PERF", "TRAP_DELIVERY_NOT_DELIVERED", 0],
        ]);
        for (const c of checks) {
          assert.ok((c.writes ?? 0) > 0, `${c.backend}: the probe wrote`);
          assert.match(c.detail ?? "", /\b0 of \d+ probe writes trapped/);
        }
      });
    } else {
      test("agents ls shows traps delivered on both backends, with the cost of one", async () => {
        const table = await cluster.cli(["agents", "ls"]);
        assert.equal(table.code, 0, table.stderr);
        assert.match(table.stdout, /^host-a\s.*\sptrace: [\d.]+ (ns|µs|ms)\/trap, perf: [\d.]+ (ns|µs|ms)\/trap\s/m);
        assert.doesNotMatch(table.stdout, /NO TRAPS|not tested|refused there/);
        const json = await cluster.cli(["agents", "ls", "-o", "json"]);
        assert.equal(json.code, 0, json.stderr);
        const checks = trapChecksOf(json.stdout, "host-a");
        assert.deepEqual(checks.map((c) => [c.backend, c.delivery]), [
          ["BACKEND_PTRACE", "TRAP_DELIVERY_DELIVERED"],
          ["BACKEND_PERF", "TRAP_DELIVERY_DELIVERED"],
        ]);
        for (const c of checks) {
          assert.ok((c.writes ?? 0) > 0 && c.traps === c.writes, `${c.backend}: every probe write trapped (${c.traps} of ${c.writes})`);
          assert.ok((c.nsPerTrap ?? 0) > 0, `${c.backend}: a cost was measured`);
        }
      });
    }

    test("a restarted helper tests again and the controller hears the new result", async () => {
      const agent = cluster.agents.get("host-a")!;
      const helpers = (await childPids(agent.child.pid!)).filter((pid) => commOf(pid) === helperComm);
      assert.equal(helpers.length, 1, "the agent runs one helper");
      // SIGTERM: the helper disarms and exits; the agent starts another, which runs the self-test again.
      process.kill(helpers[0]!, "SIGTERM");
      const delivery = expectTraps === "1" ? "delivered" : "not-delivered";
      await cluster.controller!.waitForOutput(new RegExp(`^agent host-a: new helper \\S+; backends ptrace,perf; traps ptrace ${delivery}, perf ${delivery}$`, "m"), 30_000);
      const json = await cluster.cli(["agents", "ls", "-o", "json"]);
      assert.equal(json.code, 0, json.stderr);
      const want = expectTraps === "1" ? "TRAP_DELIVERY_DELIVERED" : "TRAP_DELIVERY_NOT_DELIVERED";
      assert.deepEqual(trapChecksOf(json.stdout, "host-a").map((c) => c.delivery), [want, want]);
      await waitFor("the old helper is gone", () => commOf(helpers[0]!) !== helperComm);
    });

    test(`fleetwatch up ${expectTraps === "0" ? "warns before its ready line" : "starts without a warning"}`, async () => {
      const dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-no-traps-"));
      const listen = `127.0.0.1:${await freePort()}`;
      const up = new Daemon("up", spawn(process.execPath, [cliPath, "up", "--data-dir", path.join(dir, "data"), "--listen", listen, "--nats-port", String(await freePort())], { stdio: ["ignore", "pipe", "pipe"] }));
      try {
        await up.waitForOutput(/^fleetwatch up: .*$/m, 30_000);
        const warnings = up.output.split("\n").filter((line) => line.startsWith("warning:"));
        if (expectTraps === "0") {
          assert.equal(warnings.length, 1, up.output);
          assert.match(warnings[0]!, /^warning: this host delivers no debug-register traps \(ptrace: DR0 armed, 0 of \d+ probe writes trapped.*; perf: .*\): watches here are refused; see README "Hosts without debug traps"$/);
          assert.ok(up.output.indexOf(warnings[0]!) < up.output.search(/^fleetwatch up: /m), "the warning comes before the ready line");
        } else {
          assert.deepEqual(warnings, [], up.output);
        }
      } finally {
        assert.deepEqual(await up.stop("SIGTERM"), { code: 0, signal: null }, up.output);
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
}
