// `fleetwatch agents ls`: every host with its agent's state and, for each
// watched process, what holds each of the four debug registers.
import { create } from "@bufbuild/protobuf";
import type { Command } from "commander";
import { ListAgentsResponseSchema, type Agent } from "../../proto/index.js";
import type { CliContext, ControllerClient } from "../main.js";
import { outputOption, renderAgentsTable, renderMessageJson, type OutputFormat } from "../output.js";

// One small unary call.
const deadlineMs = 10_000;

/** What `agents ls` prints; `nowMs` makes "last seen" ages reproducible. */
export interface AgentsListing {
  agents: Agent[];
  nowMs: number;
}

/** Asks the controller for its inventory. */
export async function collectAgents(client: ControllerClient, nowMs = Date.now()): Promise<AgentsListing> {
  const response = await client.listAgents({}, { deadlineMs });
  return { agents: response.agents, nowMs };
}

/** The hosts and slot maps as tables, or as the protobuf JSON of ListAgentsResponse (`{"agents": [...]}`). */
export function printAgents(listing: AgentsListing, format: OutputFormat): string {
  return format === "json" ? renderMessageJson(ListAgentsResponseSchema, create(ListAgentsResponseSchema, { agents: listing.agents })) : renderAgentsTable(listing.agents, listing.nowMs);
}

/** Adds `ls` to the `agents` group. */
export function registerAgentsLsCommand(agents: Command, ctx: CliContext): void {
  agents
    .command("ls")
    .description("list agents and their DR0-DR3 slot maps")
    .addOption(outputOption())
    .action(async (opts: { output: OutputFormat }) => {
      ctx.stdout.write(printAgents(await collectAgents(ctx.controller()), opts.output));
    });
}
