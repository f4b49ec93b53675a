// Whether a process of this host still runs, read from /proc/PID/stat. A pid
// may be reused: its start time tells one process from the next.
import { readFileSync } from "node:fs";
import { parseStat, type ProcStat } from "./process-match.js";

/** /proc/PID/stat, or undefined when the process is gone or hidden. */
function statOf(pid: number): ProcStat | undefined {
  try {
    return parseStat(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return undefined;
  }
}

/** The process runs (it is listed and not a zombie). */
export function isRunning(pid: number): boolean {
  const state = statOf(pid)?.state;
  return state !== undefined && state !== "Z" && state !== "X";
}

/** Start time of a process (clock ticks since boot), or undefined when it is gone. */
export function processStartTime(pid: number): number | undefined {
  return statOf(pid)?.startTime;
}

/** The process with this pid is still there, and is the one that started at `startTime` (when known). */
export function isAlive(pid: number, startTime: number | undefined): boolean {
  const now = processStartTime(pid);
  return now !== undefined && (startTime === undefined || now === startTime);
}
