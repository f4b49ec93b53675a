// `fleetwatch agent`: runs this host's agent in the foreground until
// SIGINT/SIGTERM, then disarms everything and stops. Log lines go to stderr.
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import type { Command } from "commander";
import { isSubjectToken, parseAddressList, type MetricsListen } from "../../proto/index.js";
import { DaemonStartError, UsageError } from "../errors.js";
import type { CliContext } from "../main.js";
import { untilAborted } from "../abort.js";
import { createDaemonLog, logOptions, resolveLogFormat, type LogLevel } from "../daemon-log.js";
import { parseMetricsFlag, printMetricsReady, warnIfExposed } from "../metrics-flag.js";
import { resolveTransport } from "../transport.js";

/** The `agent` command line after validation. */
export interface AgentRequest {
  controller: string;
  natsUrl: string;
  /** The agent's NATS nkey seed file. */
  natsCredsPath?: string;
  hostId: string;
  labels: Record<string, string>;
  helperPath?: string;
  /** --perf-buffer, in KiB. */
  perfBufferKiB?: number;
  /** The host policy file, absolute (it is read again on reload, whatever the working directory). */
  policyPath?: string;
  /** Where /metrics, /healthz and /readyz are served; unset: not served. */
  metricsListen?: MetricsListen;
}

/** Parses `k=v` labels; the key must be non-empty, the value may be. */
export function parseLabels(texts: readonly string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const text of texts) {
    const at = text.indexOf("=");
    if (at <= 0) throw new UsageError(`--label '${text}' is not key=value`);
    labels[text.slice(0, at)] = text.slice(at + 1);
  }
  return labels;
}

/** Labels from a file, one `k=v` per line (blank lines and `#` comments skipped), e.g. a Kubernetes node's labels. */
export function readLabelFile(path: string): Record<string, string> {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    throw new UsageError(`--label-file ${path}: ${(err as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : String(err)}`);
  }
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
  try {
    return parseLabels(lines);
  } catch (err) {
    throw new UsageError(`--label-file ${path}: ${(err as Error).message.replace(/^--label /, "line ")}`);
  }
}

/**
 * A perf ring buffer size per CPU: `8MiB`, `512KiB` or KiB as a number; a
 * power of two from 64 KiB to 256 MiB (the kernel maps a power of two pages).
 */
export function parsePerfBuffer(text: string): number {
  const m = /^(\d+)\s*(KiB|MiB|K|M)?$/i.exec(text.trim());
  const kib = m ? Number(m[1]) * (/^m/i.test(m[2] ?? "") ? 1024 : 1) : NaN;
  if (!Number.isSafeInteger(kib) || kib < 64 || kib > 262_144 || (kib & (kib - 1)) !== 0) {
    throw new UsageError(`--perf-buffer '${text}' is not a power of two from 64KiB to 256MiB (e.g. 2MiB, 8MiB)`);
  }
  return kib;
}

/** Validates the command line; --label wins over the same key in --label-file. */
export function parseAgentArgs(opts: { hostId: string; label?: string[]; labelFile?: string; helper?: string; policy?: string; perfBuffer?: string; metricsListen?: string }, globals: { controller: string; nats: string; natsCreds?: string | undefined }): AgentRequest {
  if (!isSubjectToken(opts.hostId)) throw new UsageError(`--host-id '${opts.hostId}' may hold only letters, digits, _ and -`);
  const labels = { ...(opts.labelFile ? readLabelFile(opts.labelFile) : {}), ...parseLabels(opts.label ?? []) };
  const request: AgentRequest = { controller: globals.controller, natsUrl: globals.nats, hostId: opts.hostId, labels };
  if (globals.natsCreds !== undefined) request.natsCredsPath = resolve(globals.natsCreds);
  if (opts.helper !== undefined) request.helperPath = opts.helper;
  if (opts.perfBuffer !== undefined) request.perfBufferKiB = parsePerfBuffer(opts.perfBuffer);
  if (opts.policy !== undefined) request.policyPath = resolve(opts.policy);
  if (opts.metricsListen !== undefined) request.metricsListen = parseMetricsFlag(opts.metricsListen);
  return request;
}

/** The one line printed once the controller accepted the agent. */
export function printAgentReady(request: AgentRequest): string {
  return `agent ${request.hostId} registered with controller ${request.controller}\n`;
}

/** Adds `agent` to the program. */
export function registerAgentCommand(program: Command, ctx: CliContext): void {
  const [logFormatOption, logLevelOption] = logOptions();
  program
    .command("agent")
    .description("run this host's agent in the foreground (uses --controller, --nats and --nats-creds)")
    .requiredOption("--host-id <id>", "this host's id (letters, digits, _ and -)")
    .option("--label <k=v...>", "labels the scheduler can select on (repeatable)")
    .option("--label-file <path>", "more labels, one k=v per line (e.g. a Kubernetes node's labels)")
    .option("--helper <path>", "the native helper (default: the one built in agent/native/build)")
    .option("--policy <file>", "host policy (JSON): processes that may be watched, value capture; reloaded on SIGHUP and on change")
    .option("--perf-buffer <size>", "each CPU's ring buffer of a perf job that reports hits, e.g. 8MiB (a power of two, 64KiB to 256MiB; default 2MiB, 4MiB with stacks): larger loses fewer samples of a busy writer")
    .option("--metrics-listen <addr>", "serve /metrics, /healthz and /readyz over HTTP on PORT or HOST:PORT (a bare port is 127.0.0.1; port 0 picks one); default: not served")
    .addOption(logFormatOption)
    .addOption(logLevelOption)
    .action(async (opts: { hostId: string; label?: string[]; labelFile?: string; helper?: string; policy?: string; perfBuffer?: string; metricsListen?: string; logFormat?: string; logLevel: LogLevel }) => {
      const request = parseAgentArgs(opts, ctx.globals());
      const log = await createDaemonLog({ format: resolveLogFormat(opts.logFormat, ctx.stderr), level: opts.logLevel, component: "agent", host: request.hostId, sink: ctx.stderr });
      if (request.metricsListen) warnIfExposed(request.metricsListen, log);
      const transport = resolveTransport(ctx.globals().tls, "agent", parseAddressList(request.controller), log);
      if ("tls" in transport && transport.tls.identity.name !== request.hostId) throw new UsageError(`certificate ${transport.tls.paths.cert} is agent ${transport.tls.identity.name}'s, not host ${request.hostId}'s: use --host-id ${transport.tls.identity.name} or that host's certificate`);
      const interrupted = ctx.interrupted();
      // Loaded here, not at the top: client commands must not depend on daemon code.
      const { startAgent } = await import("../../agent/index.js");
      const agent = await startAgent({ ...request, transport, log }).catch((err: unknown) => {
        throw new DaemonStartError("agent", err, request.natsUrl);
      });
      try {
        if (agent.metricsUrl && !interrupted.aborted) ctx.stdout.write(printMetricsReady(agent.metricsUrl));
        // The agent keeps dialling until the controller answers; Ctrl-C ends the wait.
        await Promise.race([agent.registered().then(() => ctx.stdout.write(printAgentReady(request))), untilAborted(interrupted)]);
        await untilAborted(interrupted);
      } finally {
        await agent.stop();
      }
    });
}
