// The agent's door: start one per host. It owns the host's debug registers
// through the native helper, keeps a session with the controller and
// publishes hits to NATS.
import os from "node:os";
import { setTimeout as delay } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { connect } from "nats";
import { AgentInfoSchema, Backend, NatsRefusals, PerfValues, TrapCheckSchema, TrapDelivery, isSubjectToken, natsAuthOptions, parseAddressList, readNatsCredentials, slotsPerThread, startMetricsServer, type AgentInfo, type MetricsListen, type RunningMetricsServer, type Transport } from "../proto/index.js";
import { AgentCore } from "./agent.js";
import { HelperProcess, type HelperCapabilities } from "./helper-process.js";
import type { TrapCheck as HelperTrapCheck } from "./helper-protocol.js";
import { HitPublisher } from "./hit-publisher.js";
import { SessionClient } from "./session-client.js";
import { storedHitsReader } from "./stored-hits.js";
import { AgentCommandError } from "./errors.js";
import { summarizePolicy } from "./host-policy.js";
import { AgentMetrics, agentReadiness } from "./metrics.js";
import { loadPolicyFile, watchPolicyFile, type LoadedPolicy } from "./policy-file.js";

export type { HelperCapabilities } from "./helper-process.js";

export interface AgentOptions {
  /** Controller address host:port, or several comma-separated (leader and standbys). */
  controller: string;
  natsUrl: string;
  /**
   * This agent's NATS nkey seed file (`agent-HOST.nk`); its permissions let
   * it publish only this host's hits. Unset: NATS without authentication.
   */
  natsCredsPath?: string;
  /** This host's id: letters, digits, '-' and '_'. */
  hostId: string;
  labels?: Record<string, string>;
  /** gRPC to the controller: mutual TLS with this agent's certificate, or plaintext. Default plaintext. */
  transport?: Transport;
  /** The native helper; default the one built in agent/native/build. */
  helperPath?: string;
  /** Each CPU's perf ring buffer of a sampling job, in KiB; default the helper's. */
  perfBufferKiB?: number;
  /**
   * The host policy file (JSON): which processes may be watched and what
   * leaves the host of their values. Read again on SIGHUP and when it
   * changes. Unset: every process but pid 1, the agent and its helper, values captured.
   */
  policyPath?: string;
  /** Where to serve /metrics, /healthz and /readyz over HTTP; unset: nowhere. */
  metricsListen?: MetricsListen;
  log?: (line: string) => void;
}

export interface RunningAgent {
  readonly hostId: string;
  /** What the current helper announced: its backends and its trap self-test (a restarted helper's, once it runs). */
  readonly capabilities: HelperCapabilities;
  /** http://host:port/metrics when metricsListen was given. */
  readonly metricsUrl: string | undefined;
  /** Resolves once the controller has accepted the session. */
  registered(): Promise<void>;
  /** Disarms every target, stops the helper, closes the session and NATS. */
  stop(): Promise<void>;
}

export const agentVersion = "0.1.0";

// Pause before restarting a helper that died, doubling while it keeps failing to start.
const restartPauseMs = 100;
const maxRestartPauseMs = 5_000;

/** The helper's words for a trap self-test's outcome, as AgentInfo carries them. */
const trapDeliveries: Record<HelperTrapCheck["delivery"], TrapDelivery> = { delivered: TrapDelivery.DELIVERED, "not-delivered": TrapDelivery.NOT_DELIVERED, "not-run": TrapDelivery.NOT_RUN };

/** What the helper can do, as the controller and `agents ls` show it. */
function capabilityFields(c: HelperCapabilities): Pick<AgentInfo, "backends" | "perfValues" | "perfNote" | "trapChecks"> {
  const perfValues = c.perfValues === "exact" ? PerfValues.EXACT : c.perfValues === "after-trap" ? PerfValues.AFTER_TRAP : PerfValues.UNSPECIFIED;
  const backend = (b: HelperCapabilities["backends"][number]) => (b === "perf" ? Backend.PERF : Backend.PTRACE);
  return {
    backends: c.backends.map(backend),
    perfValues,
    perfNote: c.perfNote,
    trapChecks: c.traps.map((t) => create(TrapCheckSchema, { backend: backend(t.backend), delivery: trapDeliveries[t.delivery], writes: t.writes, traps: t.traps, nsPerTrap: t.nsPerTrap, detail: t.detail })),
  };
}

/** One line per backend whose watched writes do not trap here: jobs on it are refused, and the log says why once. */
function logTrapChecks(hostId: string, c: HelperCapabilities, log: (line: string) => void): void {
  for (const t of c.traps) {
    // A perf the helper cannot open is said once already, by the perf line.
    if (t.delivery === "delivered" || (t.backend === "perf" && !c.backends.includes("perf"))) continue;
    const what = t.delivery === "not-run" ? "could not be tested" : "are not delivered";
    log(`agent ${hostId}: ${t.backend} watch traps ${what}: ${t.detail || "the helper does not say why"}; nothing is armed with ${t.backend} here`);
  }
}

/** SIGHUP means "reload the policy" to an agent: without a policy file it must not end the agent (the default action). */
function ignoreHangup(onHup: () => void): () => void {
  process.on("SIGHUP", onHup);
  return () => process.off("SIGHUP", onHup);
}

/** Starts the helper, connects to NATS, and dials the controller. */
export async function startAgent(options: AgentOptions): Promise<RunningAgent> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  if (!isSubjectToken(options.hostId)) throw new AgentCommandError(`host id '${options.hostId}' must be letters, digits, '-' or '_'`, "EINVAL");
  // A policy file that cannot be used stops the start: no watching under a policy nobody wrote.
  const policy: LoadedPolicy | undefined = options.policyPath === undefined ? undefined : loadPolicyFile(options.policyPath);
  log(policy ? `agent ${options.hostId}: host policy ${options.policyPath}: ${summarizePolicy(policy.policy)}` : `agent ${options.hostId}: no host policy file: any process but pid 1, the agent and its helper may be watched, values captured`);
  const credentials = options.natsCredsPath === undefined ? undefined : readNatsCredentials(options.natsCredsPath);
  // No async stack traces: one per published batch is pure overhead on the hit path.
  const nc = await connect({ servers: options.natsUrl, name: `fleetwatch-agent-${options.hostId}`, maxReconnectAttempts: -1, noAsyncTraces: true, ...natsAuthOptions(credentials) });
  // Each refused subject is logged once: a misconfigured server must be visible, not flood the log.
  const refusedSubjects = new Set<string>();
  const refusals = new NatsRefusals(nc, (err) => {
    const key = `${err.permissionContext?.operation} ${err.permissionContext?.subject}`;
    if (refusedSubjects.has(key)) return;
    refusedSubjects.add(key);
    log(`agent ${options.hostId}: ${err.message}${credentials ? ` (credentials ${credentials.path})` : ""}: check the server's nats-auth.conf for this host`);
  });
  const startHelper = () => HelperProcess.start({ ...(options.helperPath ? { path: options.helperPath } : {}), ...(options.perfBufferKiB ? { perfBufferKiB: options.perfBufferKiB } : {}) });
  let helper: HelperProcess;
  try {
    helper = await startHelper();
  } catch (err) {
    await nc.close();
    throw err;
  }
  // Jobs that ask for perf fail on this host with the reason; said once here too.
  if (!helper.capabilities.backends.includes("perf")) log(`agent ${options.hostId}: perf events are unavailable: ${helper.capabilities.perfNote || "the helper does not say why"}; only --backend ptrace jobs can be armed here`);
  logTrapChecks(options.hostId, helper.capabilities, log);
  // Made before the publisher (which reports to it); it reads the parts made below only when scraped.
  const metrics: AgentMetrics | undefined = options.metricsListen
    ? new AgentMetrics({
        registers: () => core.processRegisters(),
        armedTargets: () => core.armedCount(),
        hits: () => core.hitTotals(),
        pendingBytes: () => publisher.pendingBytes,
        traps: () => helper.capabilities.traps,
        sessionLive: () => session.live,
      })
    : undefined;
  const publisher: HitPublisher = new HitPublisher(nc.jetstream(), metrics ? { onSettled: (s) => metrics.publishSettled(s) } : {});
  const core = new AgentCore(publisher, storedHitsReader(nc, refusals), options.hostId, log);
  if (policy) await core.setPolicy(policy);
  const info = create(AgentInfoSchema, {
    hostId: options.hostId,
    labels: options.labels ?? {},
    hostname: os.hostname(),
    kernel: os.release(),
    arch: os.arch() === "x64" ? "x86_64" : os.arch(),
    slotsPerThread,
    agentVersion,
    helperVersion: helper.helperVersion,
    policy: core.policySummary(),
    ...capabilityFields(helper.capabilities),
  });
  const session = new SessionClient(core, { controllers: parseAddressList(options.controller), info, log, transport: options.transport ?? { plaintext: true } });
  const stopping = new AbortController();
  // The helper is supervised: when it dies its watches are reported failed
  // and a new one is started, with a growing pause if it keeps dying.
  const supervised = (async () => {
    let pauseMs = restartPauseMs;
    for (;;) {
      await core.run(helper).catch((err) => log(`agent ${options.hostId}: helper event loop failed: ${String(err)}`));
      if (stopping.signal.aborted) return;
      const { code, signal } = await helper.exited;
      // Every death but SIGKILL runs the helper's disarm-and-detach first; perf breakpoints go with the helper however it dies.
      const reason =
        signal === "SIGKILL"
          ? "the helper was killed with SIGKILL: it could not clear the debug registers, so the target may take a stray SIGTRAP"
          : `the helper exited (${signal ? `signal ${signal}` : `code ${code}`}) after disarming and detaching`;
      const perfReason = `the helper ${signal ? `was killed with ${signal}` : `exited (code ${code})`}: its perf breakpoints went with it, the target was never stopped`;
      log(`agent ${options.hostId}: ${reason}; restarting it`);
      core.helperLost((backend) => (backend === "perf" ? perfReason : reason));
      for (;;) {
        await delay(pauseMs, undefined, { signal: stopping.signal }).catch(() => {});
        if (stopping.signal.aborted) return;
        try {
          helper = await startHelper();
          metrics?.helperRestarted();
          pauseMs = restartPauseMs;
          // A new helper tested its backends and traps again: the controller hears it now, and the next registration says it too.
          Object.assign(info, { helperVersion: helper.helperVersion, ...capabilityFields(helper.capabilities) });
          logTrapChecks(options.hostId, helper.capabilities, log);
          session.infoChanged();
          break;
        } catch (err) {
          log(`agent ${options.hostId}: restarting the helper failed: ${err instanceof Error ? err.message : String(err)}`);
          pauseMs = Math.min(maxRestartPauseMs, pauseMs * 2);
        }
      }
    }
  })();
  const unwatchPolicy =
    options.policyPath === undefined
      ? ignoreHangup(() => log(`agent ${options.hostId}: SIGHUP: no --policy file to reload`))
      : watchPolicyFile(
          options.policyPath,
          (loaded) => {
            metrics?.policyReloaded();
            void core.setPolicy(loaded).catch((err: unknown) => log(`agent ${options.hostId}: enforcing the reloaded host policy failed: ${String(err)}`));
            // What the next registration tells the controller.
            info.policy = core.policySummary();
          },
          (line) => log(`agent ${options.hostId}: ${line}`),
        );
  let metricsServer: RunningMetricsServer | undefined;
  if (options.metricsListen && metrics) {
    const controllers = parseAddressList(options.controller);
    try {
      metricsServer = await startMetricsServer({
        listen: options.metricsListen,
        source: metrics.registry,
        ready: () => agentReadiness({ sessionLive: session.live, helperRunning: core.helperRunning, controllers }),
      });
    } catch (err) {
      unwatchPolicy();
      stopping.abort();
      await helper.shutdown();
      await supervised;
      await nc.close();
      throw err;
    }
  }
  session.start();

  return {
    hostId: options.hostId,
    metricsUrl: metricsServer?.url,
    get capabilities() {
      return helper.capabilities;
    },
    registered: () => session.registered(),
    async stop() {
      unwatchPolicy();
      await core.disarmAll(`agent on ${options.hostId} stopped`);
      stopping.abort();
      await session.stop();
      await helper.shutdown();
      await supervised;
      await metricsServer?.stop();
      await nc.drain().catch(() => nc.close());
    },
  };
}
