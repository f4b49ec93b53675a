// The scale bench's command line: what it measures (fleet sizes, backends,
// phases) and the controller's options, parsed into a plain object. Pure:
// no I/O, so the parsing and the per-run controller options are testable.
import path from "node:path";
import { parseArgs } from "node:util";
import { benchBackends, fleetJobModes, type FleetJobMode } from "./scale-jobs.js";
import type { SimBackend } from "./sim-registers.js";

export const scaleUsage = `usage: npm run bench:scale -- [options]
  --agents LIST            simulated agents, one size or several (default 1000; e.g. 1000,3000,10000:
                           a fresh nats-server, controller and fleet for each size and backend)
  --backend LIST           of ptrace,perf: the backend every job names (default both, each on its own controller)
  --processes P            simulated processes per agent, pids 1001.. (default 4)
  --agents-per-channel N   sessions per gRPC channel (default 100; 1 = a connection per agent)
  --rounds R               fleet-wide rounds per way of submitting, after one warm-up (default 10)
  --fleet-job LIST         of per-pid,per-pid-label,selector (default all three)
  --jobs N                 single-target jobs of the placement and queue runs (default 10000)
  --concurrency C          SubmitJob calls in flight in the placement and finished runs (default 64)
  --finished N             jobs driven to a final state at the largest size (default 10 per agent:
                           100000 at 10,000 agents)
  --core-rounds R          rounds of the pure placement core (default 3)
  --skip LIST              of fleet,placement,queue,finished,core
  --lease MS               the controller's --lease (default 15000)
  --election-lease MS      the controller's --election-lease (default: the controller's own)
  --controller-node-args S node options for the controller process, space-separated
                           (e.g. --controller-node-args="--cpu-prof --cpu-prof-dir=/tmp/prof"; each
                           controller writes into a subdirectory named after its run, e.g. 1000-agents-perf)`;

/** The bench's phases, in the order each controller runs them. */
export const scalePhases = ["fleet", "placement", "queue", "finished", "core"] as const;
export type ScalePhase = (typeof scalePhases)[number];

/** Finished jobs per agent when --finished is not given: the 100,000 behind 10,000 agents. */
export const finishedPerAgent = 10;

export interface ScaleOptions {
  /** Fleet sizes, smallest first, each measured on its own stack. */
  agents: number[];
  backends: SimBackend[];
  processes: number;
  agentsPerChannel: number;
  rounds: number;
  fleetJobs: FleetJobMode[];
  jobs: number;
  concurrency: number;
  /** Jobs of the finished run (at the largest size); undefined = finishedPerAgent per agent. */
  finished: number | undefined;
  coreRounds: number;
  skip: Set<ScalePhase>;
  leaseMs: number;
  electionLeaseMs: number | undefined;
  controllerNodeArgs: string[];
}

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

/** `1000,3000,10000` or one number: the sizes, smallest first, each once. */
export function parseSizes(text: string, option: string): number[] {
  const sizes = text.split(",").map((item) => positiveInt(item.trim(), option));
  return [...new Set(sizes)].sort((a, b) => a - b);
}

/** The backends in the order they run (ptrace, then perf), each once; at least one. */
export function parseBackends(text: string): SimBackend[] {
  const chosen = new Set(listOf(text, benchBackends, "--backend"));
  if (chosen.size === 0) throw new Error("--backend: name at least one of ptrace, perf");
  return benchBackends.filter((b) => chosen.has(b));
}

/** Jobs of the finished run at `agents`: --finished, or finishedPerAgent per agent. */
export function finishedJobsAt(options: Pick<ScaleOptions, "finished">, agents: number): number {
  return options.finished ?? finishedPerAgent * agents;
}

/** The options, or undefined for --help; throws on a bad one. */
export function parseScaleOptions(argv: string[]): ScaleOptions | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      agents: { type: "string", default: "1000" },
      backend: { type: "string", default: benchBackends.join(",") },
      processes: { type: "string", default: "4" },
      "agents-per-channel": { type: "string", default: "100" },
      rounds: { type: "string", default: "10" },
      "fleet-job": { type: "string", default: fleetJobModes.join(",") },
      jobs: { type: "string", default: "10000" },
      concurrency: { type: "string", default: "64" },
      finished: { type: "string" },
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
    agents: parseSizes(values.agents, "--agents"),
    backends: parseBackends(values.backend),
    processes: positiveInt(values.processes, "--processes"),
    agentsPerChannel: positiveInt(values["agents-per-channel"], "--agents-per-channel"),
    rounds: positiveInt(values.rounds, "--rounds"),
    fleetJobs: listOf(values["fleet-job"], fleetJobModes, "--fleet-job"),
    jobs: positiveInt(values.jobs, "--jobs"),
    concurrency: positiveInt(values.concurrency, "--concurrency"),
    finished: values.finished === undefined ? undefined : positiveInt(values.finished, "--finished"),
    coreRounds: positiveInt(values["core-rounds"], "--core-rounds"),
    skip: new Set(listOf(values.skip, scalePhases, "--skip")),
    leaseMs: positiveInt(values.lease, "--lease"),
    electionLeaseMs: values["election-lease"] === undefined ? undefined : positiveInt(values["election-lease"], "--election-lease"),
    controllerNodeArgs: values["controller-node-args"].split(" ").filter(Boolean),
  };
}

/** What one controller of the run is called: its fleet size and backend (also its profiles' subdirectory). */
export function stackName(agents: number, backend: SimBackend): string {
  return `${agents}-agents-${backend}`;
}

// Node options that name a directory for files the process writes when it exits.
const outputDirOptions = ["--cpu-prof-dir", "--heap-prof-dir", "--diagnostic-dir"];

/**
 * The controller's node options for one run of several: every output
 * directory (`--cpu-prof-dir=D` or `--cpu-prof-dir D`, and the heap-profile
 * and diagnostic ones) becomes `D/<name>`, so each size and backend keeps its
 * own profiles. Returns the options and the directories they now name.
 */
export function nodeArgsForStack(args: readonly string[], name: string): { args: string[]; outputDirs: string[] } {
  const out: string[] = [];
  const outputDirs: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    const option = outputDirOptions.find((o) => arg === o || arg.startsWith(`${o}=`));
    if (option === undefined) {
      out.push(arg);
      continue;
    }
    const inline = arg.startsWith(`${option}=`);
    const dir = inline ? arg.slice(option.length + 1) : args[i + 1];
    if (dir === undefined) {
      out.push(arg);
      continue;
    }
    if (!inline) i++;
    const own = path.join(dir, name);
    outputDirs.push(own);
    out.push(`${option}=${own}`);
  }
  return { args: out, outputDirs };
}
