// Leader election on a real nats-server: one leader at a time with a fencing
// epoch that grows on every change of leader, takeover after a crash within
// about one lease, at once after resign, a deposed leader that steps down,
// and a NATS restart that never yields two leaders.
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { connect, type KV, type NatsConnection } from "nats";
import { freePort, startNatsServer, type RunningNatsServer } from "../../cli/nats-server.js";
import {
  LeaderElection,
  LeaderElectionOptionsError,
  LeaderRecordError,
  NotLeaderError,
  decodeLeaderRecord,
  encodeLeaderRecord,
  remainingLeaseMs,
  type LeaderElectionOptions,
  type LeaderRecord,
  type LeadershipChange,
} from "../../controller/leader-election.js";
import { waitFor } from "../support/wait.js";
import { EpochGuard } from "../../proto/index.js";

const leaseMs = 500;
const renewDeadlineMs = Math.floor((leaseMs * 2) / 3);
const key = "leader";

/** A candidate with its own NATS connection, as a separate controller would have. */
interface Candidate {
  readonly id: string;
  readonly address: string;
  readonly election: LeaderElection;
  /** Every change it reported, with the wall time it arrived. */
  readonly seen: (LeadershipChange & { atUnixMs: number })[];
  readonly logs: string[];
}

const cleanups: (() => Promise<unknown>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

async function connectTo(url: string, name: string): Promise<NatsConnection> {
  // Reconnect for ever, quickly: the restart test takes the server away on purpose.
  const nc = await connect({ servers: url, name, maxReconnectAttempts: -1, reconnectTimeWait: 50, timeout: 2_000 });
  cleanups.push(() => nc.close());
  return nc;
}

async function candidate(url: string, id: string, bucket: string, extra: Partial<LeaderElectionOptions> = {}): Promise<Candidate> {
  const nc = await connectTo(url, id);
  const logs: string[] = [];
  const address = `${id}.test:7000`;
  const election = await LeaderElection.start({ js: nc.jetstream(), bucket, id, address, leaseMs, log: (line) => logs.push(`${new Date().toISOString()} ${line}`), ...extra });
  cleanups.push(() => election.stop());
  const seen: Candidate["seen"] = [];
  void (async () => {
    for await (const change of election.changes()) seen.push({ ...change, atUnixMs: Date.now() });
  })();
  return { id, address, election, seen, logs };
}

async function bucketOf(url: string, bucket: string): Promise<KV> {
  const nc = await connectTo(url, "test");
  return nc.jetstream().views.kv(bucket, { history: 1 });
}

async function stored(kv: KV): Promise<LeaderRecord> {
  const entry = await kv.get(key);
  assert.ok(entry && entry.operation === "PUT", "the lease key holds a value");
  return decodeLeaderRecord(entry.value);
}

const leaders = (all: Candidate[]) => all.filter((c) => c.election.isLeader());

/** Samples `check` every few ms for `durationMs`; fails naming the condition at the first sample it does not hold. */
async function holdsFor(name: string, durationMs: number, check: () => string | undefined, everyMs = 5): Promise<number> {
  const end = Date.now() + durationMs;
  let samples = 0;
  while (Date.now() < end) {
    const problem = check();
    samples++;
    if (problem) throw new Error(`${name}: broken at sample ${samples}: ${problem}`);
    await delay(everyMs);
  }
  return samples;
}

/** Samples in the background, every 2 ms, that no two candidates lead at once. */
function monitorAtMostOneLeader(all: Candidate[]) {
  const overlaps: string[] = [];
  let samples = 0;
  const timer = setInterval(() => {
    samples++;
    const now = leaders(all);
    if (now.length > 1) overlaps.push(`${new Date().toISOString()}: ${now.map((c) => `${c.id}@${c.election.epoch()}`).join(" and ")}`);
  }, 2);
  cleanups.push(async () => clearInterval(timer));
  return {
    stop() {
      clearInterval(timer);
      return { samples, overlaps };
    },
  };
}

const logsOf = (all: Candidate[]) => all.flatMap((c) => c.logs).sort().join("\n");

describe("leader election - pure rules", () => {
  test("leader record - round-trips, epoch as a uint64 string", () => {
    const record: LeaderRecord = { id: "c1", epoch: 18446744073709551615n, renewedUnixMs: 1_700_000_000_123, leaseMs: 500, address: "10.0.0.1:7000" };
    const bytes = encodeLeaderRecord(record);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(bytes)), { id: "c1", epoch: "18446744073709551615", renewedUnixMs: 1_700_000_000_123, leaseMs: 500, address: "10.0.0.1:7000" });
    assert.deepEqual(decodeLeaderRecord(bytes), record);
  });

  test("leader record - refuses malformed values", () => {
    const bad = ["not json", "null", "{}", '{"id":"","epoch":"1","renewedUnixMs":1,"leaseMs":1,"address":""}', '{"id":"a","epoch":1,"renewedUnixMs":1,"leaseMs":1,"address":""}', '{"id":"a","epoch":"-1","renewedUnixMs":1,"leaseMs":1,"address":""}', '{"id":"a","epoch":"1","renewedUnixMs":-5,"leaseMs":1,"address":""}'];
    for (const text of bad) assert.throws(() => decodeLeaderRecord(new TextEncoder().encode(text)), LeaderRecordError, text);
  });

  test("expiry rule - both the wall clock and the monotonic rule must agree", () => {
    const rules = { clockMarginMs: 100, defaultLeaseMs: 500 };
    const record: LeaderRecord = { id: "a", epoch: 1n, renewedUnixMs: 10_000, leaseMs: 500, address: "" };
    const rows: { name: string; view: Parameters<typeof remainingLeaseMs>[0]; monoMs: number; unixMs: number; remaining: number }[] = [
      { name: "fresh lease", view: { record, firstSeenMonoMs: 0 }, monoMs: 0, unixMs: 10_000, remaining: 600 },
      { name: "wall clock expired, seen only just now (our clock is ahead)", view: { record, firstSeenMonoMs: 1_000 }, monoMs: 1_000, unixMs: 20_000, remaining: 500 },
      { name: "stood a lease but wall clock not past lease + margin (our clock is behind)", view: { record, firstSeenMonoMs: 0 }, monoMs: 500, unixMs: 10_550, remaining: 50 },
      { name: "both rules past", view: { record, firstSeenMonoMs: 0 }, monoMs: 700, unixMs: 10_700, remaining: -100 },
      { name: "released lease: free at once", view: { record: { ...record, leaseMs: 0, renewedUnixMs: 0 }, firstSeenMonoMs: 0 }, monoMs: 0, unixMs: 0, remaining: 0 },
      { name: "absent key: free at once", view: { firstSeenMonoMs: 0 }, monoMs: 0, unixMs: 0, remaining: 0 },
      { name: "malformed value: one default lease after first seen", view: { malformed: true, firstSeenMonoMs: 100 }, monoMs: 200, unixMs: 0, remaining: 400 },
    ];
    for (const row of rows) assert.equal(remainingLeaseMs(row.view, { monoMs: row.monoMs, unixMs: row.unixMs }, rules), row.remaining, row.name);
  });

  test("options - a renew deadline that is not below the lease is refused before touching NATS", async () => {
    const base = { kv: {} as KV, id: "a", address: "a:1", leaseMs: 500 };
    await assert.rejects(LeaderElection.start({ ...base, renewDeadlineMs: 500 }), (err: unknown) => err instanceof LeaderElectionOptionsError && err.field === "renewDeadlineMs");
    await assert.rejects(LeaderElection.start({ ...base, renewDeadlineMs: 100 }), (err: unknown) => err instanceof LeaderElectionOptionsError && err.field === "renewDeadlineMs");
    await assert.rejects(LeaderElection.start({ ...base, leaseMs: 0 }), (err: unknown) => err instanceof LeaderElectionOptionsError && err.field === "leaseMs");
    await assert.rejects(LeaderElection.start({ ...base, id: "" }), (err: unknown) => err instanceof LeaderElectionOptionsError && err.field === "id");
    await assert.rejects(LeaderElection.start({ id: "a", address: "a:1", leaseMs: 500 }), LeaderElectionOptionsError);
  });
});

describe("leader election - on a real nats-server", () => {
  let server: RunningNatsServer;
  let dataDir: string;

  before(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-leader-"));
    server = await startNatsServer({ dataDir });
  });

  after(async () => {
    await server?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  test("a lone candidate leads with epoch 1 and keeps it while it renews", async () => {
    const kv = await bucketOf(server.url, "lone");
    const a = await candidate(server.url, "a", "lone");
    const led = await waitFor("a leads", () => a.seen.find((c) => c.leader), 5_000);
    assert.deepEqual({ ...led, atUnixMs: 0 }, { leader: true, epoch: 1n, leaderId: "a", leaderAddress: "a.test:7000", atUnixMs: 0 });
    assert.equal(a.election.epoch(), 1n);
    assert.equal(a.election.requireLeader(), 1n);
    assert.deepEqual(a.election.leader(), { id: "a", address: "a.test:7000", epoch: 1n });
    const first = await stored(kv);
    assert.deepEqual({ ...first, renewedUnixMs: 0 }, { id: "a", epoch: 1n, renewedUnixMs: 0, leaseMs, address: "a.test:7000" });
    // Three renewals later: same epoch, newer renewal time, and no change reported.
    await waitFor("the stored renewal time advances by more than a lease", async () => (await stored(kv)).renewedUnixMs > first.renewedUnixMs + leaseMs, 5_000);
    assert.equal((await stored(kv)).epoch, 1n);
    assert.equal(a.election.epoch(), 1n);
    assert.deepEqual(a.seen.map((c) => c.leader), [false, true]);
  });

  test("two candidates: exactly one leads at every sample, and the follower knows who", async () => {
    const all = await Promise.all([candidate(server.url, "a", "pair"), candidate(server.url, "b", "pair")]);
    await waitFor("one of the two leads", () => leaders(all).length > 0, 5_000);
    const samples = await holdsFor("exactly one of two candidates leads", 3 * leaseMs, () => {
      const now = leaders(all);
      return now.length === 1 ? undefined : `${now.length} leaders`;
    });
    assert.ok(samples > 50, `only ${samples} samples`);
    const [leader] = leaders(all);
    const follower = all.find((c) => c !== leader)!;
    assert.equal(leader!.election.epoch(), 1n);
    assert.equal(follower.election.epoch(), undefined);
    assert.deepEqual(follower.election.leader(), { id: leader!.id, address: leader!.address, epoch: 1n });
    assert.throws(() => follower.election.requireLeader(), (err: unknown) => err instanceof NotLeaderError && err.leader?.id === leader!.id && err.leader.address === leader!.address);
    const last = follower.seen.at(-1)!;
    assert.deepEqual({ leader: last.leader, epoch: last.epoch, leaderId: last.leaderId, leaderAddress: last.leaderAddress }, { leader: false, epoch: 1n, leaderId: leader!.id, leaderAddress: leader!.address });
    assert.equal(leader!.seen.filter((c) => c.leader).length, 1, "the leader never flapped");
    assert.equal(follower.seen.filter((c) => c.leader).length, 0);
  });

  test("a leader that stops renewing (crash) is replaced within about one lease with epoch + 1, never early", async (t) => {
    const kv = await bucketOf(server.url, "crash");
    const all = await Promise.all([candidate(server.url, "a", "crash"), candidate(server.url, "b", "crash")]);
    const monitor = monitorAtMostOneLeader(all);
    const old = await waitFor("one of the two leads", () => leaders(all)[0], 5_000);
    const heir = all.find((c) => c !== old)!;
    await waitFor("the follower has seen the leader", () => heir.election.leader()?.id === old.id, 5_000);
    await old.election.stop();
    const stoppedAt = Date.now();
    const lastRenewal = await stored(kv);
    assert.equal(lastRenewal.id, old.id);

    const takeover = await waitFor("the follower takes over", () => heir.seen.find((c) => c.leader), 4 * leaseMs);
    assert.equal(takeover.epoch, 2n);
    assert.equal(heir.election.epoch(), 2n);
    // Not before the old lease ran out by its own renewal time, and within about one lease of the stop.
    assert.ok(takeover.atUnixMs - lastRenewal.renewedUnixMs >= leaseMs, `took over ${takeover.atUnixMs - lastRenewal.renewedUnixMs} ms after the last renewal`);
    const takeoverMs = takeover.atUnixMs - stoppedAt;
    assert.ok(takeoverMs <= 2 * leaseMs, `took over ${takeoverMs} ms after the stop`);
    t.diagnostic(`crash: taken over ${takeoverMs} ms after the stop, ${takeover.atUnixMs - lastRenewal.renewedUnixMs} ms after the last renewal`);
    assert.deepEqual({ ...(await stored(kv)), renewedUnixMs: 0 }, { id: heir.id, epoch: 2n, renewedUnixMs: 0, leaseMs, address: heir.address });
    assert.equal(old.seen.at(-1)?.stepDown?.reason, "stopped");
    const { samples, overlaps } = monitor.stop();
    assert.deepEqual(overlaps, []);
    assert.ok(samples > 50, `only ${samples} samples`);
  });

  test("resign hands the lease over at once: the follower leads with epoch + 1 well within a lease", async (t) => {
    const kv = await bucketOf(server.url, "resign");
    const all = await Promise.all([candidate(server.url, "a", "resign"), candidate(server.url, "b", "resign")]);
    const monitor = monitorAtMostOneLeader(all);
    const old = await waitFor("one of the two leads", () => leaders(all)[0], 5_000);
    const heir = all.find((c) => c !== old)!;
    await waitFor("the follower has seen the leader", () => heir.election.leader()?.id === old.id, 5_000);
    const resignedAt = Date.now();
    await old.election.resign();
    assert.equal(old.election.isLeader(), false);
    const down = old.seen.find((c) => c.stepDown);
    assert.equal(down?.stepDown?.reason, "resigned");

    const takeover = await waitFor("the follower takes over", () => heir.seen.find((c) => c.leader), 2 * leaseMs);
    assert.equal(takeover.epoch, 2n);
    const handoverMs = takeover.atUnixMs - resignedAt;
    assert.ok(handoverMs < leaseMs / 2, `handed over in ${handoverMs} ms`);
    t.diagnostic(`resign: handed over ${handoverMs} ms after resign() was called`);
    assert.ok(down!.atUnixMs <= takeover.atUnixMs, "the old leader stepped down before the new one led");
    assert.equal((await stored(kv)).id, heir.id);
    assert.deepEqual(monitor.stop().overlaps, []);
  });

  for (const watch of [false, true]) {
    test(`a deposed leader (${watch ? "watching the key" : "polling only: its renewal loses the CAS"}) steps down within its renew deadline, and agents refuse its epoch`, async (t) => {
      const bucket = `stale-${watch}`;
      const kv = await bucketOf(server.url, bucket);
      const a = await candidate(server.url, "a", bucket, { watch });
      await waitFor("a leads", () => a.election.isLeader(), 5_000);
      const guard = new EpochGuard();
      assert.equal(guard.accept(a.election.requireLeader()), true);

      // Another controller takes the key by compare-and-set, as one misled about a's lease would.
      let usurpedAt = 0;
      for (let attempt = 1; ; attempt++) {
        const entry = (await kv.get(key))!;
        const current = decodeLeaderRecord(entry.value);
        try {
          await kv.update(key, encodeLeaderRecord({ id: "usurper", epoch: current.epoch + 1n, renewedUnixMs: Date.now(), leaseMs, address: "usurper.test:7000" }), entry.revision);
          usurpedAt = Date.now();
          break;
        } catch (err) {
          // a renewed in between: read again, a few times at most.
          if (attempt >= 5) throw err;
        }
      }

      const down = await waitFor("a steps down", () => a.seen.find((c) => c.stepDown), leaseMs);
      assert.equal(down.stepDown!.reason, "superseded");
      if (!watch) assert.match(down.stepDown!.detail, /renewal lost the compare-and-set/);
      const stepDownMs = down.atUnixMs - usurpedAt;
      assert.ok(stepDownMs < renewDeadlineMs, `stepped down ${stepDownMs} ms after losing the key`);
      t.diagnostic(`deposed (watch ${watch}): stepped down ${stepDownMs} ms after the key was taken`);
      assert.equal(a.election.isLeader(), false);
      assert.equal(a.election.epoch(), undefined);
      await waitFor("a sees the usurper lead", () => a.election.leader()?.id === "usurper", leaseMs);
      assert.throws(() => a.election.requireLeader(), (err: unknown) => err instanceof NotLeaderError && err.leader?.epoch === 2n && err.leader.address === "usurper.test:7000");

      // Agents: the usurper's commands pass, a's old epoch no longer does.
      assert.equal(guard.accept(2n), true);
      assert.equal(guard.accept(1n), false);

      // The usurper never renews: a takes over again, with a new epoch, never the old one.
      const again = await waitFor("a leads again once the usurper's lease runs out", () => a.seen.find((c) => c.leader && c.atUnixMs > down.atUnixMs), 4 * leaseMs);
      assert.equal(again.epoch, 3n);
      assert.equal(a.seen.filter((c) => c.leader && c.epoch === 1n).length, 1);
      assert.equal(guard.accept(again.epoch!), true);
    });
  }

  test("a follower whose clock runs 10 s ahead does not take a live lease, and takes a dead one within about a lease", async (t) => {
    const all = [await candidate(server.url, "a", "skew")];
    const [a] = all;
    await waitFor("a leads", () => a!.election.isLeader(), 5_000);
    const fast = await candidate(server.url, "fast", "skew", { wallClock: () => Date.now() + 10_000 });
    all.push(fast);
    await waitFor("the fast follower has seen a", () => fast.election.leader()?.id === "a", 5_000);
    await holdsFor("a keeps the lease against a follower with a fast clock", 3 * leaseMs, () => (fast.election.isLeader() ? "the fast follower leads" : a!.election.isLeader() ? undefined : "a lost the lease"));
    await a!.election.stop();
    const stoppedAt = Date.now();
    const takeover = await waitFor("the fast follower takes over", () => fast.seen.find((c) => c.leader), 4 * leaseMs);
    assert.equal(takeover.epoch, 2n);
    assert.ok(takeover.atUnixMs - stoppedAt <= 2 * leaseMs, `took over ${takeover.atUnixMs - stoppedAt} ms after the stop`);
    t.diagnostic(`skew: the fast follower took over ${takeover.atUnixMs - stoppedAt} ms after the stop`);
    await waitFor("the skew is reported", () => fast.logs.some((line) => /fast's clock is ~\d+ ms ahead of the NATS server's/.test(line)), 2 * leaseMs);
  });
});

describe("leader election - NATS restarted", () => {
  let server: RunningNatsServer | undefined;
  let dataDir: string;

  after(async () => {
    await server?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  test("at most one leader throughout; the leader steps down while NATS is gone; leadership comes back with epoch + 1", async (t) => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-leader-restart-"));
    const port = await freePort();
    server = await startNatsServer({ dataDir, port });
    const all = await Promise.all(["a", "b", "c"].map((id) => candidate(server!.url, id, "restart")));
    const monitor = monitorAtMostOneLeader(all);
    const old = await waitFor("one of three leads", () => leaders(all)[0], 5_000);
    const epochBefore = old.election.epoch()!;
    await holdsFor("exactly one of three leads", leaseMs, () => (leaders(all).length === 1 ? undefined : `${leaders(all).length} leaders`));

    await server.stop();
    const stoppedAt = Date.now();
    await waitFor("the leader steps down on its own while NATS is down", () => !old.election.isLeader(), 2 * leaseMs);
    const stepDownMs = Date.now() - stoppedAt;
    // Its last renewal was sent at most a third of a lease before the stop.
    assert.ok(stepDownMs <= renewDeadlineMs + 50, `stepped down ${stepDownMs} ms after NATS went away`);
    const down = await waitFor("the step-down is reported", () => old.seen.find((c) => c.stepDown), leaseMs);
    assert.equal(down.stepDown!.reason, "expired");
    assert.equal(leaders(all).length, 0);

    server = await startNatsServer({ dataDir, port });
    const restartedAt = Date.now();
    const back = await waitFor("a leader again after the restart", () => leaders(all)[0], 15_000);
    const recoveredMs = Date.now() - restartedAt;
    assert.equal(back.election.epoch(), epochBefore + 1n, logsOf(all));
    await holdsFor("exactly one of three leads after the restart", 2 * leaseMs, () => (leaders(all).length === 1 ? undefined : `${leaders(all).length} leaders`));
    const { samples, overlaps } = monitor.stop();
    assert.deepEqual(overlaps, [], logsOf(all));
    assert.ok(samples > 100, `only ${samples} samples`);
    t.diagnostic(`restart: step-down ${stepDownMs} ms after the stop; new leader ${back.id} ${recoveredMs} ms after the restart; ${samples} samples, no overlap`);
  });
});
