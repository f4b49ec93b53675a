// `fleetwatch events JOB`: replays a job's hits from the JetStream event
// stream (all of them, or from `--since` ago) and stops when caught up, or
// keeps printing new ones with `--follow` until Ctrl-C.
import type { Command } from "commander";
import { isSubjectToken, type HitEvent } from "../../proto/index.js";
import { InterruptedError, UsageError } from "../errors.js";
import { readJobEvents } from "../events.js";
import type { CliContext } from "../main.js";
import { outputOption, parseDuration, renderHitHeader, renderHitJson, renderHitLine, type OutputFormat } from "../output.js";

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

/** Adds `events` to the program. */
export function registerEventsCommand(program: Command, ctx: CliContext): void {
  program
    .command("events")
    .description("replay (and follow) the hits of a job")
    .argument("<job>", "job id")
    .option("--since <time>", "only hits from this long ago (500ms, 30s, 10m, 1h)")
    .option("--follow", "keep printing new hits until Ctrl-C")
    .addOption(outputOption())
    .action(async (jobId: string, opts: { since?: string; follow?: boolean; output: OutputFormat }) => {
      const request = parseEventsArgs(jobId, opts);
      const interrupted = request.follow ? ctx.interrupted() : undefined;
      let printed = 0;
      for await (const hit of readJobEvents({ natsUrl: ctx.globals().nats, natsCredsPath: ctx.globals().natsCreds, ...request, ...(interrupted ? { signal: interrupted } : {}) })) {
        // The header waits for the first hit so failures print nothing on stdout.
        if (printed === 0 && opts.output === "table") ctx.stdout.write(renderHitHeader());
        ctx.stdout.write(printHit(hit, opts.output));
        printed++;
      }
      if (interrupted?.aborted) throw new InterruptedError(`interrupted after ${printed} hits`);
      if (printed === 0 && opts.output === "table") ctx.stdout.write(`no hits for job ${request.jobId}\n`);
    });
}
