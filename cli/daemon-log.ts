// The daemons' log: each line the controller or an agent says goes to stderr
// as it is (`--log-format text`, for a terminal) or as one JSON object per
// line (`json`, the default when stderr is not a terminal), written by pino
// with the level, the time, the component and what the line is about. Lines
// start with their subject (`controller:`, `agent HOST:`, `job ID:`) and
// name targets as `HOST/PID` or `pid N`: the host, job and pid fields are
// read from there, so every line carries them without each caller passing
// them. Levels: a line that says something failed, was refused or could not
// be done is a warning; an internal error an error; the rest info.
import { Option } from "commander";
import { UsageError } from "./errors.js";
import type { TextSink } from "./output.js";

export const logFormats = ["text", "json"] as const;
export type LogFormat = (typeof logFormats)[number];
export const logLevels = ["debug", "info", "warn", "error"] as const;
export type LogLevel = (typeof logLevels)[number];

/** What a line is about, as its words say. */
export interface LogSubject {
  host?: string;
  job?: string;
  pid?: number;
}

// Job ids are generated hex (10 digits); ids given to stored jobs have a digit or a dash. Words such as "job ended" are not ids.
const jobPattern = /\bjob ([0-9a-f]{6,}|[A-Za-z0-9_]*[0-9-][A-Za-z0-9_-]*)\b/;
const agentPattern = /^agent ([^\s:]+):/;
const targetPattern = /(?:^|[\s(])([A-Za-z0-9_.-]+)\/(\d+)(?![\w.:/])/;
const pidPattern = /\bpid (\d+)\b/;

/** The host, job and pid a line names (by the house's phrasing), each when it does. */
export function subjectOf(line: string): LogSubject {
  const subject: LogSubject = {};
  const agent = agentPattern.exec(line);
  if (agent) subject.host = agent[1]!;
  const job = jobPattern.exec(line);
  if (job) subject.job = job[1]!;
  const target = targetPattern.exec(line);
  if (target) {
    subject.host ??= target[1]!;
    subject.pid = Number(target[2]);
  } else {
    const pid = pidPattern.exec(line);
    if (pid) subject.pid = Number(pid[1]);
  }
  return subject;
}

/** How serious a line is, by its words. */
export function levelOf(line: string): LogLevel {
  if (/\binternal error\b/.test(line)) return "error";
  if (/\b(failed|refused|cannot|could not|warning)\b/i.test(line)) return "warn";
  return "info";
}

/** A daemon's log: one call per line. */
export type DaemonLog = (line: string) => void;

/** How a daemon logs. */
export interface DaemonLogOptions {
  format: LogFormat;
  level: LogLevel;
  /** `controller`, `agent` or `up`. */
  component: string;
  /** This agent's host id, on every line of its log. */
  host?: string;
  sink: TextSink;
}

/** The log of one daemon. pino is loaded only when a daemon starts (client commands never need it). */
export async function createDaemonLog(options: DaemonLogOptions): Promise<DaemonLog> {
  const threshold = logLevels.indexOf(options.level);
  if (options.format === "text") {
    return (line) => {
      if (logLevels.indexOf(levelOf(line)) >= threshold) options.sink.write(`${line}\n`);
    };
  }
  const { pino } = await import("pino");
  const logger = pino(
    {
      level: options.level,
      base: { component: options.component, ...(options.host ? { host: options.host } : {}) },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    // Written at once, in order with everything else the command prints.
    { write: (text: string) => void options.sink.write(text) },
  );
  return (line) => {
    const subject = subjectOf(line);
    // An agent's log names its host once, in the base fields.
    if (options.host !== undefined) delete subject.host;
    logger[levelOf(line)](subject, line);
  };
}

/** `--log-format` and `--log-level` of the daemon commands. */
export function logOptions(): [format: Option, level: Option] {
  return [
    new Option("--log-format <format>", "text (one line as said) or json (one object per line: level, time, component, host, job, pid, msg); default: json unless stderr is a terminal").choices(logFormats).env("FLEETWATCH_LOG_FORMAT"),
    new Option("--log-level <level>", "the least serious lines logged").choices(logLevels).default("info").env("FLEETWATCH_LOG_LEVEL"),
  ];
}

/** The format asked for, or the default for where the lines go. */
export function resolveLogFormat(asked: string | undefined, sink: TextSink): LogFormat {
  if (asked === undefined) return (sink as { isTTY?: boolean }).isTTY === true ? "text" : "json";
  if (!(logFormats as readonly string[]).includes(asked)) throw new UsageError(`--log-format: '${asked}' is not one of ${logFormats.join(", ")}`);
  return asked as LogFormat;
}
