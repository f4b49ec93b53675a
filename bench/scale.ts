// `npm run bench:scale`: the controller against a simulated fleet (issues 4
// and 18, "Scale"). For each fleet size and backend: a real nats-server, the
// real controller as a child process and K simulated agents on real gRPC
// sessions in this process; fleet-wide jobs, placement throughput, the
// queue, finished jobs piling up and the controller's RSS. Then how each
// figure grows with the fleet, goals alongside, no verdicts.
import { spawnSync } from "node:child_process";
import { setMaxListeners } from "node:events";
import { mkdir } from "node:fs/promises";
import os from "node:os";
import { performance } from "node:perf_hooks";
import { BenchInterruptedError, abortOnSignals, liveProcessNames, parseCommandLine, stopAllProcesses } from "./processes.js";
import { measurePlacementCore } from "./scale-placement-core.js";
import { describeFleetJobMode } from "./scale-jobs.js";
import { finishedJobsAt, nodeArgsForStack, parseScaleOptions, scaleUsage, stackName, type ScaleOptions } from "./scale-options.js";
import { errorText, measureFinished, measureFleetMode, measurePlacement, measureQueue, type PhaseContext } from "./scale-phases.js";
import { renderReport } from "./scale-report.js";
import type { ScaleReport, StackReport, StatsSnapshot } from "./scale-results.js";
import { ScaleStack, openFileLimit, type ProcStats } from "./scale-stack.js";
import { SimFleet } from "./sim-fleet.js";
import type { SimBackend } from "./sim-registers.js";
import { repoRoot } from "../test/support/paths.js";

const registerTimeoutMs = 120_000;
// Registrations in flight while connecting the fleet.
const connectConcurrency = 256;

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

/** The phases on a stack that is up and a fleet that is connected. */
async function runPhases(options: ScaleOptions, report: StackReport, ctx: PhaseContext, finishedJobs: number | undefined): Promise<void> {
  const { stack, fleet, backend, signal } = ctx;
  if (!options.skip.has("fleet")) {
    for (const mode of options.fleetJobs) {
      report.fleet.push(await measureFleetMode(ctx, mode, options.rounds));
      report.stats.push(await snapshot(stack, `fleet-wide jobs, ${mode}`));
    }
  }
  if (!options.skip.has("placement")) {
    report.placement = await measurePlacement(ctx, options.jobs, options.concurrency);
    report.stats.push(await snapshot(stack, `${count(options.jobs)} single-target jobs (then cancelled)`));
  }
  if (!options.skip.has("queue")) {
    report.queue = await measureQueue(ctx, options.jobs, options.concurrency);
    report.stats.push(await snapshot(stack, `${count(options.jobs)} queued jobs placed (then cancelled)`));
  }
  if (finishedJobs !== undefined) {
    log(`finished: ${count(finishedJobs)} single-target jobs submitted and cancelled, ${options.concurrency} in flight`);
    report.finished = await measureFinished(ctx, finishedJobs, options.concurrency);
    if (signal.aborted) throw new BenchInterruptedError("interrupted");
    report.stats.push(await snapshot(stack, `${count(report.finished.finished)} jobs finished`));
  }
  if (!options.skip.has("core")) {
    if (signal.aborted) throw new BenchInterruptedError("interrupted");
    try {
      log(`pure placement core: ${options.jobs} queued ${backend} jobs on ${fleet.hostIds.length} × ${options.processes} targets`);
      report.core = measurePlacementCore(fleet.hostIds, options.processes, options.jobs, options.coreRounds, backend);
    } catch (err) {
      report.coreError = errorText(err);
    }
  }
}

/**
 * One size with one backend on a stack of its own: nats-server, the
 * controller, the fleet, the phases, then everything stopped. Fills `report`
 * as it goes, so an interrupted run still prints what was measured. Throws
 * only when interrupted; any other failure ends up in `report.stoppedAt`.
 */
async function runStack(options: ScaleOptions, report: StackReport, finishedJobs: number | undefined, signal: AbortSignal): Promise<void> {
  const started = performance.now();
  report.benchCpuSecondsAtStart = benchStats().cpuSeconds;
  const { agents, backend } = report;
  let stack: ScaleStack | undefined;
  let fleet: SimFleet | undefined;
  try {
    const nodeArgs = nodeArgsForStack(options.controllerNodeArgs, report.name);
    report.outputDirs = nodeArgs.outputDirs;
    for (const dir of nodeArgs.outputDirs) await mkdir(dir, { recursive: true });
    log(`${report.name}: starting nats-server and the controller`);
    stack = await ScaleStack.start({ leaseMs: options.leaseMs, electionLeaseMs: options.electionLeaseMs, controllerNodeArgs: nodeArgs.args, signal });
    report.controllerPid = stack.controller.pid;
    report.stats.push(await snapshot(stack, "controller started"));

    const channels = Math.ceil(agents / options.agentsPerChannel);
    log(`${report.name}: connecting ${agents} simulated agents over ${channels} channel(s)`);
    const connectStarted = performance.now();
    try {
      fleet = await SimFleet.connect({
        address: stack.address,
        agents,
        processesPerAgent: options.processes,
        agentsPerChannel: options.agentsPerChannel,
        connectConcurrency,
        registerTimeoutMs,
        signal,
        progress: (k) => log(`${k}/${agents} registered after ${seconds(connectStarted).toFixed(1)} s`),
      });
    } catch (err) {
      report.stoppedAt = `connecting the agents: ${errorText(err)}`;
      throw err;
    }
    report.connect = { seconds: seconds(connectStarted), channels: fleet.channels, agentsPerChannel: options.agentsPerChannel };
    log(`all ${agents} registered in ${report.connect.seconds.toFixed(1)} s`);
    report.stats.push(await snapshot(stack, `${count(agents)} agents connected`));

    await runPhases(options, report, { stack, fleet, backend, processes: options.processes, signal, log, jobsEnded: 0 }, finishedJobs);
  } catch (err) {
    if (err instanceof BenchInterruptedError || signal.aborted) {
      report.stoppedAt ??= "interrupted";
      throw err;
    }
    report.stoppedAt ??= errorText(err);
    process.stderr.write(`bench:scale: ${report.name}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    if (stack) process.stderr.write(`controller log (tail):\n${stack.controllerLogTail()}\n`);
  } finally {
    if (fleet) report.totals = fleet.totals();
    if (stack) {
      report.controllerEvents = [...stack.events];
      report.controllerEventCount = stack.eventCount;
      report.leaseExpiries = stack.leaseExpiries;
    }
    if (fleet) {
      log(`${report.name}: stopping the simulated agents`);
      await fleet.stop().catch((err: unknown) => log(`stopping the agents: ${errorText(err)}`));
    }
    if (stack) await stack.stop().catch((err: unknown) => log(`stopping the controller and nats-server: ${errorText(err)}`));
    report.seconds = seconds(started);
  }
}

function emptyStack(agents: number, processes: number, backend: SimBackend): StackReport {
  return {
    name: stackName(agents, backend),
    agents,
    processes,
    backend,
    controllerPid: undefined,
    outputDirs: [],
    seconds: 0,
    connect: undefined,
    fleet: [],
    placement: undefined,
    queue: undefined,
    finished: undefined,
    core: undefined,
    coreError: undefined,
    stats: [],
    benchCpuSecondsAtStart: 0,
    totals: undefined,
    controllerEvents: [],
    controllerEventCount: 0,
    leaseExpiries: 0,
    stoppedAt: undefined,
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

function versionOf(command: string): string {
  const run = spawnSync(command, ["--version"], { encoding: "utf8" });
  return run.error ? "not installed" : (run.stdout || run.stderr).split("\n")[0]?.trim() ?? "?";
}

async function main(): Promise<number> {
  const commandLine = parseCommandLine(parseScaleOptions, scaleUsage, errorText);
  if ("code" in commandLine) return commandLine.code;
  const { options } = commandLine;
  const largest = Math.max(...options.agents);
  await checkFileLimit(Math.ceil(largest / options.agentsPerChannel) + 512);

  const interrupt = abortOnSignals("bench:scale");
  const signal = interrupt.signal;
  // Every wait of every connecting agent listens on it.
  setMaxListeners(0, signal);

  const startedAt = Date.now();
  const report: ScaleReport = { header: [], sizes: options.agents, backends: options.backends, stacks: [], stoppedAt: undefined };
  let code = 0;
  try {
    for (const agents of options.agents) {
      for (const backend of options.backends) {
        const stack = emptyStack(agents, options.processes, backend);
        report.stacks.push(stack);
        const finishedJobs = agents === largest && !options.skip.has("finished") ? finishedJobsAt(options, agents) : undefined;
        await runStack(options, stack, finishedJobs, signal);
        if (stack.stoppedAt) code = 1;
        log(`${stack.name}: done in ${Math.round(stack.seconds)} s${stack.stoppedAt ? `, stopped early: ${stack.stoppedAt}` : ""}`);
      }
    }
  } catch (err) {
    if (!(err instanceof BenchInterruptedError || signal.aborted)) throw err;
    code = 130;
    report.stoppedAt = "interrupted";
  } finally {
    await stopAllProcesses();
    const left = liveProcessNames();
    if (left.length > 0) log(`still running after cleanup: ${left.join(", ")}`);
    const finished = options.skip.has("finished") ? "skipped" : `${count(finishedJobsAt(options, largest))} jobs at ${count(largest)} agents`;
    report.header = [
      `fleetwatch bench:scale: ${process.argv.slice(2).join(" ") || "(defaults)"}`,
      `machine: ${os.availableParallelism()} CPUs, Linux ${os.release()}, node ${process.version}; ${versionOf("nats-server")}; took ${Math.round((Date.now() - startedAt) / 1000)} s`,
      `controller: \`fleetwatch controller\` from ${sourceOf()}, as a child process (lease ${options.leaseMs} ms, election lease ${options.electionLeaseMs === undefined ? "its default" : `${options.electionLeaseMs} ms`}), jobs in JetStream KV; nats-server, the controller and this process (agents + driver) share the machine's CPUs`,
      `sizes: ${options.agents.map(count).join(", ")} agents × ${options.processes} processes; backends: ${options.backends.join(", ")} (every job names its backend); a fresh nats-server, controller and fleet for each size and backend, smallest first; finished-jobs run: ${finished}`,
      `fleet-wide job: ${options.fleetJobs.map((m) => describeFleetJobMode(m, options.processes)).join("; or ")}. Each way is one entry in bench/scale-jobs.ts (--fleet-job).`,
    ];
    process.stdout.write(`\n${renderReport(report)}`);
  }
  return code;
}

process.exitCode = await main();
// grpc-js channels and timers of sessions that a failure left behind must not keep the process alive.
process.exit();
