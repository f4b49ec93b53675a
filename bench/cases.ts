// One function per measured path, each on the same C writer: the bare ptrace
// loop, the helper driven by HelperProcess, the full stack up to a NATS
// subscriber, gdb, and the rate-limited writer. Each stops and reaps what it
// started before it returns or throws.
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { create, fromBinary } from "@bufbuild/protobuf";
import { connect } from "nats";

import { HelperProcess } from "../agent/helper-process.js";
import type { CpuPolicy, HelperEvent } from "../agent/helper-process.js";
import { Backend, JobSpecSchema, HitBatchSchema, JobState, WatchMode, jobEventFilter } from "../proto/index.js";
import type { Cluster } from "../test/support/cluster.js";
import type { BenchBinaries } from "./build.js";
import { armWrite8, helperSupportsRateLimit } from "./helper-arm.js";
import { PlacementSampler, type Placement } from "./placement.js";
import { BenchProcess, tracerPidOf, until } from "./processes.js";
import { startWriter, waitWriterDone, writerArgs, type Writer } from "./writer-process.js";

const execFileAsync = promisify(execFile);

/** What every case needs. */
export interface CaseContext {
  bins: BenchBinaries;
  helperPath: string;
  /** Aborts on Ctrl-C / SIGTERM. */
  signal: AbortSignal;
}

/** One measurement of one case. */
export interface Measurement {
  /** Hits the measuring side counted. */
  hits: number;
  /** Span the rate is taken over, in seconds. */
  seconds: number;
  hitsPerSecond: number;
  placement: Placement;
  /** Anything worth a footnote (e.g. gdb reporting fewer hits than writes). */
  note?: string;
}

/** The rate-limited case: the writer's own speed unwatched and watched. */
export type RateLimitedResult =
  | { supported: false; reason: string; unwatchedWritesPerSecond: number }
  | { supported: true; unwatchedWritesPerSecond: number; watchedWritesPerSecond: number; hitsPerSecond: number; suppressed: bigint };

const GROUP = 1n;
/** Deadline of one measurement: generous, since the first one of a case has no estimate. */
const deadlineMs = (hits: number, minRatePerSecond: number): number => Math.ceil((hits / minRatePerSecond) * 1000) + 60_000;

const rateOver = (hits: number, ns: number): number => (ns > 0 ? (hits * 1e9) / ns : 0);

/** Waits until the target's TracerPid is set (the tracer attached). */
async function waitTraced(pid: number, signal: AbortSignal, what: string): Promise<number> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const tracer = await tracerPidOf(pid);
    if (tracer === undefined) throw new Error(`${what}: target ${pid} is gone before the tracer attached`);
    if (tracer !== 0) return tracer;
    if (signal.aborted) throw new Error(`${what}: interrupted`);
    if (Date.now() > deadline) throw new Error(`${what}: no tracer attached to ${pid} within 30 s`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** bench/bare-loop.c on the writer; `cpu` pins both to that CPU. */
export async function measureBare(ctx: CaseContext, threads: number, hits: number, cpu?: number): Promise<Measurement> {
  const perThread = Math.ceil(hits / threads);
  const pin = cpu === undefined ? [] : ["--cpu", String(cpu)];
  const proc = await BenchProcess.start("bare-loop", ctx.bins.bareLoop, [...pin, "--", ctx.bins.writer, ...writerArgs({ threads, writesPerThread: perThread })]);
  let sampler: PlacementSampler | undefined;
  try {
    const tracing = await proc.waitForLine(/^tracing \d+/, ctx.signal, 10_000);
    sampler = new PlacementSampler(Number(tracing.split(" ")[1]));
    sampler.start();
    const line = await proc.waitForLine(/^bare hits=/, ctx.signal, deadlineMs(hits, 1000));
    const placement = await sampler.stop();
    sampler = undefined;
    const status = await proc.waitForExit(ctx.signal, 10_000);
    if (status.code !== 0) throw new Error(`bare-loop exited with ${status.code ?? status.signal}: ${proc.stderrTail.trim()}`);
    const m = /hits=(\d+) first_to_last_ns=(\d+)/.exec(line);
    if (!m) throw new Error(`bare-loop printed ${line}`);
    const counted = Number(m[1]);
    if (counted !== perThread * threads) throw new Error(`bare-loop counted ${counted} hits for ${perThread * threads} writes`);
    const ns = Number(m[2]);
    return { hits: counted, seconds: ns / 1e9, hitsPerSecond: rateOver(counted - 1, ns), placement };
  } finally {
    await sampler?.stop();
    // SIGTERM: bare-loop kills and reaps its writer itself.
    if (proc.running) await until(proc.kill("SIGTERM"), "bare-loop to stop", new AbortController().signal, 10_000).catch(() => proc.kill("SIGKILL"));
  }
}

/** Pins every thread of pid to cpu. */
async function pinAllThreads(pid: number, cpu: number): Promise<void> {
  await execFileAsync("taskset", ["-a", "-p", "-c", String(cpu), String(pid)]);
}

/**
 * The real helper, no agent and no NATS: arm the writer with a budget of
 * `hits`, read HITS events until GROUP_DONE. The rate is taken between the
 * first and the last hit's trap time (the helper's clock). `placement` is the
 * helper's CPU policy (undefined: its default), or a CPU to pin the helper
 * and the writer to from outside (taskset, with the helper's policy "none").
 */
export async function measureHelper(ctx: CaseContext, threads: number, hits: number, placement?: CpuPolicy | { cpu: number }): Promise<Measurement> {
  const pinCpu = typeof placement === "object" ? placement.cpu : undefined;
  const cpuPolicy: CpuPolicy | undefined = typeof placement === "object" ? "none" : placement;
  const helper = await HelperProcess.start({ path: ctx.helperPath, ...(cpuPolicy === undefined ? {} : { cpuPolicy }) });
  let writer: Writer | undefined;
  let sampler: PlacementSampler | undefined;
  const events = helper.events()[Symbol.asyncIterator]();
  try {
    if (pinCpu !== undefined) await pinAllThreads(helper.pid, pinCpu);
    writer = await startWriter(ctx.bins.writer, { threads, writesPerThread: Math.ceil(hits / threads), ...(pinCpu === undefined ? {} : { cpu: pinCpu }) }, ctx.signal);
    await armWrite8(helper, writer.pid, GROUP, writer.address, { maxHits: BigInt(hits) });
    sampler = new PlacementSampler(writer.pid);
    sampler.start();
    writer.proc.send("go");
    let count = 0;
    let firstNs = 0n;
    let lastNs = 0n;
    const problems: string[] = [];
    const limit = deadlineMs(hits, 1000);
    for (;;) {
      const next = await until(events.next(), "helper events up to GROUP_DONE", ctx.signal, limit);
      if (next.done) throw new Error(`the helper exited before GROUP_DONE after ${count} hits`);
      const event: HelperEvent = next.value;
      if (event.kind === "hits") {
        for (const hit of event.hits) {
          if (hit.group !== GROUP) continue;
          if (count === 0) firstNs = hit.timeNs;
          lastNs = hit.timeNs;
          count++;
        }
      } else if (event.kind === "group-done") {
        if (event.reason !== "budget") problems.push(`group ended by ${event.reason}`);
        if (event.counts.delivered !== BigInt(count)) problems.push(`GROUP_DONE says ${event.counts.delivered} delivered, ${count} received`);
        break;
      } else if (event.kind === "target-exited") {
        throw new Error(`the writer exited (${event.how === "killed" ? "signal" : event.how === "gone" ? "status unknown," : "code"} ${event.code}) before the budget, after ${count} hits`);
      } else if (event.kind === "log" && (event.level === "warning" || event.level === "error")) {
        problems.push(`helper ${event.level}: ${event.message}`);
      }
    }
    const seen = await sampler.stop();
    sampler = undefined;
    await waitWriterDone(writer, ctx.signal, 60_000);
    const ns = Number(lastNs - firstNs);
    return {
      hits: count,
      seconds: ns / 1e9,
      hitsPerSecond: rateOver(count - 1, ns),
      placement: seen,
      ...(problems.length > 0 ? { note: problems.join("; ") } : {}),
    };
  } finally {
    await sampler?.stop();
    await helper.shutdown();
    await events.return?.();
    await writer?.proc.kill();
  }
}

/**
 * The whole stack: the agent's helper arms the writer for a job submitted to
 * the controller with max hits = `hits`; a core NATS subscriber decodes each
 * HitEvent on the job's subject. The rate is taken between the first and the
 * last hit received by that subscriber.
 */
export async function measureFull(ctx: CaseContext, cluster: Cluster, hostId: string, threads: number, hits: number): Promise<Measurement> {
  const writer = await startWriter(ctx.bins.writer, { threads, writesPerThread: Math.ceil(hits / threads) }, ctx.signal);
  const nc = await connect({ servers: cluster.natsUrl, name: "fleetwatch-bench-subscriber" });
  let sampler: PlacementSampler | undefined;
  try {
    let count = 0;
    let firstAt = 0n;
    let lastAt = 0n;
    let prefix = "";
    let decodeError: unknown;
    // Subscribed before the job exists: its id is known only once submitted,
    // and the writer starts only after that ("go").
    const sub = nc.subscribe("fleetwatch.events.>", {
      callback: (err, msg) => {
        if (err || prefix === "" || !msg.subject.startsWith(prefix)) return;
        let hits: number;
        try {
          hits = fromBinary(HitBatchSchema, msg.data).hits.length;
        } catch (e) {
          decodeError ??= e;
          return;
        }
        lastAt = process.hrtime.bigint();
        if (count === 0) firstAt = lastAt;
        count += hits;
      },
    });
    await nc.flush();
    const spec = create(JobSpecSchema, {
      watches: [{ location: { case: "address", value: writer.address }, length: 8, mode: WatchMode.WRITE }],
      target: { hostIds: [hostId], pid: writer.pid },
      maxHits: BigInt(hits),
      // The ptrace path, beside the bare ptrace loop and gdb it is compared with.
      backend: Backend.PTRACE,
    });
    const api = cluster.api();
    const { job } = await api.submitJob({ spec }, { deadlineMs: 60_000, signal: ctx.signal });
    if (!job) throw new Error("SubmitJob answered without a job");
    prefix = jobEventFilter(job.id).slice(0, -1);
    if (job.state !== JobState.ARMED) throw new Error(`job ${job.id} is ${JobState[job.state]} after submit: ${job.reason}`);
    sampler = new PlacementSampler(writer.pid);
    sampler.start();
    writer.proc.send("go");
    // Done when every hit arrived, or when the job is final and what it delivered arrived.
    const limitAt = Date.now() + deadlineMs(hits, 1000);
    let finalDelivered: bigint | undefined;
    let jobNote = "";
    for (;;) {
      if (count >= hits) break;
      if (ctx.signal.aborted) throw new Error("interrupted");
      if (Date.now() > limitAt) throw new Error(`job ${job.id}: ${count} of ${hits} hits received before the deadline`);
      const { job: now } = await api.getJob({ id: job.id }, { deadlineMs: 5_000 });
      if (now && now.state !== JobState.ARMED && now.state !== JobState.PENDING) {
        finalDelivered = now.counts?.delivered ?? 0n;
        jobNote = `job ${JobState[now.state]}: ${now.reason}`;
        if (BigInt(count) >= finalDelivered) break;
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    const placement = await sampler.stop();
    sampler = undefined;
    sub.unsubscribe();
    if (decodeError) throw new Error(`a message on ${prefix}* is not a HitBatch: ${String(decodeError)}`);
    await waitWriterDone(writer, ctx.signal, 60_000);
    const ns = Number(lastAt - firstAt);
    const notes: string[] = [];
    if (count < hits) notes.push(`${count} of ${hits} hits arrived (${jobNote}, delivered ${finalDelivered})`);
    return { hits: count, seconds: ns / 1e9, hitsPerSecond: rateOver(count - 1, ns), placement, ...(notes.length ? { note: notes.join("; ") } : {}) };
  } finally {
    await sampler?.stop();
    await nc.close().catch(() => undefined);
    await writer.proc.kill();
  }
}

const GDB_SCRIPT = `set pagination off
set confirm off
watch -l fw_counter
commands
silent
continue
end
continue
info watchpoints
`;

/**
 * gdb (the distribution's) attached to the writer with a hardware watchpoint
 * and \`commands silent; continue\`. Hits are gdb's own hit count; the rate
 * is over the writer's own time from "go" to its last thread joined.
 */
export async function measureGdb(ctx: CaseContext, threads: number, hits: number): Promise<Measurement> {
  const dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-bench-gdb-"));
  const script = path.join(dir, "watch.gdb");
  await writeFile(script, GDB_SCRIPT);
  let writer: Writer | undefined;
  let gdb: BenchProcess | undefined;
  let sampler: PlacementSampler | undefined;
  try {
    writer = await startWriter(ctx.bins.writer, { threads, writesPerThread: Math.ceil(hits / threads) }, ctx.signal);
    gdb = await BenchProcess.start("gdb", "gdb", ["-batch", "-nx", "-q", "-p", String(writer.pid), "-x", script]);
    // gdb stops the writer when it attaches and inserts the watchpoint at its
    // \`continue\`: "go" sent once it is attached cannot be read any earlier.
    await waitTraced(writer.pid, ctx.signal, "gdb");
    sampler = new PlacementSampler(writer.pid);
    sampler.start();
    writer.proc.send("go");
    const done = await waitWriterDone(writer, ctx.signal, deadlineMs(hits, 300));
    const placement = await sampler.stop();
    sampler = undefined;
    await gdb.waitForExit(ctx.signal, 30_000);
    const output = gdb.lines.join("\n");
    const m = /breakpoint already hit (\d+) time/.exec(output);
    if (!m) throw new Error(`gdb printed no hit count: ${output.slice(-1500)} ${gdb.stderrTail.slice(-1500)}`);
    const gdbHits = Number(m[1]);
    return {
      hits: gdbHits,
      seconds: done.ns / 1e9,
      hitsPerSecond: rateOver(gdbHits, done.ns),
      placement,
      ...(gdbHits !== done.writes ? { note: `gdb reported ${gdbHits} hits for ${done.writes} writes (${Math.round(rateOver(done.writes, done.ns))} traps/s)` } : {}),
    };
  } finally {
    await sampler?.stop();
    // The writer first: a gdb killed while the watchpoint is armed would leave it to die of SIGTRAP anyway.
    await writer?.proc.kill();
    await gdb?.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  }
}

/** The writer's own rate for `seconds`, unwatched. */
export async function measureWriterAlone(ctx: CaseContext, threads: number, seconds: number): Promise<number> {
  const writer = await startWriter(ctx.bins.writer, { threads, seconds }, ctx.signal);
  try {
    writer.proc.send("go");
    return (await waitWriterDone(writer, ctx.signal, seconds * 1000 + 30_000)).writesPerSecond;
  } finally {
    await writer.proc.kill();
  }
}

/** The writer's own rate for `seconds` while the helper watches it with a rate limit. */
export async function measureRateLimited(ctx: CaseContext, threads: number, seconds: number, maxHitsPerSecond: number): Promise<RateLimitedResult> {
  const unwatched = await measureWriterAlone(ctx, threads, seconds);
  if (!helperSupportsRateLimit) return { supported: false, reason: "not supported by this helper", unwatchedWritesPerSecond: unwatched };
  const helper = await HelperProcess.start({ path: ctx.helperPath });
  let writer: Writer | undefined;
  const events = helper.events()[Symbol.asyncIterator]();
  try {
    writer = await startWriter(ctx.bins.writer, { threads, seconds }, ctx.signal);
    await armWrite8(helper, writer.pid, GROUP, writer.address, { maxHits: 0n, maxHitsPerSecond });
    let hits = 0;
    let suppressed = 0n;
    const counting = (async () => {
      for (;;) {
        const next = await events.next();
        if (next.done) return;
        const event = next.value;
        if (event.kind === "hits") hits += event.hits.length;
        // The writer exits after `seconds`: its group ends by itself with final counts.
        else if (event.kind === "group-done" && event.group === GROUP) suppressed = event.counts.suppressed;
      }
    })();
    writer.proc.send("go");
    const done = await waitWriterDone(writer, ctx.signal, seconds * 1000 + 60_000);
    await helper.shutdown();
    await counting;
    return {
      supported: true,
      unwatchedWritesPerSecond: unwatched,
      watchedWritesPerSecond: done.writesPerSecond,
      hitsPerSecond: rateOver(hits, done.ns),
      suppressed,
    };
  } finally {
    await helper.shutdown();
    await events.return?.();
    await writer?.proc.kill();
  }
}
