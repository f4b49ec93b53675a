// The controller's core: agent sessions, job placement within the slot
// ledger, arming and disarming through the agents, deadlines, and the
// reconcile that makes a reconnecting agent and the stored jobs agree.
import { EventEmitter } from "node:events";
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  AsyncQueue,
  HitCountsSchema,
  JobSchema,
  JobState,
  SlotUseSchema,
  TargetState,
  TargetSlotsSchema,
  AgentSchema,
  armConditions,
  checkJobSpec,
  defaultStackDepth,
  chunksOf,
  isSubjectToken,
  parseSymbol,
  slotsPerThread,
  type Agent,
  type AgentError,
  type AgentInfo,
  type ArmedTarget,
  type Job,
  type JobSpec,
  type SessionRequest,
  type SessionResponse,
  type SlotAssignment,
  type TargetReport,
} from "../proto/index.js";
import { AgentSession } from "./agent-session.js";
import { AgentOperationError, InvalidRequestError, NotFoundError, PreconditionError } from "./errors.js";
import { finish, isJobFinal, isTargetActive, rollUp } from "./job-state.js";
import type { JobStore } from "./job-store.js";
import { SlotLedger } from "./slot-ledger.js";

export interface ControllerCoreOptions {
  /** An agent sends a heartbeat this often. */
  heartbeatMs: number;
  /** A session silent this long is closed. */
  leaseMs: number;
  /** How long an agent may take to answer a command. */
  requestTimeoutMs: number;
  log: (line: string) => void;
}

/** Back-off after a rate limit trips, when the job names none. */
const defaultBackoffMs = 1_000;

function newJobId(): string {
  return randomBytes(5).toString("hex");
}

/** What an agent is asked to arm for one target of a job: registers, budget, deadline and the helper-side filters. */
function armRequest(job: Job, target: { pid: number; slots: SlotAssignment[] }) {
  const spec = job.spec!;
  return {
    jobId: job.id,
    pid: target.pid,
    slots: target.slots,
    maxHits: spec.maxHits,
    deadlineUnixMs: job.deadlineUnixMs,
    conditions: armConditions(spec),
    tids: spec.tids,
    maxHitsPerSecond: spec.maxHitsPerSecond,
    backoffMs: spec.maxHitsPerSecond > 0 ? spec.backoffMs || defaultBackoffMs : 0,
    stackDepth: spec.stackDepth ?? defaultStackDepth,
  };
}

function agentFailure(hostId: string, error: AgentError): AgentOperationError {
  return new AgentOperationError(`${hostId}: ${error.message}`, hostId, error.errnoName);
}

/** Jobs, sessions and the ledger of one controller. */
export class Controller {
  private readonly sessions = new Map<string, AgentSession>();
  private readonly known = new Map<string, { info: AgentInfo; lastSeenMs: number }>();
  private readonly ledger = new SlotLedger();
  private readonly changes = new EventEmitter();
  private readonly deadlines = new Map<string, NodeJS.Timeout>();
  private placing: Promise<unknown> = Promise.resolve();
  private leaseTimer: NodeJS.Timeout | undefined;
  private startedMs = Date.now();
  private checkedAbsentHosts = false;

  constructor(
    private readonly store: JobStore,
    private readonly options: ControllerCoreOptions,
  ) {
    this.changes.setMaxListeners(0);
  }

  /** Loads stored jobs, rebuilds the ledger and the deadline timers. */
  async start(): Promise<void> {
    const jobs = await this.store.load();
    for (const job of jobs) {
      if (isJobFinal(job)) continue;
      for (const target of job.targets) {
        if (isTargetActive(target)) this.ledger.restore(target.hostId, target.pid, job.id, target.slots);
      }
      this.scheduleDeadline(job);
    }
    this.startedMs = Date.now();
    this.leaseTimer = setInterval(() => this.expireLeases(), Math.max(100, Math.floor(this.options.leaseMs / 4)));
    this.options.log(`controller: loaded ${jobs.length} job(s), ${jobs.filter((j) => !isJobFinal(j)).length} active`);
  }

  /** Stops timers and closes every session (armed targets stay with their agents). */
  stop(): void {
    clearInterval(this.leaseTimer);
    for (const timer of this.deadlines.values()) clearTimeout(timer);
    this.deadlines.clear();
    for (const session of this.sessions.values()) session.close("controller stopping");
    this.sessions.clear();
  }

  // ---- jobs -------------------------------------------------------------

  /** Validates, places and arms a job; resolves once every target answered. */
  async submit(spec: JobSpec): Promise<Job> {
    checkJobSpec(spec);
    const target = spec.target!;
    const sessions = this.pickSessions(target.hostIds);
    const id = newJobId();

    // Resolve symbols and split into chunks per host before touching the ledger.
    const plans = await Promise.all(
      sessions.map(async (session) => {
        const resolved = new Map<number, { address: bigint; size: bigint }>();
        for (const [index, watch] of spec.watches.entries()) {
          if (watch.location.case !== "symbol") continue;
          const { name, offset } = parseSymbol(watch.location.value);
          const result = await session.resolve({ pid: target.pid, symbol: name, offset });
          if (result.error) throw agentFailure(session.hostId, result.error);
          resolved.set(index, { address: result.address, size: result.size });
        }
        return { session, chunks: chunksOf(spec, resolved) };
      }),
    );

    const now = Date.now();
    const job = await this.withLedger(async () => {
      const placed: Array<{ hostId: string; slots: SlotAssignment[] }> = [];
      try {
        for (const plan of plans) placed.push({ hostId: plan.session.hostId, slots: this.ledger.reserve(plan.session.hostId, target.pid, id, plan.chunks) });
        const fresh = create(JobSchema, {
          id,
          spec,
          state: JobState.PENDING,
          createdUnixMs: BigInt(now),
          deadlineUnixMs: spec.durationMs > 0n ? BigInt(now) + spec.durationMs : 0n,
          targets: placed.map((p) => ({ hostId: p.hostId, pid: target.pid, state: TargetState.PENDING, reason: "arming", slots: p.slots, counts: {} })),
          counts: {},
        });
        return await this.store.create(fresh);
      } catch (err) {
        for (const p of placed) this.ledger.release(p.hostId, target.pid, id);
        throw err;
      }
    });
    this.publish(job);
    this.options.log(`job ${id}: placed on ${plans.map((p) => `${p.session.hostId}/${target.pid}`).join(", ")}`);

    const outcomes = await Promise.all(
      plans.map(async ({ session }, i) => {
        const slots = job.targets[i]!.slots;
        try {
          const result = await session.arm(armRequest(job, { pid: target.pid, slots }));
          if (result.reservedMask) this.ledger.noteReserved(session.hostId, target.pid, result.reservedMask);
          return result.error ? { hostId: session.hostId, err: agentFailure(session.hostId, result.error) } : { hostId: session.hostId, result };
        } catch (err) {
          return { hostId: session.hostId, err };
        }
      }),
    );

    const armed = await this.store.mutate(id, (j) => {
      for (const outcome of outcomes) {
        const t = j.targets.find((x) => x.hostId === outcome.hostId)!;
        if (!isTargetActive(t)) continue;
        if ("result" in outcome && outcome.result) {
          t.state = TargetState.ARMED;
          t.reason = `${outcome.result.threadsArmed}/${outcome.result.threadsTotal} threads armed`;
          t.threadsTotal = outcome.result.threadsTotal;
          t.threadsArmed = outcome.result.threadsArmed;
          t.reservedMask = outcome.result.reservedMask;
        } else {
          t.state = TargetState.FAILED;
          t.reason = outcome.err instanceof Error ? outcome.err.message : String(outcome.err);
        }
      }
      rollUp(j);
    });
    for (const t of armed.targets) if (!isTargetActive(t)) this.ledger.release(t.hostId, t.pid, id);
    this.publish(armed);

    if (armed.state === JobState.FAILED) {
      const first = outcomes.find((o) => "err" in o && o.err);
      throw first && "err" in first ? first.err : new PreconditionError(`job ${id} failed: ${armed.reason}`);
    }
    this.scheduleDeadline(armed);
    return armed;
  }

  get(id: string): Job {
    const job = this.store.get(id);
    if (!job) throw new NotFoundError(`no job '${id}': list jobs with \`fleetwatch jobs ls\``);
    return job;
  }

  list(): Job[] {
    return this.store.all().sort((a, b) => Number(b.createdUnixMs - a.createdUnixMs));
  }

  /** Disarms every active target and marks the job cancelled. */
  async cancel(id: string): Promise<Job> {
    const job = this.get(id);
    if (isJobFinal(job)) return job;
    return this.end(id, JobState.CANCELLED, "cancelled by user");
  }

  /** The job now, then after every change, until it is final. */
  async *watch(id: string, signal: AbortSignal): AsyncGenerator<Job> {
    const first = this.get(id);
    const queue = new AsyncQueue<Job>();
    const listener = (job: Job) => {
      if (job.id === id) queue.push(job);
    };
    const onAbort = () => queue.close();
    this.changes.on("job", listener);
    signal.addEventListener("abort", onAbort);
    try {
      yield first;
      if (isJobFinal(first)) return;
      for await (const job of queue) {
        yield job;
        if (isJobFinal(job)) return;
      }
    } finally {
      this.changes.off("job", listener);
      signal.removeEventListener("abort", onAbort);
    }
  }

  /** Every agent ever seen by this controller, with the slot map of its targets. */
  agents(): Agent[] {
    const entries = this.ledger.entries();
    return [...this.known.values()]
      .sort((a, b) => a.info.hostId.localeCompare(b.info.hostId))
      .map(({ info, lastSeenMs }) =>
        create(AgentSchema, {
          info,
          connected: this.sessions.get(info.hostId)?.isOpen ?? false,
          lastSeenUnixMs: BigInt(this.sessions.get(info.hostId)?.lastSeenMs ?? lastSeenMs),
          targets: entries
            .filter((e) => e.hostId === info.hostId)
            .sort((a, b) => a.pid - b.pid)
            .map((e) =>
              create(TargetSlotsSchema, {
                pid: e.pid,
                slots: Array.from({ length: slotsPerThread }, (_, dr) =>
                  create(SlotUseSchema, { dr, jobId: e.slots[dr]?.jobId ?? "", chunk: e.slots[dr]?.chunk, reserved: ((e.reservedMask >> dr) & 1) === 1 }),
                ),
              }),
            ),
        }),
      );
  }

  private pickSessions(hostIds: readonly string[]): AgentSession[] {
    const open = [...this.sessions.values()].filter((s) => s.isOpen);
    if (hostIds.length === 0) {
      if (open.length === 1) return open;
      if (open.length === 0) throw new PreconditionError("no agent is connected: run `fleetwatch up`, or `fleetwatch agent --controller ADDR` on the target's host");
      throw new InvalidRequestError(`${open.length} agents are connected (${open.map((s) => s.hostId).join(", ")}): name the target's host with --host`);
    }
    return [...new Set(hostIds)].map((hostId) => {
      const session = this.sessions.get(hostId);
      if (session?.isOpen) return session;
      const seen = this.known.get(hostId);
      const connected = open.map((s) => s.hostId).join(", ") || "none";
      throw new PreconditionError(
        seen
          ? `agent '${hostId}' is not connected (last seen ${new Date(seen.lastSeenMs).toISOString()}); connected: ${connected}`
          : `no agent '${hostId}' has ever connected; connected: ${connected}`,
      );
    });
  }

  private withLedger<T>(work: () => Promise<T>): Promise<T> {
    const next = this.placing.then(work, work);
    this.placing = next.catch(() => {});
    return next;
  }

  private publish(job: Job): void {
    this.changes.emit("job", job);
  }

  private scheduleDeadline(job: Job): void {
    if (job.deadlineUnixMs === 0n || isJobFinal(job) || this.deadlines.has(job.id)) return;
    const delay = Math.max(0, Number(job.deadlineUnixMs) - Date.now());
    this.deadlines.set(
      job.id,
      setTimeout(() => {
        this.deadlines.delete(job.id);
        this.end(job.id, JobState.COMPLETED, "duration elapsed").catch((err) => this.options.log(`job ${job.id}: ending at its deadline failed: ${String(err)}`));
      }, delay),
    );
  }

  /** Disarms every active target of a job (agents answer with final counts) and stores the final state. */
  private async end(id: string, state: JobState.COMPLETED | JobState.CANCELLED, reason: string): Promise<Job> {
    clearTimeout(this.deadlines.get(id));
    this.deadlines.delete(id);
    const job = this.get(id);
    const active = job.targets.filter(isTargetActive);
    const finals = await Promise.all(
      active.map(async (t) => {
        const session = this.sessions.get(t.hostId);
        if (!session?.isOpen) return { target: t, note: `; agent ${t.hostId} not connected: it disarms when it reconnects` };
        try {
          const result = await session.disarm({ jobId: id, pid: t.pid });
          this.ledger.noteReserved(t.hostId, t.pid, result.reservedMask);
          if (result.error) return { target: t, note: `; disarm failed: ${result.error.message}` };
          return { target: t, counts: result.counts, note: "" };
        } catch (err) {
          return { target: t, note: `; disarm failed: ${err instanceof Error ? err.message : String(err)}` };
        }
      }),
    );
    const ended = await this.store.mutate(id, (j) => {
      if (isJobFinal(j)) return;
      for (const f of finals) {
        const t = j.targets.find((x) => x.hostId === f.target.hostId && x.pid === f.target.pid)!;
        if (f.counts) t.counts = f.counts;
        if (isTargetActive(t)) t.reason = reason + f.note;
      }
      finish(j, state, reason);
    });
    for (const t of ended.targets) this.ledger.release(t.hostId, t.pid, id);
    this.publish(ended);
    this.options.log(`job ${id}: ${reason}`);
    return ended;
  }

  // ---- agent sessions ---------------------------------------------------

  /** Serves one AgentService.Session stream. */
  async *session(requests: AsyncIterable<SessionRequest>, signal: AbortSignal): AsyncGenerator<SessionResponse> {
    const iterator = requests[Symbol.asyncIterator]();
    const first = await iterator.next();
    if (first.done || first.value.msg.case !== "register") throw new PreconditionError("a session starts with Register");
    const register = first.value.msg.value;
    const info = register.info;
    if (!info || !isSubjectToken(info.hostId)) throw new InvalidRequestError(`host id '${info?.hostId ?? ""}' must be letters, digits, '-' or '_'`);

    this.sessions.get(info.hostId)?.close("replaced by a new session from the same host");
    const session = new AgentSession(info, this.options.requestTimeoutMs);
    this.sessions.set(info.hostId, session);
    this.known.set(info.hostId, { info, lastSeenMs: Date.now() });
    this.options.log(`agent ${info.hostId}: connected (${info.hostname}, kernel ${info.kernel}, ${register.armed.length} armed target(s))`);
    session.send({ msg: { case: "registered", value: { heartbeatMs: this.options.heartbeatMs, leaseMs: this.options.leaseMs } } });

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
    void this.reconcile(session, register.armed).catch((err) => this.options.log(`agent ${info.hostId}: reconcile failed: ${String(err)}`));
    yield* session.outbound;
  }

  private dropSession(session: AgentSession, reason: string): void {
    session.close(reason);
    this.known.set(session.hostId, { info: session.info, lastSeenMs: session.lastSeenMs });
    if (this.sessions.get(session.hostId) === session) {
      this.sessions.delete(session.hostId);
      this.options.log(`agent ${session.hostId}: ${reason}`);
      void this.markLost(session.hostId, `agent ${session.hostId}: ${reason}; its registers stay reserved until it returns or the job ends`).catch((err) =>
        this.options.log(`agent ${session.hostId}: marking targets lost failed: ${String(err)}`),
      );
    }
  }

  /** Every active target of a host whose session ended becomes lost (its slots stay held). */
  private async markLost(hostId: string, reason: string): Promise<void> {
    for (const job of this.store.all()) {
      if (isJobFinal(job) || !job.targets.some((t) => t.hostId === hostId && (t.state === TargetState.ARMED || t.state === TargetState.PENDING))) continue;
      const updated = await this.store.mutate(job.id, (j) => {
        for (const t of j.targets) {
          if (t.hostId !== hostId || (t.state !== TargetState.ARMED && t.state !== TargetState.PENDING)) continue;
          t.state = TargetState.LOST;
          t.reason = reason;
        }
        rollUp(j);
      });
      this.publish(updated);
    }
  }

  private expireLeases(): void {
    const now = Date.now();
    // After a restart, hosts that do not come back within a lease are lost too.
    if (!this.checkedAbsentHosts && now - this.startedMs > this.options.leaseMs) {
      this.checkedAbsentHosts = true;
      const absent = new Set(this.store.all().filter((j) => !isJobFinal(j)).flatMap((j) => j.targets.map((t) => t.hostId)).filter((h) => !this.sessions.has(h)));
      for (const hostId of absent) {
        void this.markLost(hostId, `agent ${hostId} did not reconnect within the lease after the controller started; its registers stay reserved until it returns or the job ends`).catch((err) =>
          this.options.log(`agent ${hostId}: marking targets lost failed: ${String(err)}`),
        );
      }
    }
    for (const session of this.sessions.values()) {
      if (now - session.lastSeenMs > this.options.leaseMs) this.dropSession(session, `lease expired (silent for ${now - session.lastSeenMs} ms)`);
    }
  }

  private onAgentMessage(session: AgentSession, message: SessionRequest): void {
    switch (message.msg.case) {
      case "heartbeat":
        session.send({ msg: { case: "heartbeatAck", value: { sentUnixMs: BigInt(Date.now()) } } });
        return;
      case "resolveResult":
      case "armResult":
      case "disarmResult":
        session.answer(message.msg.value.requestId, message.msg.value);
        return;
      case "targetReport":
        void this.onTargetReport(session.hostId, message.msg.value).catch((err) => this.options.log(`agent ${session.hostId}: report failed: ${String(err)}`));
        return;
      default:
        return;
    }
  }

  /** A target changed on its host: counters moved, or it ended by itself. */
  private async onTargetReport(hostId: string, report: TargetReport): Promise<void> {
    if (report.state === TargetState.EXITED) this.ledger.forgetReserved(hostId, report.pid);
    if (!this.store.get(report.jobId)) return;
    const ends = report.state !== TargetState.ARMED && report.state !== TargetState.UNSPECIFIED;
    const job = await this.store.mutate(report.jobId, (j) => {
      const t = j.targets.find((x) => x.hostId === hostId && x.pid === report.pid);
      if (!t) return;
      if (report.counts) t.counts = report.counts;
      if (report.threadsTotal > 0) {
        t.threadsTotal = report.threadsTotal;
        t.threadsArmed = report.threadsArmed;
      }
      if (report.reservedMask) t.reservedMask |= report.reservedMask;
      if (report.state === TargetState.ARMED && report.reason && isTargetActive(t)) t.reason = report.reason;
      if (ends && isTargetActive(t)) {
        t.state = report.state;
        t.reason = report.reason;
      }
      rollUp(j);
    });
    if (report.state === TargetState.EXITED) this.ledger.forgetReserved(hostId, report.pid);
    else this.ledger.noteReserved(hostId, report.pid, report.reservedMask);
    if (ends) this.ledger.release(hostId, report.pid, report.jobId);
    if (isJobFinal(job)) {
      clearTimeout(this.deadlines.get(job.id));
      this.deadlines.delete(job.id);
    }
    this.publish(job);
    const budget = job.spec?.maxHits ?? 0n;
    if (!isJobFinal(job) && budget > 0n && (job.counts?.delivered ?? 0n) >= budget) {
      await this.end(job.id, JobState.COMPLETED, `max hits reached (${budget})`);
    }
  }

  /**
   * Makes a (re)connected agent and the stored jobs agree: registers armed
   * for no active job are disarmed; active targets the agent no longer has
   * are armed again with the same slots.
   */
  private async reconcile(session: AgentSession, armed: readonly ArmedTarget[]): Promise<void> {
    const have = new Set(armed.map((a) => `${a.jobId}/${a.pid}`));
    for (const a of armed) {
      const job = this.store.get(a.jobId);
      const target = job?.targets.find((t) => t.hostId === session.hostId && t.pid === a.pid);
      if (job && !isJobFinal(job) && target && isTargetActive(target)) {
        if (target.state === TargetState.LOST) {
          const updated = await this.store.mutate(job.id, (j) => {
            const t = j.targets.find((x) => x.hostId === session.hostId && x.pid === a.pid);
            if (!t || t.state !== TargetState.LOST) return;
            t.state = TargetState.ARMED;
            t.reason = "agent reconnected; the target stayed armed";
            if (a.counts) t.counts = a.counts;
            rollUp(j);
          });
          this.publish(updated);
        }
        continue;
      }
      this.options.log(`agent ${session.hostId}: disarming pid ${a.pid} of job ${a.jobId}, which no active job wants`);
      const result = await session.disarm({ jobId: a.jobId, pid: a.pid });
      if (job && target && result.counts) {
        const updated = await this.store.mutate(job.id, (j) => {
          const t = j.targets.find((x) => x.hostId === session.hostId && x.pid === a.pid);
          if (t) t.counts = result.counts ?? create(HitCountsSchema);
          rollUp(j);
        });
        this.publish(updated);
      }
    }
    for (const job of this.store.all()) {
      if (isJobFinal(job)) continue;
      for (const target of job.targets) {
        if (target.hostId !== session.hostId || !isTargetActive(target) || have.has(`${job.id}/${target.pid}`)) continue;
        this.options.log(`agent ${session.hostId}: re-arming pid ${target.pid} for job ${job.id}`);
        let failure = "";
        try {
          const result = await session.arm(armRequest(job, target));
          if (result.reservedMask) this.ledger.noteReserved(session.hostId, target.pid, result.reservedMask);
          if (result.error) failure = `${session.hostId}: ${result.error.message}`;
        } catch (err) {
          failure = err instanceof Error ? err.message : String(err);
        }
        const updated = await this.store.mutate(job.id, (j) => {
          const t = j.targets.find((x) => x.hostId === session.hostId && x.pid === target.pid);
          if (!t || !isTargetActive(t)) return;
          t.state = failure ? TargetState.FAILED : TargetState.ARMED;
          t.reason = failure ? `re-arm after reconnect failed: ${failure}` : "re-armed after the agent reconnected";
          rollUp(j);
        });
        if (failure) this.ledger.release(session.hostId, target.pid, job.id);
        this.publish(updated);
      }
    }
  }
}
