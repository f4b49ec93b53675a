// One leader term's controller: it wires the parts (submit flow, queue and
// preemption, job ending and deadlines, target liveness and reports,
// followers, kill switch) around their shared core, and serves agent sessions.
import {
  JobState,
  backendName,
  TrapDelivery,
  isSubjectToken,
  unbatched,
  type Agent,
  type Job,
  type JobSpec,
  type SessionRequest,
  type SessionResponse,
} from "../proto/index.js";
import { plaintextCaller, type Caller } from "./access.js";
import { listAgents } from "./agent-listing.js";
import { AgentSession } from "./agent-session.js";
import { Arming } from "./arming.js";
import { ControllerCore } from "./controller-core.js";
import type { ControllerCoreOptions } from "./controller-options.js";
import { InvalidRequestError, PermissionDeniedError, PreconditionError } from "./errors.js";
import { FinishedRetention } from "./finished-retention.js";
import { Followers } from "./followers.js";
import { JobEnding } from "./job-ending.js";
import { encodePageToken, type ListQuery } from "./job-listing.js";
import { placementJob } from "./job-placement.js";
import { JobQueue } from "./job-queue.js";
import { isJobFinal, isTargetActive } from "./job-state.js";
import type { JobStore } from "./job-store.js";
import { disarmAll, type KillSwitchResult } from "./kill-switch.js";
import { SubmitFlow } from "./submit.js";
import { TargetLiveness } from "./target-liveness.js";
import { TargetReports } from "./target-reports.js";

export type { ControllerCoreOptions } from "./controller-options.js";
export { checkHostBackend } from "./host-backend.js";
export { describeJobSpec } from "./job-description.js";

export type { KillSwitchResult } from "./kill-switch.js";

/** One page of `jobs ls`. */
export interface JobListing {
  jobs: Job[];
  /** Empty on the last page. */
  nextPageToken: string;
  /** Jobs matching the query, over every page. */
  total: number;
}

/** Jobs, sessions and the ledger of one controller: the RPC services' one entry. */
export class Controller {
  private readonly core: ControllerCore;
  private leaseTimer: NodeJS.Timeout | undefined;
  private readonly ending: JobEnding;
  private readonly arming: Arming;
  private readonly queue: JobQueue;
  private readonly submitFlow: SubmitFlow;
  private readonly followers: Followers;
  private readonly liveness: TargetLiveness;
  private readonly reports: TargetReports;
  private readonly retention: FinishedRetention | undefined;

  constructor(store: JobStore, options: ControllerCoreOptions) {
    this.core = new ControllerCore(store, options);
    // Arming and ending reach the queue and the followers, made after them, when they run.
    this.arming = new Arming(this.core, { enqueue: (job) => this.queue.enqueue(job), drainSoon: () => this.queue.drainSoon() });
    this.ending = new JobEnding(this.core, { dequeue: (id) => this.queue.dequeue(id), drainSoon: () => this.queue.drainSoon(), unfollow: (job) => this.followers.unfollow(job) });
    this.queue = new JobQueue(this.core, this.arming, this.ending);
    this.submitFlow = new SubmitFlow(this.core, this.arming, this.queue, this.ending);
    this.followers = new Followers(this.core, this.submitFlow, this.queue, this.arming);
    this.liveness = new TargetLiveness(this.core, this.submitFlow, this.queue, this.arming, this.followers);
    this.reports = new TargetReports(this.core, this.ending, this.queue);
    this.retention = options.retention && new FinishedRetention(store, options.retention, options.log);
  }

  /** Loads stored jobs, rebuilds the ledger, the queue and the deadline timers; starts the retention sweeps. */
  async start(): Promise<void> {
    // The active jobs; finished ones stay in the store (memory indexes them).
    const jobs = await this.core.store.load();
    for (const job of jobs) {
      for (const target of job.targets) {
        if (isTargetActive(target)) this.core.ledger.restore(target.hostId, target.pid, placementJob(job), target.slots);
      }
      this.ending.scheduleDeadline(job);
    }
    for (const job of jobs) this.queue.enqueue(job);
    this.queue.drainSoon();
    this.core.startedMs = Date.now();
    this.leaseTimer = setInterval(() => this.expireLeases(), Math.max(100, Math.floor(this.core.options.leaseMs / 4)));
    this.retention?.start();
    this.core.options.log(`controller: loaded ${jobs.length + this.core.store.countFinished()} job(s), ${jobs.length} active, ${this.queue.size} queued`);
  }

  /** Stops timers and closes every session (armed targets stay with their agents). */
  stop(): void {
    // Job watchers of this term end UNAVAILABLE: their clients reconnect to the next leader.
    this.core.stopped.abort();
    clearInterval(this.leaseTimer);
    this.retention?.stop();
    this.ending.stop();
    this.queue.stop();
    for (const session of this.core.sessions.values()) session.close("controller stopping");
    this.core.sessions.clear();
  }

  /**
   * Validates a job, finds its targets, places it within the ledger and arms
   * what was placed (see submit.ts); refused, or queued when it may wait.
   */
  submit(spec: JobSpec, caller: Caller = plaintextCaller): Promise<Job> {
    return this.submitFlow.submit(spec, caller);
  }

  /** A job by id (a big finished job without its targets). */
  get(id: string): Promise<Job> {
    return this.core.get(id);
  }

  /** The job with every target (a big finished job's are read back from the store). */
  getFull(id: string): Promise<Job> {
    return this.core.getFull(id);
  }

  /** One page of jobs, newest first; big finished jobs without their targets (get one to see them). */
  async list(query: ListQuery): Promise<JobListing> {
    const page = await this.core.store.list(query);
    return { jobs: page.jobs, total: page.total, nextPageToken: page.next ? encodePageToken(page.next) : "" };
  }

  /** Every active job (what the metrics count besides the finished ones). */
  activeJobs(): Job[] {
    return this.core.store.active();
  }

  /** Finished jobs by state, from the store's index. */
  finishedJobs(state: JobState): number {
    return this.core.store.countFinished(new Set([state]));
  }

  /** Disarms every active target and marks the job cancelled. */
  async cancel(id: string, caller: Caller = plaintextCaller): Promise<Job> {
    const job = await this.core.get(id);
    if (isJobFinal(job)) return this.core.getFull(id);
    return this.ending.end(id, JobState.CANCELLED, caller.who ? `cancelled by ${caller.who}` : "cancelled by user");
  }

  /** The kill switch (see kill-switch.ts): every register cleared, every active job cancelled. */
  disarmAll(reason: string, timeoutMs: number): Promise<KillSwitchResult> {
    return disarmAll(this.core, this.ending, reason, timeoutMs);
  }

  /**
   * The job now, then after every change, until it is final; a follower that
   * reads slowly gets the newest state and the count it skipped.
   */
  watch(id: string, signal: AbortSignal): AsyncGenerator<{ job: Job; skipped: bigint }> {
    return this.followers.watch(id, signal);
  }

  /** Job states waiting for followers that have not read them (at most one per follower), and states they skipped so far. */
  followerBacklog(): { followers: number; pending: number; skipped: number } {
    return this.followers.backlog();
  }

  /** Agents with an open session. */
  connectedAgents(): number {
    let n = 0;
    for (const session of this.core.sessions.values()) if (session.isOpen) n++;
    return n;
  }

  /** Jobs with targets waiting in the queue for registers. */
  queuedJobs(): number {
    return this.queue.size;
  }

  /** Every agent ever seen by this controller, with the slot map of its targets. */
  agents(): Agent[] {
    return listAgents(this.core);
  }

  // ---- agent sessions ---------------------------------------------------

  /** Serves one AgentService.Session stream. */
  async *session(requests: AsyncIterable<SessionRequest>, signal: AbortSignal, certifiedHostId?: string): AsyncGenerator<SessionResponse> {
    const iterator = requests[Symbol.asyncIterator]();
    const first = await iterator.next();
    if (first.done || first.value.msg.case !== "register") throw new PreconditionError("a session starts with Register");
    const register = first.value.msg.value;
    const info = register.info;
    if (!info || !isSubjectToken(info.hostId)) throw new InvalidRequestError(`host id '${info?.hostId ?? ""}' must be letters, digits, '-' or '_'`);
    // An agent speaks for its own host only: the host id its certificate names.
    if (certifiedHostId !== undefined && info.hostId !== certifiedHostId) throw new PermissionDeniedError(`the certificate of agent ${certifiedHostId} may not register host ${info.hostId}`);

    this.core.sessions.get(info.hostId)?.close("replaced by a new session from the same host");
    this.core.options.metrics?.registered(this.core.known.has(info.hostId));
    const session = new AgentSession(info, this.core.options.requestTimeoutMs, (line) => this.core.options.log(line), register.readsBatches);
    this.core.sessions.set(info.hostId, session);
    this.core.known.set(info.hostId, { info, lastSeenMs: Date.now() });
    this.core.options.log(`agent ${info.hostId}: connected (${info.hostname}, kernel ${info.kernel}, ${register.armed.length} armed target(s))`);
    session.send({ msg: { case: "registered", value: { heartbeatMs: this.core.options.heartbeatMs, leaseMs: this.core.options.leaseMs, epoch: this.core.options.epoch, readsBatches: true } } });

    const onAbort = () => session.close("session cancelled");
    signal.addEventListener("abort", onAbort);
    void (async () => {
      try {
        for (;;) {
          const next = await iterator.next();
          if (next.done) break;
          session.touch();
          for (const message of unbatched(next.value)) this.onAgentMessage(session, message);
        }
      } catch {
        // The stream broke: the session ends below.
      } finally {
        signal.removeEventListener("abort", onAbort);
        this.dropSession(session, "session ended");
      }
    })();
    void this.liveness
      .reconcile(session, register.armed)
      .catch((err) => this.core.options.log(`agent ${info.hostId}: reconcile failed: ${String(err)}`))
      // Queued targets on this host wait for its session (JobQueue.placeable): offer them registers now.
      .finally(() => this.queue.drainSoon());
    yield* session.outbound;
  }

  private dropSession(session: AgentSession, reason: string): void {
    session.close(reason);
    this.core.known.set(session.hostId, { info: session.info, lastSeenMs: session.lastSeenMs });
    if (this.core.sessions.get(session.hostId) === session) {
      this.core.sessions.delete(session.hostId);
      this.core.options.log(`agent ${session.hostId}: ${session.endReason ?? reason}`);
    }
  }

  private expireLeases(): void {
    const now = Date.now();
    for (const session of this.core.sessions.values()) {
      if (now - session.lastSeenMs > this.core.options.leaseMs) this.dropSession(session, `lease expired (silent for ${now - session.lastSeenMs} ms)`);
    }
    this.liveness.markSilentHostsLost(now);
    this.queue.retryIfDue(now);
  }

  private onAgentMessage(session: AgentSession, message: SessionRequest): void {
    switch (message.msg.case) {
      case "infoUpdate": {
        // A restarted helper tested its backends and traps again. The host id stays the session's (its certificate's).
        Object.assign(session.info, message.msg.value, { hostId: session.hostId });
        const traps = session.info.trapChecks.map((c) => `${backendName(c.backend)} ${TrapDelivery[c.delivery]?.toLowerCase().replace("_", "-") ?? "?"}`);
        this.core.options.log(`agent ${session.hostId}: new helper ${session.info.helperVersion}; backends ${session.info.backends.map(backendName).join(",") || "none"}; traps ${traps.join(", ") || "not tested"}`);
        // Waiting targets there that cannot trap now fail (failUnarmable) rather than wait.
        this.queue.drainSoon();
        return;
      }
      case "heartbeat":
        // The agent's policy was reloaded: agents ls shows the one in effect.
        session.info.policy = message.msg.value.policy;
        session.send({ msg: { case: "heartbeatAck", value: { sentUnixMs: BigInt(Date.now()) } } });
        return;
      case "resolveResult":
      case "armResult":
      case "disarmResult":
      case "discoverResult":
      case "disarmAllResult":
        session.answer(message.msg.value.requestId, message.msg.value);
        return;
      case "processAppeared": {
        const { jobId, process } = message.msg.value;
        if (process) void this.followers.addTarget(jobId, session, process).catch((err) => this.core.options.log(`job ${jobId}: adding ${session.hostId}/${process.pid} failed: ${String(err)}`));
        return;
      }
      case "targetReport":
        void this.reports.onTargetReport(session.hostId, message.msg.value).catch((err) => this.core.options.log(`agent ${session.hostId}: report failed: ${String(err)}`));
        return;
      default:
        return;
    }
  }
}
