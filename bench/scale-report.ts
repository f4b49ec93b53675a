// Turns the scale bench's samples into medians, percentiles and the printed
// report, goals alongside. Pure: no I/O, no clocks, no pass/fail.
import type { SimFleetTotals } from "./sim-fleet.js";
import type { PlacementCoreResult } from "./scale-placement-core.js";
import type { ControllerEvent, ProcStats } from "./scale-stack.js";

/** One fleet-wide job: its SubmitJob calls in parallel until the last answered, then its cancels. */
export interface FleetRound {
  /** SubmitJob of the first call to the answer of the last: every target acked. */
  allAckedSeconds: number;
  /** Each SubmitJob call on its own. */
  submitSeconds: number[];
  /** CancelJob of the first call to the answer of the last. */
  cancelSeconds: number;
  armedTargets: number;
  /** Registers held in the simulated fleet once every SubmitJob answered, and after the cancels. */
  slotsAfterSubmit: number;
  slotsAfterCancel: number;
}

export interface FleetModeResult {
  /** The short name (`per-pid`, ...) and how it reads in words. */
  mode: string;
  label: string;
  jobsPerRound: number;
  expectedTargets: number;
  rounds: FleetRound[];
  warmup: FleetRound | undefined;
  /** Why rounds failed (status and details), in order. */
  failures: string[];
  /** Seconds spent before a round waiting for agents the controller had dropped to register again (only waits that happened). */
  reregisterWaits: number[];
}

/** The queue run: jobs waiting behind a fleet-wide blocker, placed when it is cancelled. */
export interface QueueRunResult {
  jobs: number;
  /** Seconds to submit them all (each answered pending). */
  submitSeconds: number;
  queued: number;
  /** From the blocker's cancel to every queued job's register held on its simulated agent. */
  drainSeconds: number;
  placed: number;
  controllerCpuSeconds: number | undefined;
  failedSample: string | undefined;
}

export interface PlacementRunResult {
  jobs: number;
  concurrency: number;
  seconds: number;
  succeeded: number;
  latenciesMs: number[];
  failed: Record<string, number>;
  failedSample: string | undefined;
  cancelled: number;
  cancelSeconds: number;
  cancelFailed: number;
  slotsAfterSubmit: number;
  slotsAfterCancel: number;
  /** CPU seconds the controller used over the submits. */
  controllerCpuSeconds: number | undefined;
}

/** Resources of the processes at one moment. */
export interface StatsSnapshot {
  phase: string;
  atMs: number;
  controller: ProcStats | undefined;
  nats: ProcStats | undefined;
  /** This process: the simulated agents and the driver. */
  bench: ProcStats;
}

export interface ScaleReport {
  header: string[];
  agents: number;
  processes: number;
  connect: { seconds: number; channels: number; agentsPerChannel: number } | undefined;
  fleet: FleetModeResult[];
  placement: PlacementRunResult | undefined;
  queue: QueueRunResult | undefined;
  core: PlacementCoreResult | undefined;
  coreError: string | undefined;
  stats: StatsSnapshot[];
  totals: SimFleetTotals | undefined;
  /** Notable controller log lines (leadership, internal errors), their count, and agent lease expiries it logged. */
  controllerEvents: ControllerEvent[];
  controllerEventCount: number;
  leaseExpiries: number;
  /** Where the run stopped early, if it did. */
  stoppedAt: string | undefined;
}

/** Median of a non-empty list (mean of the middle two for even lengths). */
export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** Nearest-rank percentile (p in 0..1): with fewer than 100 samples p99 is the largest. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length, Math.max(1, Math.ceil(p * sorted.length))) - 1] as number;
}

function s(seconds: number): string {
  return Number.isNaN(seconds) ? "-" : seconds < 10 ? seconds.toFixed(3) : seconds.toFixed(1);
}

function ms(value: number): string {
  return Number.isNaN(value) ? "-" : value < 10 ? value.toFixed(2) : value.toFixed(0);
}

function n(value: number): string {
  return Math.round(value).toLocaleString("en-US");
}

function mib(stats: ProcStats | undefined): string {
  return stats ? n(stats.rssMiB) : "-";
}

function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] as number))).join("  ").trimEnd()).join("\n");
}

function fleetGoal(agents: number): string {
  if (agents === 1_000) return "p99 < 1 s";
  if (agents === 10_000) return "p99 < 5 s";
  return "(goals are for 1,000 and 10,000)";
}

function renderFleet(report: ScaleReport): string {
  const lines = [`== fleet-wide job on ${n(report.agents)} agents × ${report.processes} processes (${n(report.agents * report.processes)} targets): SubmitJob to every target acked`];
  const rows = [["how", "rounds", "p50 s", "p99 s", "max s", "goal", "per SubmitJob p50/p99 s", "cancel p50 s", "armed/expected"]];
  for (const m of report.fleet) {
    const all = m.rounds.map((r) => r.allAckedSeconds);
    const each = m.rounds.flatMap((r) => r.submitSeconds);
    const armed = m.rounds.length > 0 ? `${n(median(m.rounds.map((r) => r.armedTargets)))}/${n(m.expectedTargets)}` : "-";
    rows.push([
      m.label,
      String(m.rounds.length),
      s(percentile(all, 0.5)),
      s(percentile(all, 0.99)),
      s(all.length > 0 ? Math.max(...all) : Number.NaN),
      fleetGoal(report.agents),
      m.jobsPerRound > 1 ? `${s(percentile(each, 0.5))} / ${s(percentile(each, 0.99))}` : "(the same)",
      s(median(m.rounds.map((r) => r.cancelSeconds))),
      armed,
    ]);
  }
  lines.push(table(rows));
  lines.push("  p50/p99: nearest rank over the rounds (with fewer than 100 rounds p99 is the slowest one); one warm-up round before them is not counted.");
  lines.push("  A round submits the job's SubmitJob calls at once and ends when the last answers (the controller answers after every target acked), then cancels them.");
  for (const m of report.fleet) {
    if (m.warmup) lines.push(`  ${m.label}: warm-up round ${s(m.warmup.allAckedSeconds)} s`);
    const leaks = m.rounds.filter((r) => r.slotsAfterSubmit !== m.expectedTargets || r.slotsAfterCancel !== 0);
    if (leaks.length > 0) lines.push(`  ${m.label}: ${leaks.length} round(s) where the fleet's registers did not add up (held after submit / after cancel: ${leaks.map((r) => `${r.slotsAfterSubmit}/${r.slotsAfterCancel}`).join(", ")})`);
    if (m.failures.length > 0) lines.push(`  ${m.label}: ${m.failures.length} failed round(s); first: ${m.failures[0]}`);
    if (m.reregisterWaits.length > 0) lines.push(`  ${m.label}: ${m.reregisterWaits.length} time(s) the bench waited for dropped agents to register again before a round: ${m.reregisterWaits.map(s).join(", ")} s`);
  }
  return lines.join("\n");
}

function renderPlacement(report: ScaleReport): string {
  const p = report.placement;
  const lines = ["== placement throughput"];
  if (p) {
    const failed = Object.entries(p.failed).map(([code, count]) => `${code} ${n(count)}`).join(", ") || "none";
    lines.push(`end to end: ${n(p.jobs)} single-target jobs (one host, one pid, one 8-byte symbol watch each), ${p.concurrency} SubmitJob calls in flight`);
    lines.push(`  ${n(p.succeeded)} armed in ${s(p.seconds)} s = ${n(p.succeeded / p.seconds)} jobs/s   (goal: >= 10,000 placements/s)`);
    lines.push(`  SubmitJob latency p50 ${ms(percentile(p.latenciesMs, 0.5))} ms, p99 ${ms(percentile(p.latenciesMs, 0.99))} ms; failed: ${failed}${p.failedSample ? ` (first: ${p.failedSample})` : ""}`);
    if (p.controllerCpuSeconds !== undefined) lines.push(`  controller CPU over the submits: ${s(p.controllerCpuSeconds)} s = ${ms((p.controllerCpuSeconds * 1000) / Math.max(1, p.succeeded))} ms per job`);
    lines.push(`  cancelled ${n(p.cancelled)} in ${s(p.cancelSeconds)} s = ${n(p.cancelled / p.cancelSeconds)} jobs/s${p.cancelFailed ? `, ${n(p.cancelFailed)} cancels failed` : ""}; registers held in the fleet after submits ${n(p.slotsAfterSubmit)}, after cancels ${n(p.slotsAfterCancel)}`);
    lines.push("  Each job is a full SubmitJob: Discover, Resolve, place, KV create, Arm, KV update.");
  }
  const q = report.queue;
  if (q) {
    lines.push(`queue: ${n(q.jobs)} single-target jobs submitted with --queue-timeout behind a fleet-wide job holding every register (${n(q.queued)} answered pending in ${s(q.submitSeconds)} s); then the blocker is cancelled`);
    lines.push(`  ${n(q.placed)} placed and armed ${s(q.drainSeconds)} s after the cancel = ${n(q.placed / q.drainSeconds)} placements/s end to end (decide, KV update, Arm, KV update)   (goal: >= 10,000 placements/s with 10,000 queued jobs)`);
    if (q.controllerCpuSeconds !== undefined) lines.push(`  controller CPU over the drain: ${s(q.controllerCpuSeconds)} s`);
    if (q.failedSample) lines.push(`  first failure: ${q.failedSample}`);
  }
  const c = report.core;
  if (c) {
    const outcomes = Object.entries(c.outcomes).map(([k, v]) => `${k} ${n(v)}`).join(", ");
    lines.push(`pure placement core (controller/placement.ts place + applyDecision, in the bench's process, no I/O):`);
    lines.push(`  ${n(c.queuedJobs)} queued single-target jobs: ${n(median(c.queueDecisionsPerSecond))} decisions/s (median of ${c.queueDecisionsPerSecond.length}; rounds ${c.queueDecisionsPerSecond.map(n).join(", ")}); outcomes ${outcomes}`);
    lines.push(`  one fleet-wide 'all' decision over ${n(c.fleetCandidates)} candidates: ${ms(median(c.fleetDecisionMs))} ms (median; rounds ${c.fleetDecisionMs.map(ms).join(", ")})`);
  }
  if (report.coreError) lines.push(`pure placement core: failed: ${report.coreError}`);
  return lines.join("\n");
}

function renderStats(report: ScaleReport): string {
  const rows = [["after", "wall s", "controller RSS MiB", "peak MiB", "CPU s", "nats RSS MiB", "CPU s", "bench+sims RSS MiB", "CPU s"]];
  let previous: StatsSnapshot | undefined;
  for (const snap of report.stats) {
    const delta = (now: ProcStats | undefined, before: ProcStats | undefined) => (now ? s(now.cpuSeconds - (before?.cpuSeconds ?? 0)) : "-");
    rows.push([
      snap.phase,
      previous ? s((snap.atMs - previous.atMs) / 1000) : "-",
      mib(snap.controller),
      snap.controller ? n(snap.controller.peakRssMiB) : "-",
      delta(snap.controller, previous?.controller),
      mib(snap.nats),
      delta(snap.nats, previous?.nats),
      mib(snap.bench),
      delta(snap.bench, previous?.bench),
    ]);
    previous = snap;
  }
  return [
    "== processes (RSS from /proc/PID/status VmRSS, peak = VmHWM; CPU s = user+system during the phase; goal: controller RSS < 1 GiB)",
    table(rows),
  ].join("\n");
}

function renderChecks(t: SimFleetTotals | undefined): string {
  if (!t) return "";
  const refused = Object.entries(t.refused).map(([e, c]) => `${e} ${n(c)}`).join(", ") || "none";
  return [
    "== the simulated fleet",
    `  arms ${n(t.arms)}, disarms ${n(t.disarms)}, discovers ${n(t.discovers)}, resolves ${n(t.resolves)}, follows ${n(t.follows)}; heartbeats ${n(t.heartbeatsSent)} sent, ${n(t.heartbeatAcks)} acked`,
    `  arms refused by the fake registers: ${refused} (EBUSY = the controller handed out a register in use; ENOSPC = a perf arm on a register ptrace reserved); most registers in use in one process: ${t.peakSlotsPerProcess} of 4; held at the end: ${n(t.slotsHeld)}`,
    `  sessions that ended or were refused, each followed by a reconnect: ${n(t.sessionEnds)}${t.sessionEndSample ? ` (e.g. ${t.sessionEndSample})` : ""}; registered again: ${n(t.reregistrations)}; not registered at the end: ${n(t.unregistered)}; targets disarmed by an agent after a lease alone: ${n(t.lapsedDisarms)}`,
    `  commands for an unknown pid: ${n(t.unknownPid)}; refused for a stale epoch: ${n(t.staleEpoch)}`,
  ].join("\n");
}

function renderEvents(report: ScaleReport): string {
  const lines = [`== controller log: ${report.controllerEventCount} leadership/internal-error line(s); ${report.leaseExpiries} agent session(s) dropped for a lapsed lease`];
  const shown = report.controllerEvents.length > 16 ? [...report.controllerEvents.slice(0, 10), undefined, ...report.controllerEvents.slice(-5)] : report.controllerEvents;
  for (const e of shown) lines.push(e ? `  +${e.atSeconds.toFixed(1)} s  ${e.line}` : "  …");
  return lines.join("\n");
}

function renderGoals(report: ScaleReport): string {
  const byLabel = report.fleet.map((m) => `${m.mode}: ${m.rounds.length > 0 ? `${s(percentile(m.rounds.map((r) => r.allAckedSeconds), 0.99))} s` : "no round completed"}`).join("; ");
  const peak = Math.max(...report.stats.map((x) => x.controller?.peakRssMiB ?? 0));
  const placement = [
    report.placement ? `end to end ${n(report.placement.succeeded / report.placement.seconds)} jobs/s` : "",
    report.queue ? `queue drain ${n(report.queue.placed / report.queue.drainSeconds)} placements/s` : "",
    report.core ? `pure core ${n(median(report.core.queueDecisionsPerSecond))} decisions/s` : "",
  ].filter(Boolean).join("; ") || "not run";
  const rows = [
    ["goal", "measured in this run"],
    ["1,000 agents: p99 < 1 s", report.agents === 1_000 ? byLabel || "not run" : `not run (this run: ${n(report.agents)} agents)`],
    ["10,000 agents: p99 < 5 s", report.agents === 10_000 ? byLabel || "not run" : `not run (this run: ${n(report.agents)} agents)`],
    [">= 10,000 placements/s", placement],
    ["controller RSS < 1 GiB", peak > 0 ? `peak ${n(peak)} MiB (VmHWM)` : "-"],
  ];
  return ["== goals (issue 4) beside this run's figures; no pass/fail", table(rows)].join("\n");
}

/** The whole report as printed. */
export function renderReport(report: ScaleReport): string {
  const parts = [report.header.join("\n")];
  if (report.connect) {
    const c = report.connect;
    parts.push(`agents: ${n(report.agents)} simulated × ${report.processes} processes in this process, ${n(c.channels)} gRPC channel(s) of up to ${c.agentsPerChannel} sessions; all registered in ${s(c.seconds)} s (${n(report.agents / c.seconds)}/s)`);
  }
  if (report.stoppedAt) parts.push(`STOPPED EARLY: ${report.stoppedAt}`);
  if (report.fleet.length > 0) parts.push(renderFleet(report));
  if (report.placement || report.queue || report.core || report.coreError) parts.push(renderPlacement(report));
  if (report.stats.length > 0) parts.push(renderStats(report));
  if (report.totals) parts.push(renderChecks(report.totals));
  parts.push(renderEvents(report));
  parts.push(renderGoals(report));
  return `${parts.join("\n\n")}\n`;
}
