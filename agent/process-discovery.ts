// Finds this host's processes that a selector picks, by reading /proc, and
// follows them over time (start and exit) by polling. Matching rules live in
// process-match.ts; this file only reads procfs and keeps the policy of which
// processes are never targets.
import { closeSync, openSync, readSync, readlinkSync } from "node:fs";
import { readdir, readlink } from "node:fs/promises";
import { setImmediate as yieldToLoop, setTimeout as delay } from "node:timers/promises";

import {
  cgroupMatches,
  commMatches,
  diffProcesses,
  exeMatches,
  hasExited,
  isKernelThread,
  parseCgroupV2,
  parseStat,
  parseStatusEuid,
  parseStatusTracerPid,
  parseStatusUid,
  validateSelector,
} from "./process-match.js";
import type { ProcStat, ProcessInfo, ProcessSelector, ValidSelector } from "./process-match.js";

export type { ProcessInfo, ProcessSelector, ValidSelector } from "./process-match.js";
export { ProcessSelectorError, validateSelector } from "./process-match.js";

export interface ScanOptions {
  /** Where procfs is mounted; default "/proc" (e.g. "/host/proc" for an agent in a container). */
  procRoot?: string;
  /**
   * Further pids never returned, e.g. the helper's. A function is asked on
   * every scan, so a restarted helper's new pid is excluded too. The agent's
   * own pid and pid 1 are always excluded.
   */
  excludePids?: Iterable<number> | (() => Iterable<number>);
}

export interface WatchProcessesOptions extends ScanOptions {
  /** Pause between two scans; default 250. */
  intervalMs?: number;
  /** Ends the watch: the iteration then finishes normally (no error). */
  signal: AbortSignal;
}

/** A matching process appeared or went away. */
export interface ProcessEvent {
  /**
   * "started": it matches now and did not at the previous scan (new, or it
   * exec'd / was renamed / was moved into the selection). "exited": it matched
   * at the previous scan and is gone now, or no longer matches.
   */
  readonly kind: "started" | "exited";
  readonly process: ProcessInfo;
}

const defaultProcRoot = "/proc";
const defaultIntervalMs = 250;

// procfs reads never wait on a disk, so synchronous reads into one buffer
// are the cheapest way through a few hundred processes; scanning in batches
// bounds how long the event loop stalls at a time.
const pidsPerBatch = 32;
let readBuffer = Buffer.allocUnsafe(16 * 1024);

/** A process that vanished mid-read (ENOENT, ESRCH) or that we may not inspect (EACCES, EPERM). */
const skip = Symbol("skip");

function isSkippable(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === "ENOENT" || code === "ESRCH" || code === "EACCES" || code === "EPERM";
}

/** Reads a small procfs file whole; `skip` if the process is gone or hidden from us. */
function readProcFile(file: string): string | typeof skip {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (err) {
    if (isSkippable(err)) return skip;
    throw err;
  }
  try {
    let length = 0;
    for (;;) {
      if (length === readBuffer.length) {
        const bigger = Buffer.allocUnsafe(readBuffer.length * 2);
        readBuffer.copy(bigger, 0, 0, length);
        readBuffer = bigger;
      }
      const n = readSync(fd, readBuffer, length, readBuffer.length - length, null);
      if (n === 0) break;
      length += n;
    }
    return readBuffer.toString("utf8", 0, length);
  } catch (err) {
    if (isSkippable(err)) return skip;
    throw err;
  } finally {
    closeSync(fd);
  }
}

function readProcLink(file: string): string | typeof skip {
  try {
    return readlinkSync(file);
  } catch (err) {
    if (isSkippable(err)) return skip;
    throw err;
  }
}

function readStat(dir: string): ProcStat | typeof skip {
  const text = readProcFile(`${dir}/stat`);
  return text === skip ? skip : (parseStat(text) ?? skip);
}

/**
 * One process if it is a live user process that matches, else `skip`. Every
 * procfs read costs 10-20 µs of kernel time, so the read that can rule the
 * process out comes first: the executable link when the selector names one
 * (it also fails at once for kernel threads and zombies), else the cgroup
 * file when it names one, else stat (which holds the name).
 */
function inspect(procRoot: string, pid: number, selector: ValidSelector): ProcessInfo | typeof skip {
  const dir = `${procRoot}/${pid}`;
  let exe: string | typeof skip | undefined;
  let cgroupText: string | typeof skip | undefined;
  if (selector.exe !== undefined) {
    exe = readProcLink(`${dir}/exe`);
    if (exe === skip || !exeMatches(selector, exe)) return skip;
  } else if (selector.cgroup !== undefined) {
    cgroupText = readProcFile(`${dir}/cgroup`);
    if (cgroupText === skip || !cgroupMatches(selector, parseCgroupV2(cgroupText))) return skip;
  }
  const stat = readStat(dir);
  if (stat === skip || isKernelThread(stat) || hasExited(stat) || !commMatches(selector, stat.comm)) return skip;
  exe ??= readProcLink(`${dir}/exe`);
  if (exe === skip || !exeMatches(selector, exe)) return skip;
  cgroupText ??= readProcFile(`${dir}/cgroup`);
  if (cgroupText === skip) return skip;
  const cgroup = parseCgroupV2(cgroupText);
  if (!cgroupMatches(selector, cgroup)) return skip;
  const statusText = readProcFile(`${dir}/status`);
  const uid = statusText === skip ? undefined : parseStatusUid(statusText);
  if (uid === undefined) return skip;
  // The files are read one by one: if the pid died and was reused meanwhile,
  // they describe two processes. The same start time after: one process.
  const again = readStat(dir);
  if (again === skip || again.startTime !== stat.startTime || hasExited(again)) return skip;
  const euid = parseStatusEuid(statusText as string) ?? uid;
  return { pid, comm: stat.comm, exe, cgroup, startTime: stat.startTime, uid, euid, tracerPid: parseStatusTracerPid(statusText as string) };
}

/**
 * One live user process by pid, whatever it is (pid 1 and the agent
 * included: the host policy decides about those), or undefined when it is
 * gone, a kernel thread, or hidden from us.
 */
export function inspectProcess(pid: number, procRoot = defaultProcRoot): ProcessInfo | undefined {
  const info = inspect(procRoot, pid, { notes: [] });
  return info === skip ? undefined : info;
}

/** The pid this process has in procRoot's PID namespace (/proc/self), or ours when procRoot has no "self". */
async function selfPid(procRoot: string): Promise<number> {
  try {
    const pid = Number(await readlink(`${procRoot}/self`));
    return Number.isInteger(pid) && pid > 0 ? pid : process.pid;
  } catch {
    return process.pid;
  }
}

async function scanValid(selector: ValidSelector, options: ScanOptions): Promise<ProcessInfo[]> {
  const procRoot = options.procRoot ?? defaultProcRoot;
  const excluded = new Set<number>([1, await selfPid(procRoot)]);
  const extra = typeof options.excludePids === "function" ? options.excludePids() : options.excludePids;
  for (const pid of extra ?? []) excluded.add(pid);

  const pids = selector.pid !== undefined ? [selector.pid] : (await readdir(procRoot)).filter((name) => /^[1-9]\d*$/.test(name)).map(Number);
  const found: ProcessInfo[] = [];
  for (let i = 0; i < pids.length; i++) {
    if (i > 0 && i % pidsPerBatch === 0) await yieldToLoop();
    const pid = pids[i] as number;
    if (excluded.has(pid)) continue;
    const info = inspect(procRoot, pid, selector);
    if (info !== skip) found.push(info);
  }
  return found.sort((a, b) => a.pid - b.pid);
}

/**
 * The live user processes that match the selector now, in pid order. Kernel
 * threads, zombies, processes that vanish while being read or that we may
 * not inspect are left out, and so are pid 1, the agent itself and
 * `options.excludePids` (host policy). Throws ProcessSelectorError for a bad
 * selector.
 */
export async function scanProcesses(selector: ProcessSelector, options: ScanOptions = {}): Promise<ProcessInfo[]> {
  return scanValid(validateSelector(selector), options);
}

/**
 * Follows the processes that match the selector: first every current match
 * as "started", then, every `intervalMs`, what started and exited since the
 * previous scan (a pid is the same process only while its start time is the
 * same, so a reused pid is an exit and a start). Exits come before starts
 * within one scan. Aborting `signal` ends the iteration. Throws
 * ProcessSelectorError at once for a bad selector (RangeError for a bad
 * interval).
 */
export function watchProcesses(selector: ProcessSelector, options: WatchProcessesOptions): AsyncIterable<ProcessEvent> {
  const valid = validateSelector(selector);
  const intervalMs = options.intervalMs ?? defaultIntervalMs;
  if (!Number.isFinite(intervalMs) || intervalMs <= 0) {
    throw new RangeError(`watchProcesses: intervalMs must be a positive number of milliseconds, got ${String(intervalMs)}`);
  }
  const { signal } = options;
  return {
    async *[Symbol.asyncIterator]() {
      let known = new Map<string, ProcessInfo>();
      for (;;) {
        if (signal.aborted) return;
        const diff = diffProcesses(known, await scanValid(valid, options));
        if (signal.aborted) return;
        known = diff.known;
        const events: ProcessEvent[] = [...diff.exited.map((process) => ({ kind: "exited" as const, process })), ...diff.started.map((process) => ({ kind: "started" as const, process }))];
        for (const event of events) {
          // The consumer may abort while it handles an event: stop between events too.
          if (signal.aborted) return;
          yield event;
        }
        try {
          await delay(intervalMs, undefined, { signal });
        } catch (err) {
          if (signal.aborted) return;
          throw err;
        }
      }
    },
  };
}
