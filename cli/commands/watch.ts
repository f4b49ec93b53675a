// `fleetwatch watch`: builds a job spec from the command line, validates it
// locally with the shared watch-spec rules, submits it, and either prints the
// armed job or follows it: hits (or, counting, count reports) from JetStream
// until the job ends and every delivered hit (each target's last count) has
// been printed.
import { status } from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import type { Command } from "commander";
import {
  JobSpecSchema,
  WatchSpecSchema,
  RpcError,
  checkJobSpec,
  hex,
  isFinalJobState,
  isSubjectToken,
  jobStateName,
  parseAddress,
  maxStackDepth,
  parseBackend,
  parseCondition,
  parseMode,
  parseSymbol,
  type Job,
  type JobSpec,
  type WatchSpec,
} from "../../proto/index.js";
import { CliError, InterruptedError, UsageError } from "../errors.js";
import { readJobEvents } from "../events.js";
import { printEvent } from "./events.js";
import type { CliContext, ControllerClient } from "../main.js";
import {
  describeCounts,
  formatDuration,
  outputOption,
  parseDuration,
  renderHitHeader,
  renderJobDetail,
  renderJobJson,
  type OutputFormat,
} from "../output.js";

// SubmitJob answers only once every target is armed or refused: symbol
// lookup and attaching to every thread of every target can take a while.
const submitDeadlineMs = 60_000;
// Cancelling waits for the agents to disarm.
const cancelDeadlineMs = 20_000;
// WatchJob is long-lived; each call still gets a deadline and is simply
// re-opened when it passes (the controller resends the job first).
const watchJobDeadlineMs = 10 * 60_000;
// After the job ended, how long the last delivered hits may take to arrive.
const drainTimeoutMs = 30_000;
// A WatchJob stream that ends without a final state this often in a row is broken.
const maxWatchJobRestarts = 3;

/** One `--symbol` or `--address`, in command-line order. */
export type LocationArg = { kind: "symbol"; text: string } | { kind: "address"; text: string };

/** The `watch` command line before validation. */
export interface WatchArgs {
  pid?: string;
  locations: LocationArg[];
  length?: string;
  mode: string;
  maxHits?: string;
  duration?: string;
  hosts: string[];
  exe?: string;
  comm?: string;
  cgroup?: string;
  /** `--selector`: hosts by labels. */
  selector?: string;
  allHosts?: boolean;
  /** `--if` texts. */
  conditions?: string[];
  tids?: string[];
  rate?: string;
  backoff?: string;
  stack?: string;
  /** `--placement all|any|sample:N[:LABEL]`. */
  placement?: string;
  priority?: string;
  queueTimeout?: string;
  lostAfter?: string;
  replaceLost?: boolean;
  /** `--allow-unmapped`: arm --address watches where nothing is mapped yet. */
  allowUnmapped?: boolean;
  /** `--backend ptrace|perf`; unset: the controller chooses. */
  backend?: string;
  /** `--count`: count hits instead of reporting each. */
  count?: boolean;
  countInterval?: string;
}

function parseCount(text: string, option: string, max: bigint): bigint {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${option} '${text}' is not a non-negative integer`);
  const value = BigInt(text.trim());
  if (value > max) throw new UsageError(`${option} ${text} is too large (at most ${max})`);
  return value;
}

/** A job priority: a whole number from -1000 to 1000. */
function parsePriority(text: string): number {
  if (!/^-?\d{1,4}$/.test(text.trim()) || Math.abs(Number(text)) > 1000) throw new UsageError(`--priority '${text}' is not a whole number from -1000 to 1000`);
  return Number(text);
}

/**
 * Turns the command line into a validated JobSpec: one watch per `--symbol`
 * or `--address` in the order given. Throws {@link UsageError} or the
 * proto's WatchSpecError (both exit 3) before anything is sent.
 */
export function buildJobSpec(args: WatchArgs): JobSpec {
  const mode = parseMode(args.mode);
  const length = args.length === undefined ? undefined : Number(parseCount(args.length, "--length", 8n));
  const watches: WatchSpec[] = args.locations.map((location) => {
    if (location.kind === "symbol") {
      const { name, offset } = parseSymbol(location.text);
      const symbol = offset === 0n ? name : `${name}+${hex(offset)}`;
      // 0 asks the agent for the symbol's own size.
      return create(WatchSpecSchema, { location: { case: "symbol", value: symbol }, length: length ?? 0, mode });
    }
    return create(WatchSpecSchema, { location: { case: "address", value: parseAddress(location.text) }, length: length ?? 8, mode });
  });
  for (const host of args.hosts) {
    if (!isSubjectToken(host)) throw new UsageError(`--host '${host}' is not a host id (letters, digits, _ and - only)`);
  }
  const spec = create(JobSpecSchema, {
    watches,
    target: {
      hostIds: args.hosts,
      pid: args.pid === undefined ? 0 : Number(parseCount(args.pid, "--pid", 0xffff_ffffn)),
      exe: args.exe ?? "",
      comm: args.comm ?? "",
      cgroup: args.cgroup ?? "",
      hostSelector: args.selector ?? "",
      allHosts: args.allHosts ?? false,
    },
    maxHits: args.maxHits === undefined ? 0n : parseCount(args.maxHits, "--max-hits", 0xffff_ffff_ffff_ffffn),
    durationMs: args.duration === undefined ? 0n : BigInt(parseDuration(args.duration, "--duration")),
    conditions: (args.conditions ?? []).map(parseCondition),
    tids: (args.tids ?? []).map((t) => Number(parseCount(t, "--tid", 0x7fff_ffffn))),
    maxHitsPerSecond: args.rate === undefined ? 0 : Number(parseCount(args.rate, "--rate", 0xffff_ffffn)),
    backoffMs: args.backoff === undefined ? 0 : parseDuration(args.backoff, "--backoff"),
    ...(args.stack === undefined ? {} : { stackDepth: Number(parseCount(args.stack, "--stack", BigInt(maxStackDepth))) }),
    placement: args.placement ?? "",
    priority: args.priority === undefined ? 0 : parsePriority(args.priority),
    queueTimeoutMs: args.queueTimeout === undefined ? 0n : BigInt(parseDuration(args.queueTimeout, "--queue-timeout")),
    lostAfterMs: args.lostAfter === undefined ? 0n : BigInt(parseDuration(args.lostAfter, "--lost-after")),
    replaceLost: args.replaceLost ?? false,
    allowUnmapped: args.allowUnmapped ?? false,
    ...(args.backend === undefined ? {} : { backend: parseBackend(args.backend) }),
    countOnly: args.count ?? false,
    countIntervalMs: args.countInterval === undefined ? 0n : BigInt(parseDuration(args.countInterval, "--count-interval")),
  });
  checkJobSpec(spec);
  return spec;
}

/** Submits the spec; resolves once the controller armed every target. */
export async function submitJob(client: ControllerClient, spec: JobSpec, signal?: AbortSignal): Promise<Job> {
  const response = await client.submitJob({ spec }, { deadlineMs: submitDeadlineMs, ...(signal ? { signal } : {}) });
  if (!response.job) throw new Error("the controller answered SubmitJob without a job");
  return response.job;
}

/** The submitted job in detail, or as protobuf JSON. */
export function printSubmitted(job: Job, format: OutputFormat): string {
  return format === "json" ? renderJobJson(job) : renderJobDetail(job);
}

/** The last line of a table-mode follow. */
export function printFollowSummary(job: Job, printed: number): string {
  const reason = job.reason ? ` (${job.reason})` : "";
  return `job ${job.id} ${jobStateName(job.state)}${reason}: ${printed} hits printed; ${describeCounts(job.counts)}\n`;
}

/** The last line of a table-mode follow of a counting job. */
export function printCountFollowSummary(job: Job, reports: number): string {
  const reason = job.reason ? ` (${job.reason})` : "";
  const targets = job.targets.filter((t) => (t.counts?.trapped ?? 0n) > 0n || t.threadsTotal > 0).length;
  return `job ${job.id} ${jobStateName(job.state)}${reason}: ${reports} count reports printed; counted ${job.counts?.delivered ?? 0n} hits on ${targets} ${targets === 1 ? "target" : "targets"}; ${describeCounts(job.counts)}\n`;
}

/** Targets of a final counting job whose last count (by trapped) has not been printed yet. */
function countsBehind(job: Job, printedTrapped: ReadonlyMap<string, bigint>): number {
  return job.targets.filter((t) => (t.counts?.trapped ?? 0n) > (printedTrapped.get(`${t.hostId}/${t.pid}`) ?? 0n)).length;
}

/**
 * Follows WatchJob until the job is final and returns it; re-opens the
 * stream when its deadline passes. Rejects with the abort reason when
 * `signal` aborts.
 */
export async function waitForFinalState(client: ControllerClient, id: string, signal: AbortSignal, onChange?: (job: Job) => void): Promise<Job> {
  let restarts = 0;
  for (;;) {
    let received = 0;
    try {
      for await (const response of client.watchJob({ id }, { deadlineMs: watchJobDeadlineMs, signal })) {
        received++;
        if (response.job) onChange?.(response.job);
        if (response.job && isFinalJobState(response.job.state)) return response.job;
      }
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      // Re-open when the call's own deadline passed, or when the leader's term
      // ended under it (the failover client then finds the next leader).
      const reopen = err instanceof RpcError && ((err.code === status.DEADLINE_EXCEEDED && received > 0) || err.code === status.UNAVAILABLE);
      if (!reopen) throw err;
      if (err.code === status.UNAVAILABLE && ++restarts > maxWatchJobRestarts * 10) throw err;
      if (err.code === status.DEADLINE_EXCEEDED) restarts = 0;
      else await new Promise((resolve) => setTimeout(resolve, 200));
      continue;
    }
    if (signal.aborted) throw signal.reason;
    restarts = received > 0 ? restarts + 1 : maxWatchJobRestarts;
    if (restarts >= maxWatchJobRestarts) throw new CliError(`the controller ended WatchJob(${id}) before the job reached a final state`);
  }
}

/** Why a follow ended early. */
class FollowStopped extends Error {
  override readonly name = "FollowStopped";
}

async function followJob(ctx: CliContext, job: Job, format: OutputFormat, interrupted: AbortSignal): Promise<void> {
  const client = ctx.controller();
  // `session` ends everything (interrupt or a failure); `caughtUp` ends only
  // the reader once every delivered hit was printed or the drain timed out.
  const session = new AbortController();
  const caughtUp = new AbortController();
  const onInterrupt = () => session.abort(new FollowStopped("interrupted"));
  // Ctrl-C while SubmitJob was still arming counts too: the job now exists and is cancelled.
  if (interrupted.aborted) onInterrupt();
  else interrupted.addEventListener("abort", onInterrupt, { once: true });
  let failure: unknown;
  const fail = (err: unknown) => {
    failure ??= err;
    session.abort(new FollowStopped("failed"));
  };

  const counting = job.spec?.countOnly ?? false;
  let printed = 0;
  let expected: number | undefined;
  // Counting: the latest totals printed per target; the follow is caught up once they reach each target's final counts.
  let reports = 0;
  const printedTrapped = new Map<string, bigint>();
  let final: Job | undefined;
  const isCaughtUp = (): boolean => (counting ? final !== undefined && countsBehind(final, printedTrapped) === 0 : expected !== undefined && printed >= expected);
  const reader = (async () => {
    const events = readJobEvents({
      natsUrl: ctx.globals().nats,
      natsCredsPath: ctx.globals().natsCreds,
      jobId: job.id,
      follow: true,
      signal: AbortSignal.any([session.signal, caughtUp.signal]),
    });
    for await (const event of events) {
      ctx.stdout.write(printEvent(event, format));
      if (event.kind === "hit") {
        printed++;
      } else {
        const report = event.report;
        reports++;
        const key = `${report.hostId}/${report.pid}`;
        const trapped = report.totals?.trapped ?? 0n;
        if (trapped > (printedTrapped.get(key) ?? 0n)) printedTrapped.set(key, trapped);
      }
      if (isCaughtUp()) caughtUp.abort();
    }
    if (!session.signal.aborted && !caughtUp.signal.aborted) throw new CliError(`the event stream of job ${job.id} ended before the job did`);
  })().catch(fail);

  let drainTimer: NodeJS.Timeout | undefined;
  let drainTimedOut = false;
  try {
    try {
      // Queued, placed, preempted, degraded: said on stderr as it happens (hits own stdout).
      let said = `${job.state} ${job.reason}`;
      final = await waitForFinalState(client, job.id, session.signal, (j) => {
        const now = `${j.state} ${j.reason}`;
        if (now === said || isFinalJobState(j.state)) return;
        said = now;
        ctx.stderr.write(`fleetwatch: job ${j.id} ${jobStateName(j.state)}${j.reason ? ` (${j.reason})` : ""}
`);
      });
    } catch (err) {
      if (!session.signal.aborted) fail(err);
    }
    if (final) {
      // A counting job's delivered are hits counted, not events: it waits for each target's last report instead.
      expected = counting ? 0 : Number(final.counts?.delivered ?? 0n);
      if (isCaughtUp()) {
        caughtUp.abort();
      } else {
        drainTimer = setTimeout(() => {
          drainTimedOut = true;
          caughtUp.abort();
        }, drainTimeoutMs);
      }
    }
    await reader;
  } finally {
    clearTimeout(drainTimer);
    interrupted.removeEventListener("abort", onInterrupt);
  }

  if (interrupted.aborted) {
    const cancelled = await client.cancelJob({ id: job.id }, { deadlineMs: cancelDeadlineMs }).then(
      () => `cancelled job ${job.id}`,
      (err: unknown) => `could not cancel job ${job.id}: ${err instanceof RpcError ? err.details || err.codeName : String(err)}`,
    );
    throw new InterruptedError(`interrupted after ${counting ? `${reports} count reports` : `${printed} hits`}; ${cancelled}`);
  }
  if (failure !== undefined) throw failure;
  if (!final || expected === undefined) throw new CliError(`lost track of job ${job.id}`);
  if (counting) {
    // The final counts are in the summary either way: a last report that did not come is said, not fatal.
    const behind = countsBehind(final, printedTrapped);
    if (behind > 0) ctx.stderr.write(`fleetwatch: the last count report of ${behind} target(s) did not arrive within ${formatDuration(drainTimeoutMs)}; the summary has their final counts\n`);
    if (format === "table") ctx.stdout.write(printCountFollowSummary(final, reports));
    return;
  }
  if (printed < expected) {
    const waited = drainTimedOut ? ` within ${formatDuration(drainTimeoutMs)}` : "";
    throw new CliError(`job ${job.id} delivered ${expected} hits but ${printed} arrived from the event stream${waited}: ${expected - printed} missing`);
  }
  if (format === "table") ctx.stdout.write(printFollowSummary(final, printed));
}

/** What commander hands the `watch` action. */
interface WatchOptions {
  pid?: string;
  exe?: string;
  comm?: string;
  cgroup?: string;
  selector?: string;
  allHosts?: boolean;
  length?: string;
  mode: string;
  maxHits?: string;
  duration?: string;
  host?: string[];
  if?: string[];
  tid?: string[];
  rate?: string;
  backoff?: string;
  stack?: string;
  placement?: string;
  priority?: string;
  queueTimeout?: string;
  lostAfter?: string;
  replaceLost?: boolean;
  allowUnmapped?: boolean;
  backend?: string;
  count?: boolean;
  countInterval?: string;
  follow?: boolean;
  output: OutputFormat;
}

/** Adds `watch` to the program. */
export function registerWatchCommand(program: Command, ctx: CliContext): void {
  const locations: LocationArg[] = [];
  program
    .command("watch")
    .description("watch variables in a process with hardware watchpoints")
    .option("--pid <pid>", "process to watch on each selected host")
    .option("--exe <path>", "watch every process running this executable")
    .option("--comm <name>", "watch every process with this command name (15 bytes at most, as in /proc/PID/comm)")
    .option("--cgroup <path>", "watch every process in this cgroup v2 directory or below (a container)")
    .option("--selector <expr>", "hosts by labels, e.g. 'role=db,zone in (a,b)'")
    .option("--all-hosts", "every connected host")
    // Both record into one list so watch indexes follow the command line.
    .option("--symbol <name[+off]>", "watch a symbol (repeatable)", (text: string) => {
      locations.push({ kind: "symbol", text });
      return text;
    })
    .option("--address <0xaddr>", "watch an address (repeatable)", (text: string) => {
      locations.push({ kind: "address", text });
      return text;
    })
    .option("--length <bytes>", "width of every watch: 1, 2, 4 or 8 (default: symbol size, 8 for addresses)")
    .option("--allow-unmapped", "arm --address watches even where nothing is mapped in a target yet (memory it maps later); without it such a target is refused")
    .option("--mode <mode>", "w (writes), rw (reads and writes), r (reads: rw reported only when the value is unchanged) or x (execute)", "w")
    .option("--if <condition>", "report only hits whose new value passes: changed, unchanged, 'value == 5', '> 0x10' (repeatable, all must hold)", (text: string, all: string[] = []) => [...all, text])
    .option("--tid <tid...>", "report only these threads")
    .option("--rate <hits/s>", "per target: above this rate the registers are cleared for --backoff and the target runs at full speed")
    .option("--backoff <time>", "how long a rate-limited watch stays disarmed (default 1s)")
    .option("--stack <frames>", "symbolized stack frames per hit, 0 for none (default 16)")
    .option("--max-hits <n>", "stop after this many delivered hits")
    .option("--duration <time>", "stop after this long (500ms, 30s, 10m, 1h)")
    .option("--host <id...>", "hosts by agent host id (default: the only agent)")
    .option("--placement <mode>", "which matching targets: all (every one or none), any (every one that fits; default), sample:N or sample:N:LABEL (N spread over hosts, or over a host label's values)")
    .option("--priority <n>", "from -1000 to 1000 (default 0): a job preempts strictly lower ones on full targets; equal priorities queue first come, first served")
    .option("--queue-timeout <time>", "wait this long in the queue for debug registers instead of being refused (for --placement all: the whole gang)")
    .option("--lost-after <time>", "how long a host may be silent before its targets are lost and disarmed there (default: the controller's session lease)")
    .option("--replace-lost", "with --placement sample:N: give up a lost target and watch a matching process on another host instead")
    .option(
      "--backend <backend>",
      "how targets are armed: perf (the target never stops and is never signalled, its breakpoints die with the helper however it dies; values are read in the kernel at the trap where the host loads BPF, else after it; the default unless --if or --mode r need a stop) or ptrace (each trap handled while the writing thread is stopped: exact old and new values, --if conditions, --mode r; jobs watching the same variable share a register)",
    )
    .option("--count", "count hits per target and thread instead of reporting each one (perf; no --if, --mode r or --rate)")
    .option("--count-interval <time>", "with --count: how often each target's counts are reported, 10ms to 1h (default 1s)")
    .option("--follow", "print hits (with --count: each target's counts every interval) as they arrive until the job ends")
    .addOption(outputOption())
    .action(async (opts: WatchOptions) => {
      const spec = buildJobSpec({ ...opts, locations, hosts: opts.host ?? [], conditions: opts.if ?? [], tids: opts.tid ?? [] });
      if (!opts.follow) {
        ctx.stdout.write(printSubmitted(await submitJob(ctx.controller(), spec), opts.output));
        return;
      }
      const interrupted = ctx.interrupted();
      const job = await submitJob(ctx.controller(), spec);
      // Only table output may carry anything besides hits on stdout; count lines name their columns themselves.
      if (opts.output === "table") ctx.stdout.write(`${printSubmitted(job, "table")}\n${spec.countOnly ? "" : renderHitHeader()}`);
      else ctx.stderr.write(`fleetwatch: following job ${job.id}\n`);
      await followJob(ctx, job, opts.output, interrupted);
    });
}
