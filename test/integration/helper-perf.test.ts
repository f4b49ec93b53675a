// The real fleetwatch-helper on its perf-event backend against real target
// programs: the exact-count, thread-churn, fork/exec/exit and bad-input
// cases of the ptrace backend, counting-only groups, and the property the
// backend exists for: the helper may die by SIGKILL at any moment and the
// watched process runs on to a normal exit.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readdir } from "node:fs/promises";
import { promisify } from "node:util";
import { before, describe, test, type TestContext } from "node:test";

import { HelperProcess } from "../../agent/helper-process.js";
import type { GroupCounts, HelperEvent, HelperOptions, WatchOptions } from "../../agent/helper-process.js";
import { buildFixtures, fixturePath, readWord } from "../support/targets.js";
import type { Target } from "../support/targets.js";
import { scaled, waitFor } from "../support/wait.js";
import { EVENT_TIMEOUT_MS, EventLog, readyAddresses, rejectsWith, scene, write8 } from "../support/helper-scene.js";
import { drainFallsBehind, oneRegisterPerAccess } from "../support/emulation.js";

const execFileAsync = promisify(execFile);
const TEST_TIMEOUT_MS = scaled(120_000);
const PERF: WatchOptions = { backend: "perf" };

async function finishesNormally(target: Target): Promise<void> {
  await target.waitForLine(/^done/, EVENT_TIMEOUT_MS);
  assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
}

/** Hits per tid of a group. */
function perThread(log: EventLog, group: bigint): Map<number, number> {
  const m = new Map<number, number>();
  for (const h of log.hitsOf(group)) m.set(h.tid, (m.get(h.tid) ?? 0) + 1);
  return m;
}

/** Every counts event of a group, summed per tid. */
/** Threads found covered twice (their own events and inherited ones), from the helper's debug log. */
function coveredTwice(log: EventLog): number {
  return log.of("log").filter((e) => e.message.includes("also inherited the events it was given")).length;
}

function countedPerThread(events: HelperEvent[], group: bigint): Map<number, bigint> {
  const m = new Map<number, bigint>();
  for (const e of events) {
    if (e.kind !== "counts" || e.group !== group) continue;
    for (const t of e.threads) m.set(t.tid, (m.get(t.tid) ?? 0n) + t.hits);
  }
  return m;
}

/** The target's exit as the helper saw it: exited 0 (from the kernel's process events: its parent, this test, reaps it at once). */
function exitedNormally(e: { how: string; code: number }): void {
  assert.deepEqual([e.how, e.code], ["exited", 0], "target-exited");
}

describe("helper, perf backend", { timeout: TEST_TIMEOUT_MS }, () => {
  before(async () => {
    await buildFixtures();
  });

  test("hello - the host offers the perf backend and says how values are read", async (t) => {
    const s = scene(t);
    const { helper } = await s.helper();
    const caps = helper.capabilities;
    assert.deepEqual(caps.backends, ["ptrace", "perf"]);
    // These machines load BPF: values are read in the kernel at the trap.
    // Elsewhere the helper must say why they are not.
    if (caps.perfValues === "exact") assert.equal(caps.perfNote, "");
    else assert.match(caps.perfNote, /read from the target when a sample is drained, not at the trap \(BPF: .+\)/);
    t.diagnostic(`perf values: ${caps.perfValues} ${caps.perfNote}`);
  });

  test("arm - 10000 writes by 1 thread give exactly 10000 hits; the target is never traced", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 10_000;
    const target = await s.target("counter", ["--threads", "1", "--writes", String(N)]);
    const [counter] = readyAddresses(target) as [bigint];
    const armed = await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    assert.deepEqual(armed, { threadsTotal: 1, threadsArmed: 1, drMask: 1, reservedMask: 0 });
    assert.equal(await target.tracerPid(), 0, "no ptrace attach");
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    exitedNormally(await log.targetExited(target.pid));
    assert.deepEqual(done.counts, { trapped: BigInt(N), delivered: BigInt(N), suppressed: 0n, filtered: 0n, lost: 0n });
    assert.equal(done.reason, "exited");
    assert.equal(log.hits.length, N);
    const tids = [...perThread(log, 1n).keys()];
    assert.equal(tids.length, 1);
    assert.notEqual(tids[0], target.pid, "the worker thread wrote, not main");
    const exact = helper.capabilities.perfValues === "exact";
    let previous = 0n;
    log.hits.forEach((h, i) => {
      assert.deepEqual([h.group, h.pid, h.address, h.dr, h.length, h.mode, h.valueExact], [1n, target.pid, counter, 0, 8, "w", exact]);
      assert.ok(h.ip > 0n);
      if (exact) {
        // Read in the kernel at the trap: every value written, in order.
        assert.equal(h.newValue, (1n << 32n) | BigInt(i + 1), `hit ${i}`);
        assert.equal(h.oldValue, previous, `hit ${i} old value`);
        previous = h.newValue;
      } else {
        // Read after the trap: a value the thread wrote at or after this
        // hit's write, or the value before the first write.
        assert.ok(h.newValue === 0n || h.newValue >> 32n === 1n, `value ${h.newValue}`);
      }
    });
    const times = log.hits.map((h) => h.timeNs);
    assert.ok(times.every((v, i) => i === 0 || v >= (times[i - 1] as bigint)), "hits in trap order");
  });

  /**
   * T threads write N times each; the helper is stopped until one of them
   * wrote 40,000 times, so the buffers overflow (perf never waits for the
   * helper: the kernel drops what a full buffer cannot take), then resumes
   * while they write on, which brings the kernel's LOST records.
   */
  async function overflowWhileStopped(t: TestContext, threads: number, options: HelperOptions = {}): Promise<GroupCounts> {
    const s = scene(t);
    const { helper, log } = await s.helper(options);
    const N = 100_000;
    // Half a million traps and more: enough for a VM that loses a trap's
    // status now and then to do it here (README, "Safety"). The kernel then
    // counts no trap and signals the writer, which survives to say so.
    const target = await s.target("counter", ["--threads", String(threads), "--writes", String(N), "--survive-causeless"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    process.kill(helper.pid, "SIGSTOP");
    try {
      target.send("go");
      await waitFor("a thread wrote 40,000 times", async () => ((await readWord(target.rootPid, counter)) & 0xffffffffn) >= 40_000n, EVENT_TIMEOUT_MS);
    } finally {
      process.kill(helper.pid, "SIGCONT");
    }
    await finishesNormally(target);
    const { counts } = await log.groupDone(1n);
    const causeless = BigInt((await target.waitForLine(/^causeless \d+$/, EVENT_TIMEOUT_MS)).split(" ")[1] as string);
    if (causeless > 0n) t.diagnostic(`the platform lost ${causeless} trap(s): debug exceptions with no cause, which the kernel does not count`);
    const writes = BigInt(threads * N) - causeless;
    const shown = JSON.stringify(counts, (_, v) => (typeof v === "bigint" ? Number(v) : v));
    assert.equal(counts.trapped, writes, `trapped is what the kernel counted: ${shown}`);
    assert.equal(counts.delivered + counts.suppressed + counts.filtered + counts.lost, counts.trapped);
    assert.equal(BigInt(log.hitsOf(1n).length), counts.delivered);
    t.diagnostic(`${threads} thread(s)${options.perfBufferKiB ? `, ${options.perfBufferKiB} KiB buffers` : ""}: ${counts.delivered} delivered, ${counts.lost} lost of ${writes}`);
    return counts;
  }

  for (const threads of [1, 4]) {
    test(`accounting - ${threads} thread(s) overflow the buffers while the helper is stopped, then write on: trapped is exactly the writes, the rest lost`, async (t) => {
      const counts = await overflowWhileStopped(t, threads);
      assert.ok(counts.lost > 0n, "the buffers overflowed while the helper was stopped");
    });
  }

  test("accounting - buffers of 16 MiB (--perf-buffer-kib) hold what the default 2 MiB lose while the helper is stopped", async (t) => {
    const small = await overflowWhileStopped(t, 1);
    const large = await overflowWhileStopped(t, 1, { perfBufferKiB: 16_384 });
    assert.ok(large.lost < small.lost, `lost ${large.lost} with 16 MiB, ${small.lost} with the default`);
    if (!drainFallsBehind) assert.equal(large.lost, 0n, "16 MiB hold 40,000 samples and more");
  });

  test("order - a writer moved between CPUs while it traps: hits come in trap order across the CPUs' buffers", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("hot-writer");
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("run 3000 moved");
    // Every 1,000 hits the writer is pinned to the other CPU.
    const cpus = (await execFileAsync("nproc")).stdout.trim() === "1" ? 1 : 2;
    for (let move = 1; move <= 20; move++) {
      await log.until(`${move * 1000} hits`, () => log.hits.length >= move * 1000);
      await execFileAsync("taskset", ["-pc", String(move % cpus), String(target.pid)]);
    }
    await target.waitForLine(/^wrote moved /, EVENT_TIMEOUT_MS);
    const counts = await helper.disarm(target.pid, 1n);
    await log.until("every delivered hit", () => BigInt(log.hits.length) === counts.delivered);
    assert.equal(counts.delivered + counts.lost, counts.trapped, "every trap delivered or counted as lost");
    if (drainFallsBehind) {
      if (counts.lost > 0n) t.diagnostic(`${counts.lost} of ${counts.trapped} counted as lost: ${drainFallsBehind}`);
    } else {
      assert.equal(counts.lost, 0n);
    }
    const times = log.hits.map((h) => h.timeNs);
    assert.ok(times.every((v, i) => i === 0 || v >= (times[i - 1] as bigint)), "hits in trap order");
    if (helper.capabilities.perfValues === "exact") {
      // hot-writer increments: each hit's value is its predecessor's plus
      // one, or more where samples were lost, and never less.
      log.hits.forEach((h, i) => {
        if (i === 0) return;
        const before = (log.hits[i - 1] as typeof h).newValue;
        if (counts.lost === 0n) assert.equal(h.newValue, before + 1n, `hit ${i}`);
        else assert.ok(h.newValue > before, `hit ${i}: ${h.newValue} after ${before}`);
      });
    }
    target.send("quit");
    await finishesNormally(target);
  });

  test("arm - 4 threads x 10000 writes give exactly 10000 hits per thread", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 10_000;
    const target = await s.target("counter", ["--threads", "4", "--writes", String(N)]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.deepEqual(done.counts, { trapped: BigInt(4 * N), delivered: BigInt(4 * N), suppressed: 0n, filtered: 0n, lost: 0n });
    const per = perThread(log, 1n);
    assert.equal(per.size, 4);
    for (const [tid, n] of per) assert.equal(n, N, `tid ${tid}`);
  });

  test("threads - threads created while armed are all watched (200 rounds x 4 threads x 50 writes)", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const [R, T, W] = [200, 4, 50];
    const target = await s.target("thread-churn", [String(R), String(T), String(W)]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.deepEqual(done.counts, { trapped: BigInt(R * T * W), delivered: BigInt(R * T * W), suppressed: 0n, filtered: 0n, lost: 0n });
    const per = perThread(log, 1n);
    assert.equal(per.size, R * T, "every thread");
    for (const [tid, n] of per) assert.equal(n, W, `tid ${tid}`);
    t.diagnostic(`${coveredTwice(log)} thread(s) covered twice`);
  });

  test("threads - armed in the middle of thread churn: no thread is counted twice, those started after are complete", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const [R, T, W] = [1_000_000, 4, 2000];
    const target = await s.target("thread-churn", [String(R), String(T), String(W)]);
    const [counter] = readyAddresses(target) as [bigint];
    target.send("go");
    // Threads come and go while the helper scans /proc/PID/task and opens
    // events. Counting keeps the hits in the helper: four threads trapping
    // as fast as they can on two CPUs outrun any consumer of every hit.
    await waitFor("the churn is under way", async () => (await readdir(`/proc/${target.pid}/task`)).length > 1, 10_000);
    await helper.arm(target.pid, 1n, [write8(counter)], { ...PERF, countOnly: true, countIntervalMs: 100 });
    await log.until("10 rounds of threads counted", () => countedPerThread(log.events, 1n).size >= 10 * T);
    const counts = await helper.disarm(target.pid, 1n);
    assert.equal(counts.trapped, counts.delivered + counts.suppressed + counts.filtered + counts.lost);
    if (!drainFallsBehind) assert.equal(counts.lost, 0n);
    else if (counts.lost > 0n) t.diagnostic(`${counts.lost} of ${counts.trapped} counted as lost: ${drainFallsBehind}`);
    const per = countedPerThread(log.events, 1n);
    const sum = [...per.values()].reduce((a, b) => a + b, 0n);
    assert.equal(sum, counts.delivered, "per-thread hits add up to the total");
    const partial = [...per.values()].filter((n) => n < BigInt(W)).length;
    assert.ok([...per.values()].every((n) => n <= BigInt(W)), `a thread with more than ${W} hits was covered twice`);
    // Only the threads running at arm time and at disarm time can be partial.
    assert.ok(partial <= 2 * T, `${partial} threads with fewer than ${W} hits of ${per.size}`);
    t.diagnostic(`${per.size} threads, ${partial} partial, ${counts.delivered} hits, ${coveredTwice(log)} covered twice`);
  });

  test("threads - a thread announced while the buffer was full gets events of its own as well as inherited ones: each of its writes is one hit", async (t) => {
    const s = scene(t);
    // 64 KiB buffers fill after a few hundred writes while the helper is stopped.
    const { helper, log } = await s.helper({ perfBufferKiB: 64 });
    const [BURST, W] = [20_000, 100];
    const target = await s.target("late-thread", [String(BURST), String(W)]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    let tid: number;
    process.kill(helper.pid, "SIGSTOP");
    try {
      target.send("go");
      // Its FORK record came while the buffer was full: lost. The thread
      // inherited the main thread's events all the same.
      tid = Number((await target.waitForLine(/^thread \d+$/, EVENT_TIMEOUT_MS)).split(" ")[1]);
    } finally {
      process.kill(helper.pid, "SIGCONT");
    }
    // A scan finds it with no record of its creation and gives it events of its own.
    await log.until("two threads armed", () => log.of("threads").some((e) => e.threadsTotal === 2 && e.threadsArmed === 2));
    target.send("go");
    await finishesNormally(target);
    const { counts } = await log.groupDone(1n);
    assert.equal(counts.trapped, BigInt(BURST + W), "trapped: each write once");
    assert.equal(counts.delivered + counts.lost, counts.trapped, "every trap delivered or counted as lost");
    assert.ok(counts.lost > 0n, "the burst overflowed the buffer");
    assert.equal(perThread(log, 1n).get(tid), W, `hits of the late thread ${tid}`);
    // On hardware a write fires both copies: the pair is seen, and the thread's own events close.
    if (oneRegisterPerAccess) t.diagnostic(`${coveredTwice(log)} thread(s) seen covered twice: ${oneRegisterPerAccess}`);
    else assert.equal(coveredTwice(log), 1, "the late thread was covered twice, then by its inherited events only");
  });

  test("threads - 5000 short-lived threads each write once: 5000 hits, one per thread", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const COUNT = 5000;
    const target = await s.target("short-threads", [String(COUNT), "8"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("go");
    assert.equal(await target.waitForLine(/^done /, EVENT_TIMEOUT_MS), `done ${COUNT}`);
    await log.until(`${COUNT} hits`, () => log.hits.length >= COUNT);
    const counts = await helper.disarm(target.pid, 1n);
    assert.deepEqual(counts, { trapped: BigInt(COUNT), delivered: BigInt(COUNT), suppressed: 0n, filtered: 0n, lost: 0n, reservedMask: 0 });
    assert.equal(perThread(log, 1n).size, COUNT, "one hit per thread");
    target.send("quit");
    assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
  });

  test("threads - the leader exits (pthread_exit) while 3 threads keep writing: every hit, then exit 0", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 20_000;
    const target = await s.target("leader-exit", ["--threads", "3", "--writes", String(N)]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("go");
    await target.waitForLine(/^done/, EVENT_TIMEOUT_MS);
    assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
    const done = await log.groupDone(1n);
    assert.equal(done.reason, "exited");
    // The leader's exit came long before the process's end: the status is still the process's.
    exitedNormally(await log.targetExited(target.pid));
    assert.equal(done.counts.trapped, BigInt(3 * N));
    assert.equal(done.counts.delivered + done.counts.lost, BigInt(3 * N), "every trap delivered or counted as lost");
    if (drainFallsBehind) {
      if (done.counts.lost > 0n) t.diagnostic(`${done.counts.lost} counted as lost: ${drainFallsBehind}`);
    } else {
      assert.equal(done.counts.delivered, BigInt(3 * N));
    }
  });

  test("fork - a child forked while armed is not watched and not harmed", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 1000;
    const target = await s.target("counter", ["--threads", "2", "--writes", String(N), "--fork"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("go");
    assert.equal(await target.waitForLine(/^child /, EVENT_TIMEOUT_MS), "child exit 0");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    const forks = log.of("target-fork");
    assert.equal(forks.length, 1);
    assert.equal(forks[0]?.pid, target.pid);
    assert.ok((forks[0]?.childPid ?? 0) > 0 && forks[0]?.childPid !== target.pid);
    assert.equal(log.hits.length, 2 * N, "only the parent's writes");
    assert.ok(log.hits.every((h) => h.pid === target.pid));
    assert.equal(done.counts.delivered, BigInt(2 * N));
  });

  test("lifecycle - exec: group-done(exec), target-exec, and the new program runs unwatched", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 1000;
    const target = await s.target("counter", ["--writes", String(N), "--exec", fixturePath("counter")]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("go");
    const done = await log.groupDone(1n);
    assert.equal(done.reason, "exec");
    assert.equal(done.counts.delivered, BigInt(N));
    await log.until("target-exec", () => log.of("target-exec").find((e) => e.pid === target.pid));
    // The new image (the same program) prints its own ready line and writes unwatched.
    await waitFor("the exec'd program is ready", async () => target.lines.filter((l) => l.startsWith("ready ")).length === 2, EVENT_TIMEOUT_MS);
    target.send("go");
    await finishesNormally(target);
    assert.equal(log.hits.length, N, "no hit from the new program");
  });

  test("lifecycle - target SIGKILLed while armed: group-done(exited), then target-exited", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("counter", ["--threads", "2", "--writes", "100000000"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("go");
    await log.until("some hits", () => log.hits.length >= 100);
    process.kill(target.rootPid, "SIGKILL");
    const done = await log.groupDone(1n);
    assert.equal(done.reason, "exited");
    const c = done.counts;
    assert.equal(c.trapped, c.delivered + c.suppressed + c.filtered + c.lost);
    const exited = await log.targetExited(target.pid);
    assert.deepEqual([exited.how, exited.code], ["killed", 9], "target-exited");
  });

  test("lifecycle - a process whose threads came and went, SIGKILLed: killed by signal 9, not the ended threads' exit 0", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("thread-churn", ["1000000", "2", "200"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("go");
    await log.until("1000 hits", () => log.hits.length >= 1000);
    process.kill(target.rootPid, "SIGKILL");
    await log.groupDone(1n);
    const exited = await log.targetExited(target.pid);
    assert.deepEqual([exited.how, exited.code], ["killed", 9], "target-exited");
  });

  test("lifecycle - a process killed by the SIGTRAP of a debug exception with no cause: target-exited says killed by signal 5", async (t) => {
    // What some virtual machines do now and then to a perf-watched writer
    // (README, "Safety"): the perf backend cannot stop the signal, and the
    // status must say what happened. The fixture sends itself that signal.
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("causeless-trap", ["1000"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("go");
    assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: null, signal: "SIGTRAP" });
    const done = await log.groupDone(1n);
    assert.equal(done.reason, "exited");
    assert.equal(done.counts.delivered, 100n, "the writes before the signal");
    const exited = await log.targetExited(target.pid);
    assert.deepEqual([exited.how, exited.code], ["killed", 5], "target-exited");
  });

  test("budget - max_hits 100 with 4 threads delivers exactly 100; the target finishes", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("counter", ["--threads", "4", "--writes", "20000"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], { ...PERF, maxHits: 100n });
    target.send("go");
    const done = await log.groupDone(1n);
    assert.equal(done.reason, "budget");
    assert.equal(done.counts.delivered, 100n);
    assert.equal(done.counts.trapped, done.counts.delivered + done.counts.suppressed);
    await finishesNormally(target);
    assert.equal(log.hits.length, 100);
  });

  test("rate limit - 1000/s on a hot writer: backs off and resumes, delivered within the rate", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const RATE = 1000;
    const target = await s.target("hot-writer");
    const [counter] = readyAddresses(target) as [bigint];
    const armedAt = Date.now();
    await helper.arm(target.pid, 1n, [write8(counter)], { ...PERF, maxHitsPerSecond: RATE, backoffMs: 200 });
    target.send("run 2000 limited");
    await target.waitForLine(/^wrote limited /, EVENT_TIMEOUT_MS);
    const counts = await helper.disarm(target.pid, 1n);
    const elapsedS = (Date.now() - armedAt) / 1000;
    assert.ok(log.of("group-backoff").length >= 1 && log.of("group-resumed").length >= 1);
    assert.equal(counts.trapped, counts.delivered + counts.suppressed + counts.filtered + counts.lost);
    assert.ok(counts.suppressed > 0n);
    assert.ok(Number(counts.delivered) <= RATE * elapsedS + RATE, `${counts.delivered} delivered in ${elapsedS} s`);
    target.send("quit");
    await finishesNormally(target);
  });

  test("tids - only the listed threads' traps are delivered; the others are counted as filtered", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 1000;
    const target = await s.target("counter", ["--threads", "4", "--writes", String(N), "--hold"]);
    const [counter] = readyAddresses(target) as [bigint];
    const tids = (await target.waitForLine(/^tids /)).split(" ").slice(1).map(Number);
    const wanted = [tids[0] as number, tids[2] as number];
    const armed = await helper.arm(target.pid, 1n, [write8(counter)], { ...PERF, tids: wanted });
    assert.equal(armed.threadsArmed, 5);
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.deepEqual(done.counts, { trapped: BigInt(4 * N), delivered: BigInt(2 * N), suppressed: 0n, filtered: BigInt(2 * N), lost: 0n });
    for (const tid of tids) assert.equal(log.hits.filter((h) => h.tid === tid).length, wanted.includes(tid) ? N : 0, `tid ${tid}`);
  });

  test("stacks - sampled registers and stack unwind an -O2 call chain to fw_level_c, fw_level_b, fw_level_a, main", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 20;
    const target = await s.target("stack-chain", [String(N)]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], { ...PERF, stackDepth: 16 });
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.equal(done.counts.delivered, BigInt(N));
    for (const h of log.hits) {
      assert.deepEqual(h.stack.slice(0, 4).map((f) => f.function), ["fw_level_c", "fw_level_b", "fw_level_a", "main"]);
      assert.equal(h.stack[0]?.ip, h.ip, "frame 0 is the trap's ip");
    }
  });

  test("count only - totals and per-thread hits at each interval, no hit records", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 20_000;
    const target = await s.target("counter", ["--threads", "4", "--writes", String(N)]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], { ...PERF, countOnly: true, countIntervalMs: 50 });
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.deepEqual(done.counts, { trapped: BigInt(4 * N), delivered: BigInt(4 * N), suppressed: 0n, filtered: 0n, lost: 0n });
    assert.equal(log.hits.length, 0, "no hit records");
    const reports = log.of("counts").filter((e) => e.group === 1n);
    assert.ok(reports.length >= 2, `${reports.length} counts events`);
    const last = reports.at(-1);
    assert.deepEqual(last?.counts, done.counts, "the last counts precede group-done with the final totals");
    assert.ok(log.events.indexOf(last as HelperEvent) < log.events.indexOf(done));
    const totals = reports.map((r) => r.counts.delivered);
    assert.ok(totals.every((v, i) => i === 0 || v >= (totals[i - 1] as bigint)), "totals never go back");
    const per = countedPerThread(log.events, 1n);
    assert.equal(per.size, 4);
    for (const [tid, n] of per) assert.equal(n, BigInt(N), `tid ${tid}`);
  });

  test("count only - disarm sends a last counts event before its reply", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("hot-writer");
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], { ...PERF, countOnly: true, countIntervalMs: 60_000 });
    target.send("run 300 counted");
    const line = await target.waitForLine(/^wrote counted /, EVENT_TIMEOUT_MS);
    const writes = BigInt(line.split(" ")[2] as string);
    const counts = await helper.disarm(target.pid, 1n);
    assert.equal(counts.delivered, writes);
    const last = await log.until("a counts event", () => log.of("counts").at(-1));
    assert.equal(last.counts.delivered, writes);
    target.send("quit");
    await finishesNormally(target);
  });

  test("bad input - refusals name what is wrong and leave the target untouched", async (t) => {
    const s = scene(t);
    const { helper } = await s.helper();
    const target = await s.target("counter", ["--writes", "10"]);
    const [counter, other] = readyAddresses(target) as [bigint, bigint];
    await rejectsWith(helper.arm(2 ** 22 + 12345, 1n, [write8(counter)], PERF), "ESRCH", /pidfd_open|no such process/);
    await rejectsWith(helper.arm(target.pid, 1n, [write8(counter)], { ...PERF, conditions: [{ op: "==", value: 5n }] }), "EINVAL", /conditions need .* ptrace backend/);
    await rejectsWith(helper.arm(target.pid, 1n, [write8(counter)], { countOnly: true }), "EINVAL", /counting only needs the perf backend/);
    await rejectsWith(helper.arm(target.pid, 1n, [write8(counter)], { ...PERF, countOnly: true, countIntervalMs: 5 }), "EINVAL", /count interval of 5 ms/);
    await rejectsWith(helper.arm(target.pid, 1n, [write8(counter + 4n)], PERF), "EINVAL", /not aligned/);
    await rejectsWith(helper.arm(target.pid, 1n, [write8(0xffff_ffff_8100_0000n)], PERF), "EINVAL", /not a user address/);
    await rejectsWith(helper.arm(1, 1n, [write8(counter)], PERF), "EPERM", /pid 1/);
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    await rejectsWith(helper.arm(target.pid, 1n, [write8(other, 1)], PERF), "EEXIST", /already armed/);
    await helper.disarm(target.pid, 1n);
    assert.equal(await target.tracerPid(), 0);
    target.send("go");
    await finishesNormally(target);
  });

  test("limits - out of file descriptors: EMFILE names the limit, the partial attach is closed, a smaller ARM still fits", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const big = await s.target("counter", ["--threads", "16", "--writes", "10", "--hold"]);
    const small = await s.target("counter", ["--threads", "1", "--writes", "100"]);
    const [bigCounter] = readyAddresses(big) as [bigint];
    const [smallCounter] = readyAddresses(small) as [bigint];
    await big.waitForLine(/^tids /);
    // 17 threads x every CPU x (a breakpoint + a tracker) cannot fit in 40 descriptors.
    await execFileAsync("prlimit", ["--pid", String(helper.pid), "--nofile=40:40"]);
    await rejectsWith(helper.arm(big.pid, 1n, [write8(bigCounter)], PERF), "EMFILE", /out of file descriptors .* RLIMIT_NOFILE/);
    // Everything the failed ARM opened was closed: a one-thread process still fits.
    await helper.arm(small.pid, 2n, [write8(smallCounter)], PERF);
    small.send("go");
    await finishesNormally(small);
    assert.equal((await log.groupDone(2n)).counts.delivered, 100n);
    big.send("go");
    await finishesNormally(big);
    assert.equal(log.hitsOf(1n).length, 0);
  });

  test("slots - ENOSPC when ptrace holds all four: the partial attach is rolled back, the target untouched", { skip: oneRegisterPerAccess }, async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("counter", ["--threads", "2", "--writes", "1000", "--hold"]);
    const [counter, other] = readyAddresses(target) as [bigint, bigint];
    await target.waitForLine(/^tids /);
    const ptraceChunks = [write8(counter, 0), write8(other, 1), { dr: 2, mode: "w" as const, length: 1, address: counter }, { dr: 3, mode: "w" as const, length: 1, address: other }];
    await helper.arm(target.pid, 1n, ptraceChunks);
    await rejectsWith(helper.arm(target.pid, 2n, [write8(counter)], PERF), "ENOSPC", /no free debug register/);
    // Group 1 still gets every trap: the failed perf group left nothing armed.
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.equal(done.counts.delivered, 2n * 2n * 1000n, "two threads, each write of fw_counter trapping its 8-byte and its 1-byte chunk");
    assert.equal(log.hitsOf(2n).length, 0);
  });

  test("mixed - a ptrace group and a perf group on one process each get every trap of their chunk", { skip: oneRegisterPerAccess }, async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 2000;
    const target = await s.target("counter", ["--writes", String(N), "--other"]);
    const [counter, other] = readyAddresses(target) as [bigint, bigint];
    await helper.arm(target.pid, 1n, [write8(counter, 0)]);
    await helper.arm(target.pid, 2n, [write8(other, 1)], PERF);
    target.send("go");
    await finishesNormally(target);
    assert.equal((await log.groupDone(1n)).counts.delivered, BigInt(N));
    assert.equal((await log.groupDone(2n)).counts.delivered, BigInt(N));
    assert.ok(log.hitsOf(1n).every((h) => h.valueExact), "ptrace reads at the stop");
    assert.ok(log.hitsOf(2n).every((h) => h.valueExact === (helper.capabilities.perfValues === "exact")));
    const exited = await log.targetExited(target.pid);
    assert.deepEqual([exited.how, exited.code], ["exited", 0], "the tracer's exact status");
    await helper.shutdown();
    assert.equal(log.of("target-exited").filter((e) => e.pid === target.pid).length, 1, "one target-exited");
  });

  test("re-target - an ARM right after a DISARM on the same process re-targets the disarmed group's breakpoints in place", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 1000;
    const target = await s.target("counter", ["--threads", "2", "--writes", String(N), "--other", "--hold"]);
    const [counter, other] = readyAddresses(target) as [bigint, bigint];
    await target.waitForLine(/^tids /);
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    assert.deepEqual(await helper.disarm(target.pid, 1n), { trapped: 0n, delivered: 0n, suppressed: 0n, filtered: 0n, lost: 0n, reservedMask: 0 });
    const armed = await helper.arm(target.pid, 2n, [write8(other, 1)], PERF);
    assert.deepEqual([armed.threadsTotal, armed.threadsArmed, armed.drMask], [3, 3, 0b10]);
    await log.until("the re-target is logged", () => log.of("log").find((l) => /group 2 re-targets the breakpoints of a group disarmed/.test(l.message)));
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(2n);
    assert.deepEqual(done.counts, { trapped: BigInt(2 * N), delivered: BigInt(2 * N), suppressed: 0n, filtered: 0n, lost: 0n }, "only fw_other's writes, counted from zero");
    assert.ok(log.hitsOf(2n).every((h) => h.address === other && h.dr === 1));
    assert.equal(log.hitsOf(1n).length, 0, "the old address traps no more");
  });

  test("re-target - a ptrace ARM after a perf DISARM gets the registers the parked breakpoints held", { skip: oneRegisterPerAccess }, async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("counter", ["--writes", "100", "--other"]);
    const [counter, other] = readyAddresses(target) as [bigint, bigint];
    const four = [write8(counter, 0), write8(other, 1), { dr: 2, mode: "w" as const, length: 4, address: counter }, { dr: 3, mode: "w" as const, length: 4, address: other }];
    await helper.arm(target.pid, 1n, four, PERF);
    await helper.disarm(target.pid, 1n);
    // All four registers of the thread are free again at once for ptrace.
    await helper.arm(target.pid, 2n, four);
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(2n);
    assert.equal(done.counts.delivered, 400n, "each write of a global traps its 8-byte and its 4-byte chunk");
  });

  test("safety - the helper SIGKILLed 20 times during hot 4-thread writes: every target exits normally", async (t) => {
    const s = scene(t);
    const ROUNDS = 20;
    for (let round = 0; round < ROUNDS; round++) {
      const helper = await HelperProcess.start();
      const log = new EventLog(helper);
      const target = await s.target("counter", ["--threads", "4", "--writes", "300000"]);
      const [counter] = readyAddresses(target) as [bigint];
      await helper.arm(target.pid, 1n, [write8(counter)], PERF);
      target.send("go");
      // Somewhere in the hot phase: after 1 to 20,000 hits.
      const after = 1 + Math.floor(Math.random() * 20_000);
      await log.until(`${after} hits`, () => log.hits.length >= after);
      process.kill(helper.pid, "SIGKILL");
      await log.until("the helper's events end", () => log.finished);
      await finishesNormally(target);
    }
    t.diagnostic(`${ROUNDS} rounds: every target exited 0`);
  });

  test("safety - helper shutdown while armed and hot: the target finishes normally", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("counter", ["--threads", "4", "--writes", "200000"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], PERF);
    target.send("go");
    await log.until("some hits", () => log.hits.length >= 1000);
    await helper.shutdown();
    await finishesNormally(target);
  });
});
