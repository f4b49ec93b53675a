// `npm run bench:report`: how long `fleetwatch report` takes over a million
// stored hits, and what its memory grows with. A job is stored with its hits
// in a real nats-server's event stream (as agents publish them: batches of
// 100, several hosts, processes and threads, a handful of distinct stacks);
// then, in rounds, the same stream is read three ways in this process:
//   replay  - the events only (what `fleetwatch events` reads), the baseline;
//   report  - the same reading through the aggregation and the table;
//   cli     - `fleetwatch report` as a user runs it (its own process).
// Medians and ratios to the replay are printed; nothing is judged. Memory:
// the heap the aggregation holds after 100,000 hits and after all of them,
// over the same groups (it should not grow with the hits).
import { spawn } from "node:child_process";
import { create } from "@bufbuild/protobuf";
import { HitEventSchema, type HitEvent } from "../proto/index.js";
import { readJobEvents } from "../cli/events.js";
import { renderReport } from "../cli/report/render.js";
import { WritersAggregator } from "../cli/report/writers.js";
import { Cluster } from "../test/support/cluster.js";
import { cliPath } from "../test/support/paths.js";
import { storeJob, storedJob } from "../test/support/stored-job.js";
import { median } from "./report.js";

const jobId = "bench-report";

interface Options {
  hits: number;
  rounds: number;
}

function parseOptions(argv: readonly string[]): Options {
  const options: Options = { hits: 1_000_000, rounds: 3 };
  for (let i = 0; i < argv.length; i++) {
    const value = Number(argv[i + 1]);
    if (argv[i] === "--hits" && Number.isInteger(value) && value > 0) options.hits = value;
    else if (argv[i] === "--rounds" && Number.isInteger(value) && value > 0) options.rounds = value;
    else throw new Error(`bench:report: unknown or bad option ${argv[i]} (--hits N, --rounds K)`);
    i++;
  }
  return options;
}

const hosts = ["db-1", "db-2", "db-3", "db-4"];
const writers = ["ExecInitNode", "set_config_option", "ProcessUtility", "guc_assign", "parse_int", "apply_setting", "SetConfigOption", "reset_all"];

/** The hits: on 4 hosts, 8 processes each with 4 threads, from 8 writers under 2 callers each; sequences per host from 1. */
function* hitsOf(total: number): Generator<HitEvent> {
  const sequence = new Map<string, bigint>();
  const startNs = BigInt(Date.now() - 3_600_000) * 1_000_000n;
  for (let i = 0; i < total; i++) {
    const hostId = hosts[i % hosts.length]!;
    const seq = (sequence.get(hostId) ?? 0n) + 1n;
    sequence.set(hostId, seq);
    // Skewed as real writers are: the first writer takes about half the hits, the next a quarter, and so on.
    const writer = writers[Math.min(writers.length - 1, Math.clz32(((i * 2654435761) >>> 0) | 1))]!;
    const caller = (i >> 6) % 2 === 0 ? "exec_simple_query" : "PostgresMain";
    const pid = 1000 + ((i >> 2) % 8);
    yield create(HitEventSchema, {
      jobId,
      hostId,
      pid,
      tid: pid + (i % 4),
      address: 0x55d0c0a0n,
      length: 8,
      ip: 0x401000n + BigInt(writers.indexOf(writer) * 64),
      // A setting flipped between a few values.
      oldValue: BigInt(4096 << (i % 4)),
      newValue: BigInt(4096 << ((i + 1) % 4)),
      timeUnixNano: startNs + BigInt(i) * 1_000n,
      sequence: seq,
      stack: [
        { ip: 0x401000n, function: writer, offset: 0x12n, module: "/usr/lib/postgresql/15/bin/postgres" },
        { ip: 0x402000n, function: caller, offset: 0x80n, module: "/usr/lib/postgresql/15/bin/postgres" },
        { ip: 0x403000n, function: "main", offset: 0x40n, module: "/usr/lib/postgresql/15/bin/postgres" },
      ],
    });
  }
}

/** Reads every stored event once; with an aggregator, feeds it (and stops after `limit` hits when given). */
async function read(natsUrl: string, aggregator?: WritersAggregator, limit = Infinity): Promise<number> {
  let n = 0;
  const stop = new AbortController();
  for await (const event of readJobEvents({ natsUrl, jobId, follow: false, signal: stop.signal })) {
    if (event.kind !== "hit") continue;
    aggregator?.addHit(event.hit);
    if (++n >= limit) stop.abort();
  }
  return n;
}

function seconds(startedNs: bigint): number {
  return Number(process.hrtime.bigint() - startedNs) / 1e9;
}

function runCli(cluster: Cluster): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(process.execPath, [cliPath, "report", jobId, "--controller", cluster.controllerAddress, "--nats", cluster.natsUrl], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("error", reject);
    child.on("exit", (code) => (code === 0 ? resolve(seconds(started)) : reject(new Error(`fleetwatch report exited ${code}: ${stderr}`))));
  });
}

/** Heap held after a full GC (node --expose-gc), in MB. */
function heapMb(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return process.memoryUsage().heapUsed / 1024 ** 2;
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (!(globalThis as { gc?: unknown }).gc) console.log("(run with node --expose-gc for the memory figures: npm run bench:report does)");
  const cluster = await Cluster.start({ hosts: [] });
  try {
    await cluster.stopController();
    const stored = process.hrtime.bigint();
    const targets = hosts.flatMap((hostId) => Array.from({ length: 8 }, (_, k) => ({ hostId, pid: 1000 + k })));
    await storeJob(cluster.natsUrl, storedJob(jobId, { counts: { delivered: BigInt(options.hits) }, targets }), hitsOf(options.hits));
    await cluster.startController();
    console.log(`stored ${options.hits} hits of job ${jobId} in ${seconds(stored).toFixed(1)} s; ${options.rounds} rounds of each`);

    const replay: number[] = [];
    const report: number[] = [];
    const cli: number[] = [];
    let table = "";
    for (let round = 1; round <= options.rounds; round++) {
      let started = process.hrtime.bigint();
      const read1 = await read(cluster.natsUrl);
      replay.push(seconds(started));
      started = process.hrtime.bigint();
      const aggregator = new WritersAggregator(["stack"]);
      const read2 = await read(cluster.natsUrl, aggregator);
      table = renderReport({ job: (await cluster.api().getJob({ id: jobId })).job!, snapshot: aggregator.snapshot(20) }, "table", 20);
      report.push(seconds(started));
      cli.push(await runCli(cluster));
      if (read1 !== options.hits || read2 !== options.hits) throw new Error(`round ${round}: read ${read1} and ${read2} hits of ${options.hits}`);
      console.log(`round ${round}: replay ${replay.at(-1)!.toFixed(2)} s, report ${report.at(-1)!.toFixed(2)} s, cli ${cli.at(-1)!.toFixed(2)} s`);
    }

    const before = heapMb();
    const small = new WritersAggregator(["stack", "tid"]);
    await read(cluster.natsUrl, small, Math.min(100_000, options.hits));
    const afterSmall = heapMb() - before;
    const big = new WritersAggregator(["stack", "tid"]);
    await read(cluster.natsUrl, big);
    const afterBig = heapMb() - before - afterSmall;
    const groups = big.snapshot(1).groupCount;

    const base = median(replay);
    console.log(`\n${options.hits} stored hits, median of ${options.rounds} (seconds; ratio to the replay in this process):`);
    console.log(`  replay (baseline)        ${base.toFixed(2)}  1.00`);
    console.log(`  report, in this process  ${median(report).toFixed(2)}  ${(median(report) / base).toFixed(2)}`);
    console.log(`  fleetwatch report (CLI)  ${median(cli).toFixed(2)}  ${(median(cli) / base).toFixed(2)}   (goal for 1,000,000 hits: under 15 s on the machines the suite runs on)`);
    if ((globalThis as { gc?: unknown }).gc) console.log(`memory held by the aggregation by stack,tid (${groups} groups): ${afterSmall.toFixed(1)} MB after ${Math.min(100_000, options.hits)} hits, ${afterBig.toFixed(1)} MB after ${options.hits}`);
    console.log(`\nthe report:\n${table}`);
  } finally {
    await cluster.stop();
  }
}

await main();
