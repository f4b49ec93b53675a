// `fleetwatch events JOB`: replays a job's hits (or a counting job's count
// reports) from the JetStream event stream (all of them, or from `--since`
// ago) and stops when caught up, or keeps printing new ones with `--follow`
// until Ctrl-C.
import type { Command } from "commander";
import { isSubjectToken, type HitEvent } from "../../proto/index.js";
import { InterruptedError, UsageError } from "../errors.js";
import { readJobEvents, type JobEvent } from "../events.js";
import type { CliContext } from "../main.js";
import { outputOption, parseDuration, renderCountJson, renderCountLine, renderHitHeader, renderHitJson, renderHitLine, type OutputFormat } from "../output.js";

/** The `events` command line after validation. */
export interface EventsRequest {
  jobId: string;
  /** Start here instead of the start of the stream. */
  since?: Date;
  follow: boolean;
}

/** Validates the command line; `nowMs` anchors `--since`. */
export function parseEventsArgs(jobId: string, opts: { since?: string; follow?: boolean }, nowMs = Date.now()): EventsRequest {
  // The id becomes a subject token of the filter: a `*` or `.` would match other jobs.
  if (!isSubjectToken(jobId)) throw new UsageError(`job id '${jobId}' is not a job id (letters, digits, _ and - only)`);
  const request: EventsRequest = { jobId, follow: opts.follow === true };
  if (opts.since !== undefined) request.since = new Date(nowMs - parseDuration(opts.since, "--since"));
  return request;
}

/** One hit as the chosen format prints it. */
export function printHit(hit: HitEvent, format: OutputFormat): string {
  return format === "json" ? renderHitJson(hit) : renderHitLine(hit);
}

/** One hit or count report as the chosen format prints it (count lines need no header: they name what they count). */
export function printEvent(event: JobEvent, format: OutputFormat): string {
  if (event.kind === "hit") return printHit(event.hit, format);
  return format === "json" ? renderCountJson(event.report) : renderCountLine(event.report);
}

/** Adds `events` to the program. */
export function registerEventsCommand(program: Command, ctx: CliContext): void {
  program
    .command("events")
    .description("replay (and follow) the hits of a job, or a counting job's count reports")
    .argument("<job>", "job id")
    .option("--since <time>", "only events from this long ago (500ms, 30s, 10m, 1h)")
    .option("--follow", "keep printing new events until Ctrl-C")
    .addOption(outputOption())
    .action(async (jobId: string, opts: { since?: string; follow?: boolean; output: OutputFormat }) => {
      const request = parseEventsArgs(jobId, opts);
      const interrupted = request.follow ? ctx.interrupted() : undefined;
      let hits = 0;
      let reports = 0;
      for await (const event of readJobEvents({ natsUrl: ctx.globals().nats, natsCredsPath: ctx.globals().natsCreds, ...request, ...(interrupted ? { signal: interrupted } : {}) })) {
        // The header waits for the first hit so failures print nothing on stdout.
        if (event.kind === "hit" && hits === 0 && opts.output === "table") ctx.stdout.write(renderHitHeader());
        ctx.stdout.write(printEvent(event, opts.output));
        if (event.kind === "hit") hits++;
        else reports++;
      }
      const printed = reports > 0 ? `${hits} hits and ${reports} count reports` : `${hits} hits`;
      if (interrupted?.aborted) throw new InterruptedError(`interrupted after ${printed}`);
      if (hits + reports === 0 && opts.output === "table") ctx.stdout.write(`no hits for job ${request.jobId}\n`);
    });
}
