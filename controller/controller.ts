// The controller's core: agent sessions, job placement within the slot
// ledger, arming and disarming through the agents, deadlines, and the
// reconcile that makes a reconnecting agent and the stored jobs agree.
import { clone, create } from "@bufbuild/protobuf";
import {
  JobSchema,
  JobState,
  TargetState,
  backendName,
  resolveBackend,
  TargetSchema,
  TrapDelivery,
  matches as matchesSelector,
  parseSelector,
  isSubjectToken,
  type Agent,
  type AgentInfo,
  type ArmedTarget,
  type Chunk,
  type DiscoveredProcess,
  type Job,
  type JobSpec,
  type SessionRequest,
  type SessionResponse,
  type TargetReport,
} from "../proto/index.js";
import { AgentSession } from "./agent-session.js";
import { plaintextCaller, type Caller } from "./access.js";
import type { ControllerCoreOptions } from "./controller-options.js";
import { InvalidRequestError, PermissionDeniedError, PreconditionError, errorText } from "./errors.js";
import { checkHostBackend } from "./host-backend.js";
import { isJobFinal, isTargetActive, isTargetWaiting, notBehind, rollUp } from "./job-state.js";
import type { JobStore } from "./job-store.js";
import { ControllerCore } from "./controller-core.js";
import { JobEnding } from "./job-ending.js";
import { Arming, armRequest } from "./arming.js";
import { JobQueue } from "./job-queue.js";
import { SubmitFlow, type Plan } from "./submit.js";
import { Followers } from "./followers.js";
import { disarmAll, type KillSwitchResult } from "./kill-switch.js";
import { listAgents } from "./agent-listing.js";
import { decide, markPlaced, placementJob } from "./job-placement.js";
import { isFollowable, processPart } from "./job-targets.js";

export type { ControllerCoreOptions } from "./controller-options.js";
export { checkHostBackend } from "./host-backend.js";
export { describeJobSpec } from "./job-description.js";

/** Jobs, sessions and the ledger of one controller. */
export class Controller {
  private readonly core: ControllerCore;
  /** Jobs whose targets are being marked lost right now. */
  private readonly losing = new Set<string>();
  private leaseTimer: NodeJS.Timeout | undefined;

  private readonly ending: JobEnding;
  private readonly arming: Arming;
  private readonly queue: JobQueue;
  private readonly submitFlow: SubmitFlow;
  private readonly followers: Followers;

  constructor(store: JobStore, options: ControllerCoreOptions) {
    this.core = new ControllerCore(store, options);
    this.arming = new Arming(this.core, { enqueue: (job) => this.queue.enqueue(job), drainSoon: () => this.queue.drainSoon() });
    this.ending = new JobEnding(this.core, { dequeue: (id) => this.queue.dequeue(id), drainSoon: () => this.queue.drainSoon(), unfollow: (job) => this.followers.unfollow(job) });
    this.queue = new JobQueue(this.core, this.arming, this.ending);
    this.submitFlow = new SubmitFlow(this.core, this.arming, this.queue, this.ending);
    this.followers = new Followers(this.core, this.submitFlow, this.queue, this.arming);
  }

  /** Loads stored jobs, rebuilds the ledger, the queue and the deadline timers. */
  async start(): Promise<void> {
    const jobs = await this.core.store.load();
    for (const job of jobs) {
      if (isJobFinal(job)) continue;
      for (const target of job.targets) {
        if (isTargetActive(target)) this.core.ledger.restore(target.hostId, target.pid, placementJob(job), target.slots);
      }
      this.ending.scheduleDeadline(job);
    }
    for (const job of jobs) this.queue.enqueue(job);
    this.queue.drainSoon();
    this.core.startedMs = Date.now();
    this.leaseTimer = setInterval(() => this.expireLeases(), Math.max(100, Math.floor(this.core.options.leaseMs / 4)));
    this.core.options.log(`controller: loaded ${jobs.length} job(s), ${jobs.filter((j) => !isJobFinal(j)).length} active, ${this.queue.size} queued`);
  }

  /** Stops timers and closes every session (armed targets stay with their agents). */
  stop(): void {
    // Job watchers of this term end UNAVAILABLE: their clients reconnect to the next leader.
    this.core.stopped.abort();
    clearInterval(this.leaseTimer);
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
  get(id: string): Job {
    return this.core.get(id);
  }

  /** The job with every target (a big finished job's are read back from the store). */
  getFull(id: string): Promise<Job> {
    return this.core.getFull(id);
  }

  /** Every job, newest first; big finished jobs without their targets (get one to see them). */
  list(): Job[] {
    return this.core.store.all().sort((a, b) => Number(b.createdUnixMs - a.createdUnixMs));
  }

  /** Disarms every active target and marks the job cancelled. */
  async cancel(id: string, caller: Caller = plaintextCaller): Promise<Job> {
    const job = this.core.get(id);
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

  /** Every agent ever seen by this controller, with the slot map of its targets. */
  agents(): Agent[] {
    return listAgents(this.core);
  }

  /** Whether a job's hosts include this one (by id, labels or all). */
  private selectsHost(job: Job, info: AgentInfo): boolean {
    const target = job.spec?.target;
    if (!target) return false;
    if (target.allHosts) return true;
    if (target.hostSelector) return matchesSelector(parseSelector(target.hostSelector), info.labels);
    return target.hostIds.includes(info.hostId) || job.targets.some((t) => t.hostId === info.hostId);
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
    const session = new AgentSession(info, this.core.options.requestTimeoutMs, (line) => this.core.options.log(line));
    this.core.sessions.set(info.hostId, session);
    this.core.known.set(info.hostId, { info, lastSeenMs: Date.now() });
    this.core.options.log(`agent ${info.hostId}: connected (${info.hostname}, kernel ${info.kernel}, ${register.armed.length} armed target(s))`);
    session.send({ msg: { case: "registered", value: { heartbeatMs: this.core.options.heartbeatMs, leaseMs: this.core.options.leaseMs, epoch: this.core.options.epoch } } });

    const onAbort = () => session.close("session cancelled");
    signal.addEventListener("abort", onAbort);
    void (async () => {
      try {
        for (;;) {
          const next = await iterator.next();
          if (next.done) break;
          session.touch();
          this.onAgentMessage(session, next.value);
        }
      } catch {
        // The stream broke: the session ends below.
      } finally {
        signal.removeEventListener("abort", onAbort);
        this.dropSession(session, "session ended");
      }
    })();
    void this.reconcile(session, register.armed).catch((err) => this.core.options.log(`agent ${info.hostId}: reconcile failed: ${String(err)}`));
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

  /** When the host was last heard from: its live session's last message, else its last session's, but not before this controller started. */
  private lastHeardMs(hostId: string): number {
    const session = this.core.sessions.get(hostId);
    if (session?.isOpen) return session.lastSeenMs;
    return Math.max(this.core.known.get(hostId)?.lastSeenMs ?? 0, this.core.startedMs);
  }

  /** How long a job lets a host be silent before its targets there are lost. */
  private lostAfterMs(job: Job): number {
    const ms = Number(job.spec?.lostAfterMs ?? 0n);
    return ms > 0 ? ms : this.core.options.leaseMs;
  }

  /**
   * Targets on hosts silent for longer than their job allows become lost:
   * their registers stay held (the agent disarms on its side after the same
   * time) until the agent returns and is reconciled, or the job ends.
   */
  private markSilentHostsLost(now: number): void {
    for (const job of this.core.store.all()) {
      if (isJobFinal(job) || this.losing.has(job.id)) continue;
      const limit = this.lostAfterMs(job);
      const hosts = new Set<string>();
      for (const t of job.targets) {
        if ((t.state === TargetState.ARMED || t.state === TargetState.ARMING) && now - this.lastHeardMs(t.hostId) > limit) hosts.add(t.hostId);
      }
      if (hosts.size === 0) continue;
      this.losing.add(job.id);
      void this.core.store
        .mutate(job.id, (j) => {
          for (const t of j.targets) {
            if (!hosts.has(t.hostId) || (t.state !== TargetState.ARMED && t.state !== TargetState.ARMING)) continue;
            t.state = TargetState.LOST;
            t.reason = `agent ${t.hostId} silent for ${now - this.lastHeardMs(t.hostId)} ms (the job allows ${limit} ms); its registers stay reserved until it returns or the job ends`;
          }
          rollUp(j);
        }, hosts)
        .then(async (updated) => {
          this.core.publish(updated);
          this.core.options.log(`job ${job.id}: targets on ${[...hosts].join(", ")} lost`);
          if (updated.spec?.replaceLost) await this.replaceLost(updated.id, hosts);
        })
        .catch((err) => this.core.options.log(`job ${job.id}: marking targets lost failed: ${String(err)}`))
        .finally(() => this.losing.delete(job.id));
    }
  }

  /**
   * A sample that may replace lost targets looks for matching processes on
   * other connected hosts it selects; when the sample takes some, the lost
   * targets on `hosts` are given up (cancelled there: the agent disarms them
   * when it returns) in the same write. With no replacement they stay lost.
   */
  private async replaceLost(jobId: string, hosts: ReadonlySet<string>): Promise<void> {
    const job = this.core.store.get(jobId);
    if (!job?.spec?.target || isJobFinal(job)) return;
    const taken = new Set(job.targets.map((t) => t.hostId));
    const open = [...this.core.sessions.values()].filter((s) => s.isOpen && !taken.has(s.hostId) && this.selectsHost(job, s.info));
    const found = await Promise.all(
      open.map(async (session) => ({
        session,
        processes: await this.submitFlow.discover(session, job.spec!.target!).catch((err: unknown) => {
          this.core.options.log(`job ${jobId}: looking for a replacement on ${session.hostId} failed: ${errorText(err)}`);
          return [] as DiscoveredProcess[];
        }),
      })),
    );
    const plans = (await Promise.all(found.flatMap(({ session, processes }) => processes.map((p) => this.submitFlow.plan(session, job.spec!, p.pid))))).filter((p): p is Plan & { chunks: Chunk[] } => !("err" in p));
    const replaced = await this.core.withLedger(async () => {
      const current = this.core.store.get(jobId);
      if (!current || isJobFinal(current)) return undefined;
      const lost = current.targets.filter((t) => hosts.has(t.hostId) && t.state === TargetState.LOST);
      if (lost.length === 0 || plans.length === 0) return undefined;
      // Decide as if the lost targets were gone and the candidates waiting.
      const trial = clone(JobSchema, current);
      trial.targets = current.targets.filter((t) => !lost.includes(t)).map((t) => clone(TargetSchema, t));
      for (const p of plans) trial.targets.push(create(TargetSchema, { hostId: p.session.hostId, pid: p.pid, state: TargetState.PENDING, reason: "waiting to be placed", chunks: p.chunks, counts: {}, backend: resolveBackend(current.spec!) }));
      const before = this.core.ledgerCheckpoint(current).concat(this.core.ledgerCheckpoint(trial));
      for (const t of lost) this.core.ledger.release(t.hostId, t.pid, jobId);
      const decision = decide(this.core, trial);
      if (decision.placed.length === 0) {
        this.core.ledgerRollback(before);
        this.core.options.log(`job ${jobId}: no replacement for the lost targets on ${[...hosts].join(", ")} (${decision.shortfall?.reason ?? "none fits"})`);
        return undefined;
      }
      const placedKeys = new Set(decision.placed.map((p) => `${p.hostId}/${p.pid}`));
      try {
        const updated = await this.core.store.mutate(
          jobId,
          (j) => {
            for (const t of j.targets) {
              if (!lost.some((l) => l.hostId === t.hostId && l.pid === t.pid) || t.state !== TargetState.LOST) continue;
              t.state = TargetState.CANCELLED;
              t.reason = `${t.reason}; given up and replaced on another host (--replace-lost)`;
              t.slots = [];
            }
            for (const t of trial.targets) if (placedKeys.has(`${t.hostId}/${t.pid}`) && !j.targets.some((x) => x.hostId === t.hostId && x.pid === t.pid)) j.targets.push(clone(TargetSchema, t));
            markPlaced(j, decision);
          },
          [...hosts, ...decision.placed.map((p) => p.hostId)],
        );
        return { updated, decision };
      } catch (err) {
        this.core.ledgerRollback(before);
        throw err;
      }
    });
    if (!replaced) return;
    this.core.publish(replaced.updated);
    const placed = new Set(replaced.decision.placed.map((p) => `${p.hostId}/${p.pid}`));
    this.core.options.log(`job ${jobId}: lost targets on ${[...hosts].join(", ")} replaced by ${[...placed].join(", ")}`);
    await this.queue.evict(replaced.updated, replaced.decision.preempted);
    await this.arming.armTargets(replaced.updated, replaced.updated.targets.filter((t) => t.state === TargetState.ARMING && placed.has(`${t.hostId}/${t.pid}`)), []);
  }

  private expireLeases(): void {
    const now = Date.now();
    for (const session of this.core.sessions.values()) {
      if (now - session.lastSeenMs > this.core.options.leaseMs) this.dropSession(session, `lease expired (silent for ${now - session.lastSeenMs} ms)`);
    }
    this.markSilentHostsLost(now);
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
        void this.onTargetReport(session.hostId, message.msg.value).catch((err) => this.core.options.log(`agent ${session.hostId}: report failed: ${String(err)}`));
        return;
      default:
        return;
    }
  }

  /** A target changed on its host: counters moved, or it ended by itself. */
  private async onTargetReport(hostId: string, report: TargetReport): Promise<void> {
    if (report.state === TargetState.EXITED) {
      this.core.ledger.forgetProcess(hostId, report.pid);
      await this.exitWaiting(hostId, report.pid, report.reason);
    }
    if (!this.core.store.get(report.jobId)) return;
    const ends = report.state !== TargetState.ARMED && report.state !== TargetState.UNSPECIFIED;
    const job = await this.core.store.mutate(report.jobId, (j) => {
      const t = j.targets.find((x) => x.hostId === hostId && x.pid === report.pid);
      // A preempted target's counters were settled when it was disarmed.
      if (!t || isTargetWaiting(t)) return;
      // An ended target's counts only move forward: a report sent before its final counts must not undo them.
      if (report.counts && (isTargetActive(t) || !t.counts || notBehind(report.counts, t.counts))) t.counts = report.counts;
      if (report.threadsTotal > 0) {
        t.threadsTotal = report.threadsTotal;
        t.threadsArmed = report.threadsArmed;
      }
      if (report.reservedMask) t.reservedMask |= report.reservedMask;
      // An armed report describes an armed target; a lost one keeps saying why it is lost.
      if (report.state === TargetState.ARMED && report.reason && t.state === TargetState.ARMED) t.reason = report.reason;
      if (ends && isTargetActive(t)) {
        t.state = report.state;
        t.reason = report.reason;
      }
      rollUp(j);
    }, [hostId]);
    if (report.state === TargetState.EXITED) this.core.ledger.forgetProcess(hostId, report.pid);
    else this.core.ledger.noteReserved(hostId, report.pid, report.reservedMask);
    if (ends) {
      const t = job.targets.find((x) => x.hostId === hostId && x.pid === report.pid);
      if (!t || !isTargetActive(t)) this.core.ledger.release(hostId, report.pid, report.jobId);
      this.queue.drainSoon();
    }
    if (isJobFinal(job)) this.ending.forgetJobTimers(job);
    this.core.publish(job);
    const budget = job.spec?.maxHits ?? 0n;
    if (!isJobFinal(job) && budget > 0n && (job.counts?.delivered ?? 0n) >= budget) {
      await this.ending.end(job.id, JobState.COMPLETED, `max hits reached (${budget})`);
    }
  }

  /** A process exited: targets of other jobs still waiting for its registers end with it. */
  private async exitWaiting(hostId: string, pid: number, why: string): Promise<void> {
    for (const job of this.core.store.all()) {
      if (isJobFinal(job) || !job.targets.some((t) => t.hostId === hostId && t.pid === pid && isTargetWaiting(t))) continue;
      const updated = await this.core.store.mutate(job.id, (j) => {
        for (const t of j.targets) {
          if (t.hostId !== hostId || t.pid !== pid || !isTargetWaiting(t)) continue;
          t.state = TargetState.EXITED;
          t.reason = `${why} while waiting for debug registers`;
        }
        rollUp(j);
      }, [hostId]);
      if (isJobFinal(updated)) this.ending.forgetJobTimers(updated);
      this.core.publish(updated);
    }
  }

  /**
   * Makes a (re)connected agent and the stored jobs agree: registers armed
   * for no active job are disarmed; active targets the agent no longer has
   * are armed again with the same slots.
   */
  private async reconcile(session: AgentSession, armed: readonly ArmedTarget[]): Promise<void> {
    const have = new Set(armed.map((a) => `${a.jobId}/${a.pid}`));
    // Jobs that select this host: look for late joiners again, and arm a host that joined.
    for (const job of this.core.store.all()) {
      if (isJobFinal(job) || !job.spec?.target || !this.selectsHost(job, session.info)) continue;
      const selector = job.spec.target;
      if (isFollowable(selector)) session.send({ msg: { case: "follow", value: { jobId: job.id, selector: processPart(selector) } } });
      if (job.targets.some((t) => t.hostId === session.hostId) || !(selector.allHosts || selector.hostSelector)) continue;
      this.core.options.log(`job ${job.id}: host ${session.hostId} joined; looking for its targets`);
      const processes = await this.submitFlow.discover(session, selector).catch(() => [] as DiscoveredProcess[]);
      for (const p of processes) await this.followers.addTarget(job.id, session, p);
    }
    for (const a of armed) {
      const job = this.core.store.get(a.jobId);
      const target = job?.targets.find((t) => t.hostId === session.hostId && t.pid === a.pid);
      if (job && !isJobFinal(job) && target && isTargetActive(target)) {
        if (target.state === TargetState.LOST) {
          const updated = await this.core.store.mutate(job.id, (j) => {
            const t = j.targets.find((x) => x.hostId === session.hostId && x.pid === a.pid);
            if (!t || t.state !== TargetState.LOST) return;
            t.state = TargetState.ARMED;
            t.reason = "agent reconnected; the target stayed armed";
            if (a.counts) t.counts = a.counts;
            rollUp(j);
          }, [session.hostId]);
          this.core.publish(updated);
        }
        continue;
      }
      this.core.options.log(`agent ${session.hostId}: disarming pid ${a.pid} of job ${a.jobId}, which no active job wants`);
      const result = await session.disarm({ jobId: a.jobId, pid: a.pid, epoch: this.core.options.epoch });
      // Its final counts, also for a job whose targets are not in memory any more.
      if (job && result.counts) {
        const updated = await this.core.store.mutate(job.id, (j) => {
          const t = j.targets.find((x) => x.hostId === session.hostId && x.pid === a.pid);
          if (t && result.counts) t.counts = result.counts;
          rollUp(j);
        }, [session.hostId]);
        this.core.publish(updated);
      }
    }
    for (const job of this.core.store.all()) {
      if (isJobFinal(job)) continue;
      for (const target of job.targets) {
        if (target.hostId !== session.hostId || !isTargetActive(target) || have.has(`${job.id}/${target.pid}`)) continue;
        this.core.options.log(`agent ${session.hostId}: re-arming pid ${target.pid} for job ${job.id}`);
        let failure = "";
        let gone = false;
        try {
          // This agent's helper may be a new one that does not trap with the job's backend.
          checkHostBackend(session.info, job.spec!);
          const result = await session.arm(armRequest(job, target, this.core.options.epoch));
          if (result.reservedMask) this.core.ledger.noteReserved(session.hostId, target.pid, result.reservedMask);
          if (result.error) failure = `${session.hostId}: ${result.error.message}`;
          // The process ended while the agent was away (its report of the exit may still be on its way).
          gone = result.error?.errnoName === "ESRCH";
        } catch (err) {
          failure = err instanceof Error ? err.message : String(err);
        }
        const updated = await this.core.store.mutate(job.id, (j) => {
          const t = j.targets.find((x) => x.hostId === session.hostId && x.pid === target.pid);
          if (!t || !isTargetActive(t)) return;
          t.state = gone ? TargetState.EXITED : failure ? TargetState.FAILED : TargetState.ARMED;
          t.reason = gone ? `the process exited while its agent was away (${failure})` : failure ? `re-arm after reconnect failed: ${failure}` : "re-armed after the agent reconnected";
          rollUp(j);
        }, [session.hostId]);
        if (failure) this.core.ledger.release(session.hostId, target.pid, job.id);
        this.core.publish(updated);
      }
    }
  }
}
