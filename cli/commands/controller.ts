// `fleetwatch controller`: runs the controller in the foreground until
// SIGINT/SIGTERM, then stops it cleanly. Its own log lines go to stderr.
import type { Command } from "commander";
import path from "node:path";
import type { MetricsListen } from "../../proto/index.js";
import { DaemonStartError, UsageError } from "../errors.js";
import type { CliContext } from "../main.js";
import { parseDuration } from "../output.js";
import { untilAborted } from "../abort.js";
import { createDaemonLog, logOptions, resolveLogFormat, type LogLevel } from "../daemon-log.js";
import { parseMetricsFlag, printMetricsReady, warnIfExposed } from "../metrics-flag.js";
import { parseRetentionFlags, retentionOptions } from "../retention-flags.js";
import { resolveTransport } from "../transport.js";

/** The `controller` command line after validation. */
export interface ControllerRequest {
  listen: string;
  natsUrl: string;
  /** The controller's NATS nkey seed file. */
  natsCredsPath?: string;
  leaseMs: number;
  electionLeaseMs: number;
  /** Finished jobs are deleted this long after they ended, or beyond this many (the oldest); unset: the controller's defaults. */
  keepFinishedMs?: number;
  keepFinishedCount?: number;
  accessPolicyPath?: string;
  /** Where /metrics, /healthz and /readyz are served; unset: not served. */
  metricsListen?: MetricsListen;
}

/** Validates the command line. */
export function parseControllerArgs(
  opts: { listen: string; lease: string; electionLease: string; keepFinished?: string; keepFinishedCount?: string; accessPolicy?: string; metricsListen?: string },
  natsUrl: string,
  natsCredsPath?: string,
): ControllerRequest {
  const request: ControllerRequest = { listen: opts.listen, natsUrl, leaseMs: parseDuration(opts.lease, "--lease"), electionLeaseMs: parseDuration(opts.electionLease, "--election-lease") };
  Object.assign(request, parseRetentionFlags(opts));
  if (natsCredsPath !== undefined) request.natsCredsPath = natsCredsPath;
  // Absolute: the file is read again on every change.
  if (opts.accessPolicy !== undefined) request.accessPolicyPath = path.resolve(opts.accessPolicy);
  if (opts.metricsListen !== undefined) request.metricsListen = parseMetricsFlag(opts.metricsListen);
  return request;
}

/** The one line printed once the controller serves. */
export function printControllerReady(address: string): string {
  return `controller listening on ${address}\n`;
}

/** Adds `controller` to the program. */
export function registerControllerCommand(program: Command, ctx: CliContext): void {
  const [logFormatOption, logLevelOption] = logOptions();
  const [keepFinishedOption, keepFinishedCountOption] = retentionOptions();
  program
    .command("controller")
    .description("run the controller in the foreground (uses --nats and --nats-creds; mutual TLS with --ca, --cert and --key)")
    .option("--listen <addr>", "gRPC listen address, host:port (port 0 picks one)", "127.0.0.1:7070")
    .option("--lease <time>", "drop an agent session silent for this long", "15s")
    .option("--election-lease <time>", "with several controllers on one NATS: a standby takes over this long after the leader stops", "5s")
    .addOption(keepFinishedOption)
    .addOption(keepFinishedCountOption)
    .option("--access-policy <file>", "roles and scopes of users (JSON; reloaded when it changes or on SIGHUP); default: every user certificate is an admin")
    .option("--metrics-listen <addr>", "serve /metrics, /healthz and /readyz over HTTP on PORT or HOST:PORT (a bare port is 127.0.0.1; port 0 picks one); default: not served")
    .addOption(logFormatOption)
    .addOption(logLevelOption)
    .action(async (opts: { listen: string; lease: string; electionLease: string; keepFinished: string; keepFinishedCount: string; accessPolicy?: string; metricsListen?: string; logFormat?: string; logLevel: LogLevel }) => {
      const request = parseControllerArgs(opts, ctx.globals().nats, ctx.globals().natsCreds);
      const log = await createDaemonLog({ format: resolveLogFormat(opts.logFormat, ctx.stderr), level: opts.logLevel, component: "controller", sink: ctx.stderr });
      if (request.metricsListen) warnIfExposed(request.metricsListen, log);
      const transport = resolveTransport(ctx.globals().tls, "controller", [request.listen], log);
      if (request.accessPolicyPath !== undefined && !("tls" in transport)) throw new UsageError("--access-policy needs mutual TLS (--ca, --cert, --key): over plaintext nobody is known");
      // Signals are ours from here on, so a Ctrl-C while starting still stops cleanly.
      const interrupted = ctx.interrupted();
      // Loaded here, not at the top: client commands must not depend on daemon code.
      const { startController } = await import("../../controller/index.js");
      const controller = await startController({ ...request, transport, log }).catch((err: unknown) => {
        throw new DaemonStartError("controller", err, request.natsUrl);
      });
      if (!interrupted.aborted) {
        ctx.stdout.write(printControllerReady(controller.address));
        if (controller.metricsUrl) ctx.stdout.write(printMetricsReady(controller.metricsUrl));
      }
      await untilAborted(interrupted);
      await controller.stop();
    });
}
