// `npm run bench`: the cost of one hit through each path, side by side in one
// run on the same C writer (bench/README.md). Benchmarks are not tests: this
// prints figures and never judges them against a threshold.
import { execFile } from "node:child_process";
import { access } from "node:fs/promises";
import os from "node:os";
import { parseArgs, promisify } from "node:util";

import { Cluster } from "../test/support/cluster.js";
import { helperPath } from "../test/support/paths.js";
import { buildBenchPrograms } from "./build.js";
import { measureBare, measureFull, measureGdb, measureHelper, measureRateLimited, type CaseContext, type Measurement } from "./cases.js";
import { BenchInterruptedError, abortOnSignals, liveProcessNames, noTrapsHere, parseCommandLine, stopAllProcesses } from "./processes.js";
import { renderThreads, type CaseKey, type CaseResult, type ThreadsResult } from "./report.js";

const execFileAsync = promisify(execFile);

const USAGE = `usage: npm run bench -- [options]
  --quick            ~1 s per measurement instead of >= 5 s
  --seconds S        target length of each measurement (default 5, --quick 1)
  --rounds K         measurements per case; medians are quoted (default 3)
  --threads LIST     writer thread counts (default 1,4)
  --cases LIST       of bare,helper,full,gdb,rate (default all)
  --cpu N            CPU of the same-CPU pinned variants (default: the last one)
  --hits N           hits per measurement for every case but gdb (default: calibrated)
  --gdb-hits N       hits per gdb measurement (default: calibrated)`;

const ALL_CASES = ["bare", "helper", "full", "gdb", "rate"] as const;
type CaseName = (typeof ALL_CASES)[number];

interface BenchOptions {
  seconds: number;
  rounds: number;
  threads: number[];
  cases: Set<CaseName>;
  cpu: number;
  hits: number | undefined;
  gdbHits: number | undefined;
}

/** Probe sizes for the calibration run of each case: well under a second at the expected rates. */
const PROBE_HITS = 10_000;
const GDB_PROBE_HITS = 1_500;
/** Rate limit of the rate-limited case. */
const RATE_LIMIT_HITS_PER_SECOND = 1_000;

function positiveInt(text: string, option: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1) throw new Error(`${option} '${text}' is not a positive integer`);
  return Number(text);
}

function parseOptions(argv: string[]): BenchOptions | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: "boolean", default: false },
      seconds: { type: "string" },
      rounds: { type: "string", default: "3" },
      threads: { type: "string", default: "1,4" },
      cases: { type: "string", default: ALL_CASES.join(",") },
      cpu: { type: "string" },
      hits: { type: "string" },
      "gdb-hits": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const cases = new Set<CaseName>();
  for (const name of values.cases.split(",")) {
    if (!(ALL_CASES as readonly string[]).includes(name)) throw new Error(`--cases: unknown case '${name}' (one of ${ALL_CASES.join(", ")})`);
    cases.add(name as CaseName);
  }
  const cpus = os.availableParallelism();
  const cpu = values.cpu === undefined ? cpus - 1 : Number(values.cpu);
  if (!Number.isInteger(cpu) || cpu < 0 || cpu >= cpus) throw new Error(`--cpu ${values.cpu} is not a CPU of this machine (0-${cpus - 1})`);
  return {
    seconds: values.seconds !== undefined ? Number(values.seconds) : values.quick ? 1 : 5,
    rounds: positiveInt(values.rounds, "--rounds"),
    threads: values.threads.split(",").map((t) => positiveInt(t, "--threads")),
    cases,
    cpu,
    hits: values.hits === undefined ? undefined : positiveInt(values.hits, "--hits"),
    gdbHits: values["gdb-hits"] === undefined ? undefined : positiveInt(values["gdb-hits"], "--gdb-hits"),
  };
}

async function firstLine(command: string, args: string[]): Promise<string> {
  try {
    const { stdout, stderr } = await execFileAsync(command, args);
    return (stdout || stderr).split("\n")[0]?.trim() ?? "?";
  } catch {
    return "not installed";
  }
}

/** One row of the table: how to measure it with a given number of hits. */
interface Variant {
  key: CaseKey;
  label: string;
  run(hits: number): Promise<Measurement>;
  fixedHits: number | undefined;
  probeHits: number;
}

function variantsFor(ctx: CaseContext, options: BenchOptions, threads: number, cluster: Cluster | undefined): Variant[] {
  const v: Variant[] = [];
  const fixed = options.hits;
  if (options.cases.has("bare")) {
    v.push({ key: "bare-same", label: "bare loop, same CPU", run: (n) => measureBare(ctx, threads, n, options.cpu), fixedHits: fixed, probeHits: PROBE_HITS });
    v.push({ key: "bare", label: "bare loop, unpinned", run: (n) => measureBare(ctx, threads, n), fixedHits: fixed, probeHits: PROBE_HITS });
  }
  if (options.cases.has("helper")) {
    v.push({ key: "helper", label: "helper, policy follow (default)", run: (n) => measureHelper(ctx, threads, n), fixedHits: fixed, probeHits: PROBE_HITS });
    v.push({ key: "helper-none", label: "helper, policy none", run: (n) => measureHelper(ctx, threads, n, "none"), fixedHits: fixed, probeHits: PROBE_HITS });
    v.push({ key: "helper-same", label: "helper, same CPU (taskset)", run: (n) => measureHelper(ctx, threads, n, { cpu: options.cpu }), fixedHits: fixed, probeHits: PROBE_HITS });
  }
  if (options.cases.has("full") && cluster) {
    v.push({ key: "full", label: "full: agent+NATS+subscriber", run: (n) => measureFull(ctx, cluster, BENCH_HOST, threads, n), fixedHits: fixed, probeHits: PROBE_HITS });
  }
  if (options.cases.has("gdb")) {
    v.push({ key: "gdb", label: "gdb, commands silent; continue", run: (n) => measureGdb(ctx, threads, n), fixedHits: options.gdbHits, probeHits: GDB_PROBE_HITS });
  }
  return v;
}

const BENCH_HOST = "bench";

/** Hits for about `seconds` at `rate`, a multiple of `threads` (each writes the same share). */
function hitsFor(rate: number, seconds: number, threads: number, minimum: number): number {
  // 25 % over: the rate of a noisy machine varies run to run, and a
  // measurement should not end short of the target length.
  const n = Math.max(minimum, Math.ceil(rate * seconds * 1.25));
  return Math.ceil(n / (threads * 1000)) * threads * 1000;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

async function runThreads(ctx: CaseContext, options: BenchOptions, threads: number, cluster: Cluster | undefined): Promise<ThreadsResult> {
  const log = (line: string): void => void process.stderr.write(`[${threads} thread${threads === 1 ? "" : "s"}] ${line}\n`);
  const variants = variantsFor(ctx, options, threads, cluster);
  const results = new Map<CaseKey, CaseResult>();
  // Calibration: a short run of each case gives its rate, hence N for the target length.
  for (const v of variants) {
    const result: CaseResult = { key: v.key, label: v.label, hitsPerRun: v.fixedHits ?? 0, rounds: [] };
    results.set(v.key, result);
    if (v.fixedHits !== undefined) continue;
    try {
      const probe = await v.run(v.probeHits);
      result.hitsPerRun = hitsFor(probe.hitsPerSecond, options.seconds, threads, v.probeHits);
      log(`calibrate ${v.label}: ${Math.round(probe.hitsPerSecond)} hits/s -> ${result.hitsPerRun} hits per run`);
    } catch (err) {
      if (err instanceof BenchInterruptedError || ctx.signal.aborted) throw err;
      result.failed = errorText(err);
      log(`calibrate ${v.label}: failed: ${result.failed}`);
    }
  }
  const out: ThreadsResult = { threads, cases: variants.map((v) => results.get(v.key) as CaseResult), rateLimited: [] };
  let rateFailed = !options.cases.has("rate");
  // Rounds interleave the cases, so drift of a noisy machine spreads over all of them.
  for (let round = 1; round <= options.rounds; round++) {
    const tag = `round ${round}/${options.rounds}`;
    for (const v of variants) {
      const result = results.get(v.key) as CaseResult;
      if (result.failed) continue;
      try {
        const m = await measureLongEnough(v, result, options.seconds, threads, (line) => log(`${tag} ${line}`));
        result.rounds.push(m);
        log(`${tag} ${v.label}: ${Math.round(m.hitsPerSecond)} hits/s over ${m.seconds.toFixed(1)} s${m.note ? ` (${m.note})` : ""}`);
      } catch (err) {
        if (err instanceof BenchInterruptedError || ctx.signal.aborted) throw err;
        result.failed = errorText(err);
        log(`${tag} ${v.label}: failed: ${result.failed}`);
      }
    }
    if (rateFailed) continue;
    try {
      const r = await measureRateLimited(ctx, threads, options.seconds, RATE_LIMIT_HITS_PER_SECOND);
      out.rateLimited?.push(r);
      log(`${tag} rate-limited: ${r.supported ? `${Math.round(r.watchedWritesPerSecond)} writes/s watched, ` : `${r.reason}; `}${Math.round(r.unwatchedWritesPerSecond)} unwatched`);
    } catch (err) {
      if (err instanceof BenchInterruptedError || ctx.signal.aborted) throw err;
      rateFailed = true;
      out.rateLimitedFailed = errorText(err);
      log(`${tag} rate-limited: failed: ${out.rateLimitedFailed}`);
    }
  }
  return out;
}

/**
 * One measurement of at least `seconds`: a run that ends shorter (the rate
 * was higher than calibrated) is repeated with more hits, at most twice, and
 * later rounds keep the larger N. Hits given on the command line are kept.
 */
async function measureLongEnough(v: Variant, result: CaseResult, seconds: number, threads: number, log: (line: string) => void): Promise<Measurement> {
  for (let attempt = 0; ; attempt++) {
    const m = await v.run(result.hitsPerRun);
    if (m.seconds >= seconds || attempt === 2 || v.fixedHits !== undefined) return m;
    const next = hitsFor(m.hitsPerSecond, seconds, threads, result.hitsPerRun);
    log(`${v.label}: ${Math.round(m.hitsPerSecond)} hits/s over ${m.seconds.toFixed(1)} s is shorter than ${seconds} s: again with ${next} hits`);
    result.hitsPerRun = next;
  }
}

async function main(): Promise<number> {
  const commandLine = parseCommandLine(parseOptions, USAGE, errorText);
  if ("code" in commandLine) return commandLine.code;
  const { options } = commandLine;

  const interrupt = abortOnSignals("bench");

  let cluster: Cluster | undefined;
  const results: ThreadsResult[] = [];
  let code = 0;
  try {
    await access(helperPath).catch(() => {
      throw new Error(`${helperPath} is missing: run \`npm run build\` first`);
    });
    const noTraps = await noTrapsHere(helperPath);
    if (noTraps) {
      process.stderr.write(`bench: no traps on this host (${noTraps}): nothing of the trap path can be measured here; run it where traps are delivered\n`);
      return 1;
    }
    const bins = await buildBenchPrograms();
    const ctx: CaseContext = { bins, helperPath, signal: interrupt.signal };
    const [gdbVersion, natsVersion] = await Promise.all([firstLine("gdb", ["--version"]), firstLine("nats-server", ["--version"])]);
    if (options.cases.has("gdb") && gdbVersion === "not installed") {
      process.stderr.write("bench: gdb is not installed (apt-get install gdb): the gdb case is skipped\n");
      options.cases.delete("gdb");
    }
    if (options.cases.has("full")) {
      process.stderr.write("bench: starting nats-server, controller and agent for the full path\n");
      cluster = await Cluster.start({ hosts: [BENCH_HOST] });
    }
    const startedAt = Date.now();
    for (const threads of options.threads) {
      results.push(await runThreads(ctx, options, threads, cluster));
    }
    const header = [
      `fleetwatch bench: ${process.argv.slice(2).join(" ") || "(defaults)"}`,
      `machine: ${os.availableParallelism()} CPUs, Linux ${os.release()}, node ${process.version}; gdb: ${gdbVersion}; nats-server: ${natsVersion}`,
      `${options.rounds} round(s) per case, medians quoted; ~${options.seconds} s per measurement; same-CPU variants pinned to CPU ${options.cpu}; took ${Math.round((Date.now() - startedAt) / 1000)} s`,
      "hits/s: bare, helper = first to last trap (tracer's clock); full = first to last HitEvent at the subscriber; gdb = gdb's hit count over the writer's own time",
    ];
    process.stdout.write(`\n${header.join("\n")}\n\n${results.map(renderThreads).join("\n\n")}\n`);
  } catch (err) {
    if (err instanceof BenchInterruptedError || interrupt.signal.aborted) {
      code = 130;
    } else {
      process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      code = 1;
    }
  } finally {
    await stopAllProcesses();
    if (cluster) await cluster.stop().catch((err: unknown) => process.stderr.write(`bench: stopping the cluster: ${errorText(err)}\n`));
    const left = liveProcessNames();
    if (left.length > 0) process.stderr.write(`bench: still running after cleanup: ${left.join(", ")}\n`);
  }
  return code;
}

process.exitCode = await main();
