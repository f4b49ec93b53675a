// Turns the rounds of each case into medians, ratios and the printed table.
// Pure: no I/O, no clocks.
import type { Measurement, RateLimitedResult } from "./cases.js";
import { describePlacement } from "./placement.js";

/** Which path a row measures; ratios refer to these keys. */
export type CaseKey = "bare-same" | "bare" | "helper" | "helper-none" | "helper-same" | "full" | "gdb";

/** All rounds of one case at one thread count. */
export interface CaseResult {
  key: CaseKey;
  label: string;
  /** Hits asked for per measurement. */
  hitsPerRun: number;
  rounds: Measurement[];
  /** Set when the case could not run (the reason); rounds may then be short. */
  failed?: string;
}

export interface ThreadsResult {
  threads: number;
  cases: CaseResult[];
  /** One per round; empty when the case was not asked for. */
  rateLimited?: RateLimitedResult[];
  rateLimitedFailed?: string;
}

/** Median of a non-empty list (mean of the middle two for even lengths). */
export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

export function medianRate(c: CaseResult | undefined): number | undefined {
  if (!c || c.rounds.length === 0) return undefined;
  return median(c.rounds.map((m) => m.hitsPerSecond));
}

const int = (n: number): string => Math.round(n).toLocaleString("en-US");
const kilo = (n: number): string => `${(n / 1000).toFixed(1)}k`;

function pad(text: string, width: number, right = false): string {
  return right ? text.padStart(width) : text.padEnd(width);
}

/** "87 %" for a share, "9.1×" for a multiple. */
function ratio(num: number | undefined, den: number | undefined, asMultiple: boolean): string {
  if (num === undefined || den === undefined || den === 0) return "n/a";
  const r = num / den;
  return asMultiple ? `${r.toFixed(1)}×` : `${Math.round(r * 100)} %`;
}

/** The ratios the issue asks for, from medians. */
export function ratioLines(result: ThreadsResult): string[] {
  const rate = (key: CaseKey): number | undefined => medianRate(result.cases.find((c) => c.key === key));
  const lines = [
    `helper/bare  ${ratio(rate("helper"), rate("bare-same"), false)} of bare same-CPU, ${ratio(rate("helper"), rate("bare"), false)} of bare unpinned`,
    `full/bare    ${ratio(rate("full"), rate("bare-same"), false)} of bare same-CPU, ${ratio(rate("full"), rate("bare"), false)} of bare unpinned`,
    `helper/gdb   ${ratio(rate("helper"), rate("gdb"), true)}`,
    `full/gdb     ${ratio(rate("full"), rate("gdb"), true)}`,
  ];
  if (result.cases.some((c) => c.key === "helper-none" || c.key === "helper-same")) {
    lines.push(`helper policy none/bare unpinned  ${ratio(rate("helper-none"), rate("bare"), false)}; helper same CPU (taskset)/bare same-CPU  ${ratio(rate("helper-same"), rate("bare-same"), false)}`);
  }
  return lines;
}

/** The table of one thread count, then its ratios and the rate-limited case. */
export function renderThreads(result: ThreadsResult): string {
  const header = ["case", "hits/s", "µs/hit", "hits/run", "s/run", "rounds (hits/s)", "placement"];
  const rows: string[][] = [];
  // Note text -> the cases that saw it: a warning every helper prints is said once.
  const notes = new Map<string, Set<string>>();
  const note = (label: string, text: string): void => {
    notes.set(text, (notes.get(text) ?? new Set()).add(label));
  };
  for (const c of result.cases) {
    const rate = medianRate(c);
    if (rate === undefined) {
      rows.push([c.label, "-", "-", "-", "-", "-", c.failed ? `failed: ${c.failed}` : "not run"]);
      continue;
    }
    rows.push([
      c.label,
      int(rate),
      (1e6 / rate).toFixed(1),
      int(median(c.rounds.map((m) => m.hits))),
      median(c.rounds.map((m) => m.seconds)).toFixed(1),
      c.rounds.map((m) => kilo(m.hitsPerSecond)).join(" "),
      describePlacement(c.rounds.map((m) => m.placement)),
    ]);
    for (const m of c.rounds) if (m.note) note(c.label, m.note);
    if (c.failed) note(c.label, `failed after ${c.rounds.length} rounds: ${c.failed}`);
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const numeric = new Set([1, 2, 3, 4]);
  const line = (cells: string[]): string =>
    cells
      .map((cell, i) => pad(cell, widths[i] as number, numeric.has(i)))
      .join("  ")
      .trimEnd();
  const out = [
    `== ${result.threads} writer thread${result.threads === 1 ? "" : "s"}${result.threads > 1 ? " (hits/s and µs/hit are aggregate)" : ""}`,
    line(header),
    ...rows.map(line),
    "",
    "ratios of medians:",
    ...ratioLines(result).map((l) => `  ${l}`),
  ];
  out.push(...renderRateLimited(result));
  if (notes.size > 0) out.push("notes:", ...[...notes].map(([text, labels]) => `  ${[...labels].join("; ")}: ${text}`));
  return out.join("\n");
}

/** The rate-limited case: medians of the writer's own rate, watched and unwatched. */
function renderRateLimited(result: ThreadsResult): string[] {
  const rounds = result.rateLimited ?? [];
  const lines: string[] = [];
  const unwatched = median(rounds.map((r) => r.unwatchedWritesPerSecond));
  const unsupported = rounds.find((r) => !r.supported);
  if (unsupported && !unsupported.supported) {
    lines.push(`rate-limited (1,000 hits/s): ${unsupported.reason} (writer unwatched: ${int(unwatched)} writes/s)`);
  } else if (rounds.length > 0) {
    const supported = rounds.flatMap((r) => (r.supported ? [r] : []));
    const watched = median(supported.map((r) => r.watchedWritesPerSecond));
    lines.push(
      `rate-limited (1,000 hits/s): writer ${int(watched)} writes/s watched vs ${int(unwatched)} unwatched = ${ratio(watched, unwatched, false)} (medians; rounds ${supported
        .map((r) => ratio(r.watchedWritesPerSecond, r.unwatchedWritesPerSecond, false))
        .join(", ")}); ${int(median(supported.map((r) => r.hitsPerSecond)))} hits/s delivered, suppressed per round ${supported.map((r) => String(r.suppressed)).join(", ")}`,
    );
  }
  if (result.rateLimitedFailed) lines.push(`rate-limited (1,000 hits/s): failed: ${result.rateLimitedFailed}`);
  return lines;
}
