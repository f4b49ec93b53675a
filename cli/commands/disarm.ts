// `fleetwatch disarm --all`: the kill switch (admin). Every connected agent
// clears every debug register it holds and every active job is cancelled;
// prints which agents confirmed and how long each took.
import { toJson } from "@bufbuild/protobuf";
import type { Command } from "commander";
import { DisarmAllResponseSchema, type DisarmAllResponse } from "../../proto/index.js";
import { CliError, UsageError } from "../errors.js";
import type { CliContext, ControllerClient } from "../main.js";
import { outputOption, renderTable, type OutputFormat } from "../output.js";

// The controller waits up to 10 s for each agent, then cancels the jobs.
const deadlineMs = 60_000;

/** Pulls the switch. */
export async function disarmAll(client: ControllerClient, reason: string): Promise<DisarmAllResponse> {
  return client.disarmAll({ reason }, { deadlineMs });
}

/** Connected agents that did not confirm (not-connected ones clear their registers at their lease). */
export function unconfirmed(response: DisarmAllResponse): string[] {
  return response.agents.filter((a) => a.connected && !a.confirmed).map((a) => a.hostId);
}

/** Each agent's answer, then the totals. */
export function printDisarmAll(response: DisarmAllResponse, format: OutputFormat): string {
  if (format === "json") return `${JSON.stringify(toJson(DisarmAllResponseSchema, response))}\n`;
  const table = renderTable(
    ["HOST", "CONFIRMED", "DISARMED", "AFTER", "NOTE"],
    response.agents.map((a) => [a.hostId, a.confirmed ? "yes" : "no", a.confirmed ? String(a.disarmed) : "-", a.confirmed ? `${a.confirmedAfterMs} ms` : "-", a.error]),
  );
  const connected = response.agents.filter((a) => a.connected);
  return `${table}${connected.filter((a) => a.confirmed).length}/${connected.length} connected agents confirmed in ${response.allConfirmedAfterMs} ms; ${response.cancelledJobIds.length} job(s) cancelled\n`;
}

/** Adds `disarm` to the program. */
export function registerDisarmCommand(program: Command, ctx: CliContext): void {
  program
    .command("disarm")
    .description("the kill switch (admin): clear every debug register fleet-wide and cancel every active job")
    .option("--all", "every agent, every job (required: there is no narrower disarm; cancel one job with `jobs cancel`)")
    .option("--reason <text>", "why, for the audit trail and the jobs' reasons")
    .addOption(outputOption())
    .action(async (opts: { all?: boolean; reason?: string; output: OutputFormat }) => {
      if (!opts.all) throw new UsageError("disarm needs --all: it clears every register fleet-wide (one job: `fleetwatch jobs cancel ID`)");
      const response = await disarmAll(ctx.controller(), opts.reason ?? "");
      ctx.stdout.write(printDisarmAll(response, opts.output));
      const missing = unconfirmed(response);
      if (missing.length > 0) throw new CliError(`${missing.length} connected agent(s) did not confirm: ${missing.join(", ")}`);
    });
}
