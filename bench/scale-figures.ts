// The numbers the scale bench reports, drawn from its samples: percentiles,
// medians, a least-squares slope, the ratio of each step between fleet
// sizes, and the headline figures of one size and backend. Pure: no I/O.
import type { FinishedRunResult, FleetModeResult, PlacementRunResult, QueueRunResult, StackReport } from "./scale-results.js";

/** Median of a list (mean of the middle two for even lengths); NaN when empty. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Nearest-rank percentile (p in 0..1): with fewer than 100 samples p99 is the largest. NaN when empty. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length))) - 1] as number;
}

/** Least-squares slope of y over x; NaN with fewer than two distinct x (or a NaN among the points). */
export function slope(points: ReadonlyArray<{ x: number; y: number }>): number {
  if (points.length < 2) return Number.NaN;
  const mx = points.reduce((sum, p) => sum + p.x, 0) / points.length;
  const my = points.reduce((sum, p) => sum + p.y, 0) / points.length;
  let sxy = 0;
  let sxx = 0;
  for (const p of points) {
    sxy += (p.x - mx) * (p.y - my);
    sxx += (p.x - mx) ** 2;
  }
  return sxx === 0 ? Number.NaN : sxy / sxx;
}

/** Each value divided by the one before it (one ratio fewer than values); NaN where either is missing or the earlier is 0. */
export function stepRatios(values: readonly number[]): number[] {
  return values.slice(1).map((value, i) => {
    const before = values[i] as number;
    return Number.isFinite(value) && Number.isFinite(before) && before !== 0 ? value / before : Number.NaN;
  });
}

/** One fleet-wide way of submitting over its counted rounds. */
export interface FleetSummary {
  p50Seconds: number;
  p99Seconds: number;
  maxSeconds: number;
  cancelP50Seconds: number;
  /** Fewest targets armed in a round (NaN without rounds). */
  armedMin: number;
}

export function fleetSummary(m: FleetModeResult): FleetSummary {
  const all = m.rounds.map((r) => r.allAckedSeconds);
  return {
    p50Seconds: percentile(all, 0.5),
    p99Seconds: percentile(all, 0.99),
    maxSeconds: all.length > 0 ? Math.max(...all) : Number.NaN,
    cancelP50Seconds: median(m.rounds.map((r) => r.cancelSeconds)),
    armedMin: m.rounds.length > 0 ? Math.min(...m.rounds.map((r) => r.armedTargets)) : Number.NaN,
  };
}

/** Armed jobs per second of the placement run. */
export function placementRate(p: PlacementRunResult): number {
  return p.seconds > 0 ? p.succeeded / p.seconds : Number.NaN;
}

/** Queued jobs placed and armed per second after the blocker's cancel (NaN when not all were). */
export function queueRate(q: QueueRunResult): number {
  return q.drainSeconds > 0 ? q.placed / q.drainSeconds : Number.NaN;
}

/** The controller's highest VmHWM seen in a stack's snapshots and samples; NaN when never read. */
export function peakControllerRssMiB(stack: StackReport): number {
  const peaks = [...stack.stats.map((x) => x.controller?.peakRssMiB), ...(stack.finished?.samples.map((x) => x.controller?.peakRssMiB) ?? [])].filter((x): x is number => x !== undefined);
  return peaks.length > 0 ? Math.max(...peaks) : Number.NaN;
}

/** How the controller's memory moved over the finished run, per `per` finished jobs. */
export interface FinishedGrowth {
  per: number;
  /** Least-squares slope of VmRSS, and of VmHWM, in MiB per `per` jobs. */
  rssSlopeMiB: number;
  peakSlopeMiB: number;
  firstRssMiB: number;
  lastRssMiB: number;
}

export function finishedGrowth(run: FinishedRunResult, per = 10_000): FinishedGrowth {
  const read = run.samples.filter((x) => x.controller !== undefined);
  const rss = read.map((x) => ({ x: x.finished, y: x.controller!.rssMiB }));
  const peak = read.map((x) => ({ x: x.finished, y: x.controller!.peakRssMiB }));
  return {
    per,
    rssSlopeMiB: slope(rss) * per,
    peakSlopeMiB: slope(peak) * per,
    firstRssMiB: rss[0]?.y ?? Number.NaN,
    lastRssMiB: rss.at(-1)?.y ?? Number.NaN,
  };
}

/** How a figure is printed. */
export type FigureUnit = "s" | "ms" | "per-s" | "MiB";

/** One headline number of one stack, its unit in its name; the same name across stacks is the same figure. */
export interface Figure {
  name: string;
  unit: FigureUnit;
  value: number;
}

/** The figures compared across fleet sizes, in the order they are printed. */
export function stackFigures(stack: StackReport): Figure[] {
  const figures: Figure[] = [];
  const add = (name: string, unit: FigureUnit, value: number): void => void figures.push({ name, unit, value });
  if (stack.connect) add("all agents registered s", "s", stack.connect.seconds);
  for (const m of stack.fleet) {
    const f = fleetSummary(m);
    add(`fleet-wide job p50 s, ${m.mode}`, "s", f.p50Seconds);
    add(`fleet-wide job p99 s, ${m.mode}`, "s", f.p99Seconds);
    add(`fleet-wide job cancel p50 s, ${m.mode}`, "s", f.cancelP50Seconds);
  }
  const p = stack.placement;
  if (p) {
    add("placement jobs/s", "per-s", placementRate(p));
    add("placement SubmitJob p50 ms", "ms", percentile(p.latenciesMs, 0.5));
    add("placement SubmitJob p99 ms", "ms", percentile(p.latenciesMs, 0.99));
    add("placement cancel s", "s", p.cancelSeconds);
    if (p.controllerCpuSeconds !== undefined && p.succeeded > 0) add("placement controller CPU ms per job", "ms", (p.controllerCpuSeconds * 1000) / p.succeeded);
  }
  if (stack.queue) add("queue placements/s", "per-s", queueRate(stack.queue));
  add("controller peak RSS MiB", "MiB", peakControllerRssMiB(stack));
  return figures;
}
