// `fleetwatch audit [--since 1h]`: the audit trail (admin): every submit,
// cancel and kill switch with who, what, where and how it ended, and every
// request denied with the rule that denied it.
import { toJson } from "@bufbuild/protobuf";
import type { Command } from "commander";
import { AuditRecordSchema, maxAuditRecords, type AuditRecord } from "../../proto/index.js";
import type { CliContext, ControllerClient } from "../main.js";
import { formatTime, outputOption, parseDuration, renderTable, type OutputFormat } from "../output.js";

/** Records from `sinceMs` ago (or all), oldest first. */
export async function listAudit(client: ControllerClient, sinceUnixMs: number): Promise<AuditRecord[]> {
  return (await client.listAudit({ sinceUnixMs: BigInt(sinceUnixMs) })).records;
}

/** A table, or one JSON object per line. */
export function printAudit(records: readonly AuditRecord[], format: OutputFormat): string {
  if (format === "json") return records.map((r) => `${JSON.stringify(toJson(AuditRecordSchema, r))}\n`).join("");
  if (records.length === 0) return "no audit records\n";
  return renderTable(
    ["TIME", "WHO", "ACTION", "JOB", "RESULT", "DETAILS"],
    records.map((r) => [formatTime(r.timeUnixMs), r.who || "-", r.action, r.jobId || "-", r.result, [r.what, r.where.join(" "), r.reason].filter(Boolean).join("; ")]),
  );
}

/** Adds `audit` to the program. */
export function registerAuditCommand(program: Command, ctx: CliContext): void {
  program
    .command("audit")
    .description("the audit trail (admin): submits, cancels, kill switches and denials")
    .option("--since <time>", "only records from this long ago (30s, 10m, 1h, 7d)")
    .addOption(outputOption())
    .action(async (opts: { since?: string; output: OutputFormat }) => {
      const since = opts.since === undefined ? 0 : Date.now() - parseDuration(opts.since, "--since");
      const records = await listAudit(ctx.controller(), since);
      ctx.stdout.write(printAudit(records, opts.output));
      // The controller answers with the oldest maxAuditRecords at most.
      if (records.length >= maxAuditRecords) ctx.stderr.write(`fleetwatch: the first ${records.length} records only: ask for the rest with a later --since\n`);
    });
}
