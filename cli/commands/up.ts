// `fleetwatch up`: the embedded single-host default. Starts nats-server, a
// controller and this host's agent in one process (both serving metrics on
// loopback), prints a ready line and where the metrics are, and on
// SIGINT/SIGTERM stops them in reverse order (agent, controller, nats).
import os from "node:os";
import path from "node:path";
import type { Command } from "commander";
import type { HelperCapabilities, RunningAgent } from "../../agent/index.js";
import type { RunningController } from "../../controller/index.js";
import { isLoopbackAddress, type MetricsListen } from "../../proto/index.js";
import { CliError, DaemonStartError, UsageError } from "../errors.js";
import type { CliContext } from "../main.js";
import { createDaemonLog, logOptions, resolveLogFormat, type DaemonLog, type LogLevel } from "../daemon-log.js";
import { parseMetricsFlag, warnIfExposed } from "../metrics-flag.js";
import { parseRetentionFlags, retentionOptions } from "../retention-flags.js";
import { startNatsServer, type RunningNatsServer } from "../nats-server.js";
import { untilAborted } from "../abort.js";

// How long the embedded agent may take to register with the embedded controller.
const registerTimeoutMs = 30_000;

/** The `up` command line after validation. */
export interface UpRequest {
  dataDir: string;
  listen: string;
  natsPort: number;
  hostId: string;
  /** The controller's retention of finished jobs; unset: its defaults. */
  keepFinishedMs?: number;
  keepFinishedCount?: number;
  /** Where the controller's and the agent's /metrics, /healthz and /readyz are served. */
  metricsListen?: MetricsListen;
  agentMetricsListen?: MetricsListen;
}

/** This host's agent id: the hostname with anything but [A-Za-z0-9_-] replaced by `-`. */
export function embeddedHostId(hostname: string): string {
  const id = hostname.replace(/[^A-Za-z0-9_-]/g, "-");
  return id === "" ? "localhost" : id;
}

/** Validates the command line; relative data dirs are under `cwd`. */
export function parseUpArgs(
  opts: { dataDir: string; listen: string; natsPort: string; keepFinished?: string; keepFinishedCount?: string; metricsListen?: string; agentMetricsListen?: string },
  cwd: string,
  hostname: string,
): UpRequest {
  const natsPort = Number(opts.natsPort);
  if (!/^\d+$/.test(opts.natsPort) || natsPort < 1 || natsPort > 65_535) throw new UsageError(`--nats-port '${opts.natsPort}' is not a TCP port (1-65535)`);
  // Plaintext with nobody authenticated: only this machine may reach it.
  if (!isLoopbackAddress(opts.listen)) throw new UsageError(`--listen ${opts.listen}: fleetwatch up serves plaintext, on loopback only; for a fleet run \`fleetwatch controller\` and \`fleetwatch agent\` with certificates (\`fleetwatch certs init\`)`);
  const request: UpRequest = { dataDir: path.resolve(cwd, opts.dataDir), listen: opts.listen, natsPort, hostId: embeddedHostId(hostname) };
  Object.assign(request, parseRetentionFlags(opts));
  if (opts.metricsListen !== undefined) request.metricsListen = parseMetricsFlag(opts.metricsListen);
  if (opts.agentMetricsListen !== undefined) request.agentMetricsListen = parseMetricsFlag(opts.agentMetricsListen, "--agent-metrics-listen");
  return request;
}

/** The one line printed once everything runs. */
export function printUpReady(controller: string, natsUrl: string, hostId: string): string {
  return `fleetwatch up: controller ${controller}, nats ${natsUrl}, host ${hostId}\n`;
}

/** The line after the ready line: where each daemon's metrics are (their /healthz and /readyz beside them). */
export function printUpMetrics(controller: string | undefined, agent: string | undefined): string | undefined {
  const parts = [...(controller ? [`${controller} (controller)`] : []), ...(agent ? [`${agent} (agent)`] : [])];
  return parts.length === 0 ? undefined : `fleetwatch up: metrics ${parts.join(", ")}\n`;
}

/**
 * The warning printed before the ready line when this host's helper saw no
 * backend trap (a hypervisor that does not virtualize the debug registers):
 * every watch here is refused. Undefined when one backend traps, or none
 * was tested. Not a `fleetwatch up:` line: scripts wait for that one.
 */
export function printNoTrapsWarning(traps: HelperCapabilities["traps"]): string | undefined {
  if (traps.length === 0 || traps.some((t) => t.delivery === "delivered")) return undefined;
  const seen = traps.map((t) => `${t.backend}: ${t.detail || t.delivery}`).join("; ");
  return `warning: this host delivers no debug-register traps (${seen}): watches here are refused; see README "Hosts without debug traps"\n`;
}

/** Everything `up` started, stopped in reverse order of start. */
class Embedded {
  nats?: RunningNatsServer;
  controller?: RunningController;
  agent?: RunningAgent;

  constructor(private readonly log: (line: string) => void) {}

  /** Stops agent, controller, nats-server; returns the parts that failed to stop. */
  async stop(): Promise<string[]> {
    const failed: string[] = [];
    const parts: Array<[string, { stop(): Promise<void> } | undefined]> = [
      ["agent", this.agent],
      ["controller", this.controller],
      ["nats-server", this.nats],
    ];
    for (const [name, part] of parts) {
      if (!part) continue;
      try {
        await part.stop();
      } catch (err) {
        failed.push(name);
        this.log(`fleetwatch up: stopping the ${name} failed: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    return failed;
  }
}

/** The embedded daemons' logs. */
interface UpLogs {
  controller: DaemonLog;
  agent: DaemonLog;
}

async function start(request: UpRequest, embedded: Embedded, interrupted: AbortSignal, logs: UpLogs): Promise<boolean> {
  // Loaded here, not at the top: client commands must not depend on daemon code.
  const { startController } = await import("../../controller/index.js").catch((err: unknown) => {
    throw new DaemonStartError("controller", err);
  });
  const { startAgent } = await import("../../agent/index.js").catch((err: unknown) => {
    throw new DaemonStartError("agent", err);
  });
  embedded.nats = await startNatsServer({
    dataDir: request.dataDir,
    port: request.natsPort,
    // Ctrl-C in a terminal signals the whole process group: nats-server must
    // outlive it so the agent and controller can stop against it first.
    ownProcessGroup: true,
  }).catch((err: unknown) => {
    throw new DaemonStartError("nats-server", err);
  });
  if (interrupted.aborted) return false;
  const natsUrl = embedded.nats.url;
  const retention = { keepFinishedMs: request.keepFinishedMs, keepFinishedCount: request.keepFinishedCount };
  embedded.controller = await startController({ listen: request.listen, natsUrl, log: logs.controller, ...retention, ...(request.metricsListen ? { metricsListen: request.metricsListen } : {}) }).catch((err: unknown) => {
    throw new DaemonStartError("controller", err, natsUrl);
  });
  if (interrupted.aborted) return false;
  embedded.agent = await startAgent({ controller: embedded.controller.address, natsUrl, hostId: request.hostId, labels: { embedded: "true" }, log: logs.agent, ...(request.agentMetricsListen ? { metricsListen: request.agentMetricsListen } : {}) }).catch((err: unknown) => {
    throw new DaemonStartError("agent", err, natsUrl);
  });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CliError(`agent ${request.hostId} did not register with the controller within ${registerTimeoutMs / 1000}s`)), registerTimeoutMs);
  });
  try {
    await Promise.race([embedded.agent.registered(), timeout, untilAborted(interrupted)]);
  } finally {
    clearTimeout(timer);
  }
  return !interrupted.aborted;
}

/** Adds `up` to the program. */
export function registerUpCommand(program: Command, ctx: CliContext): void {
  const [logFormatOption, logLevelOption] = logOptions();
  const [keepFinishedOption, keepFinishedCountOption] = retentionOptions();
  program
    .command("up")
    .description("run nats-server, a controller and this host's agent in the foreground")
    .option("--data-dir <dir>", "JetStream data directory", ".fleetwatch")
    .option("--listen <addr>", "controller gRPC listen address", "127.0.0.1:7070")
    .option("--nats-port <port>", "nats-server client port", "4222")
    .addOption(keepFinishedOption)
    .addOption(keepFinishedCountOption)
    .option("--metrics-listen <addr>", "the controller's /metrics, /healthz and /readyz, PORT or HOST:PORT (port 0 picks one)", "127.0.0.1:9464")
    .option("--agent-metrics-listen <addr>", "the agent's /metrics, /healthz and /readyz, PORT or HOST:PORT (port 0 picks one)", "127.0.0.1:9465")
    .addOption(logFormatOption)
    .addOption(logLevelOption)
    .action(async (opts: { dataDir: string; listen: string; natsPort: string; keepFinished: string; keepFinishedCount: string; metricsListen: string; agentMetricsListen: string; logFormat?: string; logLevel: LogLevel }) => {
      const request = parseUpArgs(opts, process.cwd(), os.hostname());
      const interrupted = ctx.interrupted();
      const format = resolveLogFormat(opts.logFormat, ctx.stderr);
      const logOf = (component: string, host?: string) => createDaemonLog({ format, level: opts.logLevel, component, sink: ctx.stderr, ...(host ? { host } : {}) });
      const log = await logOf("up");
      const logs: UpLogs = { controller: await logOf("controller"), agent: await logOf("agent", request.hostId) };
      for (const listen of [request.metricsListen, request.agentMetricsListen]) if (listen) warnIfExposed(listen, log);
      const embedded = new Embedded(log);
      let ready: boolean;
      try {
        ready = await start(request, embedded, interrupted, logs);
      } catch (err) {
        await embedded.stop();
        throw err;
      }
      if (ready) {
        // On stdout with the ready line, so whoever reads that sees it first.
        const warning = printNoTrapsWarning(embedded.agent!.capabilities.traps);
        if (warning) ctx.stdout.write(warning);
        ctx.stdout.write(printUpReady(embedded.controller!.address, embedded.nats!.url, request.hostId));
        const metrics = printUpMetrics(embedded.controller!.metricsUrl, embedded.agent!.metricsUrl);
        if (metrics) ctx.stdout.write(metrics);
        await untilAborted(interrupted);
      }
      const failed = await embedded.stop();
      if (failed.length > 0) throw new CliError(`could not stop cleanly: ${failed.join(", ")}`);
    });
}
