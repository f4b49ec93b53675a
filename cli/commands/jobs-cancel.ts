// `fleetwatch jobs cancel ID`: ends a job; the controller disarms its targets
// and answers with the job as it is after the cancel.
import type { Command } from "commander";
import type { Job } from "../../proto/index.js";
import type { CliContext, ControllerClient } from "../main.js";
import { outputOption, renderJobDetail, renderJobJson, type OutputFormat } from "../output.js";

// Cancelling waits for the agents to disarm, which can take a few seconds.
const deadlineMs = 20_000;

/** Cancels one job and returns it as the controller left it. */
export async function cancelJob(client: ControllerClient, id: string): Promise<Job> {
  const response = await client.cancelJob({ id }, { deadlineMs });
  if (!response.job) throw new Error(`the controller answered CancelJob(${id}) without a job`);
  return response.job;
}

/** The cancelled job in detail, or as protobuf JSON. */
export function printCancelledJob(job: Job, format: OutputFormat): string {
  return format === "json" ? renderJobJson(job) : renderJobDetail(job);
}

/** Adds `cancel ID` to the `jobs` group. */
export function registerJobsCancelCommand(jobs: Command, ctx: CliContext): void {
  jobs
    .command("cancel")
    .description("cancel a job and disarm its targets")
    .argument("<id>", "job id")
    .addOption(outputOption())
    .action(async (id: string, opts: { output: OutputFormat }) => {
      ctx.stdout.write(printCancelledJob(await cancelJob(ctx.controller(), id), opts.output));
    });
}
