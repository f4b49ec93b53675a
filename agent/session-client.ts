// The agent's side of AgentService.Session: dials the controller, registers,
// heartbeats, runs the commands it receives, and reconnects with backoff.
// Target reports made while disconnected are kept and sent after the next
// registration, so the controller hears every ending.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { setTimeout as delay } from "node:timers/promises";
import { AgentErrorSchema, AgentService, EpochGuard, MessageQueue, sessionRequestQueue, unbatched, SessionRequestSchema, TargetState, channelCredentials, channelOptions, createClient, type Transport, type AgentError, type AgentInfo, type ArmedTarget, type SessionRequest, type TargetReport } from "../proto/index.js";

/** The answer to a command from a leader older than one already seen. */
function staleEpoch(epoch: bigint, highest: bigint | undefined): AgentError {
  return create(AgentErrorSchema, { errnoName: "ESTALE", message: `command from leader epoch ${epoch}, but epoch ${highest} already leads: refused` });
}
import type { AgentCore } from "./agent.js";
import { toAgentError } from "./errors.js";

function armedKey(a: ArmedTarget): string {
  return `${a.jobId}/${a.pid}`;
}

export interface SessionClientOptions {
  /** Controller addresses: the leader and its standbys, tried in turn. */
  controllers: readonly string[];
  info: AgentInfo;
  log: (line: string) => void;
  /** mutual TLS or plaintext, for each connection attempt. */
  transport: Transport;
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/** Messages the controller may leave unread before the agent gives up on the session. */
export const maxUnsentMessages = 10_000;

/** How long, and how many, final target reports are kept to be sent again to each new session. */
const finalReportKeepMs = 10 * 60_000;
const maxFinalReports = 10_000;

/** Keeps one session with the controller open for as long as the agent runs. */
export class SessionClient {
  private readonly stopping = new AbortController();
  private outbound: MessageQueue<SessionRequest> | undefined;
  private registeredOnce: { promise: Promise<void>; resolve: () => void };
  /** Reports made while disconnected, the newest per target (each says the target's whole state and counts). */
  private readonly unsent = new Map<string, TargetReport>();
  /** Older reports replaced there since the last registration. */
  private unsentReplaced = 0;
  /**
   * The last report of each target that ended, kept for finalReportKeepMs:
   * one sent to a controller that stopped leading as it arrived is lost
   * with it, and the next leader would know only the counts before. Every
   * new session gets them again (the controller only moves counts forward).
   */
  private readonly finals = new Map<string, { report: TargetReport; atMs: number }>();
  private loop: Promise<void> | undefined;
  /** Lease the controller granted at the last registration. */
  private leaseMs = 0;
  /** Fires when no session has been live for a lease: the agent then disarms on its own. */
  private lapseTimer: NodeJS.Timeout | undefined;
  /** Fencing: the highest leader epoch seen; commands from older ones are refused. */
  private readonly epochs = new EpochGuard();
  /** Aborts the current session attempt. */
  private attempt: AbortController | undefined;
  /** The watches the current attempt's registration listed as armed. */
  private listed: ArmedTarget[] = [];
  /** The info changed while no session was live. */
  private infoUnsent = false;
  /** Arms and disarms under way: a session may end before they do. */
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(
    private readonly core: AgentCore,
    private readonly options: SessionClientOptions,
  ) {
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.registeredOnce = { promise, resolve };
    core.onReport = (report) => {
      const key = `${report.jobId}/${report.pid}`;
      if (report.state !== TargetState.ARMED && report.state !== TargetState.UNSPECIFIED) this.keepFinal(key, report);
      else this.finals.delete(key);
      if (this.send({ msg: { case: "targetReport", value: report } })) return;
      // Bounded by the targets, not by how long the controller is away.
      if (this.unsent.delete(key)) this.unsentReplaced++;
      this.unsent.set(key, report);
    };
    // A late joiner seen while disconnected is found again by the discovery after re-registering.
    core.onAppeared = (appeared) => void this.send({ msg: { case: "processAppeared", value: appeared } });
    // A registration on its way may list a watch as armed that is not any more: start over with the truth.
    core.onSuspended = () => {
      if (this.disarmedSince(this.listed).length > 0) this.attempt?.abort();
    };
  }

  private keepFinal(key: string, report: TargetReport): void {
    const now = Date.now();
    this.finals.delete(key);
    this.finals.set(key, { report, atMs: now });
    // Oldest first: drop what has been kept long enough.
    for (const [k, kept] of this.finals) {
      if (now - kept.atMs < finalReportKeepMs && this.finals.size <= maxFinalReports) break;
      this.finals.delete(k);
    }
  }

  /** Whether a session with a controller is live now. */
  get live(): boolean {
    return this.outbound !== undefined;
  }

  /** Resolves once the controller has accepted a session. */
  registered(): Promise<void> {
    return this.registeredOnce.promise;
  }

  start(): void {
    this.loop = this.run();
  }

  /**
   * The info given at construction changed (a restarted helper tested its
   * backends and traps again): the controller hears it on the live session
   * now; without one, the next registration carries it.
   */
  infoChanged(): void {
    // A registration on its way may carry the old info: sent again once it is accepted.
    this.infoUnsent = !this.send({ msg: { case: "infoUpdate", value: this.options.info } });
  }

  /** Closes the session and stops reconnecting. */
  async stop(): Promise<void> {
    clearTimeout(this.lapseTimer);
    this.stopping.abort();
    this.outbound?.close();
    await this.loop;
  }

  /**
   * The session is gone. If none is live again within the lease, nobody is
   * listening for hits: disarm every target here rather than let them trap.
   * The controller marks them lost meanwhile and re-arms them on return.
   */
  private startLapseTimer(): void {
    if (this.leaseMs <= 0 || this.lapseTimer || this.stopping.signal.aborted) return;
    this.lapseTimer = setTimeout(() => {
      this.lapseTimer = undefined;
      if (this.outbound || this.stopping.signal.aborted) return;
      // The agent logs what the lapse did to each watch.
      const silence = `no session with a controller (${this.options.controllers.join(", ")}) for ${this.leaseMs} ms (the lease)`;
      // A registration already on its way lists the watches as armed: start over with the truth
      // (and once more if one completes before the registers are cleared: onSuspended).
      void this.core.suspendAll(silence, this.leaseMs);
      this.attempt?.abort();
    }, this.leaseMs);
  }

  /** Keeps work in inFlight until it settles. */
  private track<T>(work: Promise<T>): Promise<T> {
    this.inFlight.add(work);
    const forget = (): void => void this.inFlight.delete(work);
    work.then(forget, forget);
    return work;
  }

  /** Watches of a registration's armed list that are not armed any more. */
  private disarmedSince(listed: readonly ArmedTarget[]): ArmedTarget[] {
    const armedNow = new Set(this.core.armed().map(armedKey));
    return listed.filter((a) => !armedNow.has(armedKey(a)));
  }

  /**
   * Queues a message on the live session; false when there is none. A
   * controller that stops reading does not grow this queue without bound:
   * past maxUnsentMessages the session is ended and a new one started (what
   * the controller then needs it learns from the registration, and reports
   * are kept until then).
   */
  private send(message: MessageInitShape<typeof SessionRequestSchema>): boolean {
    const outbound = this.outbound;
    if (!outbound) return false;
    if (outbound.size >= maxUnsentMessages) {
      this.options.log(`agent ${this.options.info.hostId}: the controller left ${outbound.size} messages unread; starting a new session`);
      this.outbound = undefined;
      this.startLapseTimer();
      this.attempt?.abort();
      return false;
    }
    return outbound.push(create(SessionRequestSchema, message));
  }

  private async run(): Promise<void> {
    const minBackoffMs = this.options.minBackoffMs ?? 200;
    const maxBackoffMs = this.options.maxBackoffMs ?? 5_000;
    let backoffMs = minBackoffMs;
    const signal = this.stopping.signal;
    const controllers = this.options.controllers;
    for (let attempt = 0; !signal.aborted; attempt++) {
      // Each attempt goes to the next address: a dead leader's standby takes over.
      const controller = controllers[attempt % controllers.length]!;
      // An arm begun for the last session and still under way would be missing from this
      // registration's armed list: the controller would take it for lost, arm it again (EEXIST)
      // and give its registers to another job while this host holds them. Register once every
      // arm and disarm has settled (each is bounded by the helper's request deadline).
      if (this.inFlight.size > 0) {
        await new Promise<void>((resolve) => {
          const done = (): void => {
            signal.removeEventListener("abort", done);
            resolve();
          };
          signal.addEventListener("abort", done, { once: true });
          void Promise.allSettled([...this.inFlight]).then(done);
        });
        if (signal.aborted) break;
      }
      const client = createClient(AgentService, controller, channelCredentials(this.options.transport), channelOptions(this.options.transport));
      const outbound = sessionRequestQueue();
      // Ends this session (not the agent) when the controller falls silent, and with the agent.
      // (Not AbortSignal.any: a composite signal nothing else references may be collected with
      // its listeners, and then an abort never reaches the call.)
      const silent = new AbortController();
      const endWithAgent = () => silent.abort();
      signal.addEventListener("abort", endWithAgent, { once: true });
      this.attempt = silent;
      let heartbeat: NodeJS.Timeout | undefined;
      let lastHeardMs = Date.now();
      try {
        const listed = this.core.armed();
        this.listed = listed;
        outbound.push(create(SessionRequestSchema, { msg: { case: "register", value: { info: this.options.info, armed: listed, readsBatches: true } } }));
        for await (const received of client.session(outbound, { signal: silent.signal })) {
          lastHeardMs = Date.now();
          for (const message of unbatched(received)) {
            switch (message.msg.case) {
              case "registered": {
                if (!this.epochs.accept(message.msg.value.epoch)) {
                  this.options.log(`agent ${this.options.info.hostId}: ${controller} leads with epoch ${message.msg.value.epoch}, older than ${this.epochs.highest}: a deposed leader; moving on`);
                  silent.abort();
                  break;
                }
                // A watch this registration listed as armed was disarmed since (the lease lapsed while
                // the connection was being made): the controller would believe it armed. Start over.
                const gone = this.disarmedSince(listed);
                if (gone.length > 0) {
                  this.options.log(`agent ${this.options.info.hostId}: ${gone.length} target(s) listed as armed when registering were disarmed since; registering again`);
                  silent.abort();
                  break;
                }
                // Answers go out in batches once this controller reads them.
                outbound.batching = message.msg.value.readsBatches;
                this.outbound = outbound;
                backoffMs = minBackoffMs;
                clearTimeout(this.lapseTimer);
                this.lapseTimer = undefined;
                this.core.sessionRestored();
                this.leaseMs = message.msg.value.leaseMs;
                const everyMs = Math.max(50, message.msg.value.heartbeatMs || 5_000);
                heartbeat = setInterval(() => {
                  // Each heartbeat is answered: a lease without an answer means a dead session, whatever TCP says.
                  if (this.leaseMs > 0 && Date.now() - lastHeardMs > this.leaseMs) {
                    this.options.log(`agent ${this.options.info.hostId}: no answer from ${controller} for ${Date.now() - lastHeardMs} ms; reconnecting`);
                    silent.abort();
                    return;
                  }
                  this.send({ msg: { case: "heartbeat", value: { sentUnixMs: BigInt(Date.now()), policy: this.options.info.policy } } });
                }, everyMs);
                if (this.unsentReplaced > 0) this.options.log(`agent ${this.options.info.hostId}: sending ${this.unsent.size} target report(s) kept while disconnected (${this.unsentReplaced} older one(s) replaced by newer ones of the same target)`);
                if (this.infoUnsent) this.infoChanged();
                for (const report of this.unsent.values()) this.send({ msg: { case: "targetReport", value: report } });
                for (const [key, { report }] of this.finals) if (!this.unsent.has(key)) this.send({ msg: { case: "targetReport", value: report } });
                this.unsent.clear();
                this.unsentReplaced = 0;
                this.options.log(`agent ${this.options.info.hostId}: registered with ${controller} (epoch ${message.msg.value.epoch})`);
                this.registeredOnce.resolve();
                break;
              }
              case "resolve": {
                const request = message.msg.value;
                void this.core.resolve(request).then((value) => outbound.push(create(SessionRequestSchema, { msg: { case: "resolveResult", value } })));
                break;
              }
              case "arm": {
                const request = message.msg.value;
                if (!this.epochs.accept(request.epoch)) {
                  outbound.push(create(SessionRequestSchema, { msg: { case: "armResult", value: { requestId: request.requestId, jobId: request.jobId, pid: request.pid, error: staleEpoch(request.epoch, this.epochs.highest) } } }));
                  break;
                }
                // A watch armed again on that job and pid (a reused pid) is not ended by an older final report.
                this.finals.delete(`${request.jobId}/${request.pid}`);
                void this.track(this.core.arm(request)).then((value) => outbound.push(create(SessionRequestSchema, { msg: { case: "armResult", value } })));
                break;
              }
              case "discover": {
                const request = message.msg.value;
                void this.core.discover(request).then((value) => outbound.push(create(SessionRequestSchema, { msg: { case: "discoverResult", value } })));
                break;
              }
              case "follow":
                this.core.follow(message.msg.value);
                break;
              case "unfollow":
                this.core.unfollow(message.msg.value.jobId);
                break;
              case "disarmAll": {
                const request = message.msg.value;
                if (!this.epochs.accept(request.epoch)) {
                  outbound.push(create(SessionRequestSchema, { msg: { case: "disarmAllResult", value: { requestId: request.requestId, error: staleEpoch(request.epoch, this.epochs.highest) } } }));
                  break;
                }
                this.options.log(`agent ${this.options.info.hostId}: kill switch: clearing every debug register (${request.reason})`);
                void this.track(this.core.disarmEverything(request.reason)).then(
                  (disarmed) => outbound.push(create(SessionRequestSchema, { msg: { case: "disarmAllResult", value: { requestId: request.requestId, disarmed } } })),
                  (err: unknown) => outbound.push(create(SessionRequestSchema, { msg: { case: "disarmAllResult", value: { requestId: request.requestId, error: toAgentError(err) } } })),
                );
                break;
              }
              case "disarm": {
                const request = message.msg.value;
                if (!this.epochs.accept(request.epoch)) {
                  outbound.push(create(SessionRequestSchema, { msg: { case: "disarmResult", value: { requestId: request.requestId, jobId: request.jobId, pid: request.pid, error: staleEpoch(request.epoch, this.epochs.highest) } } }));
                  break;
                }
                void this.track(this.core.disarm(request)).then((value) => outbound.push(create(SessionRequestSchema, { msg: { case: "disarmResult", value } })));
                break;
              }
              default:
                break;
            }
          }
        }
        if (!signal.aborted) this.options.log(`agent ${this.options.info.hostId}: ${controller} closed the session`);
      } catch (err) {
        if (!signal.aborted) this.options.log(`agent ${this.options.info.hostId}: session with ${controller} failed: ${err instanceof Error ? err.message : String(err)}`);
      } finally {
        signal.removeEventListener("abort", endWithAgent);
        clearInterval(heartbeat);
        if (this.outbound === outbound) {
          this.outbound = undefined;
          this.startLapseTimer();
        }
        outbound.close();
        client.close();
      }
      if (signal.aborted) break;
      // Pause only once every address has been tried.
      if ((attempt + 1) % controllers.length !== 0) continue;
      await delay(backoffMs, undefined, { signal }).catch(() => {});
      backoffMs = Math.min(maxBackoffMs, backoffMs * 2);
    }
  }
}
