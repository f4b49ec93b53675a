// The measurements of `npm run bench:backends` (bench/README.md, "Backends"):
// the same C writer runs for a fixed time, unwatched, under `perf stat`,
// and watched end to end by a fleetwatch job on each backend. Each function
// stops and reaps what it started before it returns or throws.
import { execFile } from "node:child_process";
import { mkdtemp, open, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { create, fromBinary } from "@bufbuild/protobuf";
import { connect } from "nats";

import { Backend, HitBatchSchema, JobSpecSchema, JobState, WatchMode, jobEventFilter } from "../proto/index.js";
import type { Cluster } from "../test/support/cluster.js";
import { BenchProcess, until } from "./processes.js";
import { startWriter, waitWriterDone, type WriterDone } from "./writer-process.js";

const execFileAsync = promisify(execFile);

export interface BackendCaseContext {
  writer: string;
  signal: AbortSignal;
  threads: number;
  seconds: number;
}

/** One measurement: the writer's own figures and the hits the watching side counted. */
export interface BackendMeasurement {
  /** The writer's stores per second over its own run. */
  writesPerSecond: number;
  /** Stores the writer made. */
  writes: number;
  /** Hits the watching side counted (0 unwatched). */
  hits: number;
  /** Hits per second the watching side sustained (0 unwatched). */
  hitsPerSecond: number;
  note?: string;
}

const slack = (seconds: number): number => seconds * 1000 + 120_000;

/** The writer alone for S seconds: the baseline of the slowdown column. */
export async function measureUnwatched(ctx: BackendCaseContext): Promise<BackendMeasurement> {
  const writer = await startWriter(ctx.writer, { threads: ctx.threads, seconds: ctx.seconds }, ctx.signal);
  try {
    writer.proc.send("go");
    const done = await waitWriterDone(writer, ctx.signal, slack(ctx.seconds));
    return { writesPerSecond: done.writesPerSecond, writes: done.writes, hits: 0, hitsPerSecond: 0 };
  } finally {
    await writer.proc.kill();
  }
}

/**
 * `perf stat -e mem:ADDR/8:w:u -p PID`: the kernel counts each trap and
 * nothing leaves it, the floor of any breakpoint on this machine. It starts
 * with its event disabled and is enabled through its control fifo; the
 * writer goes once perf acknowledged.
 */
export async function measurePerfStat(ctx: BackendCaseContext): Promise<BackendMeasurement> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-bench-perf-"));
  const writer = await startWriter(ctx.writer, { threads: ctx.threads, seconds: ctx.seconds }, ctx.signal);
  let perf: BenchProcess | undefined;
  try {
    const ctl = path.join(dir, "ctl");
    const ack = path.join(dir, "ack");
    const out = path.join(dir, "stat.csv");
    await execFileAsync("mkfifo", [ctl, ack]);
    const event = `mem:0x${writer.address.toString(16)}/8:w:u`;
    perf = await BenchProcess.start("perf", "perf", ["stat", "-x", ",", "-o", out, "-e", event, "-D", "-1", "--control", `fifo:${ctl},${ack}`, "-p", String(writer.pid)]);
    const ctlFile = await until(open(ctl, "w"), "perf opening its control fifo", ctx.signal, 30_000);
    const ackFile = await until(open(ack, "r"), "perf opening its ack fifo", ctx.signal, 30_000);
    try {
      await ctlFile.write("enable\n");
      const buf = Buffer.alloc(16);
      const { bytesRead } = await until(ackFile.read(buf, 0, buf.length, null), "perf acknowledging enable", ctx.signal, 30_000);
      if (!buf.subarray(0, bytesRead).toString().startsWith("ack")) throw new Error(`perf stat answered '${buf.subarray(0, bytesRead).toString()}' to enable`);
      writer.proc.send("go");
      const done = await waitWriterDone(writer, ctx.signal, slack(ctx.seconds));
      await until(perf.kill("SIGINT"), "perf stat to print its count", ctx.signal, 30_000);
      const csv = await readFile(out, "utf8");
      const line = csv.split("\n").find((l) => l.includes("mem:"));
      const count = Number(line?.split(",")[0]);
      if (!Number.isFinite(count)) throw new Error(`perf stat printed no count: ${csv.trim()}`);
      return { writesPerSecond: done.writesPerSecond, writes: done.writes, hits: count, hitsPerSecond: (count * 1e9) / done.ns, ...(count !== done.writes ? { note: `perf counted ${count} of ${done.writes} writes` } : {}) };
    } finally {
      await ctlFile.close();
      await ackFile.close();
    }
  } finally {
    await perf?.kill();
    await writer.proc.kill();
    await rm(dir, { recursive: true, force: true });
  }
}

export type JobKind = "perf-count" | "perf-sample" | "ptrace-sample";

/**
 * Counts the HitEvents of a HitBatch from its wire form without decoding
 * them (the subscriber shares the machine with the pipeline it measures;
 * decoding 100,000 hits a second would be its own load), and says whether
 * it carries count reports. Throws on bytes that are not a HitBatch.
 */
export function scanBatch(data: Uint8Array): { hits: number; counts: boolean } {
  let at = 0;
  let hits = 0;
  let counts = false;
  const varint = (): number => {
    let v = 0;
    let shift = 0;
    for (;;) {
      if (at >= data.length) throw new Error("a HitBatch cut short");
      const b = data[at++]!;
      v += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return v;
      shift += 7;
      if (shift > 63) throw new Error("a varint longer than 10 bytes");
    }
  };
  while (at < data.length) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    if (tag % 8 !== 2 || (field !== 1 && field !== 2)) throw new Error(`field ${field} wire type ${tag % 8} is not in a HitBatch`);
    const length = varint();
    if (at + length > data.length) throw new Error("a HitBatch field runs past its end");
    at += length;
    if (field === 1) hits++;
    else counts = true;
  }
  return { hits, counts };
}

/**
 * A fleetwatch job on the writer through the whole stack (agent, helper,
 * NATS, a subscriber): every write is a hit. Counting: hits are the count
 * reports' total, over the writer's own time. Sampling: hits are HitEvents
 * received, over the time from "go" to the last one received (at least the
 * writer's own time).
 */
export async function measureJob(ctx: BackendCaseContext, cluster: Cluster, hostId: string, kind: JobKind): Promise<BackendMeasurement> {
  const writer = await startWriter(ctx.writer, { threads: ctx.threads, seconds: ctx.seconds }, ctx.signal);
  const nc = await connect({ servers: cluster.natsUrl, name: "fleetwatch-bench-backends" });
  const api = cluster.api();
  let jobId = "";
  try {
    let prefix = "";
    let hits = 0;
    let counted = 0n;
    let lastAt = 0n;
    let decodeError: unknown;
    const sub = nc.subscribe("fleetwatch.events.>", {
      callback: (err, msg) => {
        if (err || prefix === "" || !msg.subject.startsWith(prefix)) return;
        try {
          const { hits: n, counts } = scanBatch(msg.data);
          hits += n;
          if (counts) {
            for (const c of fromBinary(HitBatchSchema, msg.data).counts) if ((c.totals?.delivered ?? 0n) > counted) counted = c.totals?.delivered ?? 0n;
          }
          lastAt = process.hrtime.bigint();
        } catch (e) {
          decodeError ??= e;
        }
      },
    });
    await nc.flush();
    const spec = create(JobSpecSchema, {
      watches: [{ location: { case: "address", value: writer.address }, length: 8, mode: WatchMode.WRITE }],
      target: { hostIds: [hostId], pid: writer.pid },
      backend: kind === "ptrace-sample" ? Backend.PTRACE : Backend.PERF,
      countOnly: kind === "perf-count",
      countIntervalMs: kind === "perf-count" ? 200n : 0n,
      stackDepth: 0,
    });
    const { job } = await api.submitJob({ spec }, { deadlineMs: 60_000, signal: ctx.signal });
    if (!job) throw new Error("SubmitJob answered without a job");
    jobId = job.id;
    prefix = jobEventFilter(job.id).slice(0, -1);
    if (job.state !== JobState.ARMED) throw new Error(`job ${job.id} is ${JobState[job.state]} after submit: ${job.reason}`);
    const goAt = process.hrtime.bigint();
    writer.proc.send("go");
    const done: WriterDone = await waitWriterDone(writer, ctx.signal, slack(ctx.seconds));
    // Every write trapped: wait until every one has been reported, or the
    // job's own counts say what it could not deliver.
    const got = (): number => (kind === "perf-count" ? Number(counted) : hits);
    const limitAt = Date.now() + 60_000;
    let note = "";
    while (got() < done.writes) {
      if (ctx.signal.aborted) throw new Error("interrupted");
      const { job: now } = await api.getJob({ id: job.id }, { deadlineMs: 5_000 });
      const c = now?.counts;
      if (Date.now() > limitAt) {
        note = `${got()} of ${done.writes} writes reported (job: trapped ${c?.trapped}, delivered ${c?.delivered}, dropped ${c?.dropped})`;
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    sub.unsubscribe();
    if (decodeError) throw new Error(`a message on ${prefix}* is not a HitBatch: ${String(decodeError)}`);
    const n = got();
    const spanNs = kind === "perf-count" ? done.ns : Math.max(done.ns, Number(lastAt - goAt));
    return { writesPerSecond: done.writesPerSecond, writes: done.writes, hits: n, hitsPerSecond: (n * 1e9) / spanNs, ...(note ? { note } : {}) };
  } finally {
    if (jobId) await api.cancelJob({ id: jobId }, { deadlineMs: 30_000 }).catch(() => undefined);
    await nc.close().catch(() => undefined);
    await writer.proc.kill();
  }
}
