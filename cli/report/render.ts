// How a writers report is printed: a table for people, JSON for scripts, the
// folded-stack text flame graph tools read, or an SVG flame graph. The report
// says beside its own total what the job counted, and whether the stream
// holds every hit the job delivered.
import { JobState, isFinalJobState, jobStateName, type HitCounts, type Job } from "../../proto/index.js";
import { formatHitTime, renderTable } from "../output.js";
import { renderFlameGraphSvg } from "./flamegraph.js";
import type { CountRow, WriterGroup, WritersSnapshot } from "./writers.js";

/** `report -o` and `--format`. */
export type ReportFormat = "table" | "json" | "folded" | "svg";
export const reportFormats: readonly ReportFormat[] = ["table", "json", "folded", "svg"];

/** A report and the job it is of, as read together. */
export interface WritersReport {
  job: Job;
  snapshot: WritersSnapshot;
  /** Read from a time on (`--since`): the job's counters cover more than the report. */
  since?: Date;
}

/** How far the report's hits account for the job's delivered ones. */
export interface Coverage {
  /** Every hit the job delivered is in the report, and nothing more. */
  complete: boolean;
  /** Delivered hits the stream no longer (or never) held: expired, or lost on the way. */
  missing: bigint;
  /** Sequence numbers that never reached the stream beyond the job's dropped hits: messages lost. */
  lostFromStream: bigint;
  /** In words. */
  note: string;
}

const plural = (n: bigint | number, one: string, many = `${one}s`) => `${n} ${n === 1 || n === 1n ? one : many}`;

/** What the report covers of the job's delivered hits. */
export function coverageOf(report: WritersReport): Coverage {
  const { job, snapshot } = report;
  const counts = job.counts;
  const delivered = counts?.delivered ?? 0n;
  const dropped = counts?.dropped ?? 0n;
  const countOnly = job.spec?.countOnly === true;
  const gaps = snapshot.sequences.reduce((sum, s) => sum + s.missing, 0n);
  // A counting job's reports share the hosts' sequence; a report that was not stored is made good by the next (its totals are cumulative).
  const lostFromStream = countOnly || gaps <= dropped ? 0n : gaps - dropped;
  const reported = countOnly ? (snapshot.counting?.hosts.reduce((sum, h) => sum + h.hits, 0n) ?? 0n) : BigInt(snapshot.hits);
  const running = !isFinalJobState(job.state);
  const missing = !report.since && delivered > reported ? delivered - reported : 0n;
  const notes: string[] = [];
  if (report.since) notes.push(`from ${report.since.toISOString()} on: the job's counters also cover hits before then`);
  else if (reported === delivered) notes.push(`every delivered hit (${delivered}) is in the report`);
  else if (missing > 0n) notes.push(`${plural(missing, "delivered hit")} ${running ? "not in the stream yet, or " : ""}no longer in the stream (expired by its limits, or lost)`);
  else notes.push(`the job is ${running ? "running: its counters were read before the stream and lag it" : "ended, yet the stream holds more hits than its counters say"}`);
  if (lostFromStream > 0n) notes.push(`the stream lost messages: ${plural(lostFromStream, "sequence number")} never arrived beyond the job's ${dropped} dropped`);
  return { complete: !report.since && !running && reported === delivered && lostFromStream === 0n, missing, lostFromStream, note: notes.join("; ") };
}

function countsLine(counts: HitCounts | undefined): string {
  const c = counts ?? { trapped: 0n, delivered: 0n, dropped: 0n, suppressed: 0n, filtered: 0n };
  return `trapped ${c.trapped}  delivered ${c.delivered}  dropped ${c.dropped}  suppressed ${c.suppressed}  filtered ${c.filtered}`;
}

function percent(share: number): string {
  return `${(share * 100).toFixed(1)}%`;
}

/** A group's `n` most frequent transitions as the table shows them: `0x1 → 0x2 ×5`, a range when only bounds are known. */
export function transitionText(group: WriterGroup, n: number): string {
  const shown = group.transitions.slice(0, n).map((t) => `${t.old} → ${t.new} ×${t.hits === t.atMost ? t.hits : `${t.hits}-${t.atMost}`}`);
  if (group.manyTransitions) shown.push(shown.length === 0 ? "no transition repeats often" : "…");
  return shown.join(", ");
}

function countRows(title: string, rows: readonly CountRow[], top: number): string {
  const shown = top > 0 ? rows.slice(0, top) : rows;
  return `${title}\n${renderTable(["HITS", "PER SECOND", title.toUpperCase()], shown.map((r) => [String(r.hits), r.perSecond.toFixed(1), r.key]))}`;
}

/** The report for people: the job's counters, the coverage, then the groups (or a counting job's totals). */
export function renderReportTable(report: WritersReport, top: number): string {
  const { job, snapshot } = report;
  const coverage = coverageOf(report);
  const lines: string[] = [];
  lines.push(`job ${job.id} (${jobStateName(job.state)}, ${plural(job.targets.length, "target")}): ${countsLine(job.counts)}`);
  if (snapshot.counting) {
    lines.push(`report: counting job, ${coverage.note}`);
    lines.push("");
    lines.push(countRows("host", snapshot.counting.hosts, top).trimEnd());
    lines.push("");
    lines.push(countRows("process", snapshot.counting.processes, top).trimEnd());
    lines.push("");
    lines.push(countRows("thread", snapshot.counting.threads, top).trimEnd());
    return lines.join("\n") + "\n";
  }
  lines.push(`report: ${plural(snapshot.hits, "hit")} in ${plural(snapshot.groupCount, "group")} by ${snapshot.by.join(", ")}; ${coverage.note}`);
  if (snapshot.redacted) lines.push("values: some are hashed or masked by their host's policy");
  if (snapshot.groups.length === 0) return lines.join("\n") + "\n";
  lines.push("");
  const headers = ["HITS", "SHARE", "HOSTS", "PROCS", "FIRST", "LAST", ...snapshot.by.map((k) => k.toUpperCase()), "MOST FREQUENT OLD → NEW"];
  const rows = snapshot.groups.map((g) => [
    String(g.hits),
    percent(g.share),
    String(g.hosts.length),
    String(g.processes.length),
    formatHitTime(g.firstUnixNano),
    formatHitTime(g.lastUnixNano),
    ...g.key,
    transitionText(g, 2),
  ]);
  lines.push(renderTable(headers, rows).trimEnd());
  if (snapshot.groupCount > snapshot.groups.length) lines.push(`(${snapshot.groupCount - snapshot.groups.length} more groups with fewer hits: --top 0 shows all)`);
  return lines.join("\n") + "\n";
}

function countsJson(counts: HitCounts | undefined): Record<string, string> {
  const c = counts ?? { trapped: 0n, delivered: 0n, dropped: 0n, suppressed: 0n, filtered: 0n };
  return { trapped: String(c.trapped), delivered: String(c.delivered), dropped: String(c.dropped), suppressed: String(c.suppressed), filtered: String(c.filtered) };
}

const rowJson = (r: CountRow) => ({ key: r.key, hits: String(r.hits), perSecond: r.perSecond });

/** The report as one JSON object (64-bit counts and times as strings, as protobuf JSON has them). */
export function reportJson(report: WritersReport): Record<string, unknown> {
  const { job, snapshot } = report;
  const coverage = coverageOf(report);
  return {
    jobId: job.id,
    state: jobStateName(job.state),
    countOnly: job.spec?.countOnly === true,
    by: snapshot.by,
    ...(report.since ? { since: report.since.toISOString() } : {}),
    jobCounts: countsJson(job.counts),
    hits: String(snapshot.hits),
    groupCount: snapshot.groupCount,
    coverage: { complete: coverage.complete, missing: String(coverage.missing), lostFromStream: String(coverage.lostFromStream), note: coverage.note },
    sequences: snapshot.sequences.map((s) => ({ hostId: s.hostId, seen: s.seen, lowest: String(s.lowest), highest: String(s.highest), missing: String(s.missing) })),
    redacted: snapshot.redacted,
    groups: snapshot.groups.map((g) => ({
      key: Object.fromEntries(snapshot.by.map((kind, i) => [kind, g.key[i]])),
      hits: g.hits,
      share: g.share,
      hosts: g.hosts,
      processes: g.processes,
      firstUnixNano: String(g.firstUnixNano),
      lastUnixNano: String(g.lastUnixNano),
      transitions: g.transitions,
      manyTransitions: g.manyTransitions,
      // The two most frequent, in the words of the table (what the console shows).
      transitionsText: transitionText(g, 2),
    })),
    ...(snapshot.counting ? { counting: { hosts: snapshot.counting.hosts.map(rowJson), processes: snapshot.counting.processes.map(rowJson), threads: snapshot.counting.threads.map(rowJson) } } : {}),
  };
}

/** `frame;frame;frame count` per line, heaviest first: what flamegraph.pl, inferno and speedscope read. */
export function renderFolded(snapshot: WritersSnapshot): string {
  return [...snapshot.folded]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    .map(([stack, hits]) => `${stack} ${hits}\n`)
    .join("");
}

/** The job's flame graph as a self-contained SVG document. */
export function renderReportSvg(report: WritersReport): string {
  const { job, snapshot } = report;
  const state = job.state === JobState.UNSPECIFIED ? "" : ` (${jobStateName(job.state)})`;
  return renderFlameGraphSvg(snapshot.folded, { title: `writers of job ${job.id}${state}: ${plural(snapshot.hits, "hit")}` });
}

/** The report in the chosen format. */
export function renderReport(report: WritersReport, format: ReportFormat, top: number): string {
  switch (format) {
    case "table":
      return renderReportTable(report, top);
    case "json":
      return JSON.stringify(reportJson(report), null, 2) + "\n";
    case "folded":
      return renderFolded(report.snapshot);
    case "svg":
      return renderReportSvg(report);
  }
}
