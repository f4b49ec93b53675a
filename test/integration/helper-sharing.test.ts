// The real fleetwatch-helper with several groups sharing one debug register
// (groups watching the identical chunk of one process): every owner gets
// every trap on its own terms, with exact counts, and the register stays
// armed until its last owner leaves.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import path from "node:path";
import { before, describe, test } from "node:test";
import { promisify } from "node:util";

import type { GroupCounts, HelperHit } from "../../agent/helper-process.js";
import { repoRoot } from "../support/paths.js";
import { buildFixtures } from "../support/targets.js";
import type { Target } from "../support/targets.js";
import { EVENT_TIMEOUT_MS, readyAddresses, rejectsWith, scene, write8 } from "../support/helper-scene.js";
import { oneRegisterPerAccess } from "../support/emulation.js";
import { scaled } from "../support/wait.js";

const execFileAsync = promisify(execFile);
const TEST_TIMEOUT_MS = scaled(120_000);
/** The helper's limit of groups per process (FW_MAX_GROUPS). */
const MAX_GROUPS = 16;

function counts(trapped: number, delivered: number, suppressed = 0, filtered = 0): GroupCounts {
  return { trapped: BigInt(trapped), delivered: BigInt(delivered), suppressed: BigInt(suppressed), filtered: BigInt(filtered), lost: 0n };
}

function addsUp(c: GroupCounts, what: string): void {
  assert.equal(c.trapped, c.delivered + c.suppressed + c.filtered, `${what}: trapped = delivered + suppressed + filtered`);
}

/** The fields one trap gives every group that gets it. */
function trapKey(h: HelperHit): string {
  return `${h.tid}/${h.timeNs}/${h.ip}/${h.oldValue}/${h.newValue}/${h.dr}`;
}

/** 1n..n: the values a hot-writer run, or one counter thread (low 32 bits), stores in order. */
function oneTo(n: number): bigint[] {
  return Array.from({ length: n }, (_, i) => BigInt(i + 1));
}

/** Tells a hot-writer to write for ms milliseconds; resolves with how many writes it made. */
async function hotRun(target: Target, tag: string, ms: number): Promise<number> {
  target.send(`run ${ms} ${tag}`);
  const line = await target.waitForLine(new RegExp(`^wrote ${tag} `), EVENT_TIMEOUT_MS);
  return Number(line.split(" ")[2]);
}

async function finishesNormally(target: Target): Promise<void> {
  await target.waitForLine(/^done$/, EVENT_TIMEOUT_MS);
  assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
}

describe("fleetwatch-helper, shared registers", { timeout: TEST_TIMEOUT_MS }, () => {
  before(async () => {
    await execFileAsync("make", ["-C", path.join(repoRoot, "agent/native")]);
    await buildFixtures();
  });

  test("sharing - two groups on dr0 with the identical chunk each get every one of 2 x 5000 hits", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const [N, T] = [5000, 2];
    const target = await s.target("counter", ["--threads", String(T), "--writes", String(N)]);
    const [counter] = readyAddresses(target) as [bigint];

    const first = await helper.arm(target.pid, 1n, [write8(counter, 0)]);
    const second = await helper.arm(target.pid, 2n, [write8(counter, 0)]);
    assert.deepEqual(first, { threadsTotal: 1, threadsArmed: 1, drMask: 0b1, reservedMask: 0b1 });
    assert.deepEqual(second, first, "the second owner takes no other register");
    target.send("go");
    await finishesNormally(target);
    const [d1, d2] = [await log.groupDone(1n), await log.groupDone(2n)];
    const exited = await log.targetExited(target.pid);

    for (const done of [d1, d2]) {
      assert.equal(done.reason, "exited");
      assert.deepEqual(done.counts, counts(N * T, N * T), `group ${done.group}`);
      assert.ok(log.events.indexOf(done) < log.events.indexOf(exited), "GROUP_DONE precedes TARGET_EXITED");
    }
    const [g1, g2] = [log.hitsOf(1n), log.hitsOf(2n)];
    assert.equal(g1.length, N * T);
    assert.equal(g2.length, N * T);
    assert.ok(g1.every((h) => h.dr === 0 && h.address === counter && h.pid === target.pid));
    // One trap, one record per owner: same thread, time, ip and values.
    assert.deepEqual(g2.map(trapKey), g1.map(trapKey));
    const perTid = new Map<number, number>();
    for (const h of g1) perTid.set(h.tid, (perTid.get(h.tid) ?? 0) + 1);
    assert.deepEqual([...perTid.values()], Array.from({ length: T }, () => N));
    // The old value is the slot's: it chains from trap to trap whatever group reads it.
    g1.forEach((h, i) => assert.equal(h.oldValue, i === 0 ? 0n : (g1[i - 1] as HelperHit).newValue, `hit ${i} old value`));
  });

  test(`sharing - ${MAX_GROUPS} groups share dr0 and each get all 1000 hits; one group more is EBUSY`, async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 1000;
    const target = await s.target("counter", ["--threads", "1", "--writes", String(N), "--other"]);
    const [counter, other] = readyAddresses(target) as [bigint, bigint];
    const groups = Array.from({ length: MAX_GROUPS }, (_, i) => BigInt(i + 1));
    for (const g of groups) assert.equal((await helper.arm(target.pid, g, [write8(counter, 0)])).drMask, 0b1);
    await rejectsWith(
      helper.arm(target.pid, 100n, [write8(other, 1)]),
      "EBUSY",
      new RegExp(`pid ${target.pid} already has ${MAX_GROUPS} groups, the most one process may have`),
    );
    target.send("go");
    await finishesNormally(target);
    await log.targetExited(target.pid);
    for (const g of groups) {
      assert.deepEqual((await log.groupDone(g)).counts, counts(N, N), `group ${g}`);
      assert.deepEqual(log.hitsOf(g).map((h) => h.newValue & 0xffff_ffffn), oneTo(N), `group ${g} values`);
    }
    assert.equal(log.hitsOf(100n).length, 0);
    assert.equal(log.of("group-done").length, MAX_GROUPS);
  });

  test("sharing - dr0 held with another chunk is EBUSY naming the holder and its chunk; nothing of the refused ARM stays", { skip: oneRegisterPerAccess }, async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 1000;
    const target = await s.target("counter", ["--threads", "1", "--writes", String(N), "--other"]);
    const [counter, other] = readyAddresses(target) as [bigint, bigint];
    const hex = (a: bigint): string => `0x${a.toString(16)}`;
    await helper.arm(target.pid, 1n, [write8(counter, 0)]);

    const holder = `dr0 of pid ${target.pid} is used by group 1 for write of 8 bytes at ${hex(counter)}`;
    await rejectsWith(helper.arm(target.pid, 2n, [write8(other, 0)]), "EBUSY", new RegExp(`${holder}; .*not write of 8 bytes at ${hex(other)}`));
    await rejectsWith(
      helper.arm(target.pid, 2n, [{ dr: 0, mode: "w", length: 4, address: counter }]),
      "EBUSY",
      new RegExp(`${holder}; .*not write of 4 bytes at ${hex(counter)}`),
    );
    await rejectsWith(
      helper.arm(target.pid, 2n, [{ dr: 0, mode: "rw", length: 8, address: counter }]),
      "EBUSY",
      new RegExp(`${holder}; .*not read/write of 8 bytes at ${hex(counter)}`),
    );
    // All or nothing: dr1 of a refused ARM is not taken, and group 2 does not exist.
    await rejectsWith(helper.arm(target.pid, 2n, [write8(other, 1), write8(other, 0)]), "EBUSY", new RegExp(holder));
    await rejectsWith(helper.disarm(target.pid, 2n), "ENOENT", /no group 2/);
    assert.equal((await helper.arm(target.pid, 3n, [write8(counter, 1)])).drMask, 0b10, "dr1 is free for another chunk");
    assert.equal(await target.tracerPid(), helper.pid);

    target.send("go");
    await finishesNormally(target);
    const [d1, d3] = [await log.groupDone(1n), await log.groupDone(3n)];
    await log.targetExited(target.pid);
    assert.deepEqual(d1.counts, counts(N, N));
    assert.deepEqual(d3.counts, counts(N, N));
    assert.deepEqual(log.hitsOf(1n).map((h) => h.newValue & 0xffff_ffffn), oneTo(N));
    assert.ok(log.hitsOf(1n).every((h) => h.dr === 0 && h.address === counter));
    assert.ok(log.hitsOf(3n).every((h) => h.dr === 1 && h.address === counter));
    assert.equal(log.hitsOf(2n).length, 0);
    assert.deepEqual(log.of("group-done").map((e) => e.group).sort(), [1n, 3n]);
  });

  test("sharing - owners keep their own budget and condition; disarming one mid-stream leaves the other delivering every hit; the last disarm detaches", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("hot-writer");
    const [counter] = readyAddresses(target) as [bigint];
    const BUDGET = 100;
    const K = 7n;
    await helper.arm(target.pid, 1n, [write8(counter)]);
    await helper.arm(target.pid, 2n, [write8(counter)], { maxHits: BigInt(BUDGET) });
    await helper.arm(target.pid, 3n, [write8(counter)], { conditions: [{ op: "==", value: K }] });

    // Run a: every write traps once; each group takes it its own way.
    const a = await hotRun(target, "a", 1);
    await log.hitCount(1n, a);
    const budget = await log.groupDone(2n);
    assert.equal(budget.reason, "budget");
    assert.deepEqual(budget.counts, counts(BUDGET, BUDGET), "one writing thread is held at the budget");
    assert.deepEqual(log.hitsOf(1n).map((h) => h.newValue), oneTo(a));
    assert.deepEqual(log.hitsOf(2n).map((h) => h.newValue), oneTo(BUDGET));
    assert.deepEqual(log.hitsOf(3n).map((h) => [h.oldValue, h.newValue]), [[K - 1n, K]]);
    assert.equal(await target.tracerPid(), helper.pid, "the budget's retirement left the register to the others");

    // Run b: group 3 leaves while the target writes; group 1 loses nothing.
    target.send("run 300 b");
    await log.until("hits of run b", () => log.hitsOf(1n).length > a);
    const left = await helper.disarm(target.pid, 3n);
    addsUp(left, "group 3");
    assert.equal(left.delivered, BigInt(log.hitsOf(3n).length));
    assert.ok(left.delivered === 1n || left.delivered === 2n, `group 3 delivered ${left.delivered}`);
    const b = Number((await target.waitForLine(/^wrote b /, EVENT_TIMEOUT_MS)).split(" ")[2]);
    await log.hitCount(1n, a + b);
    assert.deepEqual(log.hitsOf(1n).map((h) => h.newValue), [...oneTo(a), ...oneTo(b)]);
    // Group 3 got every trap until it left: all of run a, part of run b.
    assert.ok(left.trapped > BigInt(a) && left.trapped <= BigInt(a + b), `group 3 trapped ${left.trapped} of ${a} + ${b}`);

    // The last group: registers cleared, detached; the target writes on unharmed.
    const last = await helper.disarm(target.pid, 1n);
    assert.deepEqual(last, { ...counts(a + b, a + b), reservedMask: 0b1 });
    assert.equal(await target.tracerPid(), 0);
    assert.ok((await hotRun(target, "c", 1)) > 0);
    assert.equal(log.hitsOf(1n).length, a + b, "no hit after the last disarm");
    target.send("quit");
    await finishesNormally(target);
    assert.deepEqual(log.of("group-done").map((e) => e.group), [2n], "disarmed groups get no GROUP_DONE");
    assert.equal(log.of("target-exited").length, 0, "a detached target's exit is not ours to report");
  });

  test("sharing - one owner's rate-limit back-off does not clear the register: the other still gets every hit", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("hot-writer");
    const [counter] = readyAddresses(target) as [bigint];
    const RATE = 100;
    await helper.arm(target.pid, 1n, [write8(counter)]);
    await helper.arm(target.pid, 2n, [write8(counter)], { maxHitsPerSecond: RATE });

    const a = await hotRun(target, "a", 1);
    assert.ok(a > RATE, `run a wrote ${a} times, more than the rate`);
    await log.until("group 2 backs off", () => log.of("group-backoff").find((e) => e.group === 2n));
    await log.hitCount(1n, a);
    await log.until("group 2 resumes", () => log.of("group-resumed").find((e) => e.group === 2n));
    const b = await hotRun(target, "b", 1);
    await log.hitCount(1n, a + b);
    assert.deepEqual(log.hitsOf(1n).map((h) => h.newValue), [...oneTo(a), ...oneTo(b)]);

    const limited = await helper.disarm(target.pid, 2n);
    // Every trap on the shared register reached group 2 too.
    assert.deepEqual(limited.trapped, BigInt(a + b));
    addsUp(limited, "group 2");
    assert.equal(limited.filtered, 0n);
    assert.ok(limited.suppressed > 0n, "group 2 suppressed what came above its rate");
    const g2 = log.hitsOf(2n);
    assert.equal(BigInt(g2.length), limited.delivered);
    const g1Traps = new Set(log.hitsOf(1n).map(trapKey));
    assert.ok(g2.every((h) => g1Traps.has(trapKey(h))), "each of group 2's hits is a trap group 1 got too");
    for (const e of log.of("group-backoff")) assert.deepEqual([e.pid, e.group], [target.pid, 2n]);
    for (const e of log.of("group-resumed")) assert.deepEqual([e.pid, e.group], [target.pid, 2n]);

    const unlimited = await helper.disarm(target.pid, 1n);
    assert.deepEqual(unlimited, { ...counts(a + b, a + b), reservedMask: 0b1 });
    assert.equal(await target.tracerPid(), 0);
    target.send("quit");
    await finishesNormally(target);
  });
});
