// `fleetwatch certs init|issue`: a CA and the certificates of a fleet in one
// directory. `init` makes the CA, the controller's certificate and any agents'
// and users' named; `issue` adds more under an existing CA. Each party also
// gets a NATS nkey seed, and nats-auth.conf (the server's list of parties and
// their permissions) is rewritten to include it.
import { existsSync } from "node:fs";
import path from "node:path";
import type { Command } from "commander";
import { isSubjectToken, type Identity } from "../../proto/index.js";
import { caCertFile, caKeyFile, certificateBaseName } from "../certificate-files.js";
import type { CertificateAuthority } from "../certificates.js";
import { UsageError } from "../errors.js";
import { natsAuthFile, natsSeedFile, writeNatsAuthConfig, writeNatsSeed } from "../nats-credentials.js";
import type { CliContext } from "../main.js";
import { formatTime, outputOption, renderTable, type OutputFormat } from "../output.js";

/** One file written, for the summary. */
export interface WrittenCertificate {
  identity: string;
  cert: string;
  key: string;
  /** The party's NATS nkey seed (none for the CA). */
  natsSeed?: string;
  notAfterUnixMs: number;
}

/** What to issue, after validation. */
export interface IssueRequest {
  dir: string;
  identities: Identity[];
  days: number;
}

const userName = /^[A-Za-z0-9_.@-]+$/;

/** The certificate library: loaded by the commands that issue, not by every start of the CLI (it is a third of it). */
const certificates = () => import("../certificates.js");

function parseDays(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const days = Number(text);
  if (!Number.isInteger(days) || days < 1 || days > 3650) throw new UsageError(`--days '${text}' must be a whole number of days from 1 to 3650`);
  return days;
}

/** Validates the names given to init or issue. */
export function parseIssueRequest(opts: { dir: string; agent?: string[]; user?: string[]; controller?: boolean; days?: string }, defaults: { controller: boolean }): IssueRequest {
  const identities: Identity[] = [];
  if (opts.controller ?? defaults.controller) identities.push({ kind: "controller", name: "controller" });
  for (const host of opts.agent ?? []) {
    if (!isSubjectToken(host)) throw new UsageError(`--agent '${host}' must be a host id: letters, digits, _ and -`);
    identities.push({ kind: "agent", name: host });
  }
  for (const user of opts.user ?? []) {
    if (!userName.test(user)) throw new UsageError(`--user '${user}' may hold only letters, digits, _ . @ and -`);
    identities.push({ kind: "user", name: user });
  }
  if (identities.length === 0) throw new UsageError("nothing to issue: name --controller, --agent HOST or --user NAME");
  return { dir: opts.dir, identities, days: parseDays(opts.days, 365) };
}

/**
 * Issues each identity under the CA and writes it, with its NATS seed, next
 * to the CA; then rewrites nats-auth.conf to name every party there.
 */
export async function issueAll(ca: CertificateAuthority, request: IssueRequest): Promise<WrittenCertificate[]> {
  // Checked before writing anything: a name issued before stops the whole request, not half of it.
  for (const identity of request.identities) {
    const seed = natsSeedFile(request.dir, identity);
    if (existsSync(seed)) throw new UsageError(`${seed} exists already: remove ${certificateBaseName(identity)}.* first to issue it again`);
  }
  const { issueCertificate, writeIssued } = await certificates();
  const written: WrittenCertificate[] = [];
  for (const identity of request.identities) {
    const issued = await issueCertificate(ca, identity, { days: request.days });
    const files = await writeIssued(request.dir, issued, certificateBaseName(identity));
    const seed = await writeNatsSeed(request.dir, identity);
    written.push({ identity: `${identity.kind} ${identity.name}`, ...files, natsSeed: seed.path, notAfterUnixMs: issued.notAfter.getTime() });
  }
  await writeNatsAuthConfig(request.dir);
  return written;
}

/** The files written: a table, or JSON lines. */
export function printWritten(written: readonly WrittenCertificate[], format: OutputFormat): string {
  if (format === "json") return written.map((w) => JSON.stringify(w)).join("\n") + "\n";
  return renderTable(["IDENTITY", "CERTIFICATE", "KEY", "NATS SEED", "VALID UNTIL"], written.map((w) => [w.identity, w.cert, w.key, w.natsSeed ?? "-", formatTime(w.notAfterUnixMs)]));
}

/** Adds `certs init` and `certs issue` to the program. */
export function registerCertsCommand(program: Command, ctx: CliContext): void {
  const certs = program.command("certs").description(`create a CA and the certificates of controllers, agents and users (mutual TLS), their NATS nkey seeds and ${natsAuthFile}`);
  certs
    .command("init")
    .description("create a CA and, under it, the controller's certificate and those of the agents and users named")
    .requiredOption("--dir <dir>", "directory to write to (created; the CA key stays in it)")
    .option("--agent <host...>", "issue an agent certificate for this host id (repeatable)")
    .option("--user <name...>", "issue a user certificate (repeatable; default: admin)")
    .option("--days <n>", "validity of the certificates (the CA: 10 years)", "365")
    .addOption(outputOption())
    .action(async (opts: { dir: string; agent?: string[]; user?: string[]; days?: string; output: OutputFormat }) => {
      const request = parseIssueRequest({ ...opts, user: opts.user ?? ["admin"] }, { controller: true });
      if (existsSync(path.join(request.dir, caKeyFile))) throw new UsageError(`${request.dir} already holds a CA: issue more certificates under it with \`fleetwatch certs issue --dir ${request.dir}\``);
      const { createAuthority, writeIssued } = await certificates();
      const ca = await createAuthority();
      await writeIssued(request.dir, ca, "ca");
      const written = await issueAll(ca, request);
      ctx.stdout.write(printWritten([{ identity: "CA", cert: path.join(request.dir, caCertFile), key: path.join(request.dir, caKeyFile), notAfterUnixMs: new Date(ca.cert.notAfter).getTime() }, ...written], opts.output));
    });
  certs
    .command("issue")
    .description("issue more certificates under the CA in --dir")
    .requiredOption("--dir <dir>", `directory holding ${caCertFile} and ${caKeyFile}`)
    .option("--controller", "issue the controller's certificate")
    .option("--agent <host...>", "issue an agent certificate for this host id (repeatable)")
    .option("--user <name...>", "issue a user certificate (repeatable)")
    .option("--days <n>", "validity", "365")
    .addOption(outputOption())
    .action(async (opts: { dir: string; controller?: boolean; agent?: string[]; user?: string[]; days?: string; output: OutputFormat }) => {
      const request = parseIssueRequest(opts, { controller: false });
      const ca = await (await certificates()).readAuthority(request.dir);
      ctx.stdout.write(printWritten(await issueAll(ca, request), opts.output));
    });
}
