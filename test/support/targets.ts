// Test target programs: compiles test/fixtures/*.c into test/fixtures/build/
// and starts them with line-oriented helpers (wait for a line, send a line,
// wait for exit) that always carry a deadline.
import { execFile, spawn } from "node:child_process";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { open, readFile, readdir, mkdir, rename, stat } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";

import { repoRoot } from "./paths.js";
import { scaled, waitFor } from "./wait.js";

const execFileAsync = promisify(execFile);

export const fixturesDir = path.join(repoRoot, "test/fixtures");
export const fixturesBuildDir = path.join(fixturesDir, "build");

const DEFAULT_TIMEOUT_MS = 10_000;

/** Path of a built fixture. */
export function fixturePath(name: string): string {
  return path.join(fixturesBuildDir, name);
}

async function mtimeMs(file: string): Promise<number | undefined> {
  try {
    return (await stat(file)).mtimeMs;
  } catch {
    return undefined;
  }
}

/** Extra gcc flags of some fixtures (after -O2 -g -pthread). */
const FIXTURE_CFLAGS: Record<string, string[]> = {
  // Stacks must unwind through DWARF CFI alone.
  "stack-chain": ["-fomit-frame-pointer"],
};

/** Compiles every test/fixtures/*.c (gcc -O2 -g -pthread, plus FIXTURE_CFLAGS) unless its binary is newer. */
export async function buildFixtures(): Promise<void> {
  await mkdir(fixturesBuildDir, { recursive: true });
  const sources = (await readdir(fixturesDir)).filter((f) => f.endsWith(".c"));
  await Promise.all(
    sources.map(async (file) => {
      const src = path.join(fixturesDir, file);
      const out = fixturePath(path.basename(file, ".c"));
      const [srcTime, outTime] = await Promise.all([mtimeMs(src), mtimeMs(out)]);
      if (outTime !== undefined && srcTime !== undefined && outTime >= srcTime) return;
      // Build beside, then rename: concurrent test files never see half a binary.
      const tmp = `${out}.${process.pid}.tmp`;
      const name = path.basename(file, ".c");
      await execFileAsync("gcc", ["-O2", "-g", "-pthread", "-Wall", "-Wextra", ...(FIXTURE_CFLAGS[name] ?? []), "-o", tmp, src]);
      await rename(tmp, out);
    }),
  );
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A running fixture. Its stdout is kept as lines; stderr goes to ours. */
export interface Target {
  readonly name: string;
  /** Its pid as it printed it: in its own PID namespace (what an agent there reports). */
  readonly pid: number;
  /**
   * Its pid in ours: what /proc here, tracerPid() and kill() use. The same as
   * `pid` unless it was started in another PID namespace (`inPidNamespace`).
   */
  readonly rootPid: number;
  readonly child: ChildProcessWithoutNullStreams;
  /** Every stdout line so far. */
  readonly lines: readonly string[];
  /** The first stdout line (since start) matching re; waits up to timeoutMs. */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<string>;
  /** Writes line + "\n" to its stdin. */
  send(line: string): void;
  /** Waits for exit; rejects after timeoutMs. */
  waitForExit(timeoutMs?: number): Promise<ExitStatus>;
  /** TracerPid from /proc/ROOTPID/status (0: not traced). */
  tracerPid(): Promise<number>;
  /** SIGKILLs it (by its root pid, and its wrapper) if still running and waits for the exit. */
  kill(): Promise<void>;
}

/** The 8-byte word at address in a running process, read from its memory (no tracer needed). */
export async function readWord(pid: number, address: bigint | number): Promise<bigint> {
  const mem = await open(`/proc/${pid}/mem`, "r");
  try {
    const buffer = Buffer.alloc(8);
    await mem.read(buffer, 0, 8, Number(address));
    return buffer.readBigUInt64LE();
  } finally {
    await mem.close();
  }
}

/** A field of /proc/PID/status as a number, or undefined if the process is gone. */
export async function procStatusField(pid: number, field: string): Promise<number | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/status`, "utf8");
    const m = new RegExp(`^${field}:\\s*(\\d+)`, "m").exec(text);
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The NSpid line of /proc/PID/status: its pid in each PID namespace, ours first; undefined if gone. */
export async function procNsPids(pid: number): Promise<number[] | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/status`, "utf8");
    const m = /^NSpid:([\d\t ]+)$/m.exec(text);
    return m ? m[1]!.trim().split(/\s+/).map(Number) : undefined;
  } catch {
    return undefined;
  }
}

/** Pids of the children of every thread of PID (none if it is gone). */
export async function childPids(pid: number): Promise<number[]> {
  const children: number[] = [];
  try {
    for (const tid of await readdir(`/proc/${pid}/task`)) {
      const text = await readFile(`/proc/${pid}/task/${tid}/children`, "utf8").catch(() => "");
      children.push(...text.split(/\s+/).filter((t) => t !== "").map(Number));
    }
  } catch {
    // gone
  }
  return children;
}

/**
 * The root-namespace pid of the descendant of `ancestor` that is `nsPid` in
 * a PID namespace below ours, or undefined if there is none (yet).
 */
export async function findInPidNamespace(ancestor: number, nsPid: number): Promise<number | undefined> {
  const queue = await childPids(ancestor);
  for (let pid = queue.shift(); pid !== undefined; pid = queue.shift()) {
    const nsPids = await procNsPids(pid);
    if (nsPids && nsPids.length > 1 && nsPids[nsPids.length - 1] === nsPid) return pid;
    queue.push(...(await childPids(pid)));
  }
  return undefined;
}

/** Scheduler state letter from /proc/PID/stat ("R", "S", "T", "t", "Z"), or undefined. */
export async function procState(pid: number): Promise<string | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, "utf8");
    return text.slice(text.lastIndexOf(")") + 2, text.lastIndexOf(")") + 3);
  } catch {
    return undefined;
  }
}

export interface StartOptions {
  /** Deadline for the "ready" line. */
  timeoutMs?: number;
  /** Command to run the fixture under, e.g. ["strace", "-f", "-o", "/dev/null"]. */
  wrapper?: string[];
  /**
   * Run this program instead of a fixture (e.g. "strace"); `name` is then only
   * a label, no "ready" line is awaited and `pid` is the program's own.
   */
  path?: string;
  /**
   * The wrapper starts the program in another PID namespace (e.g. `nsenter
   * --pid`): the "ready" pid is the one seen there, and `rootPid` is looked
   * up among the wrapper's descendants.
   */
  inPidNamespace?: boolean;
}

/**
 * Starts a built fixture and waits for its "ready <pid> ..." line. The pid is
 * taken from that line, so it is the fixture's even under a wrapper.
 */
export async function startTarget(name: string, args: string[] = [], options: StartOptions = {}): Promise<Target> {
  const wrapper = options.wrapper ?? [];
  const program = options.path ?? fixturePath(name);
  const command = wrapper.length > 0 ? (wrapper[0] as string) : program;
  const argv = wrapper.length > 0 ? [...wrapper.slice(1), program, ...args] : args;
  const child = spawn(command, argv, { stdio: ["pipe", "pipe", "pipe"] });
  const lines: string[] = [];
  const lineWaiters = new Set<() => void>();
  let partial = "";
  let exit: ExitStatus | undefined;
  const exitWaiters = new Set<() => void>();

  child.stdout.setEncoding("utf8");
  child.stdout.on("data", (text: string) => {
    partial += text;
    const parts = partial.split("\n");
    partial = parts.pop() ?? "";
    lines.push(...parts);
    for (const w of lineWaiters) w();
  });
  child.stderr.on("data", (chunk: Buffer) => process.stderr.write(chunk));
  child.stdin.on("error", () => undefined);
  // "close", not "exit": by then every stdout line has been seen.
  child.on("close", (code, signal) => {
    exit = { code, signal };
    for (const w of exitWaiters) w();
    for (const w of lineWaiters) w();
  });
  await new Promise<void>((resolve, reject) => {
    child.once("spawn", () => resolve());
    child.once("error", reject);
  });

  const waitForLine = (re: RegExp, ms = DEFAULT_TIMEOUT_MS): Promise<string> =>
    new Promise((resolve, reject) => {
      const check = (): boolean => {
        const found = lines.find((l) => re.test(l));
        if (found !== undefined) {
          done();
          resolve(found);
          return true;
        }
        if (exit) {
          done();
          reject(new Error(`${name} exited (${exit.code ?? exit.signal}) without a line matching ${re}; got ${JSON.stringify(lines)}`));
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${scaled(ms)} ms waiting for ${name} to print ${re}; got ${JSON.stringify(lines)}`));
      }, scaled(ms));
      const done = (): void => {
        clearTimeout(timer);
        lineWaiters.delete(check);
      };
      if (!check()) lineWaiters.add(check);
    });

  const waitForExit = (ms = DEFAULT_TIMEOUT_MS): Promise<ExitStatus> =>
    new Promise((resolve, reject) => {
      if (exit) return resolve(exit);
      const timer = setTimeout(() => {
        exitWaiters.delete(onExit);
        reject(new Error(`timed out after ${scaled(ms)} ms waiting for ${name} (pid ${child.pid}) to exit`));
      }, scaled(ms));
      const onExit = (): void => {
        clearTimeout(timer);
        exitWaiters.delete(onExit);
        resolve(exit as ExitStatus);
      };
      exitWaiters.add(onExit);
    });

  let pid = child.pid as number;
  if (options.path === undefined) {
    const ready = await waitForLine(/^ready \d+/, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    pid = Number(ready.split(" ")[1]);
  }
  let rootPid = pid;
  if (options.inPidNamespace) {
    const nsPid = pid;
    rootPid = await waitFor(`${name} (pid ${nsPid} in its namespace) among the descendants of pid ${child.pid}`, () => {
      if (exit) throw new Error(`${name} exited (${exit.code ?? exit.signal})`);
      return findInPidNamespace(child.pid as number, nsPid);
    }, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  }

  return {
    name,
    pid,
    rootPid,
    child,
    lines,
    waitForLine,
    send: (line: string) => {
      child.stdin.write(`${line}\n`);
    },
    waitForExit,
    tracerPid: async () => (await procStatusField(rootPid, "TracerPid")) ?? 0,
    kill: async () => {
      if (exit) return;
      if (rootPid !== child.pid) {
        try {
          process.kill(rootPid, "SIGKILL");
        } catch {
          // already gone
        }
      }
      child.kill("SIGKILL");
      await waitForExit();
    },
  };
}
