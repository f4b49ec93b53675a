// `npm run bench:backends`: the two arming backends side by side in one run
// on the same C writer (bench/README.md, "Backends"): hits per second the
// perf backend sustains end to end, counting and sampling every hit, against
// `perf stat` (the kernel's floor) and the ptrace backend, and how fast the
// writer still runs while watched. Prints figures; judges none.
import { execFile } from "node:child_process";
import { access } from "node:fs/promises";
import os from "node:os";
import { parseArgs, promisify } from "node:util";

import { Cluster } from "../test/support/cluster.js";
import { helperPath } from "../test/support/paths.js";
import { measureJob, measurePerfStat, measureUnwatched, type BackendCaseContext, type BackendMeasurement } from "./backend-cases.js";
import { buildBenchPrograms } from "./build.js";
import { BenchInterruptedError, abortOnSignals, liveProcessNames, noTrapsHere, parseCommandLine, stopAllProcesses } from "./processes.js";
import { median } from "./report.js";

const execFileAsync = promisify(execFile);
const HOST = "bench-host";

const USAGE = `usage: npm run bench:backends -- [options]
  --seconds S        how long the writer runs per measurement (default 5)
  --rounds K         measurements per case, interleaved; medians are quoted (default 3)
  --threads LIST     writer thread counts (default 1)
  --cases LIST       of unwatched,perf-stat,perf-count,perf-sample,ptrace-sample (default all)`;

const ALL_CASES = ["unwatched", "perf-stat", "perf-count", "perf-sample", "ptrace-sample"];

interface Options {
  seconds: number;
  rounds: number;
  threads: number[];
  cases: Set<string>;
}

function positive(text: string, option: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${option} '${text}' is not a positive number`);
  return n;
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      seconds: { type: "string", default: "5" },
      rounds: { type: "string", default: "3" },
      threads: { type: "string", default: "1" },
      cases: { type: "string", default: ALL_CASES.join(",") },
      help: { type: "boolean", short: "h", default: false },
    },
    strict: true,
  });
  if (values.help) return undefined;
  const cases = new Set(values.cases.split(","));
  for (const c of cases) if (!ALL_CASES.includes(c)) throw new Error(`--cases: unknown case '${c}' (one of ${ALL_CASES.join(", ")})`);
  return {
    cases,
    seconds: positive(values.seconds, "--seconds"),
    rounds: Math.round(positive(values.rounds, "--rounds")),
    threads: values.threads.split(",").map((t) => Math.round(positive(t, "--threads"))),
  };
}

interface Case {
  key: string;
  label: string;
  run(ctx: BackendCaseContext): Promise<BackendMeasurement>;
}

function cases(cluster: Cluster, perfStat: boolean): Case[] {
  const list: Case[] = [{ key: "unwatched", label: "unwatched", run: measureUnwatched }];
  if (perfStat) list.push({ key: "perf-stat", label: "perf stat -e mem:ADDR/8:w (kernel count only)", run: measurePerfStat });
  list.push(
    { key: "perf-count", label: "fleetwatch --backend perf --count (end to end)", run: (ctx) => measureJob(ctx, cluster, HOST, "perf-count") },
    { key: "perf-sample", label: "fleetwatch --backend perf, every hit (end to end)", run: (ctx) => measureJob(ctx, cluster, HOST, "perf-sample") },
    { key: "ptrace-sample", label: "fleetwatch --backend ptrace, every hit (end to end)", run: (ctx) => measureJob(ctx, cluster, HOST, "ptrace-sample") },
  );
  return list;
}

const fmt = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "-");
const pct = (n: number): string => (Number.isFinite(n) ? `${Math.round(n * 100)} %` : "-");
const times = (n: number): string => (Number.isFinite(n) ? `${n.toFixed(2)}x` : "-");

function render(threads: number, list: Case[], results: Map<string, BackendMeasurement[]>): string {
  const med = (key: string, f: (m: BackendMeasurement) => number): number => {
    const r = results.get(key) ?? [];
    return r.length ? median(r.map(f)) : Number.NaN;
  };
  const unwatched = med("unwatched", (m) => m.writesPerSecond);
  const rows = list.map((c) => {
    const r = results.get(c.key) ?? [];
    const hps = med(c.key, (m) => m.hitsPerSecond);
    const wps = med(c.key, (m) => m.writesPerSecond);
    const rounds = r.map((m) => fmt(c.key === "unwatched" ? m.writesPerSecond : m.hitsPerSecond)).join(" / ");
    const notes = r.filter((m) => m.note).map((m) => m.note).join("; ");
    const speed = c.key === "unwatched" ? "1" : Number.isFinite(unwatched) ? `1/${fmt(unwatched / wps)}` : "-";
    return `| ${c.label} | ${c.key === "unwatched" ? "-" : fmt(hps)} | ${fmt(wps)} | ${speed} | ${rounds} |${notes ? ` ${notes}` : ""}`;
  });
  const hps = (key: string): number => med(key, (m) => m.hitsPerSecond);
  const ratios = [
    `perf backend counting / perf stat: ${pct(hps("perf-count") / hps("perf-stat"))} (goal >= 80 %)`,
    `perf backend, every hit / ptrace backend, every hit: ${times(hps("perf-sample") / hps("ptrace-sample"))} (goal >= 3x)`,
    `perf backend, every hit / perf stat: ${pct(hps("perf-sample") / hps("perf-stat"))}`,
  ];
  return [
    `### ${threads} writer thread${threads === 1 ? "" : "s"}`,
    "",
    "| path | hits/s (median) | writer's writes/s while watched | writer's speed, unwatched = 1 | each round |",
    "|---|---:|---:|---:|---|",
    ...rows,
    "",
    ...ratios,
  ].join("\n");
}

async function main(): Promise<number> {
  const commandLine = parseCommandLine(parseOptions, USAGE, (err) => (err instanceof Error ? err.message : String(err)));
  if ("code" in commandLine) return commandLine.code;
  const { options } = commandLine;
  const interrupt = abortOnSignals("bench:backends");
  let cluster: Cluster | undefined;
  let code = 0;
  try {
    await access(helperPath).catch(() => {
      throw new Error(`${helperPath} is missing: run \`npm run build\` first`);
    });
    const noTraps = await noTrapsHere(helperPath);
    if (noTraps) {
      process.stderr.write(`bench:backends: no traps on this host (${noTraps}): nothing of the trap path can be measured here; run it where traps are delivered\n`);
      return 1;
    }
    const bins = await buildBenchPrograms();
    const perfVersion = await execFileAsync("perf", ["--version"]).then((r) => r.stdout.trim(), () => "");
    if (!perfVersion) process.stderr.write("bench:backends: perf is not installed (apt-get install linux-perf): the perf stat row is skipped\n");
    process.stderr.write("bench:backends: starting nats-server, controller and agent\n");
    cluster = await Cluster.start({ hosts: [HOST] });
    const list = cases(cluster, perfVersion !== "").filter((c) => options.cases.has(c.key));
    const tables: string[] = [];
    const startedAt = Date.now();
    for (const threads of options.threads) {
      const results = new Map<string, BackendMeasurement[]>();
      const ctx: BackendCaseContext = { writer: bins.writer, signal: interrupt.signal, threads, seconds: options.seconds };
      // Rounds interleave the cases: a shared machine's drift spreads over all of them.
      for (let round = 1; round <= options.rounds; round++) {
        for (const c of list) {
          const m = await c.run(ctx);
          process.stderr.write(`bench:backends: ${threads} thread(s), round ${round}, ${c.key}: ${fmt(m.hitsPerSecond)} hits/s, writer ${fmt(m.writesPerSecond)} writes/s${m.note ? ` (${m.note})` : ""}\n`);
          results.set(c.key, [...(results.get(c.key) ?? []), m]);
        }
      }
      tables.push(render(threads, list, results));
    }
    const header = [
      `fleetwatch bench:backends: ${process.argv.slice(2).join(" ") || "(defaults)"}`,
      `machine: ${os.availableParallelism()} CPUs, Linux ${os.release()}, node ${process.version}; ${perfVersion || "no perf"}; took ${Math.round((Date.now() - startedAt) / 1000)} s`,
      `the writer stores to one 8-byte global for ${options.seconds} s; every store is a hit. hits/s: perf stat and counting = hits over the writer's own time; every hit = HitEvents received over go .. the last one received`,
    ];
    process.stdout.write(`\n${header.join("\n")}\n\n${tables.join("\n\n")}\n`);
  } catch (err) {
    if (err instanceof BenchInterruptedError || interrupt.signal.aborted) code = 130;
    else {
      process.stderr.write(`bench:backends: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      code = 1;
    }
  } finally {
    await stopAllProcesses();
    if (cluster) await cluster.stop().catch((err: unknown) => process.stderr.write(`bench:backends: stopping the cluster: ${String(err)}\n`));
    const left = liveProcessNames();
    if (left.length > 0) process.stderr.write(`bench:backends: still running after cleanup: ${left.join(", ")}\n`);
  }
  return code;
}

process.exitCode = await main();
