// The real fleetwatch-helper against real target programs (test/fixtures):
// exact hit counts, refusals with the right errno, and the rule that matters
// most: whatever happens to the helper, the watched process is not harmed.
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, readFile, readdir, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { before, describe, test } from "node:test";
import type { TestContext } from "node:test";
import { promisify } from "node:util";

import {
  HelperExitedError,
  HelperProcess,
  HelperProtocolError,
  HelperTimeoutError,
} from "../../agent/helper-process.js";
import type { HelperChunk, HelperHit } from "../../agent/helper-process.js";
import {
  FrameDecoder,
  MessageType,
  PROTOCOL_VERSION,
  decodeArmed,
  decodeEvent,
  decodeHello,
  decodeResolved,
  encodeArm,
  encodeResolve,
} from "../../agent/helper-protocol.js";
import type { Frame } from "../../agent/helper-protocol.js";
import { helperPath, repoRoot } from "../support/paths.js";
import { buildFixtures, fixturePath, procState, procStatusField } from "../support/targets.js";
import type { Target } from "../support/targets.js";
import { scaled, waitFor } from "../support/wait.js";
import { EVENT_TIMEOUT_MS, readyAddresses, rejectsWith, scene, write8 } from "../support/helper-scene.js";
import { noInt1, oneRegisterPerAccess } from "../support/emulation.js";

const execFileAsync = promisify(execFile);
const TEST_TIMEOUT_MS = scaled(120_000);

/** A pid that is not running now. */
async function deadPid(): Promise<number> {
  const child = spawn("true");
  await new Promise((resolve) => child.once("exit", resolve));
  const pid = child.pid as number;
  assert.equal(existsSync(`/proc/${pid}`), false);
  return pid;
}

async function finishesNormally(target: Target): Promise<void> {
  await target.waitForLine(/^done$/, EVENT_TIMEOUT_MS);
  assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
}

/** The helper spoken to directly, for what HelperProcess does not expose (closing stdin). */
class RawHelper {
  readonly child: ChildProcessWithoutNullStreams;
  /** Every frame received, in order. */
  readonly seen: Frame[] = [];
  private readonly decoder = new FrameDecoder();
  private readonly frames: Frame[] = [];
  private readonly wakers = new Set<() => void>();

  /** Ends with the test, whatever its outcome: closing stdin makes the helper disarm and exit. */
  constructor(t: TestContext) {
    this.child = spawn(helperPath, [], { stdio: ["pipe", "pipe", "pipe"] });
    t.after(async () => {
      this.child.stdin.end();
      const timer = setTimeout(() => this.child.kill("SIGKILL"), scaled(10_000));
      await this.exit();
      clearTimeout(timer);
    });
    this.child.stdout.on("data", (chunk: Buffer) => {
      const frames = this.decoder.push(chunk);
      this.seen.push(...frames);
      this.frames.push(...frames);
      for (const w of [...this.wakers]) w();
    });
    this.child.stderr.on("data", (chunk: Buffer) => process.stderr.write(chunk));
  }

  send(bytes: Buffer): void {
    this.child.stdin.write(bytes);
  }

  next(type: number, timeoutMs = EVENT_TIMEOUT_MS): Promise<Frame> {
    return new Promise<Frame>((resolve, reject) => {
      const check = (): void => {
        const i = this.frames.findIndex((f) => f.type === type || f.type === MessageType.Error);
        if (i < 0) return;
        const [frame] = this.frames.splice(i, 1) as [Frame];
        clearTimeout(timer);
        this.wakers.delete(check);
        if (frame.type === MessageType.Error) reject(new Error(`helper answered ERROR: ${frame.payload.toString()}`));
        else resolve(frame);
      };
      const timer = setTimeout(() => {
        this.wakers.delete(check);
        reject(new Error(`no frame of type 0x${type.toString(16)} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.wakers.add(check);
      check();
    });
  }

  exit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) {
      return Promise.resolve({ code: this.child.exitCode, signal: this.child.signalCode });
    }
    return new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
  }
}

/**
 * A stand-in helper (a node script): "v1" announces protocol 1; "mute" says
 * HELLO, never answers, and exits 0 when its stdin closes.
 */
async function fakeHelper(t: TestContext, mode: "v1" | "mute"): Promise<string> {
  const protocolUrl = new URL("../../agent/helper-protocol.js", import.meta.url).href;
  const dir = await mkdtemp(path.join(tmpdir(), "fw-fake-helper-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, `fake-helper-${mode}.mjs`);
  await writeFile(
    file,
    `#!${process.execPath}
import { encodeHello } from ${JSON.stringify(protocolUrl)};
process.stdout.write(encodeHello({ protocolVersion: ${mode === "v1" ? 1 : PROTOCOL_VERSION}, slotsPerThread: 4, backends: ["ptrace"], perfValues: "unavailable", helperVersion: "fake", perfNote: "", traps: [] }));
process.stdin.on("data", () => {});
process.stdin.on("end", () => process.exit(0));
`,
  );
  await chmod(file, 0o755);
  return file;
}

/** Starts a counter with T threads writing hard, arms it, lets it run until hits flow. */
async function hotArmedCounter(s: ReturnType<typeof scene>, threads: number) {
  const { helper, log } = await s.helper();
  const target = await s.target("counter", ["--threads", String(threads), "--writes", "200000"]);
  const [counter] = readyAddresses(target) as [bigint];
  await helper.arm(target.pid, 1n, [write8(counter)]);
  target.send("go");
  await log.until("200 hits", () => log.hits.length >= 200);
  return { helper, log, target };
}

describe("fleetwatch-helper", { timeout: TEST_TIMEOUT_MS }, () => {
  before(async () => {
    await execFileAsync("make", ["-C", path.join(repoRoot, "agent/native")]);
    await buildFixtures();
  });

  test("helper - --version prints the version", async () => {
    const { stdout } = await execFileAsync(helperPath, ["--version"]);
    assert.match(stdout, /^fleetwatch-helper \d+\.\d+\.\d+ \(protocol 4\)$/m);
  });

  test("resolve - fw_counter in a PIE target equals the target's own &fw_counter", async (t) => {
    const s = scene(t);
    const { helper } = await s.helper();
    const target = await s.target("counter");
    const [counter, , bytes] = readyAddresses(target) as [bigint, bigint, bigint];
    const elf = await readFile(fixturePath("counter"));
    assert.equal(elf.readUInt16LE(16), 3, "counter is built as PIE (ET_DYN)");

    const sym = await helper.resolve(target.pid, "fw_counter");
    assert.deepEqual(sym, { address: counter, size: 8n, module: fixturePath("counter"), symbol: "fw_counter" });
    const second = await helper.resolve(target.pid, "fw_bytes", 8n);
    assert.equal(second.address, bytes + 8n);
    assert.equal(second.size, 16n);
    assert.equal(await target.tracerPid(), 0, "RESOLVE does not attach");
    target.send("go");
    await finishesNormally(target);
  });

  test("resolve - an unknown symbol is ENOENT naming the pid and the modules searched", async (t) => {
    const s = scene(t);
    const { helper } = await s.helper();
    const target = await s.target("counter");
    await rejectsWith(
      helper.resolve(target.pid, "fw_no_such_symbol"),
      "ENOENT",
      new RegExp(`symbol 'fw_no_such_symbol' not found in pid ${target.pid} \\(searched \\d+ modules\\)`),
    );
  });

  test("arm - 10000 writes by 1 thread give exactly 10000 hits, values in order", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 10_000;
    const target = await s.target("counter", ["--threads", "1", "--writes", String(N)]);
    const [counter] = readyAddresses(target) as [bigint];

    const armed = await helper.arm(target.pid, 1n, [write8(counter)]);
    assert.deepEqual(armed, { threadsTotal: 1, threadsArmed: 1, drMask: 1, reservedMask: 1 });
    assert.equal(await target.tracerPid(), helper.pid);
    const started = Date.now();
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    const exited = await log.targetExited(target.pid);
    const elapsedMs = Date.now() - started;

    assert.equal(log.hits.length, N);
    const tids = new Set(log.hits.map((h) => h.tid));
    assert.equal(tids.size, 1);
    assert.notEqual([...tids][0], target.pid, "the worker thread wrote, not main");
    let previous = 0n;
    log.hits.forEach((h, i) => {
      assert.equal(h.newValue, (1n << 32n) | BigInt(i + 1), `hit ${i}`);
      assert.equal(h.oldValue, previous, `hit ${i} old value`);
      previous = h.newValue;
      assert.equal(h.address, counter);
      assert.deepEqual([h.group, h.pid, h.dr, h.length, h.mode], [1n, target.pid, 0, 8, "w"]);
      assert.ok(h.ip > 0n);
    });
    assert.deepEqual(done, {
      kind: "group-done",
      pid: target.pid,
      group: 1n,
      reason: "exited",
      counts: { trapped: BigInt(N), delivered: BigInt(N), suppressed: 0n, filtered: 0n, lost: 0n },
    });
    assert.deepEqual(exited, { kind: "target-exited", pid: target.pid, how: "exited", code: 0 });
    assert.ok(log.events.indexOf(done) < log.events.indexOf(exited), "GROUP_DONE precedes TARGET_EXITED");
    const first = log.hits[0] as HelperHit;
    const last = log.hits[N - 1] as HelperHit;
    const trapSeconds = Number(last.timeNs - first.timeNs) / 1e9;
    t.diagnostic(`1 thread: ${N} hits in ${elapsedMs} ms wall, ${Math.round(N / trapSeconds)} hits/s between first and last trap`);
  });

  test("arm - 4 threads x 10000 writes give exactly 40000 hits, 10000 per thread, in order", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 10_000;
    const T = 4;
    const target = await s.target("counter", ["--threads", String(T), "--writes", String(N)]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)]);
    const started = Date.now();
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    const elapsedMs = Date.now() - started;

    assert.equal(log.hits.length, N * T);
    assert.deepEqual(done.counts, { trapped: BigInt(N * T), delivered: BigInt(N * T), suppressed: 0n, filtered: 0n, lost: 0n });
    const byTid = new Map<number, HelperHit[]>();
    for (const h of log.hits) byTid.set(h.tid, [...(byTid.get(h.tid) ?? []), h]);
    assert.equal(byTid.size, T);
    assert.ok(!byTid.has(target.pid));
    // The value is read when the helper handles the trap; another thread may
    // have stored since. But a hit that reads its own thread's value must read
    // that thread's j-th store: find thread k for each tid under that rule.
    const consistent = new Map<number, Set<number>>();
    for (const [tid, hits] of byTid) {
      assert.equal(hits.length, N, `tid ${tid}`);
      const ok = new Set<number>();
      const broken = new Set<number>();
      hits.forEach((h, j) => {
        const k = Number(h.newValue >> 32n);
        const i = Number(h.newValue & 0xffff_ffffn);
        assert.ok(k >= 1 && k <= T && i >= 1 && i <= N, `value 0x${h.newValue.toString(16)} was never written`);
        (i === j + 1 ? ok : broken).add(k);
      });
      consistent.set(tid, new Set([...ok].filter((k) => !broken.has(k))));
    }
    const tidList = [...consistent.keys()];
    const assign = (at: number, used: Set<number>): boolean =>
      at === tidList.length ||
      [...(consistent.get(tidList[at] as number) as Set<number>)].some(
        (k) => !used.has(k) && assign(at + 1, new Set([...used, k])),
      );
    assert.ok(assign(0, new Set()), `each thread's own values appear in order: ${JSON.stringify([...consistent].map(([tid, ks]) => [tid, [...ks]]))}`);
    const trapSeconds = Number((log.hits.at(-1) as HelperHit).timeNs - (log.hits[0] as HelperHit).timeNs) / 1e9;
    t.diagnostic(`4 threads: ${N * T} hits in ${elapsedMs} ms wall, ${Math.round((N * T) / trapSeconds)} hits/s aggregate`);
  });

  for (const threads of [1, 4]) {
    test(`budget - max_hits 100 with ${threads} thread(s) delivers exactly 100, then detaches and the target finishes`, async (t) => {
      const s = scene(t);
      const { helper, log } = await s.helper();
      const target = await s.target("counter", ["--threads", String(threads), "--writes", "10000"]);
      const [counter] = readyAddresses(target) as [bigint];
      await helper.arm(target.pid, 7n, [write8(counter)], { maxHits: 100n });
      target.send("go");
      const done = await log.groupDone(7n);
      assert.equal(done.reason, "budget");
      assert.equal(done.counts.delivered, 100n);
      assert.equal(done.counts.trapped, done.counts.delivered + done.counts.suppressed);
      if (threads === 1) assert.equal(done.counts.suppressed, 0n, "the hitting thread is held at the budget");
      assert.equal(log.hits.length, 100);
      await waitFor("helper detached after its last group", async () => (await target.tracerPid()) === 0);
      await finishesNormally(target);
      assert.equal(log.hits.length, 100);
      assert.equal(log.of("target-exited").length, 0, "a detached target's exit is not ours to report");
      t.diagnostic(`budget with ${threads} thread(s): counts ${JSON.stringify(done.counts, (_, v) => (typeof v === "bigint" ? Number(v) : v))}`);
    });
  }

  test("disarm - while writing hard: counts add up, TracerPid 0, the target exits normally", async (t) => {
    const s = scene(t);
    const { helper, log, target } = await hotArmedCounter(s, 2);
    const counts = await helper.disarm(target.pid, 1n);
    assert.equal(await target.tracerPid(), 0);
    assert.equal(counts.trapped, counts.delivered + counts.suppressed);
    await log.until("every delivered hit", () => BigInt(log.hits.length) === counts.delivered);
    await finishesNormally(target);
    assert.equal(BigInt(log.hits.length), counts.delivered);
    await rejectsWith(helper.disarm(target.pid, 1n), "ESRCH", /not attached/);
  });

  test("arm - an unknown pid is ESRCH", async (t) => {
    const s = scene(t);
    const { helper } = await s.helper();
    const pid = await deadPid();
    await rejectsWith(helper.arm(pid, 1n, [write8(0x601000n)]), "ESRCH", new RegExp(`no process with pid ${pid}`));
    await rejectsWith(helper.resolve(pid, "fw_counter"), "ESRCH", new RegExp(`no process with pid ${pid}`));
  });

  test("arm - a child of strace -f is EPERM naming the tracer", async (t) => {
    const s = scene(t);
    const { helper } = await s.helper();
    const target = await s.target("counter", ["--writes", "100"], { wrapper: ["strace", "-f", "-o", "/dev/null"] });
    const stracePid = target.child.pid as number;
    assert.equal(await target.tracerPid(), stracePid);
    const [counter] = readyAddresses(target) as [bigint];
    await rejectsWith(
      helper.arm(target.pid, 1n, [write8(counter)]),
      "EPERM",
      new RegExp(`already traced by pid ${stracePid} \\(strace\\)`),
    );
    assert.equal(await target.tracerPid(), stracePid, "strace still holds it");
    target.send("go");
    await finishesNormally(target);
  });

  test("arm - a pid under strace -p is EPERM naming the tracer; fine after strace leaves", async (t) => {
    const s = scene(t);
    const { helper } = await s.helper();
    const target = await s.target("counter", ["--writes", "100"]);
    const strace = await s.target("strace", ["-q", "-p", String(target.pid), "-o", "/dev/null"], { path: "strace" });
    await waitFor("strace attached", async () => (await target.tracerPid()) === strace.pid);
    const [counter] = readyAddresses(target) as [bigint];
    await rejectsWith(
      helper.arm(target.pid, 1n, [write8(counter)]),
      "EPERM",
      new RegExp(`PTRACE_SEIZE pid ${target.pid}: already traced by pid ${strace.pid} \\(strace\\)`),
    );
    strace.child.kill("SIGINT"); // strace detaches on SIGINT
    await waitFor("strace detached", async () => (await target.tracerPid()) === 0);
    target.send("go");
    await finishesNormally(target);
  });

  test("arm - invalid chunks are EINVAL and the target is never touched", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("counter", ["--writes", "1000"]);
    const [counter] = readyAddresses(target) as [bigint];
    const cases: [HelperChunk[], RegExp][] = [
      [[write8(counter + 4n)], /not aligned to its length 8/],
      [[{ dr: 4, mode: "w", length: 8, address: counter }], /dr 4/],
      [[{ dr: 0, mode: "w", length: 3, address: counter }], /length 3/],
      [[{ dr: 0, mode: "x", length: 8, address: counter }], /execute needs length 1/],
      [[write8(0x7ffffffff000n)], /not a user address/],
      [[write8(counter, 0), write8(counter + 8n, 0)], /dr0 named twice/],
      [[], /0 chunks/],
    ];
    for (const [chunks, message] of cases) {
      await rejectsWith(helper.arm(target.pid, 1n, chunks), "EINVAL", message);
      assert.equal(await target.tracerPid(), 0);
    }
    target.send("go");
    await finishesNormally(target);
    assert.equal(log.hits.length, 0);
  });

  test("arm - ENOSPC when perf holds the slots: rolled back on every thread, target untouched", async (t) => {
    if (!existsSync("/usr/bin/perf")) {
      t.skip("perf is not installed");
      return;
    }
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("counter", ["--writes", "1000", "--other"]);
    const [counter, other, bytes] = readyAddresses(target) as [bigint, bigint, bigint];
    // Three per-task breakpoints leave one slot: DR0 is written, DR1 is refused.
    const events = [bytes, bytes + 8n, bytes].flatMap((a) => ["-e", `mem:0x${a.toString(16)}/8:w`]);
    const perf = await s.target("perf", ["stat", "-x", ",", "-o", "/dev/null", ...events, "-p", String(target.pid)], { path: "perf" });
    await waitFor("perf holds three breakpoints", async () => {
      const fds = await readdir(`/proc/${perf.pid}/fd`).catch(() => []);
      const links = await Promise.all(fds.map((fd) => readlink(`/proc/${perf.pid}/fd/${fd}`).catch(() => "")));
      return links.filter((l) => l === "anon_inode:[perf_event]").length >= 3;
    });
    await rejectsWith(
      helper.arm(target.pid, 1n, [write8(counter, 0), write8(other, 1)]),
      "ENOSPC",
      /POKEUSER DR1=0x[0-9a-f]+ on tid \d+: no free debug register slot/,
    );
    assert.equal(await target.tracerPid(), 0, "rolled back and detached");
    target.send("go");
    await finishesNormally(target);
    assert.equal(log.hits.length, 0);
  });

  test("arm - policy refuses pid 1, the helper itself and its parent", async (t) => {
    const s = scene(t);
    const { helper } = await s.helper();
    for (const pid of [1, helper.pid, process.pid]) {
      await rejectsWith(helper.arm(pid, 1n, [write8(0x601000n)]), "EPERM", /^policy: /);
    }
  });

  test("groups - two groups on one pid use two registers; a taken register is EBUSY", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 1000;
    const target = await s.target("counter", ["--writes", String(N), "--other"]);
    const [counter, other, bytes] = readyAddresses(target) as [bigint, bigint, bigint];
    assert.deepEqual(await helper.arm(target.pid, 1n, [write8(counter, 0)]), { threadsTotal: 1, threadsArmed: 1, drMask: 0b01, reservedMask: 0b01 });
    assert.deepEqual(await helper.arm(target.pid, 2n, [write8(other, 1)]), { threadsTotal: 1, threadsArmed: 1, drMask: 0b10, reservedMask: 0b11 });
    await rejectsWith(helper.arm(target.pid, 3n, [write8(bytes, 0)]), "EBUSY", /dr0 of pid \d+ is used by group 1/);
    await rejectsWith(helper.arm(target.pid, 1n, [write8(bytes, 2)]), "EEXIST", /group 1 is already armed/);
    target.send("go");
    await finishesNormally(target);
    const [d1, d2] = [await log.groupDone(1n), await log.groupDone(2n)];
    await log.targetExited(target.pid);
    for (const [group, dr, address, done] of [[1n, 0, counter, d1], [2n, 1, other, d2]] as const) {
      const hits = log.hits.filter((h) => h.group === group);
      assert.equal(hits.length, N, `group ${group}`);
      assert.ok(hits.every((h) => h.dr === dr && h.address === address));
      assert.deepEqual(hits.map((h) => h.newValue & 0xffff_ffffn), Array.from({ length: N }, (_, i) => BigInt(i + 1)));
      assert.deepEqual(done.counts, { trapped: BigInt(N), delivered: BigInt(N), suppressed: 0n, filtered: 0n, lost: 0n });
      assert.equal(done.reason, "exited");
    }
  });

  test("chunks - one 16-byte store over two watched words is one trap with a record per slot", { skip: oneRegisterPerAccess }, async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 100;
    const target = await s.target("counter", ["--writes", String(N), "--bytes"]);
    const [, , bytes] = readyAddresses(target) as [bigint, bigint, bigint];
    const armed = await helper.arm(target.pid, 5n, [write8(bytes, 0), write8(bytes + 8n, 1)]);
    assert.equal(armed.drMask, 0b11);
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(5n);
    assert.equal(log.hits.length, 2 * N);
    assert.deepEqual(done.counts, { trapped: BigInt(2 * N), delivered: BigInt(2 * N), suppressed: 0n, filtered: 0n, lost: 0n });
    for (let i = 0; i < N; i++) {
      const [a, b] = [log.hits[2 * i] as HelperHit, log.hits[2 * i + 1] as HelperHit];
      assert.deepEqual([a.dr, b.dr], [0, 1]);
      assert.equal(a.timeNs, b.timeNs, "both slots from one trap");
      assert.equal(a.newValue, (1n << 32n) | BigInt(i + 1));
      assert.equal(b.newValue, a.newValue);
    }
  });

  test("lifecycle - target exits while armed: group-done(exited) then target-exited", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("counter", ["--threads", "2", "--writes", "500"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 9n, [write8(counter)]);
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(9n);
    const exited = await log.targetExited(target.pid);
    assert.deepEqual(done, {
      kind: "group-done",
      pid: target.pid,
      group: 9n,
      reason: "exited",
      counts: { trapped: 1000n, delivered: 1000n, suppressed: 0n, filtered: 0n, lost: 0n },
    });
    assert.deepEqual(exited, { kind: "target-exited", pid: target.pid, how: "exited", code: 0 });
    assert.ok(log.events.indexOf(done) < log.events.indexOf(exited));
  });

  test("lifecycle - target SIGKILLed while armed: target-exited says killed by 9", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("demo-counter");
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)]);
    await log.until("a hit", () => log.hits.length >= 1);
    process.kill(target.pid, "SIGKILL");
    const done = await log.groupDone(1n);
    assert.equal(done.reason, "exited");
    assert.deepEqual(await log.targetExited(target.pid), { kind: "target-exited", pid: target.pid, how: "killed", code: 9 });
  });

  test("lifecycle - exec: group-done(exec), target-exec, and the new program runs untraced", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("counter", ["--writes", "100", "--exec", "/bin/true"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 4n, [write8(counter)]);
    target.send("go");
    const exec = await log.until("target-exec", () => log.of("target-exec")[0]);
    const done = await log.groupDone(4n);
    assert.deepEqual(exec, { kind: "target-exec", pid: target.pid });
    assert.equal(done.reason, "exec");
    assert.deepEqual(done.counts, { trapped: 100n, delivered: 100n, suppressed: 0n, filtered: 0n, lost: 0n });
    assert.ok(log.events.indexOf(done) < log.events.indexOf(exec));
    assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
  });

  test("threads - threads created while armed are all watched (20 rounds x 4 threads)", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("thread-churn", ["20", "4", "10"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)]);
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.equal(log.hits.length, 800);
    assert.equal(new Set(log.hits.map((h) => h.tid)).size >= 4, true);
    assert.deepEqual(done.counts, { trapped: 800n, delivered: 800n, suppressed: 0n, filtered: 0n, lost: 0n });
  });

  test("signals - the target's own SIGTRAP reaches its handler while watched", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("sigtrap-self", ["1000"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)]);
    target.send("go");
    // raise() is tgkill: si_code SI_TKILL (-6).
    assert.equal(await target.waitForLine(/^handled /, EVENT_TIMEOUT_MS), "handled 10 code -6");
    await finishesNormally(target);
    await log.groupDone(1n);
    assert.equal(log.hits.length, 1000);
  });

  test("signals - a debug exception with no cause (TRAP_BRKPT, DR6 empty) never reaches the target: a trap of the only armed register, else dropped", async (t) => {
    const s = scene(t);
    // Unwatched, the signal the fixture queues itself kills it: it is
    // what the kernel sends for a causeless debug exception.
    const bare = await s.target("causeless-trap", ["100"]);
    bare.send("go");
    assert.deepEqual(await bare.waitForExit(EVENT_TIMEOUT_MS), { code: null, signal: "SIGTRAP" });

    const { helper, log } = await s.helper();
    const said = (pid: number) => log.of("log").filter((e) => e.message.startsWith(`pid ${pid}: `) && /debug exception with no cause/.test(e.message));
    // One register armed: each one counts as that register's trap (on
    // these VMs it is a watched write whose status was lost). The fixture's
    // are extra signals, so 1000 writes + 10.
    const one = await s.target("causeless-trap", ["1000"]);
    const [counter, , queuedAt] = readyAddresses(one) as [bigint, bigint, bigint];
    await helper.arm(one.pid, 1n, [write8(counter)]);
    one.send("go");
    assert.equal(await one.waitForLine(/^faked /, EVENT_TIMEOUT_MS), "faked 10");
    await finishesNormally(one);
    const done = await log.groupDone(1n);
    assert.deepEqual(done.counts, { trapped: 1010n, delivered: 1010n, suppressed: 0n, filtered: 0n, lost: 0n });
    assert.equal(log.hitsOf(1n).filter((h) => h.ip === queuedAt).length, 10, "the causeless ones, at the ip after the syscall");
    // Said the first time and at every power of two: 1, 2, 4, 8.
    const first = said(one.pid);
    assert.equal(first.length, 4, first.map((e) => e.message).join("\n"));
    assert.equal(first[0]?.level, "warning");
    assert.equal(
      first[0]?.message,
      `pid ${one.pid}: thread ${log.hitsOf(1n)[0]?.tid} took a debug exception with no cause (DR6 empty, ip 0x${queuedAt.toString(16)}): not delivered to the target, counted as a trap of DR0, its only armed register (1 so far)`,
    );

    // Two registers armed: no single answer, dropped, and said.
    const two = await s.target("causeless-trap", ["1000"]);
    const [counter2, other2] = readyAddresses(two) as [bigint, bigint];
    await helper.arm(two.pid, 2n, [write8(counter2)]);
    await helper.arm(two.pid, 3n, [write8(other2, 1)]);
    two.send("go");
    assert.equal(await two.waitForLine(/^faked /, EVENT_TIMEOUT_MS), "faked 10");
    await finishesNormally(two);
    assert.deepEqual((await log.groupDone(2n)).counts, { trapped: 1000n, delivered: 1000n, suppressed: 0n, filtered: 0n, lost: 0n });
    assert.deepEqual((await log.groupDone(3n)).counts, { trapped: 0n, delivered: 0n, suppressed: 0n, filtered: 0n, lost: 0n });
    assert.match(said(two.pid)[0]?.message ?? "", /: not delivered to the target, dropped: more than one register armed \(1 so far\)$/);
  });

  test("signals - the target's own INT1 still reaches its handler while watched", { skip: noInt1 }, async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("sigtrap-self", ["int1"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)]);
    target.send("go");
    // INT1 is a debug exception without a DR6 cause, from 0xf1 at ip - 1.
    assert.equal(await target.waitForLine(/^handled /, EVENT_TIMEOUT_MS), "handled 1 code 1");
    await finishesNormally(target);
    await log.groupDone(1n);
    assert.equal(log.hits.length, 2, "both writes, around the INT1");
    assert.equal(log.of("log").filter((e) => /no cause/.test(e.message)).length, 0);
  });

  test("signals - job control works while armed: SIGSTOP stops, SIGCONT resumes", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("demo-counter");
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)]);
    await log.until("a hit", () => log.hits.length >= 1);
    process.kill(target.pid, "SIGSTOP");
    // A group-stopped tracee (PTRACE_LISTEN) shows "t", not "T". It is stopped
    // when it stays so for three of its 200 ms periods without a hit.
    let since = { hits: -1, atMs: 0 };
    await waitFor("target stopped: state t/T and no hit for 600 ms", async () => {
      const state = await procState(target.pid);
      if ((state !== "t" && state !== "T") || log.hits.length !== since.hits) {
        since = { hits: log.hits.length, atMs: Date.now() };
        return false;
      }
      return Date.now() - since.atMs >= 600;
    });
    const seen = log.hits.length;
    process.kill(target.pid, "SIGCONT");
    await log.until("a hit after SIGCONT", () => log.hits.length > seen);
    process.kill(target.pid, "SIGTERM");
    assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
    assert.deepEqual(await log.targetExited(target.pid), { kind: "target-exited", pid: target.pid, how: "exited", code: 0 });
  });

  test("signals - a SIGSTOPped target is armed and disarmed in place; SIGCONT resumes it", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("demo-counter");
    const [counter] = readyAddresses(target) as [bigint];
    process.kill(target.pid, "SIGSTOP");
    await waitFor("target stopped (T)", async () => (await procState(target.pid)) === "T");
    assert.deepEqual(await helper.arm(target.pid, 1n, [write8(counter)]), { threadsTotal: 1, threadsArmed: 1, drMask: 1, reservedMask: 1 });
    assert.match((await procState(target.pid)) ?? "", /^[tT]$/, "arming does not resume a stopped process");
    process.kill(target.pid, "SIGCONT");
    await log.until("a hit after SIGCONT", () => log.hits.length >= 1);
    process.kill(target.pid, "SIGSTOP");
    await waitFor("target stopped again (t)", async () => (await procState(target.pid)) === "t");
    const counts = await helper.disarm(target.pid, 1n);
    assert.equal(counts.trapped, counts.delivered + counts.suppressed);
    assert.equal(await target.tracerPid(), 0);
    assert.equal(await procState(target.pid), "T", "still stopped after detach");
    process.kill(target.pid, "SIGCONT");
    await waitFor("target running after SIGCONT", async () => (await procState(target.pid)) !== "T");
    process.kill(target.pid, "SIGTERM");
    assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
  });

  test("threads - a thread that cannot stop (vfork) outlives a disarm; armed again meanwhile, every thread is watched, never reported gone", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper({ requestTimeoutMs: scaled(30_000) });
    const target = await s.target("vfork-stall");
    const [counter] = readyAddresses(target) as [bigint];
    const tids = (await readdir(`/proc/${target.pid}/task`)).map(Number);
    const writerTid = tids.find((tid) => tid !== target.pid)!;
    // /proc/TID/status is the thread's own: its tracer, not the process leader's.
    const tracerOf = (tid: number) => procStatusField(tid, "TracerPid");
    assert.equal((await helper.arm(target.pid, 1n, [write8(counter)])).threadsArmed, 2);
    await log.until("hits of the writer thread", () => log.hitsOf(1n).some((h) => h.tid === writerTid));
    // The main thread waits for its vfork child in an uninterruptible sleep: no ptrace stop
    // reaches it until the child exits (when it reads a line), past the helper's stop deadline.
    target.send("vfork");
    await target.waitForLine(/^vforking$/);
    await waitFor("the main thread held in vfork (D)", async () => (await procState(target.pid)) === "D");
    const first = await helper.disarm(target.pid, 1n);
    assert.equal(first.trapped, first.delivered + first.suppressed);
    assert.equal(await tracerOf(writerTid), 0, "the writer thread is let go at once");
    assert.notEqual(await tracerOf(target.pid), 0, "the held thread is let go only when it stops");
    // Armed again before the held thread stopped: the writer is taken back, nothing is gone.
    const arming = helper.arm(target.pid, 2n, [write8(counter)]);
    arming.catch(() => {}); // awaited below, once the held thread is let go
    await waitFor("the writer thread taken back by the arm", async () => (await tracerOf(writerTid)) === helper.pid, 5_000);
    target.send("release");
    const again = await arming;
    assert.deepEqual([again.threadsTotal, again.threadsArmed], [2, 2]);
    assert.equal(await target.waitForLine(/^vforked /), "vforked 1");
    const before = log.hitsOf(2n).length;
    await log.until("hits of the writer thread after the vfork", () => log.hitsOf(2n).filter((h) => h.tid === writerTid).length > before);
    assert.notEqual(await tracerOf(writerTid), 0);
    const second = await helper.disarm(target.pid, 2n);
    assert.equal(second.trapped, second.delivered + second.suppressed);
    for (const tid of tids) assert.equal(await tracerOf(tid), 0, `tid ${tid} untraced`);
    assert.equal(target.child.exitCode, null, "the target runs on");
    target.send("quit");
    await finishesNormally(target);
  });

  test("fork - a child forked while armed is not watched and not harmed", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 1000;
    const target = await s.target("counter", ["--threads", "2", "--writes", String(N), "--fork"]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)]);
    target.send("go");
    assert.equal(await target.waitForLine(/^child /, EVENT_TIMEOUT_MS), "child exit 0");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    const forks = log.of("target-fork");
    assert.equal(forks.length, 1);
    assert.equal(forks[0]?.pid, target.pid);
    assert.ok((forks[0]?.childPid ?? 0) > 0 && forks[0]?.childPid !== target.pid, "the child's pid");
    assert.equal(log.hits.length, 2 * N, "only the parent's writes");
    assert.ok(log.hits.every((h) => h.pid === target.pid));
    assert.equal(done.counts.delivered, BigInt(2 * N));
  });

  test("safety - the agent SIGKILLed while armed: the helper disarms, detaches and exits", async (t) => {
    const s = scene(t);
    const target = await s.target("counter", ["--threads", "2", "--writes", "200000"]);
    const [counter] = readyAddresses(target) as [bigint];
    // A stand-in agent: arms through HelperProcess, reports, then waits to be killed.
    const clientUrl = new URL("../../agent/helper-process.js", import.meta.url).href;
    const script = `
      const { HelperProcess } = await import(${JSON.stringify(clientUrl)});
      const h = await HelperProcess.start();
      (async () => { for await (const e of h.events()) if (e.kind === "hits") console.log("hits " + e.hits.length); })();
      await h.arm(${target.pid}, 1n, [{ dr: 0, mode: "w", length: 8, address: ${counter}n }]);
      console.log("armed " + h.pid);
      setInterval(() => {}, 1000);`;
    const agent = await s.target("agent", ["--input-type=module", "-e", script], { path: process.execPath });
    const armedLine = await agent.waitForLine(/^armed \d+$/, EVENT_TIMEOUT_MS);
    const helperPid = Number(armedLine.split(" ")[1]);
    assert.equal(await target.tracerPid(), helperPid);
    target.send("go");
    await agent.waitForLine(/^hits /, EVENT_TIMEOUT_MS);
    process.kill(agent.pid, "SIGKILL");
    await waitFor("helper gone", () => !existsSync(`/proc/${helperPid}`) || undefined);
    assert.equal(await target.tracerPid(), 0);
    await finishesNormally(target);
  });

  test("safety - helper stdin closed while armed: helper exits, target untraced, it finishes normally", async (t) => {
    const s = scene(t);
    const target = await s.target("counter", ["--threads", "2", "--writes", "20000"]);
    const raw = new RawHelper(t);
    const hello = decodeHello((await raw.next(MessageType.Hello)).payload);
    assert.equal(hello.protocolVersion, PROTOCOL_VERSION);
    raw.send(encodeResolve(1, { pid: target.pid, offset: 0n, name: "fw_counter" }));
    const sym = decodeResolved((await raw.next(MessageType.Resolved)).payload);
    raw.send(
      encodeArm(2, {
        pid: target.pid,
        group: 1n,
        maxHits: 0n,
        maxHitsPerSecond: 0,
        backoffMs: 0,
        chunks: [write8(sym.address)],
        conditions: [],
        tids: [],
        stackDepth: 0,
        backend: "ptrace",
        countOnly: false,
        countIntervalMs: 0,
      }),
    );
    assert.equal(decodeArmed((await raw.next(MessageType.Armed)).payload).threadsArmed, 1);
    target.send("go");
    await raw.next(MessageType.Hits); // it is writing, and trapping
    raw.child.stdin.end();
    assert.deepEqual(await raw.exit(), { code: 0, signal: null });
    assert.equal(await target.tracerPid(), 0);
    await finishesNormally(target);
  });

  test("safety - SIGTERM to the helper while armed and hot: helper exits 0, target finishes normally", async (t) => {
    const s = scene(t);
    const { helper, target } = await hotArmedCounter(s, 2);
    process.kill(helper.pid, "SIGTERM");
    assert.deepEqual(await helper.exited, { code: 0, signal: null });
    assert.equal(await target.tracerPid(), 0);
    await finishesNormally(target);
  });

  test("safety - SIGSEGV in the helper while armed and hot: registers cleared before it dies", async (t) => {
    const s = scene(t);
    const { helper, target } = await hotArmedCounter(s, 2);
    process.kill(helper.pid, "SIGSEGV");
    assert.deepEqual(await helper.exited, { code: null, signal: "SIGSEGV" });
    await waitFor("target untraced", async () => (await target.tracerPid()) === 0);
    await finishesNormally(target);
  });

  test("safety - shutdown while armed and hot: every target untraced and unharmed", async (t) => {
    const s = scene(t);
    const { helper, target } = await hotArmedCounter(s, 4);
    await helper.shutdown();
    assert.deepEqual(await helper.exited, { code: 0, signal: null });
    assert.equal(await target.tracerPid(), 0);
    await finishesNormally(target);
  });

  test("threads - the leader exits (pthread_exit) while 3 threads keep writing: every hit, then exit 0", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 2000;
    const T = 3;
    const target = await s.target("leader-exit", ["--threads", String(T), "--writes", String(N)]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)]);
    target.send("go");
    await target.waitForLine(/^leader gone$/, EVENT_TIMEOUT_MS);
    await target.waitForLine(/^done$/, EVENT_TIMEOUT_MS);
    const done = await log.groupDone(1n);
    const exited = await log.targetExited(target.pid);
    assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
    assert.equal(log.hits.length, N * T);
    const perTid = new Map<number, number>();
    for (const h of log.hits) perTid.set(h.tid, (perTid.get(h.tid) ?? 0) + 1);
    assert.equal(perTid.size, T);
    assert.ok(!perTid.has(target.pid), "the leader wrote nothing");
    assert.deepEqual([...perTid.values()], [N, N, N]);
    assert.deepEqual(done.counts, { trapped: BigInt(N * T), delivered: BigInt(N * T), suppressed: 0n, filtered: 0n, lost: 0n });
    assert.deepEqual(exited, { kind: "target-exited", pid: target.pid, how: "exited", code: 0 });
    assert.ok(log.events.indexOf(done) < log.events.indexOf(exited));
  });

  test("threads - arming after the leader exited covers the other threads", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 500;
    const T = 2;
    const target = await s.target("leader-exit", ["--threads", String(T), "--writes", String(N), "--wait"]);
    const [counter] = readyAddresses(target) as [bigint];
    target.send("go");
    await target.waitForLine(/^leader gone$/, EVENT_TIMEOUT_MS);
    assert.equal(await procState(target.pid), "Z", "the leader is a zombie");
    const armed = await helper.arm(target.pid, 1n, [write8(counter)]);
    assert.deepEqual(armed, { threadsTotal: T, threadsArmed: T, drMask: 1, reservedMask: 1 });
    target.send("write");
    await target.waitForLine(/^done$/, EVENT_TIMEOUT_MS);
    const done = await log.groupDone(1n);
    assert.deepEqual(await log.targetExited(target.pid), { kind: "target-exited", pid: target.pid, how: "exited", code: 0 });
    assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
    assert.equal(log.hits.length, N * T);
    assert.deepEqual(done.counts, { trapped: BigInt(N * T), delivered: BigInt(N * T), suppressed: 0n, filtered: 0n, lost: 0n });
  });

  test("threads - 5000 short-lived threads each write once: 5000 exact hits, then THREADS 1 of 1 armed", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const COUNT = 5000;
    const target = await s.target("short-threads", [String(COUNT), "8"]);
    const [counter] = readyAddresses(target) as [bigint];
    assert.deepEqual(await helper.arm(target.pid, 1n, [write8(counter)]), { threadsTotal: 1, threadsArmed: 1, drMask: 1, reservedMask: 1 });
    const started = Date.now();
    target.send("go");
    assert.equal(await target.waitForLine(/^done /, EVENT_TIMEOUT_MS), `done ${COUNT}`);
    await log.until(`${COUNT} hits`, () => log.hits.length >= COUNT);
    const elapsedMs = Date.now() - started;
    // Under the lock each thread stores its own value k = 1..COUNT, once.
    const values = log.hits.map((h) => h.newValue).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    assert.deepEqual(values, Array.from({ length: COUNT }, (_, i) => BigInt(i + 1)));
    assert.ok(log.hits.every((h) => h.oldValue === h.newValue - 1n), "each write saw its predecessor's value");
    const tids = new Set(log.hits.map((h) => h.tid));
    assert.equal(tids.size, COUNT, "one hit per thread");
    assert.ok(!tids.has(target.pid));
    const threads = () => log.of("threads").filter((e) => e.pid === target.pid);
    await log.until("THREADS: only main left, armed", () => {
      const last = threads().at(-1);
      return last !== undefined && last.threadsTotal === 1 && last.threadsArmed === 1;
    });
    assert.ok(threads().every((e) => e.threadsArmed <= e.threadsTotal));
    const counts = await helper.disarm(target.pid, 1n);
    assert.deepEqual(counts, { trapped: BigInt(COUNT), delivered: BigInt(COUNT), suppressed: 0n, filtered: 0n, lost: 0n, reservedMask: 1 });
    target.send("quit");
    assert.deepEqual(await target.waitForExit(EVENT_TIMEOUT_MS), { code: 0, signal: null });
    t.diagnostic(`${COUNT} threads created, armed, trapped and joined in ${elapsedMs} ms; ${threads().length} THREADS events`);
  });

  test("rate limit - 1000/s on a hot writer: backs off and resumes, counts add up, delivered within the rate", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const RATE = 1000;
    const target = await s.target("hot-writer");
    const [counter] = readyAddresses(target) as [bigint];
    const speed = async (tag: string, ms: number): Promise<number> => {
      target.send(`run ${ms} ${tag}`);
      const line = await target.waitForLine(new RegExp(`^wrote ${tag} `), EVENT_TIMEOUT_MS);
      const [, , writes, , ns] = line.split(" ");
      return Number(writes) / (Number(ns) / 1e9);
    };
    const before = await speed("before", 1000);
    const armedAt = Date.now();
    await helper.arm(target.pid, 1n, [write8(counter)], { maxHitsPerSecond: RATE });
    const limited = await speed("limited", 3000);
    const counts = await helper.disarm(target.pid, 1n);
    const elapsedS = (Date.now() - armedAt) / 1000;
    assert.equal(await target.tracerPid(), 0);

    const backoffs = log.of("group-backoff");
    assert.ok(backoffs.length >= 1, "GROUP_BACKOFF seen");
    assert.ok(log.of("group-resumed").length >= 1, "GROUP_RESUMED seen");
    for (const b of backoffs) assert.deepEqual([b.pid, b.group], [target.pid, 1n]);
    assert.ok(backoffs.every((b, i) => b.suppressedSoFar >= 1n && (i === 0 || b.suppressedSoFar >= (backoffs[i - 1] as typeof b).suppressedSoFar)));
    assert.equal(counts.trapped, counts.delivered + counts.suppressed + counts.filtered);
    assert.equal(counts.filtered, 0n);
    assert.ok(counts.suppressed >= BigInt(backoffs.length), "each back-off was started by a suppressed trap");
    assert.ok(Number(counts.delivered) <= RATE * elapsedS + RATE, `${counts.delivered} delivered in ${elapsedS} s`);
    await log.until("every delivered hit", () => BigInt(log.hits.length) === counts.delivered);
    // Unwatched speed: the mean of a run before arming and one after the detach.
    const unwatched = (before + (await speed("after", 1000))) / 2;
    target.send("quit");
    await finishesNormally(target);
    t.diagnostic(
      `rate ${RATE}/s for ${elapsedS.toFixed(2)} s: delivered ${counts.delivered}, suppressed ${counts.suppressed}, ` +
        `${backoffs.length} back-offs; target speed limited/unwatched = ${(limited / 1e6).toFixed(0)}M/${(unwatched / 1e6).toFixed(0)}M writes/s = ${((100 * limited) / unwatched).toFixed(1)} %`,
    );
  });

  test("conditions - == K, and >= with < ANDed, deliver exactly the matching writes; the rest are filtered", { skip: oneRegisterPerAccess }, async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 1000;
    const target = await s.target("counter", ["--threads", "1", "--writes", String(N)]);
    const [counter] = readyAddresses(target) as [bigint];
    const v = (i: number): bigint => (1n << 32n) | BigInt(i);
    await helper.arm(target.pid, 1n, [write8(counter, 0)], { conditions: [{ op: "==", value: v(500) }] });
    await helper.arm(target.pid, 2n, [write8(counter, 1)], { conditions: [{ op: ">=", value: v(100) }, { op: "<", value: v(200) }] });
    target.send("go");
    await finishesNormally(target);
    const [d1, d2] = [await log.groupDone(1n), await log.groupDone(2n)];
    const g1 = log.hits.filter((h) => h.group === 1n);
    const g2 = log.hits.filter((h) => h.group === 2n);
    assert.deepEqual(g1.map((h) => [h.oldValue, h.newValue]), [[v(499), v(500)]], "old value follows filtered traps too");
    assert.deepEqual(g2.map((h) => h.newValue), Array.from({ length: 100 }, (_, i) => v(100 + i)));
    assert.deepEqual(d1.counts, { trapped: BigInt(N), delivered: 1n, suppressed: 0n, filtered: BigInt(N - 1), lost: 0n });
    assert.deepEqual(d2.counts, { trapped: BigInt(N), delivered: 100n, suppressed: 0n, filtered: BigInt(N - 100), lost: 0n });
  });

  test("conditions - changed: a value stored 3 times in a row is delivered once", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const M = 500;
    const target = await s.target("reader-writer", ["0", String(M), "3"]);
    const [value] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(value)], { conditions: [{ op: "changed" }] });
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.deepEqual(log.hits.map((h) => [h.oldValue, h.newValue]), Array.from({ length: M }, (_, i) => [BigInt(i), BigInt(i + 1)]));
    assert.deepEqual(done.counts, { trapped: BigInt(3 * M), delivered: BigInt(M), suppressed: 0n, filtered: BigInt(2 * M), lost: 0n });
  });

  test("conditions - rw + unchanged is a read-only watch: exactly the 700 reads of 700 reads and 300 writes", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const [READS, WRITES] = [700, 300];
    const target = await s.target("reader-writer", [String(READS), String(WRITES), "1"]);
    const [value] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [{ dr: 0, mode: "rw", length: 8, address: value }], { conditions: [{ op: "unchanged" }] });
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.equal(log.hits.length, READS);
    assert.ok(log.hits.every((h) => h.newValue === h.oldValue && h.mode === "rw"));
    // Read i (i <= 300) sees the value written by iteration i - 1.
    assert.deepEqual(log.hits.slice(0, 3).map((h) => h.newValue), [0n, 1n, 2n]);
    assert.equal(log.hits.at(-1)?.newValue, BigInt(WRITES));
    assert.deepEqual(done.counts, { trapped: BigInt(READS + WRITES), delivered: BigInt(READS), suppressed: 0n, filtered: BigInt(WRITES), lost: 0n });
  });

  test("tids - only the listed threads' traps are delivered; the others are counted as filtered", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 1000;
    const target = await s.target("counter", ["--threads", "4", "--writes", String(N), "--hold"]);
    const [counter] = readyAddresses(target) as [bigint];
    const tids = (await target.waitForLine(/^tids /)).split(" ").slice(1).map(Number);
    assert.equal(tids.length, 4);
    const wanted = [tids[0] as number, tids[2] as number];
    const armed = await helper.arm(target.pid, 1n, [write8(counter)], { tids: wanted });
    assert.equal(armed.threadsArmed, 5, "every thread is armed; the filter is applied to traps");
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.deepEqual(done.counts, { trapped: BigInt(4 * N), delivered: BigInt(2 * N), suppressed: 0n, filtered: BigInt(2 * N), lost: 0n });
    for (const tid of tids) {
      assert.equal(log.hits.filter((h) => h.tid === tid).length, wanted.includes(tid) ? N : 0, `tid ${tid}`);
    }
  });

  test("arm - out-of-range options are EINVAL and the target is never touched", async (t) => {
    const s = scene(t);
    const { helper } = await s.helper();
    const target = await s.target("counter", ["--writes", "10"]);
    const [counter] = readyAddresses(target) as [bigint];
    await rejectsWith(helper.arm(target.pid, 1n, [write8(counter)], { tids: [0] }), "EINVAL", /thread filter names tid 0/);
    await rejectsWith(helper.arm(target.pid, 1n, [write8(counter)], { backoffMs: 3_600_001 }), "EINVAL", /backoff of 3600001 ms/);
    assert.equal(await target.tracerPid(), 0);
    target.send("go");
    await finishesNormally(target);
  });

  test("stacks - an -O2 -fomit-frame-pointer call chain unwinds to fw_level_c, fw_level_b, fw_level_a, main", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const N = 20;
    const target = await s.target("stack-chain", [String(N)]);
    const [counter] = readyAddresses(target) as [bigint];
    await helper.arm(target.pid, 1n, [write8(counter)], { stackDepth: 16 });
    target.send("go");
    await finishesNormally(target);
    const done = await log.groupDone(1n);
    assert.equal(done.counts.delivered, BigInt(N));
    assert.equal(log.hits.length, N);
    for (const h of log.hits) {
      assert.ok(h.stack.length >= 4 && h.stack.length <= 16, `${h.stack.length} frames`);
      assert.deepEqual(h.stack.slice(0, 4).map((f) => f.function), ["fw_level_c", "fw_level_b", "fw_level_a", "main"]);
      assert.ok(h.stack.slice(0, 4).every((f) => f.module === fixturePath("stack-chain") && f.offset > 0n));
      assert.equal(h.stack[0]?.ip, h.ip, "frame 0 is the trap's ip");
    }
    const plain = await s.target("counter", ["--writes", "3"]);
    const [plainCounter] = readyAddresses(plain) as [bigint];
    await helper.arm(plain.pid, 2n, [write8(plainCounter)]);
    plain.send("go");
    await finishesNormally(plain);
    await log.groupDone(2n);
    assert.ok(log.hits.filter((h) => h.group === 2n).every((h) => h.stack.length === 0), "no stack unless asked");
    const last = log.hits.find((h) => h.group === 1n) as HelperHit;
    t.diagnostic(`stack: ${last.stack.map((f) => `${f.function}+0x${f.offset.toString(16)}`).join(" <- ")}`);
  });

  test("stacks - each distinct ip is defined once per process, before the first hit that uses it (raw protocol)", async (t) => {
    const s = scene(t);
    const N = 20;
    const target = await s.target("stack-chain", [String(N)]);
    const [counter] = readyAddresses(target) as [bigint];
    const raw = new RawHelper(t);
    await raw.next(MessageType.Hello);
    raw.send(
      encodeArm(1, {
        pid: target.pid,
        group: 1n,
        maxHits: 0n,
        maxHitsPerSecond: 0,
        backoffMs: 0,
        chunks: [write8(counter)],
        conditions: [],
        tids: [],
        stackDepth: 8,
        backend: "ptrace",
        countOnly: false,
        countIntervalMs: 0,
      }),
    );
    await raw.next(MessageType.Armed);
    target.send("go");
    await finishesNormally(target);
    await raw.next(MessageType.TargetExited);
    const defined = new Map<bigint, number>();
    let hits = 0;
    for (const frame of raw.seen) {
      const event = decodeEvent(frame);
      if (event?.kind === "symbols") {
        assert.equal(event.pid, target.pid);
        for (const d of event.symbols) defined.set(d.ip, (defined.get(d.ip) ?? 0) + 1);
      } else if (event?.kind === "hits") {
        for (const h of event.hits) {
          hits++;
          assert.ok(h.ips.length >= 4 && h.ips.length <= 8);
          for (const ip of h.ips) assert.ok(defined.has(ip), `ip 0x${ip.toString(16)} used before its definition`);
        }
      }
    }
    assert.equal(hits, N);
    assert.ok([...defined.values()].every((n) => n === 1), "no ip defined twice");
  });

  test("reservations - the DR index written stays reserved after detach; re-arming it reuses the slot", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const target = await s.target("counter", ["--writes", "100", "--other"]);
    const [counter, other, bytes] = readyAddresses(target) as [bigint, bigint, bigint];
    assert.deepEqual(await helper.arm(target.pid, 1n, [write8(counter, 2)]), { threadsTotal: 1, threadsArmed: 1, drMask: 0b100, reservedMask: 0b100 });
    assert.deepEqual(await helper.disarm(target.pid, 1n), { trapped: 0n, delivered: 0n, suppressed: 0n, filtered: 0n, lost: 0n, reservedMask: 0b100 });
    assert.equal(await target.tracerPid(), 0);
    if (existsSync("/usr/bin/perf")) {
      // The kernel still holds DR2's slot for the thread: perf gets the other three, not four.
      const events = [bytes, bytes + 8n, bytes].flatMap((a) => ["-e", `mem:0x${a.toString(16)}/8:w`]);
      const perf = await s.target("perf", ["stat", "-x", ",", "-o", "/dev/null", ...events, "-p", String(target.pid)], { path: "perf" });
      await waitFor("perf holds three breakpoints", async () => {
        const fds = await readdir(`/proc/${perf.pid}/fd`).catch(() => []);
        const links = await Promise.all(fds.map((fd) => readlink(`/proc/${perf.pid}/fd/${fd}`).catch(() => "")));
        return links.filter((l) => l === "anon_inode:[perf_event]").length >= 3;
      });
      await rejectsWith(helper.arm(target.pid, 2n, [write8(other, 0)]), "ENOSPC", /POKEUSER DR0=/);
      assert.deepEqual(await helper.arm(target.pid, 3n, [write8(other, 2)]), { threadsTotal: 1, threadsArmed: 1, drMask: 0b100, reservedMask: 0b100 });
      target.send("go");
      await finishesNormally(target);
      const done = await log.groupDone(3n);
      assert.deepEqual(done.counts, { trapped: 100n, delivered: 100n, suppressed: 0n, filtered: 0n, lost: 0n });
      return;
    }
    assert.deepEqual(await helper.arm(target.pid, 3n, [write8(other, 2)]), { threadsTotal: 1, threadsArmed: 1, drMask: 0b100, reservedMask: 0b100 });
    assert.deepEqual(await helper.disarm(target.pid, 3n), { trapped: 0n, delivered: 0n, suppressed: 0n, filtered: 0n, lost: 0n, reservedMask: 0b100 });
    assert.deepEqual(await helper.arm(target.pid, 4n, [write8(other, 0)]), { threadsTotal: 1, threadsArmed: 1, drMask: 0b001, reservedMask: 0b101 });
    target.send("go");
    await finishesNormally(target);
  });

  test("oom - the helper sets oom_score_adj -1000, or warns when it may not (no CAP_SYS_RESOURCE)", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    const CAP_SYS_RESOURCE = 24n;
    const status = await readFile(`/proc/${helper.pid}/status`, "utf8");
    const capEff = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1] ?? "0"}`);
    const adj = (await readFile(`/proc/${helper.pid}/oom_score_adj`, "utf8")).trim();
    if ((capEff >> CAP_SYS_RESOURCE) & 1n) {
      assert.equal(adj, "-1000");
      assert.equal(log.of("log").filter((e) => /oom_score_adj/.test(e.message)).length, 0);
      return;
    }
    const warning = await log.until("a warning about oom_score_adj", () => log.of("log").find((e) => /oom_score_adj/.test(e.message)));
    assert.equal(warning.level, "warning");
    assert.match(warning.message, /cannot set \/proc\/self\/oom_score_adj to -1000 \(Permission denied\)/);
    t.diagnostic(`no CAP_SYS_RESOURCE here: oom_score_adj stays ${adj}; the helper said so`);
  });

  test("client - a missing helper binary fails start with a clear error", async () => {
    await assert.rejects(
      HelperProcess.start({ path: "/nonexistent/fleetwatch-helper" }),
      (err: unknown) => err instanceof HelperExitedError && /cannot start fleetwatch-helper at \/nonexistent/.test(err.message),
    );
  });

  test("client - a helper speaking another protocol version is refused", async (t) => {
    const fake = await fakeHelper(t, "v1");
    await assert.rejects(HelperProcess.start({ path: fake }), (err: unknown) => {
      assert.ok(err instanceof HelperProtocolError);
      assert.match(err.message, new RegExp(`helper speaks protocol 1, this agent speaks ${PROTOCOL_VERSION}$`));
      return true;
    });
  });

  test("client - a request without an answer times out; shutdown then closes stdin", async (t) => {
    const fake = await fakeHelper(t, "mute");
    const helper = await HelperProcess.start({ path: fake, requestTimeoutMs: scaled(300) });
    await assert.rejects(helper.resolve(1234, "x"), (err: unknown) => {
      assert.ok(err instanceof HelperTimeoutError);
      assert.equal(err.attempted, "resolve 'x' in pid 1234");
      return true;
    });
    await helper.shutdown();
    assert.deepEqual(await helper.exited, { code: 0, signal: null });
  });

  test("client - requests after the helper exited reject with a clear error", async (t) => {
    const s = scene(t);
    const { helper, log } = await s.helper();
    await helper.shutdown();
    await assert.rejects(helper.resolve(1, "x"), /fleetwatch-helper \(pid \d+\) exited \(code 0\) before answering "resolve 'x' in pid 1"/);
    await log.until("the events iterable to end", () => log.finished);
  });
});
