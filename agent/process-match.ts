// Which processes a job's selector picks on this host, without touching
// /proc: selector validation, the parsers of /proc/PID/{stat,cgroup,status},
// the match itself, and the start/exit difference between two scans.
import path from "node:path";

/**
 * Picks processes on one host. Every given field must match; at least one
 * field must be given.
 */
export interface ProcessSelector {
  /** The process id (thread-group id). */
  pid?: number;
  /**
   * Absolute path of the executable, compared with the resolved path the
   * kernel shows in /proc/PID/exe. A process whose executable was deleted or
   * replaced since it started (the kernel then appends " (deleted)") does not
   * match.
   */
  exe?: string;
  /**
   * The kernel's name of the process (/proc/PID/comm), compared exactly. The
   * kernel keeps only its first 15 bytes, so a longer selector is cut to 15
   * bytes and matches every process whose name starts with those bytes; the
   * validated selector carries a note saying so.
   */
  comm?: string;
  /**
   * A cgroup v2 path as in the "0::" line of /proc/PID/cgroup (relative to
   * the agent's cgroup namespace). It matches processes in that group and in
   * every group below it, so a container's group picks all its processes.
   */
  cgroup?: string;
}

/** A selector that passed validation, in the form the matcher compares. */
export interface ValidSelector {
  readonly pid?: number;
  readonly exe?: string;
  /** At most 15 bytes: what the kernel would keep of the given name. */
  readonly comm?: string;
  /** Without a trailing "/" (except the root, "/"). */
  readonly cgroup?: string;
  /** What validation changed, for people (e.g. a comm cut to 15 bytes). */
  readonly notes: readonly string[];
}

/** One process of this host as discovery reports it. */
export interface ProcessInfo {
  readonly pid: number;
  /** The kernel's name, at most 15 bytes, from /proc/PID/stat. */
  readonly comm: string;
  /** Resolved executable path (/proc/PID/exe); ends in " (deleted)" when the file is gone. */
  readonly exe: string;
  /** The cgroup v2 path ("0::" line of /proc/PID/cgroup); undefined when the kernel shows none. */
  readonly cgroup: string | undefined;
  /**
   * Field 22 of /proc/PID/stat: clock ticks (USER_HZ) after boot. With the
   * pid it names one process: a reused pid has a later start time.
   */
  readonly startTime: number;
  /** Real uid (first "Uid:" field of /proc/PID/status). */
  readonly uid: number;
  /** Effective uid (second "Uid:" field); the host policy checks both. */
  readonly euid?: number;
  /** Who ptraces it ("TracerPid:" of /proc/PID/status); 0 or absent = nobody. */
  readonly tracerPid?: number;
}

/** The fields of /proc/PID/stat discovery uses. */
export interface ProcStat {
  readonly pid: number;
  readonly comm: string;
  /** Scheduler state letter: R, S, D, T, t, Z, X, I, ... */
  readonly state: string;
  readonly ppid: number;
  /** Field 9, the kernel's PF_* task flags. */
  readonly flags: number;
  /** Field 22, clock ticks after boot. */
  readonly startTime: number;
}

/** A selector that cannot be used, naming the field at fault. */
export class ProcessSelectorError extends Error {
  override readonly name = "ProcessSelectorError";
  constructor(
    message: string,
    /** The selector field, or "selector" for the whole. */
    readonly field: keyof ProcessSelector | "selector",
  ) {
    super(message);
  }
}

/** Bytes of a process name the kernel keeps (TASK_COMM_LEN - 1). */
export const commMaxBytes = 15;

/** The largest pid Linux can hand out on 64-bit (PID_MAX_LIMIT). */
export const pidMaxLimit = 4_194_304;

/** PF_KTHREAD: the task is a kernel thread (no user address space to watch). */
const kernelThreadFlag = 0x0020_0000;

const deletedSuffix = " (deleted)";

const selectorFields: ReadonlySet<string> = new Set<keyof ProcessSelector>(["pid", "exe", "comm", "cgroup"]);

/** A string for error messages: quoted, control characters escaped. */
function quote(value: unknown): string {
  return typeof value === "string" ? JSON.stringify(value) : String(value);
}

/** What the kernel keeps of a process name: its first 15 bytes, decoded the way discovery decodes /proc. */
export function kernelComm(name: string): string {
  const bytes = Buffer.from(name, "utf8");
  return bytes.length <= commMaxBytes ? name : bytes.subarray(0, commMaxBytes).toString("utf8");
}

function checkPath(field: "exe" | "cgroup", value: unknown, what: string): string {
  if (typeof value !== "string" || value === "") throw new ProcessSelectorError(`selector.${field} must be a non-empty ${what}, got ${quote(value)}`, field);
  if (value.includes("\0")) throw new ProcessSelectorError(`selector.${field} must not contain a NUL byte`, field);
  if (!value.startsWith("/")) throw new ProcessSelectorError(`selector.${field} must be an absolute ${what} starting with "/", got ${quote(value)}`, field);
  return value;
}

/**
 * Checks a selector and returns the form the matcher compares. Throws
 * ProcessSelectorError naming the field and the reason.
 */
export function validateSelector(selector: ProcessSelector): ValidSelector {
  if (typeof selector !== "object" || selector === null || Array.isArray(selector)) {
    throw new ProcessSelectorError(`a process selector must be an object with pid, exe, comm or cgroup, got ${quote(selector)}`, "selector");
  }
  for (const key of Object.keys(selector)) {
    if (!selectorFields.has(key)) throw new ProcessSelectorError(`selector has an unknown field ${quote(key)}; the fields are pid, exe, comm and cgroup`, "selector");
  }
  const notes: string[] = [];
  const valid: { pid?: number; exe?: string; comm?: string; cgroup?: string } = {};

  if (selector.pid !== undefined) {
    const pid: unknown = selector.pid;
    if (typeof pid !== "number" || !Number.isInteger(pid) || pid < 1 || pid > pidMaxLimit) {
      throw new ProcessSelectorError(`selector.pid must be an integer from 1 to ${pidMaxLimit}, got ${quote(pid)}`, "pid");
    }
    if (pid === 1) throw new ProcessSelectorError("selector.pid 1 is never watched (host policy: the init process is not a target)", "pid");
    valid.pid = pid;
  }

  if (selector.exe !== undefined) {
    const exe = checkPath("exe", selector.exe, "path");
    if (exe.endsWith(deletedSuffix)) {
      throw new ProcessSelectorError(`selector.exe must name an existing file's path; ${quote(exe)} ends in "${deletedSuffix}", which the kernel only adds for executables that are gone`, "exe");
    }
    const normal = path.posix.normalize(exe);
    if (normal !== exe || (exe.length > 1 && exe.endsWith("/"))) {
      throw new ProcessSelectorError(`selector.exe must be a normalized path (the kernel shows resolved paths), got ${quote(exe)}; did you mean ${quote(normal.replace(/\/+$/, "") || "/")}?`, "exe");
    }
    valid.exe = exe;
  }

  if (selector.comm !== undefined) {
    const comm: unknown = selector.comm;
    if (typeof comm !== "string" || comm === "") throw new ProcessSelectorError(`selector.comm must be a non-empty process name, got ${quote(comm)}`, "comm");
    if (comm.includes("\0")) throw new ProcessSelectorError("selector.comm must not contain a NUL byte", "comm");
    const kept = kernelComm(comm);
    if (kept !== comm) {
      notes.push(
        `comm ${quote(comm)} is ${Buffer.byteLength(comm, "utf8")} bytes and the kernel keeps ${commMaxBytes}: ` +
          `matching processes named ${quote(kept)}, which includes any other name starting with those ${commMaxBytes} bytes`,
      );
    }
    valid.comm = kept;
  }

  if (selector.cgroup !== undefined) {
    const cgroup = checkPath("cgroup", selector.cgroup, "cgroup path");
    const trimmed = cgroup.length > 1 ? cgroup.replace(/\/+$/, "") || "/" : cgroup;
    const normal = path.posix.normalize(trimmed);
    if (normal !== trimmed) {
      throw new ProcessSelectorError(`selector.cgroup must be a normalized path without "//", "." or ".." parts, got ${quote(cgroup)}; did you mean ${quote(normal)}?`, "cgroup");
    }
    if (trimmed !== cgroup) notes.push(`cgroup ${quote(cgroup)} is read as ${quote(trimmed)}`);
    valid.cgroup = trimmed;
  }

  if (Object.keys(valid).length === 0) throw new ProcessSelectorError("a process selector needs at least one of pid, exe, comm or cgroup", "selector");
  return { ...valid, notes };
}

/** Whether a process name matches; `comm` is the kernel's (at most 15 bytes). */
export function commMatches(selector: ValidSelector, comm: string): boolean {
  return selector.comm === undefined || selector.comm === comm;
}

/** Whether an executable path from /proc/PID/exe matches; a deleted executable never does. */
export function exeMatches(selector: ValidSelector, exe: string): boolean {
  return selector.exe === undefined || selector.exe === exe;
}

/** Whether a cgroup v2 path is the selector's group or a group below it. */
export function cgroupMatches(selector: ValidSelector, cgroup: string | undefined): boolean {
  if (selector.cgroup === undefined) return true;
  if (cgroup === undefined) return false;
  if (selector.cgroup === "/") return cgroup.startsWith("/");
  return cgroup === selector.cgroup || cgroup.startsWith(`${selector.cgroup}/`);
}

/** Whether a process matches every field the selector gives. */
export function matchesSelector(selector: ValidSelector, process: ProcessInfo): boolean {
  return (
    (selector.pid === undefined || selector.pid === process.pid) &&
    commMatches(selector, process.comm) &&
    exeMatches(selector, process.exe) &&
    cgroupMatches(selector, process.cgroup)
  );
}

/**
 * Parses /proc/PID/stat, or returns undefined if it is not one. The name
 * sits between the first "(" and the last ")" and may itself hold spaces
 * and parentheses.
 */
export function parseStat(text: string): ProcStat | undefined {
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open < 1 || close < open) return undefined;
  const pid = Number(text.slice(0, open - 1));
  // Fields from 3 (state) on; rest[0] is field 3.
  const rest = text.slice(close + 2).split(" ");
  if (rest.length < 20) return undefined;
  const state = rest[0] as string;
  const ppid = Number(rest[1]);
  const flags = Number(rest[6]);
  const startTime = Number(rest[19]);
  if (!Number.isInteger(pid) || state.length !== 1 || !Number.isInteger(ppid) || !Number.isInteger(flags) || !Number.isInteger(startTime)) return undefined;
  return { pid, comm: text.slice(open + 1, close), state, ppid, flags, startTime };
}

/** Kernel threads have no user address space: nothing to watch. */
export function isKernelThread(stat: ProcStat): boolean {
  return (stat.flags & kernelThreadFlag) !== 0;
}

/** Zombies (Z) and dead tasks (X, x) have exited: nothing left to watch. */
export function hasExited(stat: ProcStat): boolean {
  return stat.state === "Z" || stat.state === "X" || stat.state === "x";
}

/** The cgroup v2 path from /proc/PID/cgroup (its "0::" line), or undefined when there is none. */
export function parseCgroupV2(text: string): string | undefined {
  for (const line of text.split("\n")) {
    if (line.startsWith("0::")) return line.slice(3);
  }
  return undefined;
}

/** The real uid from /proc/PID/status, or undefined. */
export function parseStatusUid(text: string): number | undefined {
  const m = /^Uid:\s+(\d+)/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** The effective uid from /proc/PID/status (second "Uid:" field), or undefined. */
export function parseStatusEuid(text: string): number | undefined {
  const m = /^Uid:\s+\d+\s+(\d+)/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** The tracer's pid from /proc/PID/status ("TracerPid:"); 0 when untraced or unknown. */
export function parseStatusTracerPid(text: string): number {
  const m = /^TracerPid:\s+(\d+)/m.exec(text);
  return m ? Number(m[1]) : 0;
}

/** One process's identity across scans: a pid reused later has another start time. */
export function processKey(process: Pick<ProcessInfo, "pid" | "startTime">): string {
  return `${process.pid}@${process.startTime}`;
}

/** What changed between two scans of the same selector. */
export interface ProcessDiff {
  /** Matched before, not now (exited, or no longer matches), in pid order. */
  readonly exited: ProcessInfo[];
  /** Matches now and did not before, in pid order. */
  readonly started: ProcessInfo[];
  /** The current matches by processKey, to pass as `known` next time. */
  readonly known: Map<string, ProcessInfo>;
}

/**
 * Compares a scan with the processes known from the previous one, by pid
 * and start time, so a pid reused between two scans shows as the old
 * process exiting and the new one starting.
 */
export function diffProcesses(known: ReadonlyMap<string, ProcessInfo>, current: readonly ProcessInfo[]): ProcessDiff {
  const next = new Map<string, ProcessInfo>();
  for (const process of current) next.set(processKey(process), process);
  const byPid = (a: ProcessInfo, b: ProcessInfo): number => a.pid - b.pid || a.startTime - b.startTime;
  const exited = [...known].filter(([key]) => !next.has(key)).map(([, process]) => process).sort(byPid);
  const started = [...next].filter(([key]) => !known.has(key)).map(([, process]) => process).sort(byPid);
  return { exited, started, known: next };
}
