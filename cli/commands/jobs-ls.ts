// `fleetwatch jobs ls`: every job the controller knows, one row each.
import { create } from "@bufbuild/protobuf";
import type { Command } from "commander";
import { ListJobsResponseSchema, type Job } from "../../proto/index.js";
import type { CliContext, ControllerClient } from "../main.js";
import { outputOption, renderJobsTable, renderMessageJson, type OutputFormat } from "../output.js";

// A listing is one small unary call; 10 s covers a busy controller.
const deadlineMs = 10_000;

/** What `jobs ls` prints. */
export interface JobsListing {
  jobs: Job[];
}

/** Asks the controller for every job. */
export async function collectJobs(client: ControllerClient): Promise<JobsListing> {
  const response = await client.listJobs({}, { deadlineMs });
  return { jobs: response.jobs };
}

/** The listing as a table, or as the protobuf JSON of ListJobsResponse (`{"jobs": [...]}`, `{}` when none). */
export function printJobs(listing: JobsListing, format: OutputFormat): string {
  return format === "json" ? renderMessageJson(ListJobsResponseSchema, create(ListJobsResponseSchema, { jobs: listing.jobs })) : renderJobsTable(listing.jobs);
}

/** Adds `ls` to the `jobs` group. */
export function registerJobsLsCommand(jobs: Command, ctx: CliContext): void {
  jobs
    .command("ls")
    .description("list jobs")
    .addOption(outputOption())
    .action(async (opts: { output: OutputFormat }) => {
      ctx.stdout.write(printJobs(await collectJobs(ctx.controller()), opts.output));
    });
}
