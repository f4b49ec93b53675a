// `npm run bench:scale`: the controller against a simulated fleet (issue 4,
// "Scale"). Real nats-server, the real controller as a child process, K
// simulated agents on real gRPC sessions in this process; fleet-wide jobs,
// placement throughput and the controller's RSS, goals alongside, no verdicts.
import { spawnSync } from "node:child_process";
import { setMaxListeners } from "node:events";
import os from "node:os";
import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import { RpcError, TargetState, type Job } from "../proto/index.js";
import { BenchInterruptedError, BenchTimeoutError, abortOnSignals, liveProcessNames, parseCommandLine, stopAllProcesses, until } from "./processes.js";
import { measurePlacementCore } from "./scale-placement-core.js";
import { describeFleetJobMode, fleetJobModes, fleetJobSpecs, singleTargetSpec, singleTargetsPerProcess, type FleetJobMode, type JobSpecInit } from "./scale-jobs.js";
import { renderReport, type FleetModeResult, type FleetRound, type PlacementRunResult, type QueueRunResult, type ScaleReport, type StatsSnapshot } from "./scale-report.js";
import { ScaleStack, openFileLimit, type ProcStats } from "./scale-stack.js";
import { SimFleet } from "./sim-fleet.js";
import { repoRoot } from "../test/support/paths.js";
import { waitFor } from "../test/support/wait.js";

const USAGE = `usage: npm run bench:scale -- [options]
  --agents K               simulated agents (default 1000)
  --processes P            simulated processes per agent, pids 1001.. (default 4)
  --agents-per-channel N   sessions per gRPC channel (default 100; 1 = a connection per agent)
  --rounds R               fleet-wide rounds per way of submitting, after one warm-up (default 10)
  --fleet-job LIST         of per-pid,per-pid-label,selector (default all three)
  --jobs N                 single-target jobs of the placement run (default 10000)
  --concurrency C          SubmitJob calls in flight in the placement run (default 64)
  --core-rounds R          rounds of the pure placement core (default 3)
  --skip LIST              of fleet,placement,queue,core
  --lease MS               the controller's --lease (default 15000)
  --election-lease MS      the controller's --election-lease (default: the controller's own)
  --controller-node-args S node options for the controller process, space-separated
                           (e.g. --controller-node-args="--cpu-prof --cpu-prof-dir=/tmp/prof")`;

const phases = ["fleet", "placement", "queue", "core"] as const;
type Phase = (typeof phases)[number];

interface ScaleOptions {
  agents: number;
  processes: number;
  agentsPerChannel: number;
  rounds: number;
  fleetJobs: FleetJobMode[];
  jobs: number;
  concurrency: number;
  coreRounds: number;
  skip: Set<Phase>;
  leaseMs: number;
  electionLeaseMs: number | undefined;
  controllerNodeArgs: string[];
}

// Deadlines of the bench's own calls: generous, since at 10,000 agents a
// fleet-wide SubmitJob may take long; a call past them counts as failed.
const submitDeadlineMs = 300_000;
const registerTimeoutMs = 120_000;
// How long a round waits for agents the controller dropped to register again;
// past it the fleet is gone and the run stops.
const reregisterTimeoutMs = 60_000;
// Registrations in flight while connecting the fleet.
const connectConcurrency = 256;
// The symbol every fleet-wide job watches (an 8-byte variable on every simulated process).
const fleetSymbol = "work_mem";

function positiveInt(text: string, option: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1) throw new Error(`${option} '${text}' is not a positive integer`);
  return Number(text);
}

function listOf<T extends string>(text: string, allowed: readonly T[], option: string): T[] {
  if (text === "") return [];
  return text.split(",").map((item) => {
    if (!(allowed as readonly string[]).includes(item)) throw new Error(`${option}: unknown '${item}' (one of ${allowed.join(", ")})`);
    return item as T;
  });
}

function parseOptions(argv: string[]): ScaleOptions | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      agents: { type: "string", default: "1000" },
      processes: { type: "string", default: "4" },
      "agents-per-channel": { type: "string", default: "100" },
      rounds: { type: "string", default: "10" },
      "fleet-job": { type: "string", default: fleetJobModes.join(",") },
      jobs: { type: "string", default: "10000" },
      concurrency: { type: "string", default: "64" },
      "core-rounds": { type: "string", default: "3" },
      skip: { type: "string", default: "" },
      lease: { type: "string", default: "15000" },
      "election-lease": { type: "string" },
      "controller-node-args": { type: "string", default: "" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  return {
    agents: positiveInt(values.agents, "--agents"),
    processes: positiveInt(values.processes, "--processes"),
    agentsPerChannel: positiveInt(values["agents-per-channel"], "--agents-per-channel"),
    rounds: positiveInt(values.rounds, "--rounds"),
    fleetJobs: listOf(values["fleet-job"], fleetJobModes, "--fleet-job"),
    jobs: positiveInt(values.jobs, "--jobs"),
    concurrency: positiveInt(values.concurrency, "--concurrency"),
    coreRounds: positiveInt(values["core-rounds"], "--core-rounds"),
    skip: new Set(listOf(values.skip, phases, "--skip")),
    leaseMs: positiveInt(values.lease, "--lease"),
    electionLeaseMs: values["election-lease"] === undefined ? undefined : positiveInt(values["election-lease"], "--election-lease"),
    controllerNodeArgs: values["controller-node-args"].split(" ").filter(Boolean),
  };
}

function errorText(err: unknown): string {
  if (err instanceof RpcError) return `${err.codeName}: ${err.details.length > 300 ? `${err.details.slice(0, 300)}…` : err.details}`;
  return err instanceof Error ? err.message : String(err);
}

function log(line: string): void {
  process.stderr.write(`[scale] ${line}\n`);
}

/**
 * Every channel is a socket here and in the controller. Node raises its soft
 * limit on open files to the hard one when it starts (the controller child
 * too), so only the hard limit can be too low: then say so and go on.
 */
async function checkFileLimit(needed: number): Promise<void> {
  const limit = await openFileLimit();
  if (limit < needed) log(`open files: the limit is ${limit} and about ${needed} are needed: sessions may fail with EMFILE; raise \`ulimit -Hn\` or use a larger --agents-per-channel`);
}

function benchStats(): ProcStats {
  const cpu = process.cpuUsage();
  const rssMiB = process.memoryUsage().rss / 1024 / 1024;
  return { rssMiB, peakRssMiB: rssMiB, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
}

async function snapshot(stack: ScaleStack, phase: string): Promise<StatsSnapshot> {
  const [controller, nats] = await Promise.all([stack.controllerStats(), stack.natsStats()]);
  const snap = { phase, atMs: Date.now(), controller, nats, bench: benchStats() };
  log(`${phase}: controller RSS ${controller ? Math.round(controller.rssMiB) : "?"} MiB (peak ${controller ? Math.round(controller.peakRssMiB) : "?"})`);
  return snap;
}

const count = (value: number): string => value.toLocaleString("en-US");

function seconds(since: number): number {
  return (performance.now() - since) / 1000;
}

/** Runs `work` over 0..count-1 with at most `concurrency` at once. */
async function runBounded(count: number, concurrency: number, work: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, count) }, async () => {
      while (next < count) await work(next++);
    }),
  );
}

/** Submits every spec at once; the round ends when the last one answered. Throws the first failure after all settled. */
async function submitAll(stack: ScaleStack, specs: JobSpecInit[]): Promise<{ jobs: Job[]; each: number[]; all: number }> {
  const started = performance.now();
  const settled = await Promise.allSettled(
    specs.map(async (spec) => {
      const t0 = performance.now();
      const { job } = await stack.api.submitJob({ spec }, { deadlineMs: submitDeadlineMs });
      return { job: job as Job, seconds: seconds(t0) };
    }),
  );
  const all = seconds(started);
  const ok = settled.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed) {
    await cancelAll(stack, ok.map((r) => r.job.id));
    throw failed.reason;
  }
  return { jobs: ok.map((r) => r.job), each: ok.map((r) => r.seconds), all };
}

async function cancelAll(stack: ScaleStack, ids: string[]): Promise<number> {
  const started = performance.now();
  await Promise.all(ids.map((id) => stack.api.cancelJob({ id }, { deadlineMs: submitDeadlineMs })));
  return seconds(started);
}

async function fleetRound(stack: ScaleStack, fleet: SimFleet, specs: JobSpecInit[]): Promise<FleetRound> {
  const submitted = await submitAll(stack, specs);
  const slotsAfterSubmit = fleet.slotsHeld();
  const armedTargets = submitted.jobs.reduce((sum, job) => sum + job.targets.filter((t) => t.state === TargetState.ARMED).length, 0);
  const cancelSeconds = await cancelAll(stack, submitted.jobs.map((j) => j.id));
  return { allAckedSeconds: submitted.all, submitSeconds: submitted.each, cancelSeconds, armedTargets, slotsAfterSubmit, slotsAfterCancel: fleet.slotsHeld() };
}

async function measureFleetMode(stack: ScaleStack, fleet: SimFleet, options: ScaleOptions, mode: FleetJobMode, signal: AbortSignal): Promise<FleetModeResult> {
  const specs = fleetJobSpecs(mode, fleet.hostIds, options.processes, fleetSymbol);
  const result: FleetModeResult = { mode, label: describeFleetJobMode(mode, options.processes), jobsPerRound: specs.length, expectedTargets: options.agents * options.processes, rounds: [], warmup: undefined, failures: [], reregisterWaits: [] };
  for (let round = 0; round <= options.rounds; round++) {
    if (signal.aborted) throw new BenchInterruptedError("interrupted");
    const roundStarted = performance.now();
    try {
      const waited = await fleet.waitAllRegistered(reregisterTimeoutMs, signal);
      if (waited > 0) {
        result.reregisterWaits.push(waited);
        log(`${mode}: waited ${waited.toFixed(1)} s for dropped agents to register again`);
      }
      const r = await until(fleetRound(stack, fleet, specs), `fleet-wide round ${round} (${mode})`, signal, 2 * submitDeadlineMs);
      if (round === 0) result.warmup = r;
      else result.rounds.push(r);
      log(`${mode} ${round === 0 ? "warm-up" : `round ${round}/${options.rounds}`}: all acked in ${r.allAckedSeconds.toFixed(3)} s (each ${r.submitSeconds.map((x) => x.toFixed(3)).join(" ")}), ${r.armedTargets} armed, cancel ${r.cancelSeconds.toFixed(3)} s`);
    } catch (err) {
      if (err instanceof BenchInterruptedError || err instanceof BenchTimeoutError || signal.aborted) throw err;
      const internal = err instanceof RpcError && err.codeName === "INTERNAL" ? stack.lastInternalError() : undefined;
      const text = `${errorText(err)}${internal ? ` [${internal.slice(0, 300)}]` : ""} (after ${seconds(roundStarted).toFixed(1)} s)`;
      result.failures.push(text);
      log(`${mode} round ${round}: failed: ${text}`);
      // Two failures before any round succeeded say this way does not work at this size: stop spending time on it.
      if (result.failures.length >= 2 && result.rounds.length === 0) break;
    }
  }
  return result;
}

async function measurePlacement(stack: ScaleStack, fleet: SimFleet, options: ScaleOptions, signal: AbortSignal): Promise<PlacementRunResult> {
  const perProcess = singleTargetsPerProcess(options.jobs, options.agents, options.processes);
  if (perProcess > 4) log(`placement: ${options.jobs} jobs put up to ${perProcess} on one process, more than its 4 registers: expect RESOURCE_EXHAUSTED`);
  const hostIds = fleet.hostIds;
  const latenciesMs: number[] = [];
  const ids: string[] = [];
  const failed: Record<string, number> = {};
  let failedSample: string | undefined;
  const waited = await fleet.waitAllRegistered(reregisterTimeoutMs, signal);
  if (waited > 0) log(`placement: waited ${waited.toFixed(1)} s for dropped agents to register again`);
  const cpuBefore = await stack.controllerStats();
  const started = performance.now();
  await runBounded(options.jobs, options.concurrency, async (i) => {
    if (signal.aborted) throw new BenchInterruptedError("interrupted");
    const t0 = performance.now();
    try {
      const { job } = await stack.api.submitJob({ spec: singleTargetSpec(i, hostIds, options.processes) }, { deadlineMs: submitDeadlineMs });
      latenciesMs.push(performance.now() - t0);
      ids.push((job as Job).id);
      if (ids.length % 2_000 === 0) log(`placement: ${ids.length}/${options.jobs} armed after ${seconds(started).toFixed(1)} s`);
    } catch (err) {
      const code = err instanceof RpcError ? err.codeName : "ERROR";
      failed[code] = (failed[code] ?? 0) + 1;
      const internal = err instanceof RpcError && err.codeName === "INTERNAL" ? stack.lastInternalError() : undefined;
      failedSample ??= `${errorText(err)}${internal ? ` [${internal.slice(0, 300)}]` : ""}`;
    }
  });
  const submitSeconds = seconds(started);
  const cpuAfter = await stack.controllerStats();
  const slotsAfterSubmit = fleet.slotsHeld();
  log(`placement: ${ids.length} armed in ${submitSeconds.toFixed(1)} s; cancelling them`);
  let cancelFailed = 0;
  const cancelStarted = performance.now();
  await runBounded(ids.length, options.concurrency, async (i) => {
    if (signal.aborted) throw new BenchInterruptedError("interrupted");
    await stack.api.cancelJob({ id: ids[i] as string }, { deadlineMs: submitDeadlineMs }).catch(() => cancelFailed++);
  });
  return {
    jobs: options.jobs,
    concurrency: options.concurrency,
    seconds: submitSeconds,
    succeeded: ids.length,
    latenciesMs,
    failed,
    failedSample,
    cancelled: ids.length - cancelFailed,
    cancelSeconds: seconds(cancelStarted),
    cancelFailed,
    slotsAfterSubmit,
    slotsAfterCancel: fleet.slotsHeld(),
    controllerCpuSeconds: cpuBefore && cpuAfter ? cpuAfter.cpuSeconds - cpuBefore.cpuSeconds : undefined,
  };
}

/**
 * The queue: a fleet-wide job takes all four registers of every process,
 * `jobs` single-target jobs are submitted with a queue timeout (each answered
 * pending), then the blocker is cancelled and the bench times how long until
 * every queued job holds its register on its simulated agent.
 */
async function measureQueue(stack: ScaleStack, fleet: SimFleet, options: ScaleOptions, signal: AbortSignal): Promise<QueueRunResult> {
  const hostIds = fleet.hostIds;
  let failedSample: string | undefined;
  await fleet.waitAllRegistered(reregisterTimeoutMs, signal);
  const blockerWatches = [0, 1, 2, 3].flatMap((i) => fleetJobSpecs("selector", hostIds, options.processes, `blocker_${i}`)[0]!.watches ?? []);
  const { job: blocker } = await stack.api.submitJob({ spec: { watches: blockerWatches, target: { allHosts: true, comm: fleetJobSpecs("selector", hostIds, options.processes, fleetSymbol)[0]!.target!.comm! } } }, { deadlineMs: submitDeadlineMs });
  log(`queue: blocker ${blocker!.id} holds ${count(fleet.slotsHeld())} registers`);
  const ids: string[] = [];
  let queued = 0;
  const submitStarted = performance.now();
  await runBounded(options.jobs, options.concurrency, async (i) => {
    if (signal.aborted) throw new BenchInterruptedError("interrupted");
    try {
      const { job } = await stack.api.submitJob({ spec: { ...singleTargetSpec(i, hostIds, options.processes), queueTimeoutMs: 3_600_000n } }, { deadlineMs: submitDeadlineMs });
      ids.push(job!.id);
      if (job!.state === 1) queued++;
    } catch (err) {
      failedSample ??= errorText(err);
    }
  });
  const submitSeconds = seconds(submitStarted);
  log(`queue: ${count(queued)} of ${count(options.jobs)} queued in ${submitSeconds.toFixed(1)} s; cancelling the blocker`);
  const cpuBefore = await stack.controllerStats();
  const drainStarted = performance.now();
  await stack.api.cancelJob({ id: blocker!.id }, { deadlineMs: submitDeadlineMs });
  let drainSeconds = Number.NaN;
  try {
    await waitFor(`${count(ids.length)} queued jobs armed`, () => signal.aborted || fleet.slotsHeld() >= ids.length, submitDeadlineMs, 50);
    drainSeconds = seconds(drainStarted);
  } catch (err) {
    failedSample ??= errorText(err);
  }
  const cpuAfter = await stack.controllerStats();
  const placed = fleet.slotsHeld();
  log(`queue: ${count(placed)} placed ${Number.isNaN(drainSeconds) ? "(not all)" : `in ${drainSeconds.toFixed(2)} s`}; cancelling them`);
  await runBounded(ids.length, options.concurrency, async (i) => {
    await stack.api.cancelJob({ id: ids[i] as string }, { deadlineMs: submitDeadlineMs }).catch(() => {});
  });
  return {
    jobs: options.jobs,
    submitSeconds,
    queued,
    drainSeconds,
    placed,
    controllerCpuSeconds: cpuBefore && cpuAfter ? cpuAfter.cpuSeconds - cpuBefore.cpuSeconds : undefined,
    failedSample,
  };
}

/** The commit the controller was built from, as far as git knows, or why not. */
function sourceOf(): string {
  const head = spawnSync("git", ["-C", repoRoot, "rev-parse", "--short", "HEAD"], { encoding: "utf8" });
  if (head.status !== 0) return `${repoRoot} (not a git checkout)`;
  const dirty = spawnSync("git", ["-C", repoRoot, "status", "--porcelain", "--untracked-files=no"], { encoding: "utf8" });
  const changed = dirty.stdout.split("\n").map((line) => line.slice(3).trim()).filter(Boolean);
  const more = changed.length > 4 ? ` and ${changed.length - 4} more` : "";
  return `git ${head.stdout.trim()}${changed.length > 0 ? ` (uncommitted changes to ${changed.slice(0, 4).join(", ")}${more}; dist/ is what was built last)` : ""}`;
}

async function versionOf(command: string): Promise<string> {
  const run = spawnSync(command, ["--version"], { encoding: "utf8" });
  return run.error ? "not installed" : (run.stdout || run.stderr).split("\n")[0]?.trim() ?? "?";
}

async function main(): Promise<number> {
  const commandLine = parseCommandLine(parseOptions, USAGE, errorText);
  if ("code" in commandLine) return commandLine.code;
  const { options } = commandLine;
  const channels = Math.ceil(options.agents / options.agentsPerChannel);
  await checkFileLimit(channels + 512);

  const interrupt = abortOnSignals("bench:scale");
  const signal = interrupt.signal;
  // Every wait of every connecting agent listens on it.
  setMaxListeners(0, signal);

  const startedAt = Date.now();
  const report: ScaleReport = {
    header: [],
    agents: options.agents,
    processes: options.processes,
    connect: undefined,
    fleet: [],
    placement: undefined,
    queue: undefined,
    core: undefined,
    coreError: undefined,
    stats: [],
    totals: undefined,
    controllerEvents: [],
    controllerEventCount: 0,
    leaseExpiries: 0,
    stoppedAt: undefined,
  };
  let stack: ScaleStack | undefined;
  let fleet: SimFleet | undefined;
  let code = 0;
  try {
    log("starting nats-server and the controller");
    stack = await ScaleStack.start({ leaseMs: options.leaseMs, electionLeaseMs: options.electionLeaseMs, controllerNodeArgs: options.controllerNodeArgs, signal });
    report.stats.push(await snapshot(stack, "controller started"));

    log(`connecting ${options.agents} simulated agents over ${channels} channel(s)`);
    const connectStarted = performance.now();
    try {
      fleet = await SimFleet.connect({
        address: stack.address,
        agents: options.agents,
        processesPerAgent: options.processes,
        agentsPerChannel: options.agentsPerChannel,
        connectConcurrency,
        registerTimeoutMs,
        signal,
        progress: (n) => log(`${n}/${options.agents} registered after ${seconds(connectStarted).toFixed(1)} s`),
      });
    } catch (err) {
      report.stoppedAt = `connecting the agents: ${errorText(err)}`;
      throw err;
    }
    report.connect = { seconds: seconds(connectStarted), channels: fleet.channels, agentsPerChannel: options.agentsPerChannel };
    log(`all ${options.agents} registered in ${report.connect.seconds.toFixed(1)} s`);
    report.stats.push(await snapshot(stack, `${options.agents} agents connected`));

    if (!options.skip.has("fleet")) {
      for (const mode of options.fleetJobs) {
        report.fleet.push(await measureFleetMode(stack, fleet, options, mode, signal));
        report.stats.push(await snapshot(stack, `fleet-wide jobs, ${mode}`));
      }
    }
    if (!options.skip.has("placement")) {
      report.placement = await measurePlacement(stack, fleet, options, signal);
      report.stats.push(await snapshot(stack, `${options.jobs} single-target jobs (then cancelled)`));
    }
    if (!options.skip.has("queue")) {
      report.queue = await measureQueue(stack, fleet, options, signal);
      report.stats.push(await snapshot(stack, `${options.jobs} queued jobs placed (then cancelled)`));
    }
    if (!options.skip.has("core")) {
      try {
        log(`pure placement core: ${options.jobs} queued jobs on ${options.agents} × ${options.processes} targets`);
        report.core = measurePlacementCore(fleet.hostIds, options.processes, options.jobs, options.coreRounds);
      } catch (err) {
        report.coreError = errorText(err);
      }
    }
    report.totals = fleet.totals();
  } catch (err) {
    if (err instanceof BenchInterruptedError || signal.aborted) {
      code = 130;
      report.stoppedAt ??= "interrupted";
    } else {
      code = 1;
      report.stoppedAt ??= errorText(err);
      process.stderr.write(`bench:scale: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      if (stack) process.stderr.write(`controller log (tail):\n${stack.controllerLogTail()}\n`);
    }
    if (fleet) report.totals = fleet.totals();
  } finally {
    const [natsVersion] = await Promise.all([versionOf("nats-server")]);
    report.header = [
      `fleetwatch bench:scale: ${process.argv.slice(2).join(" ") || "(defaults)"}`,
      `machine: ${os.availableParallelism()} CPUs, Linux ${os.release()}, node ${process.version}; ${natsVersion}; took ${Math.round((Date.now() - startedAt) / 1000)} s`,
      `controller: \`fleetwatch controller\` from ${sourceOf()}, as a child process (lease ${options.leaseMs} ms, election lease ${options.electionLeaseMs === undefined ? "its default" : `${options.electionLeaseMs} ms`}), jobs in JetStream KV; nats-server, the controller and this process (agents + driver) share the machine's CPUs`,
      `fleet-wide job: ${options.fleetJobs.map((m) => describeFleetJobMode(m, options.processes)).join("; or ")}. Each way is one entry in bench/scale-jobs.ts (--fleet-job).`,
    ];
    if (stack) {
      report.controllerEvents = [...stack.events];
      report.controllerEventCount = stack.eventCount;
      report.leaseExpiries = stack.leaseExpiries;
    }
    if (fleet) {
      log("stopping the simulated agents");
      await fleet.stop().catch((err: unknown) => log(`stopping the agents: ${errorText(err)}`));
    }
    if (stack) await stack.stop().catch((err: unknown) => log(`stopping the controller and nats-server: ${errorText(err)}`));
    await stopAllProcesses();
    const left = liveProcessNames();
    if (left.length > 0) log(`still running after cleanup: ${left.join(", ")}`);
    process.stdout.write(`\n${renderReport(report)}`);
  }
  return code;
}

process.exitCode = await main();
// grpc-js channels and timers of sessions that a failure left behind must not keep the process alive.
process.exit();
