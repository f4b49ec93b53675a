// `fleetwatch jobs ls`: one page of jobs, newest first, one row each
// (--limit, --state, --continue), and on stderr how to ask for the next page.
import { create } from "@bufbuild/protobuf";
import { Option, type Command } from "commander";
import { JobState, ListJobsResponseSchema, jobStateName, type Job } from "../../proto/index.js";
import { UsageError } from "../errors.js";
import type { CliContext, ControllerClient } from "../main.js";
import { outputOption, renderJobsTable, renderMessageJson, type OutputFormat } from "../output.js";

// A listing is one small unary call; 10 s covers a busy controller.
const deadlineMs = 10_000;

const jobStates = [JobState.PENDING, JobState.ARMED, JobState.DEGRADED, JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED];

/** Which page `jobs ls` asks for. */
export interface JobsQuery {
  /** Jobs per page; 0: the controller's default (100). */
  limit: number;
  /** Empty: every state. */
  states: JobState[];
  /** The previous page's next page token; "" for the newest jobs. */
  pageToken: string;
}

/** What `jobs ls` prints. */
export interface JobsListing {
  jobs: Job[];
  /** "" on the last page. */
  nextPageToken: string;
  /** Jobs matching, over every page. */
  total: number;
}

/** Validates the command line: --limit a whole number of at least 1, --state names of job states (the controller checks the rest). */
export function parseJobsLsArgs(opts: { limit?: string; state?: string; continue?: string }): JobsQuery {
  let limit = 0;
  if (opts.limit !== undefined) {
    limit = Number(opts.limit.trim());
    if (!/^\d+$/.test(opts.limit.trim()) || limit < 1 || !Number.isSafeInteger(limit)) throw new UsageError(`--limit '${opts.limit}' is not a number of jobs: give a whole number from 1 (the controller allows up to 1000 a page)`);
  }
  const states: JobState[] = [];
  for (const name of (opts.state ?? "").split(",").map((s) => s.trim().toLowerCase()).filter((s) => s !== "")) {
    const state = jobStates.find((s) => jobStateName(s) === name);
    if (state === undefined) throw new UsageError(`--state '${name}' is not a job state: use ${jobStates.map(jobStateName).join(", ")} (several comma-separated)`);
    if (!states.includes(state)) states.push(state);
  }
  return { limit, states, pageToken: opts.continue ?? "" };
}

/** Asks the controller for one page of jobs. */
export async function collectJobs(client: ControllerClient, query: JobsQuery): Promise<JobsListing> {
  const response = await client.listJobs(query, { deadlineMs });
  return { jobs: response.jobs, nextPageToken: response.nextPageToken, total: response.total };
}

/** The listing as a table, or as the protobuf JSON of ListJobsResponse (`{"jobs": [...], "nextPageToken": "...", "total": N}`; `{}` when none). */
export function printJobs(listing: JobsListing, format: OutputFormat): string {
  return format === "json" ? renderMessageJson(ListJobsResponseSchema, create(ListJobsResponseSchema, listing)) : renderJobsTable(listing.jobs);
}

/** The line after a table that is not the last page: how many are shown, and the command for the next page. */
export function printNextPage(listing: JobsListing, query: JobsQuery): string | undefined {
  if (!listing.nextPageToken) return undefined;
  const args = ["fleetwatch jobs ls"];
  if (query.limit > 0) args.push(`--limit ${query.limit}`);
  if (query.states.length > 0) args.push(`--state ${query.states.map(jobStateName).join(",")}`);
  args.push(`--continue ${listing.nextPageToken}`);
  return `${listing.jobs.length} of ${listing.total} jobs shown; the next page: ${args.join(" ")}\n`;
}

/** Adds `ls` to the `jobs` group. */
export function registerJobsLsCommand(jobs: Command, ctx: CliContext): void {
  jobs
    .command("ls")
    .description("list jobs, newest first, a page at a time")
    .addOption(new Option("--limit <n>", "jobs per page (the controller's default: 100; at most 1000)"))
    .addOption(new Option("--state <states>", "only jobs in these states, comma-separated: pending, armed, degraded, completed, cancelled, failed"))
    .addOption(new Option("--continue <token>", "the page after the one that printed this token"))
    .addOption(outputOption())
    .action(async (opts: { limit?: string; state?: string; continue?: string; output: OutputFormat }) => {
      const query = parseJobsLsArgs(opts);
      const listing = await collectJobs(ctx.controller(), query);
      ctx.stdout.write(printJobs(listing, opts.output));
      // On stderr: the table stays the jobs only; JSON carries the token itself.
      const next = opts.output === "json" ? undefined : printNextPage(listing, query);
      if (next) ctx.stderr.write(next);
    });
}
