// The controller's door: start one on a NATS server and a listen address;
// several started on one NATS elect a leader and the rest stand by.
import os from "node:os";
import { setTimeout as delay } from "node:timers/promises";
import { connect } from "nats";
import { AgentService, ControllerService, NatsRefusals, addService, bindServer, createServer, jobBucket, natsAuthOptions, readNatsCredentials, serverCredentials, startMetricsServer, withDeadline, type MetricsListen, type RunningMetricsServer, type Transport } from "../proto/index.js";
import { Controller } from "./controller.js";
import { LeaderElection, NotLeaderError } from "./leader-election.js";
import { statusFor } from "./errors.js";
import { JobStore } from "./job-store.js";
import { AccessControl } from "./access.js";
import { AuditTrail } from "./audit.js";
import { ensureStreams } from "./streams.js";
import { ControllerMetrics, controllerReadiness } from "./metrics.js";
import { defaultRetention } from "./finished-retention.js";
import { agentService, controllerService } from "./service.js";

export interface ControllerOptions {
  /** host:port to listen on; port 0 picks one. */
  listen: string;
  natsUrl: string;
  /** The controller's NATS nkey seed file (`controller.nk`). Unset: NATS without authentication. */
  natsCredsPath?: string;
  /** A silent agent session is closed after this long. */
  leaseMs?: number;
  /** How long an agent may take to answer a command. */
  requestTimeoutMs?: number;
  /** Leader lease: a standby takes over this long after the leader stops renewing. */
  electionLeaseMs?: number;
  /** Finished jobs are deleted from the store this long after they ended (default 24 h)... */
  keepFinishedMs?: number;
  /** ...or, beyond this many, the oldest first (default 100,000). */
  keepFinishedCount?: number;
  /** gRPC transport: mutual TLS (users and agents must present certificates of the CA), or plaintext. Default plaintext. */
  transport?: Transport;
  /** Access policy file (roles and scopes of users; needs mutual TLS); unset: every user certificate is an admin. */
  accessPolicyPath?: string;
  /** Candidate id in the election; default this host and the bound address. */
  id?: string;
  /** Where to serve /metrics, /healthz and /readyz over HTTP; unset: nowhere. */
  metricsListen?: MetricsListen;
  log?: (line: string) => void;
}

// Longest pause between attempts to load a new leader term.
const termRetryMaxMs = 5_000;
// How long /readyz waits for the job bucket's stream to answer: a prober's own timeout is usually a few seconds.
const storeCheckTimeoutMs = 1_500;

export interface RunningController {
  /** host:port actually bound. */
  readonly address: string;
  /** http://host:port/metrics when metricsListen was given. */
  readonly metricsUrl: string | undefined;
  /** True while this controller leads (the others stand by). */
  isLeader(): boolean;
  /** Job states waiting for WatchJob followers that have not read them (bounded: one per follower), and how many they skipped. */
  followerBacklog(): { followers: number; pending: number; skipped: number };
  stop(): Promise<void>;
}

/**
 * Connects to NATS, serves both gRPC services and runs for leader. Only the
 * leader's term serves: it loads the stored jobs, holds the agents' sessions
 * and carries its epoch on every command; a standby answers UNAVAILABLE
 * naming the leader. Resolves once the first election decision is made.
 */
export async function startController(options: ControllerOptions): Promise<RunningController> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const leaseMs = options.leaseMs ?? 15_000;
  const retention = { keepFinishedMs: options.keepFinishedMs ?? defaultRetention.keepFinishedMs, keepFinishedCount: options.keepFinishedCount ?? defaultRetention.keepFinishedCount };
  // No async stack traces: capturing one per KV write costs more than the write's own encoding at fleet scale.
  const credentials = options.natsCredsPath === undefined ? undefined : readNatsCredentials(options.natsCredsPath);
  const nc = await connect({ servers: options.natsUrl, name: "fleetwatch-controller", maxReconnectAttempts: -1, noAsyncTraces: true, ...natsAuthOptions(credentials) });
  // A subject the server refuses is logged once: the server's nats-auth.conf is older than this controller's needs.
  const refused = new Set<string>();
  new NatsRefusals(nc, (err) => {
    if (refused.has(err.message)) return;
    refused.add(err.message);
    log(`controller: ${err.message}${credentials ? ` (credentials ${credentials.path})` : ""}: check the server's nats-auth.conf`);
  });
  const server = createServer();
  let election: LeaderElection | undefined;
  let access: AccessControl | undefined;
  let metricsServer: RunningMetricsServer | undefined;
  try {
    await ensureStreams(nc);
    const js = nc.jetstream();
    let term: Controller | undefined;
    let termEpoch = 0n;
    let started = false;
    const metrics = options.metricsListen
      ? new ControllerMetrics({
          term: () => (term ? { activeJobs: () => term!.activeJobs(), finishedJobs: (state) => term!.finishedJobs(state), connectedAgents: () => term!.connectedAgents(), queuedJobs: () => term!.queuedJobs() } : undefined),
          leading: () => term !== undefined,
          epoch: () => (term ? termEpoch : (election?.leader()?.epoch ?? 0n)),
        })
      : undefined;
    if (options.metricsListen && metrics) {
      const jsm = await nc.jetstreamManager();
      const storeError = () =>
        withDeadline(jsm.streams.info(`KV_${jobBucket}`), storeCheckTimeoutMs, (ms) => new Error(`no answer within ${ms} ms`)).then(
          () => undefined,
          (err: unknown) => (err instanceof Error ? err.message : String(err)),
        );
      metricsServer = await startMetricsServer({
        listen: options.metricsListen,
        source: metrics.registry,
        ready: async () => controllerReadiness({ started, leading: election?.isLeader() ?? false, termOpen: term !== undefined, storeError: await storeError() }),
      });
    }
    const leader = async (): Promise<Controller> => {
      // A lease that ran out while this process was busy or paused is confirmed (or lost) first.
      const current = term;
      if (current && election && (await election.holds(termEpoch)) && term === current) return current;
      const known = election?.leader();
      throw new NotLeaderError(
        known ? `this controller is standing by: the leader is ${known.id} at ${known.address}` : "this controller is standing by and no leader is known yet: retry shortly",
        known,
      );
    };
    const logged = (err: unknown) => {
      const s = statusFor(err);
      if (s.details.startsWith("internal error")) log(`controller: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      return s;
    };
    const transport = options.transport ?? { plaintext: true };
    const secure = "tls" in transport;
    const audit = new AuditTrail(js, log, (entry) => metrics?.audited(entry.action, entry.result));
    access = new AccessControl(secure, audit, log, options.accessPolicyPath);
    addService(server, ControllerService, controllerService(leader, access, audit, metrics), logged);
    addService(server, AgentService, agentService(leader, access, audit), logged);
    const port = await bindServer(server, options.listen, serverCredentials(transport));
    const host = options.listen.slice(0, options.listen.lastIndexOf(":"));
    const address = `${host}:${port}`;

    const id = options.id ?? `${os.hostname()}/${address}`;
    election = await LeaderElection.start({ js, id, address, leaseMs: options.electionLeaseMs ?? 5_000, log });
    // Terms follow the election: a new Controller (fresh from the store) per term.
    let decided!: () => void;
    const firstDecision = new Promise<void>((resolve) => (decided = resolve));
    /**
     * A new leader term: the stored jobs loaded and the core started. NATS may
     * still be recovering (a leader re-elected right after a restart): a
     * failure is logged and tried again while we still lead, rather than
     * leaving a leader that serves nothing. Undefined once we no longer lead.
     */
    const openTerm = async (epoch: bigint): Promise<Controller | undefined> => {
      for (let attempt = 0; ; attempt++) {
        let next: Controller | undefined;
        try {
          const store = await JobStore.open(js, () => election?.holds(epoch) ?? false, () => metrics?.kvConflict());
          next = new Controller(store, { leaseMs, heartbeatMs: Math.max(100, Math.floor(leaseMs / 3)), requestTimeoutMs: options.requestTimeoutMs ?? 15_000, epoch, log, retention, access: access!, ...(metrics ? { metrics } : {}) });
          await next.start();
          return next;
        } catch (err) {
          next?.stop();
          if (!(await election!.holds(epoch).catch(() => false))) return undefined;
          const pauseMs = Math.min(termRetryMaxMs, 250 * 2 ** attempt);
          log(`controller: taking over with epoch ${epoch} failed (${err instanceof Error ? err.message : String(err)}); trying again in ${pauseMs} ms`);
          await delay(pauseMs);
        }
      }
    };
    const terms = (async () => {
      for await (const change of election!.changes()) {
        if (change.leader && change.epoch !== undefined) {
          const epoch = change.epoch;
          const next = await openTerm(epoch);
          // Deposed while loading: the change that says so is next in line.
          if (!next) continue;
          term?.stop();
          term = next;
          termEpoch = epoch;
          log(`controller: leading with epoch ${change.epoch}`);
        } else if (!change.leader) {
          term?.stop();
          term = undefined;
          log(`controller: standing by${change.leaderAddress ? `; the leader is ${change.leaderId} at ${change.leaderAddress}` : ""}`);
        }
        // Ready once we lead, or once another candidate is known to lead.
        if (change.leader || (change.leaderId && change.leaderId !== id)) decided();
      }
    })().catch((err) => log(`controller: leadership loop failed: ${String(err)}`));
    await firstDecision;
    started = true;
    log(`controller: listening on ${address} (${secure ? `mutual TLS, CA ${transport.tls.paths.ca}` : "plaintext"}), nats ${options.natsUrl}`);
    return {
      address,
      metricsUrl: metricsServer?.url,
      isLeader: () => term !== undefined,
      followerBacklog: () => term?.followerBacklog() ?? { followers: 0, pending: 0, skipped: 0 },
      async stop() {
        term?.stop();
        term = undefined;
        access?.stop();
        await election!.resign();
        await election!.stop();
        await terms;
        // Streams still open after a short grace (job watchers) are cut.
        await new Promise<void>((resolve) => {
          const force = setTimeout(() => server.forceShutdown(), 2_000);
          server.tryShutdown(() => {
            clearTimeout(force);
            resolve();
          });
        });
        await metricsServer?.stop();
        await nc.drain().catch(() => nc.close());
      },
    };
  } catch (err) {
    access?.stop();
    await metricsServer?.stop();
    await election?.stop().catch(() => {});
    server.forceShutdown();
    await nc.close();
    throw err;
  }
}
