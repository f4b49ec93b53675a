// One connected agent: its registration, its lease, and request/response
// correlation for the commands the controller sends down its session.
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  ArmSchema,
  DisarmAllSchema,
  DisarmSchema,
  DiscoverSchema,
  ResolveSchema,
  SessionResponseSchema,
  sessionResponseQueue,
  type AgentInfo,
  type ArmResult,
  type DisarmAllResult,
  type DisarmResult,
  type DiscoverResult,
  type ResolveResult,
  type SessionResponse,
} from "../proto/index.js";
import { AgentUnavailableError } from "./errors.js";

type RequestKind = "resolve" | "arm" | "disarm" | "discover" | "disarmAll";

/** A command waiting for its answer: `deadline` on performance.now()'s clock; `arm` is what an arm asked for, kept to disarm a late answer (see abandon). */
type Pending = { resolve: (value: never) => void; reject: (err: unknown) => void; kind: RequestKind; deadline: number; timeoutMs: number; arm: { jobId: string; pid: number; epoch?: bigint } | undefined };

/**
 * Messages an agent may leave unread before its session is dropped. A live
 * agent reads each command as it comes; one that stops reading (while its
 * heartbeats still arrive and are answered) must not grow the controller's
 * memory without bound. It reconnects and is reconciled.
 */
export const maxUnreadMessages = 10_000;

/** Arms given up on per session whose late answers are still looked for. */
const maxAbandonedArms = 10_000;

/** The message of each request the controller sends down a session. */
const requestSchemas = { resolve: ResolveSchema, arm: ArmSchema, disarm: DisarmSchema, discover: DiscoverSchema, disarmAll: DisarmAllSchema };

/** A live session with one agent. */
export class AgentSession {
  /** What the controller sends; the session handler streams it to the agent (in batches once the agent reads them: readsBatches). */
  readonly outbound = sessionResponseQueue();
  lastSeenMs = Date.now();
  private nextRequestId = 1n;
  /**
   * Commands waiting for an answer, with the session's request timeout, in
   * the order sent: their deadlines come in the same order, so one timer per
   * session (set for the oldest) expires them, not a timer per command (40,000
   * of them while a fleet-wide job is armed, each living as long as its round
   * trip and so leaving the young generation).
   */
  private readonly pending = new Map<bigint, Pending>();
  /** Commands with a timeout of their own (the kill switch's): a timer each, they are rare. */
  private readonly pendingOwnTimeout = new Map<bigint, Pending & { timer: NodeJS.Timeout }>();
  private expiryTimer: NodeJS.Timeout | undefined;
  /** Arms given up for want of an answer: should one arrive armed after all, nobody owns that watch. */
  private readonly abandonedArms = new Map<bigint, { jobId: string; pid: number; epoch: bigint }>();
  private readonly ended = new AbortController();

  constructor(
    readonly info: AgentInfo,
    readonly requestTimeoutMs: number,
    /** Where what happens to late arms is told. */
    private readonly onLateArm: (line: string) => void = () => {},
    /** The agent reads SessionResponse.batch (its Register said so): commands sent in one turn go in one envelope. */
    readsBatches = false,
  ) {
    this.outbound.batching = readsBatches;
  }

  get hostId(): string {
    return this.info.hostId;
  }

  /** Aborted when the session ends for any reason. */
  get signal(): AbortSignal {
    return this.ended.signal;
  }

  get isOpen(): boolean {
    return !this.ended.signal.aborted;
  }

  /** Records that the agent spoke (any message renews the lease). */
  touch(): void {
    this.lastSeenMs = Date.now();
  }

  /** Why the session ended (the first reason given), once it has. */
  endReason: string | undefined;

  /** Sends a message that expects no answer; an agent that does not read ends its session. */
  send(message: MessageInitShape<typeof SessionResponseSchema>): void {
    if (this.outbound.size >= maxUnreadMessages) {
      this.close(`not reading: ${this.outbound.size} messages unread; session dropped`);
      return;
    }
    this.outbound.push(create(SessionResponseSchema, message));
  }

  resolve(request: Omit<MessageInitShape<typeof ResolveSchema>, "requestId">): Promise<ResolveResult> {
    return this.request("resolve", request);
  }

  arm(request: Omit<MessageInitShape<typeof ArmSchema>, "requestId">): Promise<ArmResult> {
    return this.request("arm", request);
  }

  disarm(request: Omit<MessageInitShape<typeof DisarmSchema>, "requestId">): Promise<DisarmResult> {
    return this.request("disarm", request);
  }

  discover(request: Omit<MessageInitShape<typeof DiscoverSchema>, "requestId">): Promise<DiscoverResult> {
    return this.request("discover", request);
  }

  /** The kill switch; `timeoutMs` instead of the usual request timeout. */
  disarmAll(request: Omit<MessageInitShape<typeof DisarmAllSchema>, "requestId">, timeoutMs: number): Promise<DisarmAllResult> {
    return this.request("disarmAll", request, timeoutMs);
  }

  private request<T>(kind: RequestKind, value: object, timeoutMs = this.requestTimeoutMs): Promise<T> {
    if (!this.isOpen) return Promise.reject(new AgentUnavailableError(`agent ${this.hostId} is not connected`, this.hostId));
    const requestId = this.nextRequestId++;
    return new Promise<T>((resolve, reject) => {
      const waiter: Pending = { resolve: resolve as (value: never) => void, reject, kind, deadline: performance.now() + timeoutMs, timeoutMs, arm: kind === "arm" ? (value as { jobId: string; pid: number; epoch?: bigint }) : undefined };
      if (timeoutMs === this.requestTimeoutMs) {
        this.pending.set(requestId, waiter);
        this.expiryTimer ??= setTimeout(() => this.expire(), timeoutMs);
      } else {
        const timer = setTimeout(() => {
          this.pendingOwnTimeout.delete(requestId);
          this.timedOut(requestId, waiter);
        }, timeoutMs);
        this.pendingOwnTimeout.set(requestId, { ...waiter, timer });
      }
      // The request's message made once, with its id (not the caller's object copied and then converted: a fleet-wide job sends 40,000 arms).
      const message = create(requestSchemas[kind] as typeof ArmSchema, value as MessageInitShape<typeof ArmSchema>);
      message.requestId = requestId;
      this.send({ msg: { case: kind, value: message } } as MessageInitShape<typeof SessionResponseSchema>);
    });
  }

  /** Fails the commands whose deadline passed, oldest first; sets the timer again for the oldest left. */
  private expire(): void {
    this.expiryTimer = undefined;
    const now = performance.now();
    for (const [requestId, waiter] of this.pending) {
      if (waiter.deadline > now) {
        // The loop's clock may lag performance.now() by a fraction of a millisecond: never expire early.
        this.expiryTimer = setTimeout(() => this.expire(), Math.max(1, Math.ceil(waiter.deadline - now)));
        return;
      }
      this.pending.delete(requestId);
      this.timedOut(requestId, waiter);
    }
  }

  private timedOut(requestId: bigint, waiter: Pending): void {
    if (waiter.arm) this.abandon(requestId, waiter.arm);
    waiter.reject(new AgentUnavailableError(`agent ${this.hostId} did not answer ${waiter.kind} within ${waiter.timeoutMs} ms`, this.hostId));
  }

  private abandon(requestId: bigint, arm: { jobId: string; pid: number; epoch?: bigint }): void {
    this.abandonedArms.set(requestId, { jobId: arm.jobId, pid: arm.pid, epoch: arm.epoch ?? 0n });
    // Bounded: the oldest give way (the agent's next registration lists what is armed in any case).
    for (const id of this.abandonedArms.keys()) {
      if (this.abandonedArms.size <= maxAbandonedArms) break;
      this.abandonedArms.delete(id);
    }
  }

  /**
   * Delivers an answer to the request it belongs to; false if none waits for
   * it. An arm the controller gave up on that was armed after all is
   * disarmed: the job already took it for failed, and nothing else would
   * ever clear those registers or let go of the target.
   */
  answer(requestId: bigint, result: ResolveResult | ArmResult | DisarmResult | DiscoverResult | DisarmAllResult): boolean {
    const abandoned = this.abandonedArms.get(requestId);
    if (abandoned) {
      this.abandonedArms.delete(requestId);
      const armed = result as ArmResult;
      if (!armed.error && armed.jobId === abandoned.jobId && armed.pid === abandoned.pid) {
        this.onLateArm(`agent ${this.hostId}: job ${abandoned.jobId} was armed on pid ${abandoned.pid} after its arm timed out; disarming it`);
        this.disarm(abandoned).catch((err: unknown) => this.onLateArm(`agent ${this.hostId}: disarming job ${abandoned.jobId} on pid ${abandoned.pid} after a late arm failed: ${err instanceof Error ? err.message : String(err)}`));
      }
      return true;
    }
    const waiter = this.pending.get(requestId);
    if (waiter) {
      // The expiry timer stays while commands wait (when it fires it finds the oldest still waiting), not past the last.
      this.pending.delete(requestId);
      if (this.pending.size === 0) {
        clearTimeout(this.expiryTimer);
        this.expiryTimer = undefined;
      }
      waiter.resolve(result as never);
      return true;
    }
    const own = this.pendingOwnTimeout.get(requestId);
    if (!own) return false;
    this.pendingOwnTimeout.delete(requestId);
    clearTimeout(own.timer);
    own.resolve(result as never);
    return true;
  }

  /** Ends the session: pending requests fail, the outbound stream closes. */
  close(reason: string): void {
    if (!this.isOpen) return;
    this.endReason = reason;
    this.ended.abort(new AgentUnavailableError(reason, this.hostId));
    clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    for (const [id, waiter] of this.pending) {
      this.pending.delete(id);
      waiter.reject(new AgentUnavailableError(`agent ${this.hostId}: ${reason}`, this.hostId));
    }
    for (const [id, waiter] of this.pendingOwnTimeout) {
      clearTimeout(waiter.timer);
      this.pendingOwnTimeout.delete(id);
      waiter.reject(new AgentUnavailableError(`agent ${this.hostId}: ${reason}`, this.hostId));
    }
    this.outbound.close();
  }
}
