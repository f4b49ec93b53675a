// Everything the CLI shows people or scripts: tables, JSON, and the human
// spellings of addresses, values, states, counts, times and durations. Pure
// functions from messages to text, so tests can pin every column.
import { toJson, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { Option } from "commander";
import {
  Backend,
  CountReportSchema,
  HitEventSchema,
  JobSchema,
  PerfValues,
  TrapDelivery,
  ValueRedaction,
  backendName,
  countIntervalMs,
  formatCondition,
  formatDuration,
  hex,
  jobStateName,
  modeName,
  resolveBackend,
  stopNeededFor,
  targetStateName,
  type Agent,
  type AgentInfo,
  type Chunk,
  type CountReport,
  type HitCounts,
  type HitEvent,
  type Job,
  type SlotAssignment,
  type SlotUse,
  type StackFrame,
  type Target,
  type TrapCheck,
  type WatchSpec,
} from "../proto/index.js";
import { UsageError } from "./errors.js";

/** How a command prints: a table for people or JSON for scripts. */
export type OutputFormat = "table" | "json";

/** The `-o` values. */
export const outputFormats: readonly OutputFormat[] = ["table", "json"];

/** Where text goes; `process.stdout` or a test buffer. */
export interface TextSink {
  write(text: string): unknown;
}

const durationUnitsMs: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 };

/**
 * Parses `500ms`, `30s`, `10m`, `1h` (and sums such as `1h30m`) into
 * milliseconds; throws a {@link UsageError} naming the option otherwise.
 */
export function parseDuration(text: string, option = "duration"): number {
  const trimmed = text.trim();
  const part = /(\d+)(ms|s|m|h)/gy;
  let total = 0;
  let consumed = 0;
  for (let match = part.exec(trimmed); match; match = part.exec(trimmed)) {
    total += Number(match[1]) * durationUnitsMs[match[2]!]!;
    consumed = part.lastIndex;
  }
  if (trimmed === "" || consumed !== trimmed.length) {
    throw new UsageError(`${option} '${text}' is not a duration: use a number with ms, s, m or h (e.g. 500ms, 30s, 10m, 1h)`);
  }
  return total;
}

// formatDuration lives with the spec rules: the controller's messages spell durations the same way.
export { formatDuration };

/** An instant as ISO 8601 UTC with milliseconds; `-` for 0 (not set). */
export function formatTime(unixMs: number | bigint): string {
  const ms = Number(unixMs);
  return ms === 0 ? "-" : new Date(ms).toISOString();
}

/** A hit's nanosecond timestamp as ISO 8601 UTC with milliseconds. */
export function formatHitTime(unixNano: bigint): string {
  return formatTime(unixNano / 1_000_000n);
}

/** `3s ago`, `5m ago`; `-` for never; `now` within a second. */
export function formatAge(unixMs: number | bigint, nowMs: number): string {
  const then = Number(unixMs);
  if (then === 0) return "-";
  const age = nowMs - then;
  if (age < 1_000) return "now";
  return `${formatDuration(Math.floor(age / 1_000) * 1_000)} ago`;
}

/** A watched value in hex and decimal: `0x2a (42)`. */
export function formatValue(value: bigint): string {
  return `${hex(value)} (${value})`;
}

/**
 * A hit's value as its host's policy let it out: the number when captured,
 * `hash:1a2b3c4d…` for a keyed hash (equal only to hashes of the same agent
 * run), `masked` or `off` when no value left the host.
 */
export function formatHitValue(value: bigint, redaction: ValueRedaction): string {
  switch (redaction) {
    case ValueRedaction.HASHED:
      return `hash:${value.toString(16).padStart(16, "0").slice(0, 8)}…`;
    case ValueRedaction.MASKED:
      return "masked";
    case ValueRedaction.OFF:
      return "off";
    default:
      return formatValue(value);
  }
}

/** `trapped/delivered/suppressed/dropped/filtered`, e.g. `12/10/2/0/0`. */
export function formatCounts(counts: HitCounts | undefined): string {
  if (!counts) return "0/0/0/0/0";
  return `${counts.trapped}/${counts.delivered}/${counts.suppressed}/${counts.dropped}/${counts.filtered}`;
}

/** One watch as asked: `counter w` (symbol's size), `counter+0x8/4 rw`, `0x4010/8 w`. */
export function formatWatch(watch: WatchSpec): string {
  const mode = modeName(watch.mode);
  switch (watch.location.case) {
    case "symbol":
      return watch.length === 0 ? `${watch.location.value} ${mode}` : `${watch.location.value}/${watch.length} ${mode}`;
    case "address":
      return `${hex(watch.location.value)}/${watch.length} ${mode}`;
    default:
      return `? ${mode}`;
  }
}

/** One chunk without its watch index: `0x4010/8 w`. */
export function formatChunkShort(chunk: Chunk | undefined): string {
  if (!chunk) return "?";
  return `${hex(chunk.address)}/${chunk.length} ${modeName(chunk.mode)}`;
}

/** A target's registers: `DR0 0x4010/8 w, DR1 0x4018/4 w`; `-` when none. */
export function formatSlotAssignments(slots: readonly SlotAssignment[]): string {
  if (slots.length === 0) return "-";
  return slots.map((slot) => `DR${slot.dr} ${formatChunkShort(slot.chunk)}`).join(", ");
}

/** A target in one cell: `host-1/4242 armed` or `host-1/4242 failed (EPERM: ...)`. */
export function formatTarget(target: Target): string {
  const head = `${target.hostId}/${target.pid} ${targetStateName(target.state)}`;
  return target.reason ? `${head} (${target.reason})` : head;
}

/** When a job ends or ended: its end time, else its deadline, else `-`. */
export function jobEnds(job: Job): string {
  if (job.endedUnixMs !== 0n) return formatTime(job.endedUnixMs);
  if (job.deadlineUnixMs !== 0n) return formatTime(job.deadlineUnixMs);
  return "-";
}

/** Left-aligned columns two spaces apart, header first, no trailing blanks. */
export function renderTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? "").length)));
  const line = (cells: readonly string[]) =>
    widths
      .map((width, column) => (cells[column] ?? "").padEnd(width))
      .join("  ")
      .trimEnd();
  return [line(headers), ...rows.map(line)].join("\n") + "\n";
}

/** The `jobs ls` table: one job per row. */
export function renderJobsTable(jobs: readonly Job[]): string {
  if (jobs.length === 0) return "no jobs\n";
  return renderTable(
    ["ID", "STATE", "TARGETS", "WATCHES", "T/D/S/DROP/F", "CREATED", "ENDS"],
    jobs.map((job) => [
      job.id,
      jobStateName(job.state),
      job.targets.length === 0 ? "-" : job.targets.slice(0, 3).map(formatTarget).join(", ") + (job.targets.length > 3 ? ` and ${job.targets.length - 3} more` : ""),
      (job.spec?.watches ?? []).map(formatWatch).join(", ") || "-",
      formatCounts(job.counts),
      formatTime(job.createdUnixMs),
      jobEnds(job),
    ]),
  );
}

/** One job in detail: its fields, then a table of its targets with their registers. */
export function renderJobDetail(job: Job): string {
  const spec = job.spec;
  const fields: Array<[string, string]> = [
    ["job", job.id],
    ["state", job.reason ? `${jobStateName(job.state)} (${job.reason})` : jobStateName(job.state)],
    ["watches", `${(spec?.watches ?? []).map(formatWatch).join(", ") || "-"}${spec?.allowUnmapped ? " (armed even where an address is not mapped: --allow-unmapped)" : ""}`],
    ["pid", spec?.target ? String(spec.target.pid) : "-"],
    ["hosts", spec?.target && spec.target.hostIds.length > 0 ? spec.target.hostIds.join(", ") : "(the only agent)"],
    ["max hits", spec && spec.maxHits !== 0n ? String(spec.maxHits) : "no limit"],
    ["duration", spec && spec.durationMs !== 0n ? formatDuration(spec.durationMs) : "until cancelled"],
    ...(spec && spec.conditions.length > 0 ? [["if", spec.conditions.map(formatCondition).join(" and ")] as [string, string]] : []),
    ...(spec && spec.tids.length > 0 ? [["threads", spec.tids.join(", ")] as [string, string]] : []),
    ...(spec && spec.maxHitsPerSecond > 0 ? [["rate", `${spec.maxHitsPerSecond} hits/s per target, then off for ${formatDuration(spec.backoffMs || 1000)}`] as [string, string]] : []),
    ...(spec ? [["backend", formatJobBackend(job)] as [string, string]] : []),
    ["placement", `${spec?.placement || "any"}, priority ${spec?.priority ?? 0}${spec && spec.queueTimeoutMs > 0n ? `, may wait ${formatDuration(spec.queueTimeoutMs)} in the queue` : ""}${spec && spec.lostAfterMs > 0n ? `, lost after ${formatDuration(spec.lostAfterMs)} of silence` : ""}`],
    ["created", formatTime(job.createdUnixMs)],
    ["ends", jobEnds(job)],
    ["counts", describeCounts(job.counts)],
  ];
  const width = Math.max(...fields.map(([name]) => name.length));
  const head = fields.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join("\n") + "\n";
  if (job.targets.length === 0) return `${head}\nno targets\n`;
  const targets = renderTable(
    ["HOST", "PID", "STATE", "THREADS", "SLOTS", "T/D/S/DROP/F", "REASON"],
    job.targets.map((target) => [
      target.hostId,
      String(target.pid),
      targetStateName(target.state),
      `${target.threadsArmed}/${target.threadsTotal}`,
      formatSlotAssignments(target.slots),
      formatCounts(target.counts),
      target.reason || "-",
    ]),
  );
  return `${head}\n${targets}`;
}

/**
 * How a job arms its targets, and what that means for its values: `ptrace`,
 * `perf (automatic), values read after the trap`, `perf, counting every 1s`.
 */
export function formatJobBackend(job: Job): string {
  const spec = job.spec;
  if (!spec) return "-";
  const backend = resolveBackend(spec);
  const why = spec.backend !== Backend.UNSPECIFIED ? "" : backend === Backend.PTRACE ? ` (automatic: ${stopNeededFor(spec) ?? "a stop is needed"})` : " (automatic)";
  if (spec.countOnly) return `${backendName(backend)}${why}, counting every ${formatDuration(countIntervalMs(spec))} (no per-hit events)`;
  if (backend !== Backend.PERF) return `${backendName(backend)}${why}`;
  // Each host's kernel decides: exact only where every armed target says so.
  const armed = job.targets.filter((t) => t.backend === Backend.PERF && t.threadsTotal > 0);
  const exact = armed.length > 0 && armed.every((t) => t.valuesExact);
  return `${backendName(backend)}${why}, ${exact ? "values exact (read in the kernel at the trap)" : "values read after the trap (a later store may have replaced them)"}`;
}

/** `trapped 12, delivered 10, suppressed 2, dropped 0, filtered 0`. */
export function describeCounts(counts: HitCounts | undefined): string {
  const c = counts ?? { trapped: 0n, delivered: 0n, suppressed: 0n, dropped: 0n, filtered: 0n };
  return `trapped ${c.trapped}, delivered ${c.delivered}, suppressed ${c.suppressed}, dropped ${c.dropped}, filtered ${c.filtered}`;
}

/** One register of a watched target: `free`, `free (reserved)`, `foreign` (held outside fleetwatch), `<job id>[,<job id>…] 0x…/8 w` (ptrace jobs sharing it) or `<job id> 0x…/8 w perf` (one perf job's own). */
export function formatSlotUse(use: SlotUse | undefined): string {
  const jobIds = use ? (use.jobIds.length > 0 ? use.jobIds : use.jobId ? [use.jobId] : []) : [];
  if (!use || jobIds.length === 0) return use?.foreign ? "foreign" : use?.reserved ? "free (reserved)" : "free";
  return `${jobIds.join(",")} ${formatChunkShort(use.chunk)}${use.backend === Backend.PERF ? " perf" : ""}`;
}

/** The backends a host offers: `ptrace,perf`, `ptrace,perf (values exact)`, or `ptrace (no perf: why)`. */
export function formatHostBackends(info: AgentInfo | undefined): string {
  if (!info) return "-";
  const names = info.backends.map(backendName);
  if (names.length === 0) return "-";
  if (!info.backends.includes(Backend.PERF)) return `${names.join(",")} (no perf${info.perfNote ? `: ${info.perfNote}` : ""})`;
  return info.perfValues === PerfValues.EXACT ? `${names.join(",")} (values exact)` : names.join(",");
}

/** What one trap costs, for people: `850 ns`, `4.1 µs`, `1.2 ms`. */
export function formatNsPerTrap(ns: number): string {
  if (ns < 1_000) return `${ns} ns`;
  if (ns < 1_000_000) return `${(ns / 1_000).toFixed(1)} µs`;
  return `${(ns / 1_000_000).toFixed(1)} ms`;
}

/** One backend's trap self-test in a table cell: `ptrace: 4.1 µs/trap`, `perf: NO TRAPS`, `perf: not tested`. */
function formatTrapCell(check: TrapCheck): string {
  const name = backendName(check.backend);
  switch (check.delivery) {
    case TrapDelivery.DELIVERED:
      return `${name}: ${check.nsPerTrap > 0 ? `${formatNsPerTrap(check.nsPerTrap)}/trap` : "delivered"}`;
    case TrapDelivery.NOT_DELIVERED:
      return `${name}: NO TRAPS`;
    case TrapDelivery.NOT_RUN:
      return `${name}: not tested`;
    default:
      return `${name}: ?`;
  }
}

/**
 * Whether watched writes trap on a host, per backend, by its helper's
 * self-test: `ptrace: 4.1 µs/trap, perf: 1.2 µs/trap`, `ptrace: NO TRAPS, …`;
 * `untested` from an agent that does not test.
 */
export function formatHostTraps(info: AgentInfo | undefined): string {
  const checks = info?.trapChecks.filter((c) => c.delivery !== TrapDelivery.UNSPECIFIED) ?? [];
  return checks.length === 0 ? "untested" : checks.map(formatTrapCell).join(", ");
}

/**
 * Why a host's watches with a backend are refused, one line per backend
 * whose self-test did not deliver: `vm-1: no ptrace traps: DR0 armed, 0 of
 * 8 probe writes trapped: …; watches with ptrace are refused there`. A perf
 * the host cannot open is said in its backends already.
 */
export function hostTrapNotes(info: AgentInfo | undefined): string[] {
  if (!info) return [];
  return info.trapChecks.flatMap((c) => {
    if (c.delivery !== TrapDelivery.NOT_DELIVERED && c.delivery !== TrapDelivery.NOT_RUN) return [];
    if (c.backend === Backend.PERF && !info.backends.includes(Backend.PERF)) return [];
    const name = backendName(c.backend);
    const what = c.delivery === TrapDelivery.NOT_RUN ? `${name} traps not tested` : `no ${name} traps`;
    const saw = c.detail || `${c.traps} of ${c.writes} probe writes trapped`;
    return [`${info.hostId}: ${what}: ${saw}; watches with ${name} are refused there`];
  });
}

/** `k=v,k2=v2` sorted by key; `-` when none. */
export function formatLabels(labels: Readonly<Record<string, string>>): string {
  const keys = Object.keys(labels).sort();
  return keys.length === 0 ? "-" : keys.map((key) => `${key}=${labels[key]}`).join(",");
}

/**
 * The `agents ls` tables: hosts (with, under them, why a host's traps are
 * refused where its self-test saw none), then every watched target's DR0–DR3.
 */
export function renderAgentsTable(agents: readonly Agent[], nowMs: number): string {
  if (agents.length === 0) return "no agents\n";
  const table = renderTable(
    ["HOST", "LABELS", "CONNECTED", "KERNEL", "BACKENDS", "TRAPS", "POLICY", "LAST SEEN"],
    agents.map((agent) => [
      agent.info?.hostId ?? "?",
      formatLabels(agent.info?.labels ?? {}),
      agent.connected ? "yes" : "no",
      agent.info?.kernel || "-",
      formatHostBackends(agent.info),
      formatHostTraps(agent.info),
      agent.info?.policy || "none",
      formatAge(agent.lastSeenUnixMs, nowMs),
    ]),
  );
  const notes = agents.flatMap((agent) => hostTrapNotes(agent.info));
  const hosts = notes.length === 0 ? table : `${table}\n${notes.join("\n")}\n`;
  const rows = agents.flatMap((agent) =>
    agent.targets.map((target) => {
      const byDr = new Map(target.slots.map((slot) => [slot.dr, slot]));
      const tracer = target.tracedByPid ? `${target.tracedByPid} (${target.tracedByComm})` : "-";
      return [agent.info?.hostId ?? "?", String(target.pid), ...[0, 1, 2, 3].map((dr) => formatSlotUse(byDr.get(dr))), tracer];
    }),
  );
  if (rows.length === 0) return `${hosts}\nno watched targets\n`;
  return `${hosts}\n${renderTable(["HOST", "PID", "DR0", "DR1", "DR2", "DR3", "TRACED BY"], rows)}`;
}

// Hit lines stream one at a time, so columns get fixed minimum widths
// instead of being measured over all rows.
const hitColumns: Array<[string, number]> = [
  ["TIME", 24],
  ["HOST", 12],
  ["PID", 7],
  ["TID", 7],
  ["ADDRESS", 14],
  ["OLD → NEW", 26],
  ["IP", 18],
  ["SLOT", 4],
];

function hitLine(cells: readonly string[]): string {
  return cells
    .map((cell, column) => cell.padEnd(hitColumns[column]![1]))
    .join("  ")
    .trimEnd();
}

/** The header above streamed hit lines. */
export function renderHitHeader(): string {
  return hitLine(hitColumns.map(([name]) => name)) + "\n";
}

/** The frame the hit's ip is in: the stack's frame at that ip, else its innermost one. */
export function topFrame(hit: HitEvent): StackFrame | undefined {
  return hit.stack.find((f) => f.ip === hit.ip) ?? hit.stack[0];
}

/** The instruction pointer, with the function it is in when the stack says so: `0x401136 bump+0x6`. */
export function formatIp(hit: HitEvent): string {
  const frame = topFrame(hit);
  if (!frame || frame.function === "") return hex(hit.ip);
  return `${hex(hit.ip)} ${frame.function}+${hex(frame.offset)}`;
}

/** One hit as one table line. */
export function renderHitLine(hit: HitEvent): string {
  return (
    hitLine([
      formatHitTime(hit.timeUnixNano),
      hit.hostId,
      String(hit.pid),
      String(hit.tid),
      hex(hit.address),
      `${formatHitValue(hit.oldValue, hit.valueRedaction)} → ${formatHitValue(hit.newValue, hit.valueRedaction)}`,
      formatIp(hit),
      `DR${hit.slot}`,
    ]) + "\n"
  );
}

/** One hit as one line of protobuf JSON (uint64 as strings), for `-o json` streams. */
export function renderHitJson(hit: HitEvent): string {
  return JSON.stringify(toJson(HitEventSchema, hit)) + "\n";
}

/** Hits a count report counted in its interval: the sum of its threads'. */
export function countReportHits(report: CountReport): bigint {
  return report.threads.reduce((sum, t) => sum + t.hits, 0n);
}

/**
 * One count report as one greppable line, the threads with hits in the
 * interval by tid: `host-a 4242  +5123 hits (51230 total)  tids 4243:5000 4244:123`
 * (`tids -` when none had any).
 */
export function renderCountLine(report: CountReport): string {
  const tids = report.threads.length === 0 ? "-" : report.threads.map((t) => `${t.tid}:${t.hits}`).join(" ");
  return `${report.hostId} ${report.pid}  +${countReportHits(report)} hits (${report.totals?.delivered ?? 0n} total)  tids ${tids}\n`;
}

/** One count report as one line of protobuf JSON, for `-o json` streams. */
export function renderCountJson(report: CountReport): string {
  return JSON.stringify(toJson(CountReportSchema, report)) + "\n";
}

/** A message as indented protobuf JSON. */
export function renderMessageJson<D extends DescMessage>(schema: D, message: MessageShape<D>): string {
  return JSON.stringify(toJson(schema, message), null, 2) + "\n";
}

/** One job as indented protobuf JSON. */
export function renderJobJson(job: Job): string {
  return renderMessageJson(JobSchema, job);
}

/** The `-o, --output table|json` option every printing command takes. */
export function outputOption(): Option {
  return new Option("-o, --output <format>", "output format").choices(outputFormats).default("table");
}
