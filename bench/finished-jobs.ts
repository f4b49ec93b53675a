// `node dist/bench/finished-jobs.js --jobs 100000`: the controller's memory as
// finished jobs accumulate behind it. Real nats-server and the controller as
// a child process (ScaleStack); one simulated agent on a real session. Jobs
// end while the controller runs, through the real API (SubmitJob of a job
// that waits for a process that never starts, then CancelJob), and the
// controller's RSS is printed every --every jobs; then the controller is
// restarted on the same store and its load time, RSS and the first page of
// `jobs ls` are printed. Figures only, nothing is judged.
import { parseArgs } from "node:util";
import { performance } from "node:perf_hooks";
import { setTimeout as delay } from "node:timers/promises";
import { ControllerService, JobState, WatchMode, createClient } from "../proto/index.js";
import { cliPath } from "../test/support/paths.js";
import { BenchProcess, abortOnSignals, parseCommandLine, stopAllProcesses, until } from "./processes.js";
import { ScaleStack, procStats, type ProcStats } from "./scale-stack.js";
import { SimFleet } from "./sim-fleet.js";

const USAGE = `usage: node dist/bench/finished-jobs.js [options]
  --jobs N          jobs submitted and cancelled (default 100000)
  --every N         print the controller's memory after every N jobs (default 10000)
  --concurrency C   jobs in flight at once (default 32)`;

interface Options {
  jobs: number;
  every: number;
  concurrency: number;
}

// A silent agent session is dropped after this long: longer than any pause of the bench.
const leaseMs = 60_000;
// Each call's deadline: a busy controller answers well within it.
const callDeadlineMs = 30_000;
// How long the restarted controller may take to load the jobs and listen.
const restartTimeoutMs = 600_000;

function positiveInt(text: string, option: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1) throw new Error(`${option} '${text}' is not a positive integer`);
  return Number(text);
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({ args: argv, options: { jobs: { type: "string" }, every: { type: "string" }, concurrency: { type: "string" }, help: { type: "boolean" } } });
  if (values.help) return undefined;
  return {
    jobs: positiveInt(values.jobs ?? "100000", "--jobs"),
    every: positiveInt(values.every ?? "10000", "--every"),
    concurrency: positiveInt(values.concurrency ?? "32", "--concurrency"),
  };
}

const mib = (stats: ProcStats | undefined) => (stats ? `RSS ${stats.rssMiB.toFixed(0).padStart(4)} MiB  peak ${stats.peakRssMiB.toFixed(0).padStart(4)} MiB` : "RSS ? (controller gone)");

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function main(): Promise<number> {
  const commandLine = parseCommandLine(parseOptions, USAGE, errorText);
  if ("code" in commandLine) return commandLine.code;
  const { options } = commandLine;
  const interrupt = abortOnSignals("finished-jobs");
  const signal = interrupt.signal;
  let stack: ScaleStack | undefined;
  let fleet: SimFleet | undefined;
  let restarted: BenchProcess | undefined;
  try {
    stack = await ScaleStack.start({ leaseMs, electionLeaseMs: undefined, controllerNodeArgs: [], signal });
    fleet = await SimFleet.connect({ address: stack.address, agents: 1, processesPerAgent: 1, agentsPerChannel: 1, connectConcurrency: 1, registerTimeoutMs: 30_000, signal });
    const hostId = fleet.hostIds[0]!;
    const api = stack.api;
    process.stdout.write(`finished-jobs: ${options.jobs} jobs, ${options.concurrency} at a time; the controller (pid ${stack.controller.pid}) at start: ${mib(await stack.controllerStats())}\n`);

    const started = performance.now();
    let next = 0;
    let done = 0;
    let mark = started;
    const lane = async () => {
      while (next < options.jobs && !signal.aborted) {
        const n = next++;
        // No process has this name: the job is stored pending, waiting for one; then it is cancelled.
        const spec = { target: { hostIds: [hostId], comm: `none-${n}` }, watches: [{ location: { case: "symbol" as const, value: "counter" }, length: 8, mode: WatchMode.WRITE }], queueTimeoutMs: 3_600_000n };
        const { job } = await api.submitJob({ spec }, { deadlineMs: callDeadlineMs });
        const { job: ended } = await api.cancelJob({ id: job!.id }, { deadlineMs: callDeadlineMs });
        if (ended?.state !== JobState.CANCELLED) throw new Error(`job ${job!.id} ended ${ended ? JobState[ended.state] : "without an answer"}`);
        done++;
        if (done % options.every === 0) {
          const now = performance.now();
          process.stdout.write(`${String(done).padStart(8)} finished  ${mib(await stack!.controllerStats())}  ${((options.every * 1000) / (now - mark)).toFixed(0)} jobs/s\n`);
          mark = now;
        }
      }
    };
    await Promise.all(Array.from({ length: options.concurrency }, lane));
    if (signal.aborted) return 130;
    process.stdout.write(`all ${done} jobs finished in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
    const first = await api.listJobs({}, { deadlineMs: callDeadlineMs });
    process.stdout.write(`jobs ls: ${first.jobs.length} of ${first.total} on the first page\n`);

    // The same store, a new controller: how it loads what is behind it.
    await fleet.stop();
    fleet = undefined;
    await stack.controller.kill("SIGTERM");
    const loadStarted = performance.now();
    restarted = await BenchProcess.start("controller", process.execPath, [cliPath, "controller", "--listen", "127.0.0.1:0", "--nats", stack.natsUrl, "--lease", `${leaseMs}ms`]);
    const line = await restarted.waitForLine(/listening on \S+:\d+/, signal, restartTimeoutMs);
    const loadSeconds = (performance.now() - loadStarted) / 1000;
    const loaded = /controller: loaded .*/.exec(restarted.stderrTail)?.[0] ?? "";
    process.stdout.write(`restarted: listening after ${loadSeconds.toFixed(1)} s (${loaded}); ${mib(await procStats(restarted.pid))}\n`);
    const client = createClient(ControllerService, /listening on (\S+:\d+)/.exec(line)![1]!);
    try {
      const pageStarted = performance.now();
      const page = await until(client.listJobs({}, { deadlineMs: callDeadlineMs }), "the first page of jobs", signal, callDeadlineMs);
      const pageMs = performance.now() - pageStarted;
      const next100 = await client.listJobs({ pageToken: page.nextPageToken }, { deadlineMs: callDeadlineMs });
      // Read from the store (memory has none of them after a restart), then settled.
      await delay(1_000);
      process.stdout.write(`jobs ls after the restart: ${page.jobs.length} + ${next100.jobs.length} of ${page.total} (the first page in ${pageMs.toFixed(0)} ms); ${mib(await procStats(restarted.pid))}\n`);
    } finally {
      client.close();
    }
    return 0;
  } catch (err) {
    process.stderr.write(`finished-jobs: ${errorText(err)}${stack ? `\ncontroller log: ${stack.controllerLogTail().slice(-1500)}` : ""}\n`);
    return 1;
  } finally {
    await fleet?.stop();
    await restarted?.kill("SIGTERM");
    await stack?.stop();
    await stopAllProcesses();
  }
}

process.exitCode = await main();
