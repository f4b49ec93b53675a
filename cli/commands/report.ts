// `fleetwatch report JOB`: the job's writers, aggregated from the same
// JetStream replay as `events` (all of it, or from `--since` ago): grouped by
// stack, frame, ip, thread, process, host or value, with the job's counters
// beside the report's own total. `--follow` keeps the report current: one
// screen redrawn in a terminal, a report per refresh otherwise.
import { setTimeout as delay } from "node:timers/promises";
import { Option, type Command } from "commander";
import { isFinalJobState, isSubjectToken, type Job } from "../../proto/index.js";
import { InterruptedError, UsageError } from "../errors.js";
import { readJobEvents } from "../events.js";
import type { CliContext } from "../main.js";
import { parseDuration } from "../output.js";
import { renderReport, reportFormats, reportJson, renderReportTable, type ReportFormat, type WritersReport } from "../report/render.js";
import { WritersAggregator, parseGroupBy, type GroupKind } from "../report/writers.js";
import { collectJob } from "./jobs-get.js";

/** The `report` command line after validation. */
export interface ReportRequest {
  jobId: string;
  by: GroupKind[];
  /** Groups shown (0: all). */
  top: number;
  since?: Date;
  follow: boolean;
  format: ReportFormat;
}

/** How often `--follow` redraws. */
export const followRefreshMs = 1_000;

/** Validates the command line; `nowMs` anchors `--since`. */
export function parseReportArgs(jobId: string, opts: { by?: string; top?: string; since?: string; follow?: boolean; output?: string; format?: string }, nowMs = Date.now()): ReportRequest {
  if (!isSubjectToken(jobId)) throw new UsageError(`job id '${jobId}' is not a job id (letters, digits, _ and - only)`);
  const top = Number(opts.top ?? "20");
  if (!Number.isInteger(top) || top < 0) throw new UsageError(`--top: '${opts.top}' is not a whole number of groups (0 shows all)`);
  // -o names table or json; --format also folded and svg. Both given must agree.
  const output = opts.output as ReportFormat | undefined;
  const format = (opts.format ?? output ?? "table") as ReportFormat;
  if (!reportFormats.includes(format)) throw new UsageError(`--format: '${format}' is not one of ${reportFormats.join(", ")}`);
  if (opts.format !== undefined && output !== undefined && output !== format) throw new UsageError(`-o ${output} and --format ${format} disagree: give one of them`);
  const follow = opts.follow === true;
  if (follow && (format === "folded" || format === "svg")) throw new UsageError(`--follow redraws a table or prints JSON; --format ${format} writes one file: leave out --follow`);
  const request: ReportRequest = { jobId, by: parseGroupBy(opts.by ?? "stack"), top, follow, format };
  if (opts.since !== undefined) request.since = new Date(nowMs - parseDuration(opts.since, "--since"));
  return request;
}

// Clear the screen and home the cursor: one report per screen.
const redraw = "\x1b[H\x1b[2J";

/** Adds `report` to the program. */
export function registerReportCommand(program: Command, ctx: CliContext): void {
  program
    .command("report")
    .description("who writes it: a job's hits aggregated by writer (stack, frame, ip, tid, process, host, value), or as a flame graph")
    .argument("<job>", "job id")
    .option("--by <kinds>", "group by these, comma-separated: stack (default), frame, ip, tid, process, host, value")
    .option("--top <n>", "show the N groups with the most hits (0: all)", "20")
    .option("--since <time>", "only hits from this long ago (500ms, 30s, 10m, 1h)")
    .option("--follow", "keep the report current until Ctrl-C (or until an ended job's hits are all in)")
    .addOption(new Option("-o, --output <format>", "output format").choices(["table", "json"]))
    .addOption(new Option("--format <format>", "table, json, folded (flamegraph.pl / inferno / speedscope input) or svg (a flame graph)").choices([...reportFormats]))
    .action(async (jobId: string, opts: { by?: string; top?: string; since?: string; follow?: boolean; output?: string; format?: string }) => {
      const request = parseReportArgs(jobId, opts);
      // An unknown job fails here, before NATS is asked anything.
      let job = await collectJob(ctx.controller(), request.jobId);
      const aggregator = new WritersAggregator(request.by, request.since === undefined);
      const report = (): WritersReport => ({ job, snapshot: aggregator.snapshot(request.top), ...(request.since ? { since: request.since } : {}) });
      const interrupted = request.follow ? ctx.interrupted() : undefined;
      const reading = new AbortController();
      interrupted?.addEventListener("abort", () => reading.abort(), { once: true });
      const events = (async () => {
        for await (const event of readJobEvents({ natsUrl: ctx.globals().nats, natsCredsPath: ctx.globals().natsCreds, jobId: request.jobId, follow: request.follow, signal: reading.signal, ...(request.since ? { since: request.since } : {}) })) {
          aggregator.add(event);
        }
      })();
      if (!request.follow) {
        await events;
        // The counters of a running job, read after its stream: the closest they come to the report.
        if (!isFinalJobState(job.state)) job = await collectJob(ctx.controller(), request.jobId);
        ctx.stdout.write(renderReport(report(), request.format, request.top));
        return;
      }
      const tty = (ctx.stdout as { isTTY?: boolean }).isTTY === true;
      const print = () => {
        const current = report();
        if (request.format === "json") ctx.stdout.write(JSON.stringify({ atUnixMs: Date.now(), ...reportJson(current) }) + "\n");
        else ctx.stdout.write(tty ? redraw + renderReportTable(current, request.top) : `--- ${new Date().toISOString()}\n${renderReportTable(current, request.top)}`);
      };
      let failure: unknown;
      void events.catch((err: unknown) => {
        failure = err;
        reading.abort();
      });
      try {
        while (!reading.signal.aborted) {
          await delay(followRefreshMs, undefined, { signal: reading.signal }).catch(() => {});
          if (failure) break;
          job = await refreshed(ctx, job);
          print();
          // An ended job whose delivered hits are all in (a counting job: its last reports) has nothing more to come.
          if (isFinalJobState(job.state) && (job.spec?.countOnly || BigInt(aggregator.hits) >= (job.counts?.delivered ?? 0n))) break;
        }
      } finally {
        reading.abort();
        await events.catch(() => {});
      }
      if (failure) throw failure;
      if (interrupted?.aborted) {
        print();
        throw new InterruptedError(`interrupted after ${aggregator.hits} hits`);
      }
    });
}

/** The job as the controller has it now; the last one known while the controller does not answer. */
async function refreshed(ctx: CliContext, job: Job): Promise<Job> {
  try {
    return await collectJob(ctx.controller(), job.id);
  } catch {
    return job;
  }
}
