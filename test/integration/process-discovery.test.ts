// Process discovery against real processes (test/fixtures/idler.c) and a
// cgroup v2 group made for the test: selection by each field, the host
// policy, late joiners, exits, pid reuse and stopping a watch. Every
// process and cgroup made here is removed at the end of its test.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm, rmdir, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { before, test } from "node:test";
import type { TestContext } from "node:test";

import { ProcessSelectorError, scanProcesses, watchProcesses } from "../../agent/process-discovery.js";
import type { ProcessEvent, ProcessInfo, ProcessSelector } from "../../agent/process-discovery.js";
import { diffProcesses, processKey } from "../../agent/process-match.js";
import { buildFixtures, fixturePath, procState, startTarget } from "../support/targets.js";
import type { StartOptions, Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

const TEST_TIMEOUT_MS = 60_000;
// Watches in tests poll often so that conditions settle fast.
const WATCH_INTERVAL_MS = 50;
// USER_HZ, the unit of /proc/PID/stat start times, is 100 on x86 Linux.
const CLOCK_TICKS_PER_SECOND = 100;

before(async () => {
  await buildFixtures();
});

const uniqueName = (prefix: string): string => `${prefix}-${randomBytes(3).toString("hex")}`;

/** The identity of a started idler, to tell when it is really gone (its pid may be reused). */
const startTimes = new WeakMap<Target, number>();

/**
 * Stops an idler and waits until its process is gone, not just its parent:
 * an "exit" line lets it reap its own children; SIGKILL only if it does not
 * listen. An idler started with --as-pid is reaped by its wrapper this way.
 */
async function stopIdler(target: Target): Promise<void> {
  target.send("exit");
  await target.waitForExit(5_000).catch(() => target.kill());
  const startTime = startTimes.get(target);
  await waitFor(`idler pid ${target.pid} gone`, async () => (await startTimeOf(target.pid).catch(() => undefined)) !== startTime);
}

/** Starts idlers for one test and stops whatever is left of them when it ends. */
function idlers(t: TestContext): (args?: string[], options?: StartOptions) => Promise<Target> {
  const started: Target[] = [];
  t.after(async () => {
    await Promise.all(started.map(stopIdler));
  });
  return async (args = [], options = {}) => {
    const target = await startTarget("idler", args, options);
    started.push(target);
    startTimes.set(target, await startTimeOf(target.pid));
    return target;
  };
}

/** Runs a watch in the background, keeping every event; tests wait on named conditions. */
class WatchLog {
  readonly events: ProcessEvent[] = [];
  ended = false;
  private error: unknown;
  readonly finished: Promise<void>;
  private readonly controller = new AbortController();

  constructor(t: TestContext, selector: ProcessSelector, intervalMs = WATCH_INTERVAL_MS) {
    const events = watchProcesses(selector, { intervalMs, signal: this.controller.signal });
    this.finished = (async () => {
      try {
        for await (const event of events) this.events.push(event);
      } catch (err) {
        this.error = err;
      } finally {
        this.ended = true;
      }
    })();
    t.after(async () => {
      this.controller.abort();
      await this.finished;
    });
  }

  abort(): void {
    this.controller.abort();
  }

  /** The first event of that kind for that process (pid, and start time when given). */
  waitForEvent(kind: ProcessEvent["kind"], pid: number, startTime?: number, timeoutMs = 10_000): Promise<ProcessEvent> {
    return waitFor(`watch reports ${kind} pid ${pid}${startTime === undefined ? "" : ` started at tick ${startTime}`}`, () => {
      if (this.error) throw this.error;
      return this.events.find((e) => e.kind === kind && e.process.pid === pid && (startTime === undefined || e.process.startTime === startTime));
    }, timeoutMs);
  }

  /** Events as "kind pid@startTime", for exact comparisons. */
  summary(): string[] {
    return this.events.map((e) => `${e.kind} ${processKey(e.process)}`);
  }
}

/** Field 22 of /proc/PID/stat, read independently of the code under test. */
async function startTimeOf(pid: number): Promise<number> {
  const text = await readFile(`/proc/${pid}/stat`, "utf8");
  return Number(text.slice(text.lastIndexOf(")") + 2).split(" ")[19]);
}

async function ownCgroup(): Promise<string | undefined> {
  const text = await readFile("/proc/self/cgroup", "utf8");
  return /^0::(.*)$/m.exec(text)?.[1];
}

const pids = (processes: ProcessInfo[]): number[] => processes.map((p) => p.pid);

test("process-discovery - selects real processes by pid, comm and exe, each alone and together", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const start = idlers(t);
  const dir = await mkdtemp(path.join(tmpdir(), "fleetwatch-discovery-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  // A copy under another name: its exe path and its comm (from exec) differ from the fixture's.
  const copyName = uniqueName("fw-exe");
  const copyPath = path.join(dir, copyName);
  await copyFile(fixturePath("idler"), copyPath);
  const named = uniqueName("fw-comm");

  const byCopy = await start([], { path: copyPath });
  await byCopy.waitForLine(/^ready /);
  const byName = await start(["--name", named]);
  const other = await start([]);

  const [info] = await scanProcesses({ pid: byCopy.pid });
  assert.deepEqual(info, {
    pid: byCopy.pid,
    comm: copyName,
    exe: copyPath,
    cgroup: await ownCgroup(),
    startTime: await startTimeOf(byCopy.pid),
    uid: process.getuid?.(),
    euid: process.geteuid?.(),
    tracerPid: 0,
  });
  assert.deepEqual(pids(await scanProcesses({ exe: copyPath })), [byCopy.pid]);
  assert.deepEqual(pids(await scanProcesses({ comm: copyName })), [byCopy.pid]);
  assert.deepEqual(pids(await scanProcesses({ comm: named })), [byName.pid]);
  assert.deepEqual(pids(await scanProcesses({ pid: byName.pid, comm: named })), [byName.pid]);
  assert.deepEqual(pids(await scanProcesses({ exe: fixturePath("idler"), comm: named })), [byName.pid]);
  assert.deepEqual(pids(await scanProcesses({ exe: fixturePath("idler") })), [byName.pid, other.pid].sort((a, b) => a - b));
  // Every given field must match.
  assert.deepEqual(await scanProcesses({ exe: copyPath, comm: named }), []);
  assert.deepEqual(await scanProcesses({ pid: other.pid, comm: named }), []);
  await assert.rejects(scanProcesses({ comm: "" }), ProcessSelectorError);
});

test("process-discovery - a comm longer than 15 bytes selects by the kernel's truncated name", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const start = idlers(t);
  const long = `fleetwatch${randomBytes(3).toString("hex")}-long-name`;
  const target = await start(["--name", long]);
  const ready = await target.waitForLine(/^ready /);
  assert.equal(ready.split(" ")[2], long.slice(0, 15), "the kernel keeps 15 bytes");
  const [info] = await scanProcesses({ comm: long });
  assert.equal(info?.pid, target.pid);
  assert.equal(info?.comm, long.slice(0, 15));
});

test("process-discovery - a process whose executable was deleted no longer matches that path", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const start = idlers(t);
  const dir = await mkdtemp(path.join(tmpdir(), "fleetwatch-discovery-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const copyPath = path.join(dir, uniqueName("fw-del"));
  await copyFile(fixturePath("idler"), copyPath);
  const target = await start([], { path: copyPath });
  await target.waitForLine(/^ready /);
  assert.deepEqual(pids(await scanProcesses({ exe: copyPath })), [target.pid]);
  await rm(copyPath);
  assert.deepEqual(await scanProcesses({ exe: copyPath }), []);
  const [info] = await scanProcesses({ pid: target.pid });
  assert.equal(info?.exe, `${copyPath} (deleted)`);
});

test("process-discovery - never returns pid 1, the agent itself, excluded pids, kernel threads or zombies", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const start = idlers(t);
  const name = uniqueName("fw-zomb");
  const parent = await start(["--name", name, "--zombie"]);
  const zombie = Number((await parent.waitForLine(/^zombie \d+/)).split(" ")[1]);
  await waitFor(`pid ${zombie} is a zombie`, async () => (await procState(zombie)) === "Z");

  // The zombie has the same name as its parent: only the live one is returned.
  assert.deepEqual(pids(await scanProcesses({ comm: name })), [parent.pid]);
  assert.deepEqual(await scanProcesses({ pid: zombie }), []);
  assert.deepEqual(await scanProcesses({ pid: process.pid }), [], "the agent's own pid");
  assert.deepEqual(await scanProcesses({ pid: parent.pid }, { excludePids: [parent.pid] }), [], "an excluded pid (the helper's)");
  assert.deepEqual(await scanProcesses({ comm: name }, { excludePids: () => [parent.pid] }), [], "excluded pids asked per scan");

  const everything = pids(await scanProcesses({ cgroup: "/" }));
  assert.ok(everything.includes(parent.pid), "a plain process is found by the root cgroup");
  assert.ok(!everything.includes(1), "pid 1");
  assert.ok(!everything.includes(process.pid), "the agent's own pid");
  assert.ok(!everything.includes(zombie), "the zombie");
  // Kernel threads (PF_KTHREAD in stat's flags) are never returned; a PID namespace may show none.
  const kernelThreads: number[] = [];
  for (const pid of (await readdir("/proc")).filter((n) => /^\d+$/.test(n)).map(Number)) {
    const text = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
    const flags = Number(text.slice(text.lastIndexOf(")") + 2).split(" ")[6]);
    if ((flags & 0x0020_0000) !== 0) kernelThreads.push(pid);
  }
  if (kernelThreads.length > 0) {
    assert.deepEqual(everything.filter((pid) => kernelThreads.includes(pid)), [], "kernel threads");
    assert.deepEqual(await scanProcesses({ pid: kernelThreads[0]! }), []);
  } else {
    t.diagnostic("no kernel threads visible in /proc here; that check was not made");
  }

  // The idler reaps its zombie on "exit": nothing is left behind.
  parent.send("exit");
  assert.deepEqual(await parent.waitForExit(), { code: 0, signal: null });
  await waitFor(`zombie ${zombie} reaped`, async () => (await procState(zombie)) === undefined);
});

test("process-discovery - skips kernel threads, zombies, half-read processes and policy pids in a procfs tree", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const root = await mkdtemp(path.join(tmpdir(), "fleetwatch-fakeproc-"));
  t.after(() => rm(root, { recursive: true, force: true }));
  const stat = (pid: number, comm: string, state: string, flags: number, startTime: number) =>
    `${pid} (${comm}) ${state} 1 ${pid} ${pid} 0 -1 ${flags} 0 0 0 0 0 0 0 0 20 0 1 0 ${startTime} 0 0 18446744073709551615 0 0\n`;
  const userFlags = 0x0040_0100;
  async function fake(pid: number, files: { stat?: string; exe?: string; cgroup?: string; status?: string }): Promise<void> {
    const dir = path.join(root, String(pid));
    await mkdir(dir);
    if (files.stat !== undefined) await writeFile(path.join(dir, "stat"), files.stat);
    if (files.exe !== undefined) await symlink(files.exe, path.join(dir, "exe"));
    if (files.cgroup !== undefined) await writeFile(path.join(dir, "cgroup"), files.cgroup);
    if (files.status !== undefined) await writeFile(path.join(dir, "status"), files.status);
  }
  const whole = (pid: number, comm: string, exe: string) => ({
    stat: stat(pid, comm, "S", userFlags, 5000 + pid),
    exe,
    cgroup: "4:memory:/x\n0::/fake/app\n",
    status: `Name:\t${comm}\nUid:\t1000\t1000\t1000\t1000\n`,
  });
  await fake(1, whole(1, "init", "/sbin/init"));
  await fake(100, whole(100, "fake (x) y", "/usr/bin/fake"));
  await fake(101, { stat: stat(101, "kworker/0:1", "I", 0x0020_8040, 30), cgroup: "0::/\n", status: "Uid:\t0\t0\t0\t0\n" });
  await fake(102, { stat: stat(102, "fake (x) y", "Z", userFlags, 5102), cgroup: "0::/fake/app\n", status: "Uid:\t1000\t1000\t1000\t1000\n" });
  await fake(103, { stat: stat(103, "fake (x) y", "S", userFlags, 5103) });
  await fake(104, whole(104, "fake (x) y", "/usr/bin/fake (deleted)"));
  await fake(105, whole(105, "agent", "/usr/bin/node"));
  await symlink("105", path.join(root, "self"));
  await mkdir(path.join(root, "sys"));

  const procRoot = root;
  assert.deepEqual(await scanProcesses({ cgroup: "/" }, { procRoot }), [
    { pid: 100, comm: "fake (x) y", exe: "/usr/bin/fake", cgroup: "/fake/app", startTime: 5100, uid: 1000, euid: 1000, tracerPid: 0 },
    { pid: 104, comm: "fake (x) y", exe: "/usr/bin/fake (deleted)", cgroup: "/fake/app", startTime: 5104, uid: 1000, euid: 1000, tracerPid: 0 },
  ]);
  assert.deepEqual(pids(await scanProcesses({ exe: "/usr/bin/fake" }, { procRoot })), [100]);
  assert.deepEqual(pids(await scanProcesses({ comm: "fake (x) y" }, { procRoot, excludePids: [100] })), [104]);
  assert.deepEqual(pids(await scanProcesses({ cgroup: "/fake" }, { procRoot })), [100, 104]);
  assert.deepEqual(await scanProcesses({ pid: 101 }, { procRoot }), [], "kernel thread");
  assert.deepEqual(await scanProcesses({ pid: 102 }, { procRoot }), [], "zombie");
  assert.deepEqual(await scanProcesses({ pid: 103 }, { procRoot }), [], "vanished while read");
  assert.deepEqual(await scanProcesses({ pid: 105 }, { procRoot }), [], "the agent itself, as /proc/self names it");
  assert.deepEqual(await scanProcesses({ pid: 999 }, { procRoot }), [], "no such pid");
});

/** The cgroup v2 hierarchy: /sys/fs/cgroup itself, or its "unified" part on a hybrid host. */
async function cgroup2MountPoint(): Promise<string | undefined> {
  const mounts = (await readFile("/proc/self/mountinfo", "utf8"))
    .split("\n")
    .map((line) => {
      const [before, after] = line.split(" - ");
      return { mountPoint: before?.split(" ")[4] ?? "", fsType: after?.split(" ")[0] };
    })
    .filter((m) => m.fsType === "cgroup2");
  return (mounts.find((m) => m.mountPoint === "/sys/fs/cgroup") ?? mounts.find((m) => m.mountPoint.startsWith("/sys/fs/cgroup/")))?.mountPoint;
}

test("process-discovery - a cgroup selects every process in it and below, and follows moves in and out", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const mountPoint = await cgroup2MountPoint();
  if (!mountPoint) return t.skip("no cgroup2 hierarchy is mounted under /sys/fs/cgroup");
  const groupName = uniqueName("fleetwatch-test");
  const group = path.join(mountPoint, groupName);
  try {
    await mkdir(group);
  } catch (err) {
    return t.skip(`cannot create a cgroup v2 group in ${mountPoint} (${(err as NodeJS.ErrnoException).code}): run as root with a writable cgroup2 mount`);
  }
  // Leaves only: with controllers enabled, cgroup v2 forbids processes in inner groups.
  const leaves = [path.join(group, "a"), path.join(group, "b")];
  const groups = [group];
  const start = idlers(t);
  const members: Target[] = [];
  // One hook, in this order: a group can only be removed once its processes are gone.
  t.after(async () => {
    await Promise.all(members.map(stopIdler));
    for (const dir of groups.reverse()) {
      await waitFor(`cgroup ${dir} removed (its processes gone)`, async () => {
        await rmdir(dir).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== "ENOENT") throw err;
        });
        return true;
      });
    }
  });
  for (const leaf of leaves) {
    await mkdir(leaf);
    groups.push(leaf);
  }
  const name = uniqueName("fw-cg");
  for (let i = 0; i < 3; i++) members.push(await start(["--name", name]));
  const [inA, inB, outside] = members as [Target, Target, Target];
  const move = (target: Target, dir: string) => writeFile(path.join(dir, "cgroup.procs"), String(target.pid));
  await move(inA, leaves[0]!);
  await move(inB, leaves[1]!);

  const [infoA] = await scanProcesses({ pid: inA.pid });
  const cgroupA = infoA?.cgroup ?? "";
  assert.ok(cgroupA.endsWith(`/${groupName}/a`), `pid ${inA.pid} is in ${cgroupA}`);
  const groupPath = cgroupA.slice(0, -"/a".length);
  const byPid = (a: number, b: number) => a - b;

  assert.deepEqual(pids(await scanProcesses({ cgroup: groupPath })), [inA.pid, inB.pid].sort(byPid));
  assert.deepEqual(pids(await scanProcesses({ cgroup: `${groupPath}/` })), [inA.pid, inB.pid].sort(byPid));
  assert.deepEqual(pids(await scanProcesses({ cgroup: `${groupPath}/a` })), [inA.pid]);
  assert.deepEqual(pids(await scanProcesses({ cgroup: `${groupPath}/b`, comm: name })), [inB.pid]);
  assert.deepEqual(await scanProcesses({ cgroup: groupPath.slice(0, -2) }), [], "a string prefix is not a parent group");
  assert.deepEqual(await scanProcesses({ cgroup: `${groupPath}/a`, pid: inB.pid }), []);

  // A watch on the group: the two members start; one moved in starts, one moved out leaves.
  const watch = new WatchLog(t, { cgroup: groupPath });
  await watch.waitForEvent("started", inA.pid);
  await watch.waitForEvent("started", inB.pid);
  await move(outside, leaves[1]!);
  const joined = await watch.waitForEvent("started", outside.pid);
  assert.equal(joined.process.cgroup, `${groupPath}/b`);
  await move(inA, mountPoint);
  const left = await watch.waitForEvent("exited", inA.pid);
  assert.equal(left.process.cgroup, `${groupPath}/a`, "the event carries what was last seen");
  watch.abort();
  await watch.finished;
  const startedAt = async (target: Target) => `${target.pid}@${await startTimeOf(target.pid)}`;
  const [a, b] = [inA, inB].sort((x, y) => x.pid - y.pid);
  assert.deepEqual(watch.summary(), [
    `started ${await startedAt(a!)}`,
    `started ${await startedAt(b!)}`,
    `started ${await startedAt(outside)}`,
    `exited ${await startedAt(inA)}`,
  ]);
});

test("process-discovery - a watch reports current matches, late joiners and exits, then stops on abort", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const start = idlers(t);
  const name = uniqueName("fw-watch");
  const early = await start(["--name", name]);
  const earlyStart = await startTimeOf(early.pid);
  await start(["--name", uniqueName("fw-other")]);

  const watch = new WatchLog(t, { comm: name });
  await watch.waitForEvent("started", early.pid, earlyStart);
  const late = await start(["--name", name]);
  const lateStart = await startTimeOf(late.pid);
  await watch.waitForEvent("started", late.pid, lateStart);
  await early.kill();
  const exited = await watch.waitForEvent("exited", early.pid, earlyStart);
  assert.equal(exited.process.comm, name);

  watch.abort();
  await waitFor("the watch's iteration ends after abort", () => watch.ended, 2_000);
  assert.deepEqual(watch.summary(), [`started ${early.pid}@${earlyStart}`, `started ${late.pid}@${lateStart}`, `exited ${early.pid}@${earlyStart}`]);
});

test("process-discovery - a reused pid is the old process exiting and a new one starting", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const start = idlers(t);
  const name = uniqueName("fw-reuse");
  const first = await start(["--name", name]);
  const before = await scanProcesses({ comm: name });
  assert.deepEqual(pids(before), [first.pid]);
  const firstStart = before[0]!.startTime;
  // A long interval: the watch most likely scans only after the pid was reused (it must hold either way).
  const watch = new WatchLog(t, { comm: name }, 1_000);
  await watch.waitForEvent("started", first.pid, firstStart);

  // Start times count clock ticks: let one pass, so the new process cannot share it.
  await waitFor(`a clock tick after tick ${firstStart}`, async () => {
    const uptimeS = Number((await readFile("/proc/uptime", "utf8")).split(" ")[0]);
    return Math.floor(uptimeS * CLOCK_TICKS_PER_SECOND) > firstStart + 1;
  });
  await first.kill();
  let second: Target | undefined;
  let refusal = "";
  for (let attempt = 0; attempt < 3 && !second; attempt++) {
    try {
      second = await start(["--name", name, "--as-pid", String(first.pid)]);
    } catch (err) {
      refusal = String(err);
    }
  }
  if (!second) return t.skip(`clone3 with set_tid=${first.pid} was refused (needs CAP_CHECKPOINT_RESTORE, and the pid free): ${refusal}`);
  assert.equal(second.pid, first.pid, "the idler took the old pid");

  const after = await scanProcesses({ comm: name });
  assert.deepEqual(pids(after), [first.pid]);
  const secondStart = after[0]!.startTime;
  assert.ok(secondStart > firstStart, `start time ${secondStart} after ${firstStart}`);
  const diff = diffProcesses(new Map(before.map((p) => [processKey(p), p])), after);
  assert.deepEqual(diff.exited.map(processKey), [`${first.pid}@${firstStart}`]);
  assert.deepEqual(diff.started.map(processKey), [`${first.pid}@${secondStart}`]);

  await watch.waitForEvent("started", first.pid, secondStart);
  const summary = watch.summary();
  assert.deepEqual(summary, [`started ${first.pid}@${firstStart}`, `exited ${first.pid}@${firstStart}`, `started ${first.pid}@${secondStart}`]);
});

test("process-discovery - a watch ends at once when aborted between scans or before it starts", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const start = idlers(t);
  const name = uniqueName("fw-abort");
  const target = await start(["--name", name]);

  const controller = new AbortController();
  const events: ProcessEvent[] = [];
  const loop = (async () => {
    for await (const event of watchProcesses({ comm: name }, { intervalMs: 600_000, signal: controller.signal })) events.push(event);
  })();
  await waitFor("the first scan's start event", () => events.length === 1);
  const abortedAt = process.hrtime.bigint();
  controller.abort();
  let endedAfterMs: number | undefined;
  void loop.then(() => (endedAfterMs = Number(process.hrtime.bigint() - abortedAt) / 1e6));
  await waitFor("the watch ends while waiting 10 minutes for its next scan", () => endedAfterMs !== undefined, 2_000);
  await loop;
  t.diagnostic(`ended ${endedAfterMs?.toFixed(2)} ms after abort`);
  assert.deepEqual(events.map((e) => `${e.kind} ${e.process.pid}`), [`started ${target.pid}`]);

  const none: ProcessEvent[] = [];
  for await (const event of watchProcesses({ comm: name }, { signal: AbortSignal.abort() })) none.push(event);
  assert.deepEqual(none, [], "an aborted signal: no scan, no events");

  // Leaving a for-await loop early also ends the watch.
  for await (const event of watchProcesses({ comm: name }, { intervalMs: 600_000, signal: new AbortController().signal })) {
    assert.equal(event.process.pid, target.pid);
    break;
  }

  assert.throws(() => watchProcesses({}, { signal: controller.signal }), ProcessSelectorError);
  assert.throws(() => watchProcesses({ comm: name }, { intervalMs: 0, signal: controller.signal }), /intervalMs must be a positive number of milliseconds, got 0/);
});

test("process-discovery - scan cost on this machine", { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const entries = (await readdir("/proc")).filter((n) => /^\d+$/.test(n)).length;
  for (const [label, selector] of [
    ["comm, no match", { comm: uniqueName("fw-none") }],
    ["exe, no match", { exe: "/nonexistent/fw" }],
    ["cgroup /, every process read whole", { cgroup: "/" }],
  ] as Array<[string, ProcessSelector]>) {
    await scanProcesses(selector);
    const runs = 20;
    const startedAt = process.hrtime.bigint();
    let found = 0;
    for (let i = 0; i < runs; i++) found = (await scanProcesses(selector)).length;
    const msPerScan = Number(process.hrtime.bigint() - startedAt) / 1e6 / runs;
    t.diagnostic(`${label}: ${msPerScan.toFixed(2)} ms per scan of ${entries} /proc entries, ${found} matches`);
  }
});
