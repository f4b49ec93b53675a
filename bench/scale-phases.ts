// The scale bench's measured phases on one stack (nats-server, controller,
// simulated fleet) with one backend: fleet-wide rounds, the placement run,
// the queue, and finished jobs piling up. Each returns plain results
// (scale-results.ts); none decides anything about them.
import { performance } from "node:perf_hooks";
import { JobState, RpcError, TargetState, submittedTargetStates, type Job } from "../proto/index.js";
import { BenchInterruptedError, BenchTimeoutError, until } from "./processes.js";
import { describeFleetJobMode, fleetJobSpecs, queueBlockerSpec, singleTargetSpec, singleTargetsPerProcess, type FleetJobMode, type JobSpecInit } from "./scale-jobs.js";
import type { FinishedRunResult, FinishedSample, FleetModeResult, FleetRound, PlacementRunResult, QueueRunResult } from "./scale-results.js";
import type { ScaleStack } from "./scale-stack.js";
import type { SimFleet } from "./sim-fleet.js";
import type { SimBackend } from "./sim-registers.js";
import { waitFor } from "../test/support/wait.js";

// Deadlines of the bench's own calls: generous, since at 10,000 agents a
// fleet-wide SubmitJob may take long; a call past them counts as failed.
export const submitDeadlineMs = 300_000;
// How long a phase waits for agents the controller dropped to register again;
// past it the fleet is gone and the run stops.
const reregisterTimeoutMs = 60_000;
// The symbol every fleet-wide job watches (an 8-byte variable on every simulated process).
const fleetSymbol = "work_mem";

/** What every phase runs against. */
export interface PhaseContext {
  stack: ScaleStack;
  fleet: SimFleet;
  backend: SimBackend;
  processes: number;
  signal: AbortSignal;
  log: (line: string) => void;
  /** Jobs the bench has ended (cancelled) on this controller so far; the phases add theirs. */
  jobsEnded: number;
}

/** A status or error as one line, details cut to 300 characters. */
export function errorText(err: unknown): string {
  if (err instanceof RpcError) return `${err.codeName}: ${err.details.length > 300 ? `${err.details.slice(0, 300)}…` : err.details}`;
  return err instanceof Error ? err.message : String(err);
}

/** errorText, with the controller's last `internal error` log line for an INTERNAL status (which carries no text over the wire). */
function failureText(ctx: PhaseContext, err: unknown): string {
  const internal = err instanceof RpcError && err.codeName === "INTERNAL" ? ctx.stack.lastInternalError() : undefined;
  return `${errorText(err)}${internal ? ` [${internal.slice(0, 300)}]` : ""}`;
}

function statusOf(err: unknown): string {
  return err instanceof RpcError ? err.codeName : "ERROR";
}

const count = (value: number): string => value.toLocaleString("en-US");

function seconds(since: number): number {
  return (performance.now() - since) / 1000;
}

/**
 * Runs `work` over 0..count-1 with at most `concurrency` at once. A lane that
 * throws stops taking work; the first error is thrown once every lane has
 * stopped, so nothing is still counting into a result after it is returned.
 */
async function runBounded(count: number, concurrency: number, work: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = await Promise.allSettled(
    Array.from({ length: Math.min(concurrency, count) }, async () => {
      while (next < count) await work(next++);
    }),
  );
  const failed = lanes.find((lane): lane is PromiseRejectedResult => lane.status === "rejected");
  if (failed) throw failed.reason;
}

async function cancelAll(ctx: PhaseContext, ids: string[]): Promise<number> {
  const started = performance.now();
  await Promise.all(ids.map((id) => ctx.stack.api.cancelJob({ id }, { deadlineMs: submitDeadlineMs })));
  ctx.jobsEnded += ids.length;
  return seconds(started);
}

/**
 * Submits every spec at once; the round ends when the last one answered. Each is answered with how many targets
 * are in each state, not every target (as a client of a fleet-wide job would ask). Throws the first failure after all settled.
 */
async function submitAll(ctx: PhaseContext, specs: JobSpecInit[]): Promise<{ jobs: Job[]; armed: number; each: number[]; all: number }> {
  const started = performance.now();
  const settled = await Promise.allSettled(
    specs.map(async (spec) => {
      const t0 = performance.now();
      const response = await ctx.stack.api.submitJob({ spec, withoutTargets: true }, { deadlineMs: submitDeadlineMs });
      const armed = submittedTargetStates(response).find((c) => c.state === TargetState.ARMED)?.targets ?? 0;
      return { job: response.job as Job, armed, seconds: seconds(t0) };
    }),
  );
  const all = seconds(started);
  const ok = settled.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed) {
    await cancelAll(ctx, ok.map((r) => r.job.id));
    throw failed.reason;
  }
  return { jobs: ok.map((r) => r.job), armed: ok.reduce((sum, r) => sum + r.armed, 0), each: ok.map((r) => r.seconds), all };
}

async function fleetRound(ctx: PhaseContext, specs: JobSpecInit[]): Promise<FleetRound> {
  const submitted = await submitAll(ctx, specs);
  const slotsAfterSubmit = ctx.fleet.slotsHeld();
  const armedTargets = submitted.armed;
  const cancelSeconds = await cancelAll(ctx, submitted.jobs.map((j) => j.id));
  return { allAckedSeconds: submitted.all, submitSeconds: submitted.each, cancelSeconds, armedTargets, slotsAfterSubmit, slotsAfterCancel: ctx.fleet.slotsHeld() };
}

async function waitRegistered(ctx: PhaseContext, phase: string): Promise<number> {
  const waited = await ctx.fleet.waitAllRegistered(reregisterTimeoutMs, ctx.signal);
  if (waited > 0) ctx.log(`${phase}: waited ${waited.toFixed(1)} s for dropped agents to register again`);
  return waited;
}

/** `rounds` fleet-wide jobs submitted one way (after one warm-up round), each cancelled before the next. */
export async function measureFleetMode(ctx: PhaseContext, mode: FleetJobMode, rounds: number): Promise<FleetModeResult> {
  const specs = fleetJobSpecs(mode, ctx.fleet.hostIds, ctx.processes, fleetSymbol, ctx.backend);
  const result: FleetModeResult = { mode, label: describeFleetJobMode(mode, ctx.processes), jobsPerRound: specs.length, expectedTargets: ctx.fleet.hostIds.length * ctx.processes, rounds: [], warmup: undefined, failures: [], reregisterWaits: [] };
  for (let round = 0; round <= rounds; round++) {
    if (ctx.signal.aborted) throw new BenchInterruptedError("interrupted");
    const roundStarted = performance.now();
    try {
      const waited = await waitRegistered(ctx, mode);
      if (waited > 0) result.reregisterWaits.push(waited);
      const r = await until(fleetRound(ctx, specs), `fleet-wide round ${round} (${mode})`, ctx.signal, 2 * submitDeadlineMs);
      if (round === 0) result.warmup = r;
      else result.rounds.push(r);
      ctx.log(`${mode} ${round === 0 ? "warm-up" : `round ${round}/${rounds}`}: all acked in ${r.allAckedSeconds.toFixed(3)} s (each ${r.submitSeconds.map((x) => x.toFixed(3)).join(" ")}), ${r.armedTargets} armed, cancel ${r.cancelSeconds.toFixed(3)} s`);
    } catch (err) {
      if (err instanceof BenchInterruptedError || err instanceof BenchTimeoutError || ctx.signal.aborted) throw err;
      const text = `${failureText(ctx, err)} (after ${seconds(roundStarted).toFixed(1)} s)`;
      result.failures.push(text);
      ctx.log(`${mode} round ${round}: failed: ${text}`);
      // Two failures before any round succeeded say this way does not work at this size: stop spending time on it.
      if (result.failures.length >= 2 && result.rounds.length === 0) break;
    }
  }
  return result;
}

/** `jobs` single-target jobs, `concurrency` SubmitJob calls in flight, then every one cancelled. */
export async function measurePlacement(ctx: PhaseContext, jobs: number, concurrency: number): Promise<PlacementRunResult> {
  const hostIds = ctx.fleet.hostIds;
  const perProcess = singleTargetsPerProcess(jobs, hostIds.length, ctx.processes);
  if (perProcess > 4) ctx.log(`placement: ${jobs} jobs put up to ${perProcess} on one process, more than its 4 registers: expect RESOURCE_EXHAUSTED`);
  const latenciesMs: number[] = [];
  const ids: string[] = [];
  const failed: Record<string, number> = {};
  let failedSample: string | undefined;
  await waitRegistered(ctx, "placement");
  const cpuBefore = await ctx.stack.controllerStats();
  const started = performance.now();
  await runBounded(jobs, concurrency, async (i) => {
    if (ctx.signal.aborted) throw new BenchInterruptedError("interrupted");
    const t0 = performance.now();
    try {
      const { job } = await ctx.stack.api.submitJob({ spec: singleTargetSpec(i, hostIds, ctx.processes, ctx.backend) }, { deadlineMs: submitDeadlineMs });
      latenciesMs.push(performance.now() - t0);
      ids.push((job as Job).id);
      if (ids.length % 2_000 === 0) ctx.log(`placement: ${ids.length}/${jobs} armed after ${seconds(started).toFixed(1)} s`);
    } catch (err) {
      failed[statusOf(err)] = (failed[statusOf(err)] ?? 0) + 1;
      failedSample ??= failureText(ctx, err);
    }
  });
  const submitSeconds = seconds(started);
  const cpuAfter = await ctx.stack.controllerStats();
  const slotsAfterSubmit = ctx.fleet.slotsHeld();
  ctx.log(`placement: ${ids.length} armed in ${submitSeconds.toFixed(1)} s; cancelling them`);
  let cancelFailed = 0;
  const cancelStarted = performance.now();
  await runBounded(ids.length, concurrency, async (i) => {
    if (ctx.signal.aborted) throw new BenchInterruptedError("interrupted");
    await ctx.stack.api.cancelJob({ id: ids[i] as string }, { deadlineMs: submitDeadlineMs }).catch(() => cancelFailed++);
  });
  ctx.jobsEnded += ids.length - cancelFailed;
  return {
    jobs,
    concurrency,
    seconds: submitSeconds,
    succeeded: ids.length,
    latenciesMs,
    failed,
    failedSample,
    cancelled: ids.length - cancelFailed,
    cancelSeconds: seconds(cancelStarted),
    cancelFailed,
    slotsAfterSubmit,
    slotsAfterCancel: ctx.fleet.slotsHeld(),
    controllerCpuSeconds: cpuBefore && cpuAfter ? cpuAfter.cpuSeconds - cpuBefore.cpuSeconds : undefined,
  };
}

/**
 * The queue: a fleet-wide job takes all four registers of every process,
 * `jobs` single-target jobs are submitted with a queue timeout (each answered
 * pending), then the blocker is cancelled and the bench times how long until
 * every queued job holds its register on its simulated agent.
 */
export async function measureQueue(ctx: PhaseContext, jobs: number, concurrency: number): Promise<QueueRunResult> {
  const hostIds = ctx.fleet.hostIds;
  let failedSample: string | undefined;
  await waitRegistered(ctx, "queue");
  let blocker: Job;
  try {
    blocker = (await ctx.stack.api.submitJob({ spec: queueBlockerSpec(ctx.backend) }, { deadlineMs: submitDeadlineMs })).job as Job;
  } catch (err) {
    if (ctx.signal.aborted) throw err;
    const text = `the blocker: ${failureText(ctx, err)}`;
    ctx.log(`queue: ${text}`);
    return { jobs, submitSeconds: Number.NaN, queued: 0, drainSeconds: Number.NaN, placed: 0, controllerCpuSeconds: undefined, slotsAfterCancel: ctx.fleet.slotsHeld(), failedSample: text };
  }
  ctx.log(`queue: blocker ${blocker.id} holds ${count(ctx.fleet.slotsHeld())} registers`);
  const ids: string[] = [];
  let queued = 0;
  const submitStarted = performance.now();
  await runBounded(jobs, concurrency, async (i) => {
    if (ctx.signal.aborted) throw new BenchInterruptedError("interrupted");
    try {
      const { job } = await ctx.stack.api.submitJob({ spec: { ...singleTargetSpec(i, hostIds, ctx.processes, ctx.backend), queueTimeoutMs: 3_600_000n } }, { deadlineMs: submitDeadlineMs });
      ids.push(job!.id);
      if (job!.state === JobState.PENDING) queued++;
    } catch (err) {
      failedSample ??= failureText(ctx, err);
    }
  });
  const submitSeconds = seconds(submitStarted);
  ctx.log(`queue: ${count(queued)} of ${count(jobs)} queued in ${submitSeconds.toFixed(1)} s; cancelling the blocker`);
  const cpuBefore = await ctx.stack.controllerStats();
  const drainStarted = performance.now();
  await ctx.stack.api.cancelJob({ id: blocker.id }, { deadlineMs: submitDeadlineMs });
  ctx.jobsEnded++;
  let drainSeconds = Number.NaN;
  try {
    await waitFor(`${count(ids.length)} queued jobs armed`, () => ctx.signal.aborted || ctx.fleet.slotsHeld() >= ids.length, submitDeadlineMs, 50);
    drainSeconds = seconds(drainStarted);
  } catch (err) {
    failedSample ??= errorText(err);
  }
  const cpuAfter = await ctx.stack.controllerStats();
  const placed = ctx.fleet.slotsHeld();
  ctx.log(`queue: ${count(placed)} placed ${Number.isNaN(drainSeconds) ? "(not all)" : `in ${drainSeconds.toFixed(2)} s`}; cancelling them`);
  let cancelled = 0;
  await runBounded(ids.length, concurrency, async (i) => {
    await ctx.stack.api
      .cancelJob({ id: ids[i] as string }, { deadlineMs: submitDeadlineMs })
      .then(() => cancelled++)
      .catch(() => {});
  });
  ctx.jobsEnded += cancelled;
  return {
    jobs,
    submitSeconds,
    queued,
    drainSeconds,
    placed,
    controllerCpuSeconds: cpuBefore && cpuAfter ? cpuAfter.cpuSeconds - cpuBefore.cpuSeconds : undefined,
    slotsAfterCancel: ctx.fleet.slotsHeld(),
    failedSample,
  };
}

/** How often the finished run reads the controller's memory: every 10,000 jobs, or a tenth of a shorter run (at least 100). */
export function finishedSampleEvery(jobs: number): number {
  return Math.max(100, Math.min(10_000, Math.floor(jobs / 10)));
}

/**
 * Finished jobs piling up behind the fleet: `jobs` single-target jobs, each
 * submitted and then cancelled, `concurrency` at once, the controller's
 * RSS and peak RSS read before, every finishedSampleEvery(jobs) finished
 * jobs, and at the end. Interrupted, it returns what it sampled so far.
 */
export async function measureFinished(ctx: PhaseContext, jobs: number, concurrency: number): Promise<FinishedRunResult> {
  const hostIds = ctx.fleet.hostIds;
  const sampleEvery = finishedSampleEvery(jobs);
  const failed: Record<string, number> = {};
  let failedSample: string | undefined;
  const samples: FinishedSample[] = [];
  const finishedBefore = ctx.jobsEnded;
  await waitRegistered(ctx, "finished");
  const started = performance.now();
  const sample = async (finished: number): Promise<void> => {
    const [controller, nats] = await Promise.all([ctx.stack.controllerStats(), ctx.stack.natsStats()]);
    samples.push({ finished, atSeconds: seconds(started), controller, nats });
  };
  await sample(0);
  let finished = 0;
  let nextSample = sampleEvery;
  const reads: Array<Promise<void>> = [];
  let interrupted: string | undefined;
  const lanes = runBounded(jobs, concurrency, async (i) => {
    if (ctx.signal.aborted) throw new BenchInterruptedError("interrupted");
    let id: string;
    try {
      const { job } = await ctx.stack.api.submitJob({ spec: singleTargetSpec(i, hostIds, ctx.processes, ctx.backend) }, { deadlineMs: submitDeadlineMs });
      id = (job as Job).id;
    } catch (err) {
      failed[`SubmitJob ${statusOf(err)}`] = (failed[`SubmitJob ${statusOf(err)}`] ?? 0) + 1;
      failedSample ??= failureText(ctx, err);
      return;
    }
    try {
      await ctx.stack.api.cancelJob({ id }, { deadlineMs: submitDeadlineMs });
    } catch (err) {
      failed[`CancelJob ${statusOf(err)}`] = (failed[`CancelJob ${statusOf(err)}`] ?? 0) + 1;
      failedSample ??= failureText(ctx, err);
      return;
    }
    finished++;
    ctx.jobsEnded++;
    if (finished >= nextSample) {
      nextSample += sampleEvery;
      // Read at once, while the other lanes go on: the count is the one at the read.
      reads.push(sample(finished));
      ctx.log(`finished: ${count(finished)}/${count(jobs)} after ${seconds(started).toFixed(1)} s`);
    }
  });
  try {
    await lanes;
  } catch (err) {
    // Interrupted: the samples so far are still worth printing; the caller stops the run.
    if (!ctx.signal.aborted) throw err;
    interrupted = `interrupted after ${count(finished)} of ${count(jobs)} jobs`;
  }
  const runSeconds = seconds(started);
  await Promise.all(reads);
  // Reads may finish out of order: sorted first, so the last one is the highest count read.
  samples.sort((a, b) => a.finished - b.finished);
  if (samples.at(-1)?.finished !== finished) await sample(finished);
  return { jobs, concurrency, sampleEvery, finishedBefore, seconds: runSeconds, finished, failed, failedSample, samples, slotsAfter: ctx.fleet.slotsHeld(), stoppedAt: interrupted };
}
