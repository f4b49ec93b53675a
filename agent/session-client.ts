// The agent's side of AgentService.Session: dials the controller, registers,
// heartbeats, runs the commands it receives, and reconnects with backoff.
// Target reports made while disconnected are kept and sent after the next
// registration, so the controller hears every ending.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { setTimeout as delay } from "node:timers/promises";
import { AgentService, AsyncQueue, SessionRequestSchema, createClient, type AgentInfo, type SessionRequest, type TargetReport } from "../proto/index.js";
import type { AgentCore } from "./agent.js";

export interface SessionClientOptions {
  controller: string;
  info: AgentInfo;
  log: (line: string) => void;
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/** Keeps one session with the controller open for as long as the agent runs. */
export class SessionClient {
  private readonly stopping = new AbortController();
  private outbound: AsyncQueue<SessionRequest> | undefined;
  private registeredOnce: { promise: Promise<void>; resolve: () => void };
  private readonly unsent: TargetReport[] = [];
  private loop: Promise<void> | undefined;
  /** Lease the controller granted at the last registration. */
  private leaseMs = 0;
  /** Fires when no session has been live for a lease: the agent then disarms on its own. */
  private lapseTimer: NodeJS.Timeout | undefined;
  /** Aborts the current session attempt. */
  private attempt: AbortController | undefined;

  constructor(
    private readonly core: AgentCore,
    private readonly options: SessionClientOptions,
  ) {
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.registeredOnce = { promise, resolve };
    core.onReport = (report) => {
      if (!this.send({ msg: { case: "targetReport", value: report } })) this.unsent.push(report);
    };
    // A late joiner seen while disconnected is found again by the discovery after re-registering.
    core.onAppeared = (appeared) => void this.send({ msg: { case: "processAppeared", value: appeared } });
  }

  /** Resolves once the controller has accepted a session. */
  registered(): Promise<void> {
    return this.registeredOnce.promise;
  }

  start(): void {
    this.loop = this.run();
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
      const reason = `no session with ${this.options.controller} for ${this.leaseMs} ms (the lease): disarmed by the agent until the controller re-arms it`;
      this.options.log(`agent ${this.options.info.hostId}: ${reason}`);
      // A registration already on its way lists the watches as armed: start over with the truth.
      void this.core.suspendAll(reason).finally(() => this.attempt?.abort());
    }, this.leaseMs);
  }

  private send(message: MessageInitShape<typeof SessionRequestSchema>): boolean {
    return this.outbound?.push(create(SessionRequestSchema, message)) ?? false;
  }

  private async run(): Promise<void> {
    const minBackoffMs = this.options.minBackoffMs ?? 200;
    const maxBackoffMs = this.options.maxBackoffMs ?? 5_000;
    let backoffMs = minBackoffMs;
    const signal = this.stopping.signal;
    while (!signal.aborted) {
      const client = createClient(AgentService, this.options.controller);
      const outbound = new AsyncQueue<SessionRequest>();
      // Ends this session (not the agent) when the controller falls silent.
      const silent = new AbortController();
      this.attempt = silent;
      let heartbeat: NodeJS.Timeout | undefined;
      let lastHeardMs = Date.now();
      try {
        outbound.push(create(SessionRequestSchema, { msg: { case: "register", value: { info: this.options.info, armed: this.core.armed() } } }));
        for await (const message of client.session(outbound, { signal: AbortSignal.any([signal, silent.signal]) })) {
          lastHeardMs = Date.now();
          switch (message.msg.case) {
            case "registered": {
              this.outbound = outbound;
              backoffMs = minBackoffMs;
              clearTimeout(this.lapseTimer);
              this.lapseTimer = undefined;
              this.leaseMs = message.msg.value.leaseMs;
              const everyMs = Math.max(50, message.msg.value.heartbeatMs || 5_000);
              heartbeat = setInterval(() => {
                // Each heartbeat is answered: a lease without an answer means a dead session, whatever TCP says.
                if (this.leaseMs > 0 && Date.now() - lastHeardMs > this.leaseMs) {
                  this.options.log(`agent ${this.options.info.hostId}: no answer from ${this.options.controller} for ${Date.now() - lastHeardMs} ms; reconnecting`);
                  silent.abort();
                  return;
                }
                this.send({ msg: { case: "heartbeat", value: { sentUnixMs: BigInt(Date.now()) } } });
              }, everyMs);
              for (const report of this.unsent.splice(0)) this.send({ msg: { case: "targetReport", value: report } });
              this.options.log(`agent ${this.options.info.hostId}: registered with ${this.options.controller}`);
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
              void this.core.arm(request).then((value) => outbound.push(create(SessionRequestSchema, { msg: { case: "armResult", value } })));
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
            case "disarm": {
              const request = message.msg.value;
              void this.core.disarm(request).then((value) => outbound.push(create(SessionRequestSchema, { msg: { case: "disarmResult", value } })));
              break;
            }
            default:
              break;
          }
        }
        if (!signal.aborted) this.options.log(`agent ${this.options.info.hostId}: the controller closed the session`);
      } catch (err) {
        if (!signal.aborted) this.options.log(`agent ${this.options.info.hostId}: session with ${this.options.controller} failed: ${err instanceof Error ? err.message : String(err)}`);
      } finally {
        clearInterval(heartbeat);
        if (this.outbound === outbound) {
          this.outbound = undefined;
          this.startLapseTimer();
        }
        outbound.close();
        client.close();
      }
      if (signal.aborted) break;
      await delay(backoffMs, undefined, { signal }).catch(() => {});
      backoffMs = Math.min(maxBackoffMs, backoffMs * 2);
    }
  }
}
