// `fleetwatch jobs get ID`: one job with its targets and their registers.
import type { Command } from "commander";
import type { Job } from "../../proto/index.js";
import type { CliContext, ControllerClient } from "../main.js";
import { outputOption, renderJobDetail, renderJobJson, type OutputFormat } from "../output.js";

// One small unary call.
const deadlineMs = 10_000;

/** Asks the controller for one job (NOT_FOUND when it has none by that id). */
export async function collectJob(client: ControllerClient, id: string): Promise<Job> {
  const response = await client.getJob({ id }, { deadlineMs });
  if (!response.job) throw new Error(`the controller answered GetJob(${id}) without a job`);
  return response.job;
}

/** The job in detail, or as protobuf JSON. */
export function printJob(job: Job, format: OutputFormat): string {
  return format === "json" ? renderJobJson(job) : renderJobDetail(job);
}

/** Adds `get ID` to the `jobs` group. */
export function registerJobsGetCommand(jobs: Command, ctx: CliContext): void {
  jobs
    .command("get")
    .description("show one job")
    .argument("<id>", "job id")
    .addOption(outputOption())
    .action(async (id: string, opts: { output: OutputFormat }) => {
      ctx.stdout.write(printJob(await collectJob(ctx.controller(), id), opts.output));
    });
}
