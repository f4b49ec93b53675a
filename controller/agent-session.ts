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

type Pending = { resolve: (value: never) => void; reject: (err: unknown) => void; timer: NodeJS.Timeout };

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
  private readonly pending = new Map<bigint, Pending>();
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

  private request<T>(kind: "resolve" | "arm" | "disarm" | "discover" | "disarmAll", value: object, timeoutMs = this.requestTimeoutMs): Promise<T> {
    if (!this.isOpen) return Promise.reject(new AgentUnavailableError(`agent ${this.hostId} is not connected`, this.hostId));
    const requestId = this.nextRequestId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        if (kind === "arm") this.abandon(requestId, value as { jobId: string; pid: number; epoch?: bigint });
        reject(new AgentUnavailableError(`agent ${this.hostId} did not answer ${kind} within ${timeoutMs} ms`, this.hostId));
      }, timeoutMs);
      this.pending.set(requestId, { resolve: resolve as (value: never) => void, reject, timer });
      // The request's message made once, with its id (not the caller's object copied and then converted: a fleet-wide job sends 40,000 arms).
      const message = create(requestSchemas[kind] as typeof ArmSchema, value as MessageInitShape<typeof ArmSchema>);
      message.requestId = requestId;
      this.send({ msg: { case: kind, value: message } } as MessageInitShape<typeof SessionResponseSchema>);
    });
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
    if (!waiter) return false;
    this.pending.delete(requestId);
    clearTimeout(waiter.timer);
    waiter.resolve(result as never);
    return true;
  }

  /** Ends the session: pending requests fail, the outbound stream closes. */
  close(reason: string): void {
    if (!this.isOpen) return;
    this.endReason = reason;
    this.ended.abort(new AgentUnavailableError(reason, this.hostId));
    for (const [id, waiter] of this.pending) {
      clearTimeout(waiter.timer);
      waiter.reject(new AgentUnavailableError(`agent ${this.hostId}: ${reason}`, this.hostId));
      this.pending.delete(id);
    }
    this.outbound.close();
  }
}
