// The scale bench's printed report: one section per fleet size and backend,
// then how each figure grows with the fleet and issue 18's goals beside the
// figures. Pure: no I/O, no clocks, no pass/fail.
import type { SimFleetTotals } from "./sim-fleet.js";
import { finishedGrowth, fleetSummary, median, peakControllerRssMiB, percentile, placementRate, queueRate, stackFigures, stepRatios, type Figure } from "./scale-figures.js";
import { ms, n, ratio, s, signedMiB, table } from "./scale-format.js";
import type { ScaleReport, StackReport, StatsSnapshot } from "./scale-results.js";
import type { ProcStats } from "./scale-stack.js";
import type { SimBackend } from "./sim-registers.js";

// Issue 18's goals, for 10,000 agents × 4 processes.
const goals = {
  fleetP99Seconds: 2,
  queuePerSecond: 10_000,
  submitJobs: 10_000,
  submitConcurrency: 64,
  submitPerSecond: 3_000,
  submitP99Ms: 100,
  peakRssMiB: 512,
  finishedJobs: 100_000,
  agents: 10_000,
} as const;

function mib(stats: ProcStats | undefined): string {
  return stats ? n(stats.rssMiB) : "-";
}

/** Where a fleet-wide round's time has a goal: issue 4's at 1,000 agents, issue 18's at 10,000. */
function fleetGoal(agents: number): string {
  if (agents === 1_000) return "p99 < 1 s";
  if (agents === goals.agents) return `p99 < ${goals.fleetP99Seconds} s`;
  return "(goals are for 1,000 and 10,000)";
}

function stackTitle(stack: StackReport): string {
  return `${n(stack.agents)} agents, ${stack.backend}`;
}

function renderFleet(stack: StackReport): string {
  const lines = [`== fleet-wide job on ${n(stack.agents)} agents × ${stack.processes} processes (${n(stack.agents * stack.processes)} targets), ${stack.backend}: SubmitJob to every target acked`];
  const rows = [["how", "rounds", "p50 s", "p99 s", "max s", "goal", "per SubmitJob p50/p99 s", "cancel p50 s", "armed/expected"]];
  for (const m of stack.fleet) {
    const f = fleetSummary(m);
    const each = m.rounds.flatMap((r) => r.submitSeconds);
    const armed = m.rounds.length > 0 ? `${n(median(m.rounds.map((r) => r.armedTargets)))}/${n(m.expectedTargets)}` : "-";
    rows.push([
      m.label,
      String(m.rounds.length),
      s(f.p50Seconds),
      s(f.p99Seconds),
      s(f.maxSeconds),
      fleetGoal(stack.agents),
      m.jobsPerRound > 1 ? `${s(percentile(each, 0.5))} / ${s(percentile(each, 0.99))}` : "(the same)",
      s(f.cancelP50Seconds),
      armed,
    ]);
  }
  lines.push(table(rows));
  lines.push("  p50/p99: nearest rank over the rounds (with fewer than 100 rounds p99 is the slowest one); one warm-up round before them is not counted.");
  lines.push("  A round submits the job's SubmitJob calls at once and ends when the last answers (the controller answers after every target acked), then cancels them.");
  for (const m of stack.fleet) {
    if (m.warmup) lines.push(`  ${m.label}: warm-up round ${s(m.warmup.allAckedSeconds)} s`);
    const leaks = m.rounds.filter((r) => r.slotsAfterSubmit !== m.expectedTargets || r.slotsAfterCancel !== 0);
    if (leaks.length > 0) lines.push(`  ${m.label}: ${leaks.length} round(s) where the fleet's registers did not add up (held after submit / after cancel: ${leaks.map((r) => `${r.slotsAfterSubmit}/${r.slotsAfterCancel}`).join(", ")})`);
    if (m.failures.length > 0) lines.push(`  ${m.label}: ${m.failures.length} failed round(s); first: ${m.failures[0]}`);
    if (m.reregisterWaits.length > 0) lines.push(`  ${m.label}: ${m.reregisterWaits.length} time(s) the bench waited for dropped agents to register again before a round: ${m.reregisterWaits.map(s).join(", ")} s`);
  }
  return lines.join("\n");
}

function renderPlacement(stack: StackReport): string {
  const p = stack.placement;
  const lines = [`== placement throughput, ${stack.backend}`];
  if (p) {
    const failed = Object.entries(p.failed).map(([code, count]) => `${code} ${n(count)}`).join(", ") || "none";
    lines.push(`end to end: ${n(p.jobs)} single-target jobs (one host, one pid, one 8-byte symbol watch each), ${p.concurrency} SubmitJob calls in flight`);
    lines.push(`  ${n(p.succeeded)} armed in ${s(p.seconds)} s = ${n(placementRate(p))} jobs/s; SubmitJob latency p50 ${ms(percentile(p.latenciesMs, 0.5))} ms, p99 ${ms(percentile(p.latenciesMs, 0.99))} ms   (goal: ${n(goals.submitJobs)} calls, ${goals.submitConcurrency} in flight, >= ${n(goals.submitPerSecond)} jobs/s, p99 < ${goals.submitP99Ms} ms)`);
    lines.push(`  failed: ${failed}${p.failedSample ? ` (first: ${p.failedSample})` : ""}`);
    if (p.controllerCpuSeconds !== undefined) lines.push(`  controller CPU over the submits: ${s(p.controllerCpuSeconds)} s = ${ms((p.controllerCpuSeconds * 1000) / Math.max(1, p.succeeded))} ms per job`);
    lines.push(`  cancelled ${n(p.cancelled)} in ${s(p.cancelSeconds)} s = ${n(p.cancelled / p.cancelSeconds)} jobs/s${p.cancelFailed ? `, ${n(p.cancelFailed)} cancels failed` : ""}; registers held in the fleet after submits ${n(p.slotsAfterSubmit)}, after cancels ${n(p.slotsAfterCancel)}`);
    lines.push("  Each job is a full SubmitJob: Discover (which resolves its symbol), place, Arm, one KV create with the outcome, the audit record.");
  }
  const q = stack.queue;
  if (q) {
    lines.push(`queue: ${n(q.jobs)} single-target jobs submitted with --queue-timeout behind a fleet-wide job holding every register (${n(q.queued)} answered pending in ${s(q.submitSeconds)} s); then the blocker is cancelled`);
    lines.push(`  ${n(q.placed)} placed and armed ${s(q.drainSeconds)} s after the cancel = ${n(queueRate(q))} placements/s end to end (decide, KV update, Arm, KV update)   (goal: >= ${n(goals.queuePerSecond)} placements/s)`);
    if (q.controllerCpuSeconds !== undefined) lines.push(`  controller CPU over the drain: ${s(q.controllerCpuSeconds)} s; registers held in the fleet after the queued jobs' cancels: ${n(q.slotsAfterCancel)}`);
    if (q.failedSample) lines.push(`  first failure: ${q.failedSample}`);
  }
  const c = stack.core;
  if (c) {
    const outcomes = Object.entries(c.outcomes).map(([k, v]) => `${k} ${n(v)}`).join(", ");
    lines.push(`pure placement core (controller/placement.ts place + applyDecision, in the bench's process, no I/O, ${stack.backend} jobs):`);
    lines.push(`  ${n(c.queuedJobs)} queued single-target jobs: ${n(median(c.queueDecisionsPerSecond))} decisions/s (median of ${c.queueDecisionsPerSecond.length}; rounds ${c.queueDecisionsPerSecond.map(n).join(", ")}); outcomes ${outcomes}`);
    lines.push(`  one fleet-wide 'all' decision over ${n(c.fleetCandidates)} candidates: ${ms(median(c.fleetDecisionMs))} ms (median; rounds ${c.fleetDecisionMs.map(ms).join(", ")})`);
  }
  if (stack.coreError) lines.push(`pure placement core: failed: ${stack.coreError}`);
  return lines.join("\n");
}

function renderFinished(stack: StackReport): string {
  const f = stack.finished as NonNullable<StackReport["finished"]>;
  const failed = Object.entries(f.failed).map(([code, count]) => `${code} ${n(count)}`).join(", ") || "none";
  const growth = finishedGrowth(f);
  const rows = [["finished", "s", "controller RSS MiB", "peak MiB", "nats RSS MiB"]];
  for (const x of f.samples) rows.push([n(x.finished), s(x.atSeconds), mib(x.controller), x.controller ? n(x.controller.peakRssMiB) : "-", mib(x.nats)]);
  return [
    `== finished jobs, ${stack.backend}: ${n(f.jobs)} single-target jobs submitted and cancelled, ${f.concurrency} in flight, behind ${n(stack.agents)} agents (${n(f.finishedBefore)} jobs ended on this controller in the phases before)`,
    `  ${n(f.finished)} finished in ${s(f.seconds)} s = ${n(f.finished / f.seconds)} jobs/s; failed: ${failed}${f.failedSample ? ` (first: ${f.failedSample})` : ""}; registers held at the end: ${n(f.slotsAfter)}${f.stoppedAt ? `; ${f.stoppedAt}` : ""}`,
    table(rows),
    `  controller RSS ${signedMiB(growth.rssSlopeMiB)} MiB per ${n(growth.per)} finished jobs (least-squares slope over the ${f.samples.length} samples; VmHWM ${signedMiB(growth.peakSlopeMiB)}), ${n(growth.firstRssMiB)} → ${n(growth.lastRssMiB)} MiB   (goal: flat)`,
  ].join("\n");
}

function renderStats(stack: StackReport): string {
  const rows = [["after", "wall s", "controller RSS MiB", "peak MiB", "CPU s", "nats RSS MiB", "CPU s", "bench+sims RSS MiB", "CPU s"]];
  let previous: StatsSnapshot | undefined;
  for (const snap of stack.stats) {
    // The controller and nats-server started with the stack; this process did not.
    const delta = (now: ProcStats | undefined, before: ProcStats | undefined, atStart = 0) => (now ? s(now.cpuSeconds - (before?.cpuSeconds ?? atStart)) : "-");
    rows.push([
      snap.phase,
      previous ? s((snap.atMs - previous.atMs) / 1000) : "-",
      mib(snap.controller),
      snap.controller ? n(snap.controller.peakRssMiB) : "-",
      delta(snap.controller, previous?.controller),
      mib(snap.nats),
      delta(snap.nats, previous?.nats),
      mib(snap.bench),
      delta(snap.bench, previous?.bench, stack.benchCpuSecondsAtStart),
    ]);
    previous = snap;
  }
  return [
    `== processes, ${stackTitle(stack)} (RSS from /proc/PID/status VmRSS, peak = VmHWM; CPU s = user+system during the phase; goal: controller peak RSS < ${goals.peakRssMiB} MiB)`,
    table(rows),
  ].join("\n");
}

function renderChecks(t: SimFleetTotals): string {
  const refused = Object.entries(t.refused).map(([e, c]) => `${e} ${n(c)}`).join(", ") || "none";
  return [
    "== the simulated fleet",
    `  arms ${n(t.arms)}, disarms ${n(t.disarms)}, discovers ${n(t.discovers)}, resolves ${n(t.resolves)}, follows ${n(t.follows)}; heartbeats ${n(t.heartbeatsSent)} sent, ${n(t.heartbeatAcks)} acked`,
    `  arms refused by the fake registers: ${refused} (EBUSY = the controller handed out a register in use; ENOSPC = a perf arm on a register ptrace reserved); most registers in use in one process: ${t.peakSlotsPerProcess} of 4; held at the end: ${n(t.slotsHeld)}`,
    `  sessions that ended or were refused, each followed by a reconnect: ${n(t.sessionEnds)}${t.sessionEndSample ? ` (e.g. ${t.sessionEndSample})` : ""}; registered again: ${n(t.reregistrations)}; not registered at the end: ${n(t.unregistered)}; targets disarmed by an agent after a lease alone: ${n(t.lapsedDisarms)}`,
    `  commands for an unknown pid: ${n(t.unknownPid)}; refused for a stale epoch: ${n(t.staleEpoch)}`,
  ].join("\n");
}

function renderEvents(stack: StackReport): string {
  const lines = [`== controller log: ${stack.controllerEventCount} leadership/internal-error line(s); ${stack.leaseExpiries} agent session(s) dropped for a lapsed lease`];
  const shown = stack.controllerEvents.length > 16 ? [...stack.controllerEvents.slice(0, 10), undefined, ...stack.controllerEvents.slice(-5)] : stack.controllerEvents;
  for (const e of shown) lines.push(e ? `  +${e.atSeconds.toFixed(1)} s  ${e.line}` : "  …");
  return lines.join("\n");
}

/** One size and backend: everything measured on its controller. */
export function renderStack(stack: StackReport): string {
  const pid = stack.controllerPid === undefined ? "" : `, controller pid ${stack.controllerPid}`;
  const dirs = stack.outputDirs.length > 0 ? `; its profiles in ${stack.outputDirs.join(", ")}` : "";
  const parts = [`######## ${n(stack.agents)} agents × ${stack.processes} processes, every job on the ${stack.backend} backend (${stack.name}${pid}; ${s(stack.seconds)} s${dirs})`];
  if (stack.connect) {
    const c = stack.connect;
    parts.push(`agents: ${n(stack.agents)} simulated × ${stack.processes} processes in this process, ${n(c.channels)} gRPC channel(s) of up to ${c.agentsPerChannel} sessions; all registered in ${s(c.seconds)} s (${n(stack.agents / c.seconds)}/s)`);
  }
  if (stack.stoppedAt) parts.push(`STOPPED EARLY: ${stack.stoppedAt}`);
  if (stack.fleet.length > 0) parts.push(renderFleet(stack));
  if (stack.placement || stack.queue || stack.core || stack.coreError) parts.push(renderPlacement(stack));
  if (stack.finished) parts.push(renderFinished(stack));
  if (stack.stats.length > 0) parts.push(renderStats(stack));
  if (stack.totals) parts.push(renderChecks(stack.totals));
  parts.push(renderEvents(stack));
  return parts.join("\n\n");
}

function formatFigure(f: Figure | undefined): string {
  if (!f) return "-";
  switch (f.unit) {
    case "s":
      return s(f.value);
    case "ms":
      return ms(f.value);
    case "per-s":
    case "MiB":
      return n(f.value);
  }
}

/**
 * One backend's figures at each fleet size, and the ratio of each step
 * (the next size's value over this one's) beside the agents' ratio: a figure
 * that grows like the fleet shows the same ratios as the agents.
 */
export function renderGrowth(stacks: readonly StackReport[], backend: SimBackend): string {
  const ofBackend = stacks.filter((x) => x.backend === backend).sort((a, b) => a.agents - b.agents);
  const sizes = ofBackend.map((x) => x.agents);
  const agentSteps = stepRatios(sizes).map((r, i) => `${n(sizes[i + 1] as number)}/${n(sizes[i] as number)} agents = ${ratio(r)}`);
  const figures = ofBackend.map((x) => new Map(stackFigures(x).map((f) => [f.name, f])));
  const names = [...new Set(figures.flatMap((m) => [...m.keys()]))];
  const rows = [["figure", ...sizes.map(n), "steps"]];
  for (const name of names) {
    const cells = figures.map((m) => m.get(name));
    rows.push([name, ...cells.map(formatFigure), stepRatios(cells.map((f) => f?.value ?? Number.NaN)).map(ratio).join(", ")]);
  }
  return [
    `== growth with the fleet, ${backend}: each figure at each size, then the ratio of each step (${agentSteps.join("; ")})`,
    table(rows),
    "  For times, memory and CPU a ratio above the agents' ratio is worse than linear; for rates (jobs/s, placements/s) a ratio below ×1 means slower at the larger size.",
  ].join("\n");
}

function fleetGoalCell(stack: StackReport): string {
  if (stack.fleet.length === 0) return "not run";
  return stack.fleet
    .map((m) => {
      const f = fleetSummary(m);
      if (m.rounds.length === 0) return `${m.mode}: no round completed`;
      const armed = f.armedMin === m.expectedTargets ? "every target armed" : `${n(f.armedMin)}/${n(m.expectedTargets)} armed in the worst round`;
      return `${m.mode} p99 ${s(f.p99Seconds)} s (${armed})`;
    })
    .join("; ");
}

function queueGoalCell(stack: StackReport): string {
  const q = stack.queue;
  if (!q) return "not run";
  return `${n(queueRate(q))} placements/s (${n(q.placed)} of ${n(q.jobs)} queued jobs placed)`;
}

function submitGoalCell(stack: StackReport): string {
  const p = stack.placement;
  if (!p) return "not run";
  const shape = p.jobs === goals.submitJobs && p.concurrency === goals.submitConcurrency ? "" : ` (${n(p.jobs)} calls, ${p.concurrency} in flight)`;
  const failed = Object.values(p.failed).reduce((sum, c) => sum + c, 0);
  return `${n(placementRate(p))} jobs/s, p50 ${ms(percentile(p.latenciesMs, 0.5))} ms, p99 ${ms(percentile(p.latenciesMs, 0.99))} ms${shape}${failed > 0 ? `; ${n(failed)} failed` : ""}`;
}

function finishedGoalCell(stack: StackReport): string {
  const f = stack.finished as NonNullable<StackReport["finished"]>;
  const g = finishedGrowth(f);
  return `${signedMiB(g.rssSlopeMiB)} MiB per ${n(g.per)} finished jobs (${n(g.firstRssMiB)} → ${n(g.lastRssMiB)} MiB over ${n(f.finished)} jobs)`;
}

/** Issue 18's goals (and issue 4's at 1,000 agents) beside each size's and backend's figures; no verdicts. */
export function renderGoals(report: ScaleReport): string {
  const stacks = [...report.stacks].sort((a, b) => a.agents - b.agents || report.backends.indexOf(a.backend) - report.backends.indexOf(b.backend));
  const rows = [["goal", "run", "this run"]];
  const group = (goal: string, of: readonly StackReport[], cell: (x: StackReport) => string, none: string): void => {
    if (of.length === 0) rows.push([goal, "-", none]);
    of.forEach((x, i) => rows.push([i === 0 ? goal : "", stackTitle(x), cell(x)]));
  };
  group(`one fleet-wide job, every target armed: p99 < ${goals.fleetP99Seconds} s`, stacks, fleetGoalCell, "not run");
  group(`queued single-target jobs placed and armed: >= ${n(goals.queuePerSecond)}/s`, stacks, queueGoalCell, "not run");
  group(`${n(goals.submitJobs)} single-target SubmitJob, ${goals.submitConcurrency} in flight: >= ${n(goals.submitPerSecond)} jobs/s, p99 < ${goals.submitP99Ms} ms`, stacks, submitGoalCell, "not run");
  group(`controller peak RSS < ${goals.peakRssMiB} MiB`, stacks, (x) => `${n(peakControllerRssMiB(x))} MiB (VmHWM)`, "not run");
  group(`controller RSS flat as finished jobs accumulate (${n(goals.finishedJobs)} behind ${n(goals.agents)} agents)`, stacks.filter((x) => x.finished), finishedGoalCell, "not run");
  group("issue 4: 1,000 agents, fleet-wide job p99 < 1 s", stacks.filter((x) => x.agents === 1_000), fleetGoalCell, `not run (sizes: ${report.sizes.map(n).join(", ")})`);
  return [
    `== goals (issue 18, for ${n(goals.agents)} agents × 4 processes) beside this run's figures at each size and backend; no pass/fail`,
    table(rows),
  ].join("\n");
}

/** The whole report as printed. */
export function renderReport(report: ScaleReport): string {
  const parts = [report.header.join("\n")];
  if (report.stoppedAt) parts.push(`STOPPED EARLY: ${report.stoppedAt}`);
  for (const stack of report.stacks) parts.push(renderStack(stack));
  if (report.stacks.length > 0) {
    parts.push("######## across sizes and backends");
    for (const backend of report.backends) {
      if (new Set(report.stacks.filter((x) => x.backend === backend).map((x) => x.agents)).size > 1) parts.push(renderGrowth(report.stacks, backend));
    }
    parts.push(renderGoals(report));
  }
  return `${parts.join("\n\n")}\n`;
}
