// The controller's core: agent sessions, job placement within the slot
// ledger, arming and disarming through the agents, deadlines, and the
// reconcile that makes a reconnecting agent and the stored jobs agree.
import { EventEmitter } from "node:events";
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import {
  AsyncQueue,
  HitCountsSchema,
  JobSchema,
  JobState,
  SlotUseSchema,
  TargetState,
  TargetSlotsSchema,
  AgentSchema,
  RpcError,
  armConditions,
  TargetSchema,
  TargetSelectorSchema,
  checkJobSpec,
  defaultStackDepth,
  matches as matchesSelector,
  parseSelector,
  chunksOf,
  isSubjectToken,
  parseSymbol,
  slotsPerThread,
  type Agent,
  type AgentError,
  type AgentInfo,
  type ArmedTarget,
  type Chunk,
  type DiscoveredProcess,
  type Target,
  type TargetSelector,
  type Job,
  type JobSpec,
  type SessionRequest,
  type SessionResponse,
  type SlotAssignment,
  type TargetReport,
} from "../proto/index.js";
import { AgentSession } from "./agent-session.js";
import { AgentOperationError, AgentUnavailableError, InvalidRequestError, NotFoundError, PreconditionError } from "./errors.js";
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
  /** This leader term's fencing epoch, carried on every command. */
  epoch: bigint;
  log: (line: string) => void;
}

/** A target process planned for a job: its chunks, or why it cannot be watched. */
type Plan = { session: AgentSession; pid: number; chunks: Chunk[] } | { session: AgentSession; pid: number; err: unknown };

/** The part of a selector an agent needs: which processes (hosts are the controller's business, and a list of thousands of host ids is not worth sending to each). */
function processPart(selector: TargetSelector): TargetSelector {
  return create(TargetSelectorSchema, { pid: selector.pid, exe: selector.exe, comm: selector.comm, cgroup: selector.cgroup });
}

/** Whether agents should watch for processes that start matching later (not for a bare pid). */
function isFollowable(selector: TargetSelector): boolean {
  return selector.exe !== "" || selector.comm !== "" || selector.cgroup !== "";
}

/** `pid 42`, `comm 'postgres' in cgroup /db`, for messages. */
function describeProcesses(selector: TargetSelector): string {
  const parts = [
    selector.pid ? `pid ${selector.pid}` : "",
    selector.exe ? `exe ${selector.exe}` : "",
    selector.comm ? `comm '${selector.comm}'` : "",
    selector.cgroup ? `cgroup ${selector.cgroup}` : "",
  ].filter(Boolean);
  return parts.join(", ");
}

/** Back-off after a rate limit trips, when the job names none. */
const defaultBackoffMs = 1_000;

function newJobId(): string {
  return randomBytes(5).toString("hex");
}

/** What an agent is asked to arm for one target of a job: registers, budget, deadline and the helper-side filters. */
function armRequest(job: Job, target: { pid: number; slots: SlotAssignment[] }, epoch: bigint) {
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
    epoch,
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
  private readonly stopped = new AbortController();
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
    // Job watchers of this term end UNAVAILABLE: their clients reconnect to the next leader.
    this.stopped.abort();
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
    const selector = spec.target!;
    const sessions = this.pickSessions(selector);
    const id = newJobId();

    // Which processes match on each host; then symbols and chunks per process.
    const found = await Promise.all(sessions.map(async (session) => ({ session, processes: await this.discover(session, selector) })));
    const candidates = found.flatMap(({ session, processes }) => processes.map((p) => ({ session, pid: p.pid })));
    if (candidates.length === 0) {
      throw new NotFoundError(`no process matches ${describeProcesses(selector)} on ${sessions.map((s) => s.hostId).join(", ")}`);
    }
    const plans = await Promise.all(candidates.map((c) => this.plan(c.session, spec, c.pid)));

    const now = Date.now();
    const draft = create(JobSchema, {
      id,
      spec,
      state: JobState.PENDING,
      createdUnixMs: BigInt(now),
      deadlineUnixMs: spec.durationMs > 0n ? BigInt(now) + spec.durationMs : 0n,
      counts: {},
    });
    const failures: unknown[] = [];
    const job = await this.withLedger(async () => {
      for (const plan of plans) draft.targets.push(this.reserveTarget(id, plan, failures));
      if (draft.targets.every((t) => t.state === TargetState.FAILED)) throw failures[0];
      try {
        return await this.store.create(draft);
      } catch (err) {
        for (const t of draft.targets) this.ledger.release(t.hostId, t.pid, id);
        throw err;
      }
    });
    this.publish(job);
    this.options.log(`job ${id}: placed on ${job.targets.filter(isTargetActive).map((t) => `${t.hostId}/${t.pid}`).join(", ")}`);

    const armed = await this.armTargets(job, job.targets.filter(isTargetActive), failures);
    if (armed.state === JobState.FAILED) throw failures[0] ?? new PreconditionError(`job ${id} failed: ${armed.reason}`);
    if (isFollowable(selector)) {
      const processes = processPart(selector);
      for (const session of sessions) session.send({ msg: { case: "follow", value: { jobId: id, selector: processes } } });
    }
    this.scheduleDeadline(armed);
    return armed;
  }

  /** The processes of one host that match the selector's pid, exe, comm and cgroup. */
  private async discover(session: AgentSession, selector: TargetSelector): Promise<DiscoveredProcess[]> {
    const result = await session.discover({ selector: processPart(selector) });
    if (result.error) throw agentFailure(session.hostId, result.error);
    return result.processes;
  }

  /** Resolves the job's symbols in one process and splits its watches into chunks. */
  private async plan(session: AgentSession, spec: JobSpec, pid: number): Promise<Plan> {
    try {
      const resolved = new Map<number, { address: bigint; size: bigint }>();
      for (const [index, watch] of spec.watches.entries()) {
        if (watch.location.case !== "symbol") continue;
        const { name, offset } = parseSymbol(watch.location.value);
        const result = await session.resolve({ pid, symbol: name, offset });
        if (result.error) throw agentFailure(session.hostId, result.error);
        resolved.set(index, { address: result.address, size: result.size });
      }
      return { session, pid, chunks: chunksOf(spec, resolved) };
    } catch (err) {
      return { session, pid, err };
    }
  }

  /** Reserves a planned target's registers (call under the ledger lock); a failure becomes a failed target. */
  private reserveTarget(jobId: string, plan: Plan, failures: unknown[]): Target {
    const base = { hostId: plan.session.hostId, pid: plan.pid, counts: {} };
    try {
      if ("err" in plan) throw plan.err;
      const slots = this.ledger.reserve(plan.session.hostId, plan.pid, jobId, plan.chunks);
      return create(TargetSchema, { ...base, state: TargetState.PENDING, reason: "arming", slots });
    } catch (err) {
      failures.push(err);
      return create(TargetSchema, { ...base, state: TargetState.FAILED, reason: err instanceof Error ? err.message : String(err) });
    }
  }

  /** Arms targets of a stored job through their agents and records each outcome. */
  private async armTargets(job: Job, targets: readonly Target[], failures: unknown[]): Promise<Job> {
    const outcomes = await Promise.all(
      targets.map(async (t) => {
        const session = this.sessions.get(t.hostId);
        try {
          if (!session?.isOpen) throw new AgentUnavailableError(`agent ${t.hostId} is not connected`, t.hostId);
          const result = await session.arm(armRequest(job, t, this.options.epoch));
          if (result.reservedMask) this.ledger.noteReserved(t.hostId, t.pid, result.reservedMask);
          if (result.error) throw agentFailure(t.hostId, result.error);
          return { target: t, result };
        } catch (err) {
          failures.push(err);
          return { target: t, err };
        }
      }),
    );
    const armed = await this.store.mutate(job.id, (j) => {
      for (const outcome of outcomes) {
        const t = j.targets.find((x) => x.hostId === outcome.target.hostId && x.pid === outcome.target.pid)!;
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
    for (const t of armed.targets) if (!isTargetActive(t)) this.ledger.release(t.hostId, t.pid, job.id);
    this.publish(armed);
    return armed;
  }

  /** A process that started matching an active job (late joiner), or a process of a host that joined. */
  private async addTarget(jobId: string, session: AgentSession, pid: number): Promise<void> {
    const job = this.store.get(jobId);
    if (!job || isJobFinal(job) || job.targets.some((t) => t.hostId === session.hostId && t.pid === pid)) return;
    const plan = await this.plan(session, job.spec!, pid);
    const failures: unknown[] = [];
    const added = await this.withLedger(async () => {
      const current = this.store.get(jobId);
      if (!current || isJobFinal(current) || current.targets.some((t) => t.hostId === session.hostId && t.pid === pid)) return undefined;
      const target = this.reserveTarget(jobId, plan, failures);
      try {
        const updated = await this.store.mutate(jobId, (j) => {
          j.targets.push(target);
          rollUp(j);
        });
        return { updated, target };
      } catch (err) {
        this.ledger.release(session.hostId, pid, jobId);
        throw err;
      }
    });
    if (!added) return;
    this.publish(added.updated);
    this.options.log(`job ${jobId}: ${session.hostId}/${pid} joined${added.target.state === TargetState.FAILED ? ` but failed: ${added.target.reason}` : ""}`);
    if (added.target.state === TargetState.PENDING) await this.armTargets(added.updated, [added.target], failures);
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
    const onStop = () => queue.fail(new RpcError(status.UNAVAILABLE, "this controller's leader term ended: reconnect to the leader"));
    this.changes.on("job", listener);
    signal.addEventListener("abort", onAbort);
    this.stopped.signal.addEventListener("abort", onStop);
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
      this.stopped.signal.removeEventListener("abort", onStop);
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

  private pickSessions(selector: TargetSelector): AgentSession[] {
    const open = [...this.sessions.values()].filter((s) => s.isOpen);
    // Only for messages: joining thousands of host ids on every submit costs more than placing the job.
    const connected = () => open.map((s) => s.hostId).join(", ") || "none";
    if (selector.allHosts) {
      if (open.length === 0) throw new PreconditionError("no agent is connected: run `fleetwatch up`, or `fleetwatch agent --controller ADDR` on each host");
      return open;
    }
    if (selector.hostSelector) {
      const wanted = parseSelector(selector.hostSelector);
      const matching = open.filter((s) => matchesSelector(wanted, s.info.labels));
      if (matching.length === 0) throw new PreconditionError(`no connected agent matches selector '${selector.hostSelector}'; connected: ${connected()}`);
      return matching;
    }
    if (selector.hostIds.length === 0) {
      if (open.length === 1) return open;
      if (open.length === 0) throw new PreconditionError("no agent is connected: run `fleetwatch up`, or `fleetwatch agent --controller ADDR` on the target's host");
      throw new InvalidRequestError(`${open.length} agents are connected (${connected()}): name the target's host with --host, --selector or --all-hosts`);
    }
    return [...new Set(selector.hostIds)].map((hostId) => {
      const session = this.sessions.get(hostId);
      if (session?.isOpen) return session;
      const seen = this.known.get(hostId);
      throw new PreconditionError(
        seen
          ? `agent '${hostId}' is not connected (last seen ${new Date(seen.lastSeenMs).toISOString()}); connected: ${connected()}`
          : `no agent '${hostId}' has ever connected; connected: ${connected()}`,
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

  /** Agents stop looking for late joiners of a job that ended (unknown jobs are ignored there). */
  private unfollow(job: Job): void {
    if (!job.spec?.target || !isFollowable(job.spec.target)) return;
    for (const session of this.sessions.values()) session.send({ msg: { case: "unfollow", value: { jobId: job.id } } });
  }

  /** Whether a job's hosts include this one (by id, labels or all). */
  private selectsHost(job: Job, info: AgentInfo): boolean {
    const target = job.spec?.target;
    if (!target) return false;
    if (target.allHosts) return true;
    if (target.hostSelector) return matchesSelector(parseSelector(target.hostSelector), info.labels);
    return target.hostIds.includes(info.hostId) || job.targets.some((t) => t.hostId === info.hostId);
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
          const result = await session.disarm({ jobId: id, pid: t.pid, epoch: this.options.epoch });
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
    this.unfollow(ended);
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
    session.send({ msg: { case: "registered", value: { heartbeatMs: this.options.heartbeatMs, leaseMs: this.options.leaseMs, epoch: this.options.epoch } } });

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
      case "discoverResult":
        session.answer(message.msg.value.requestId, message.msg.value);
        return;
      case "processAppeared": {
        const { jobId, process } = message.msg.value;
        if (process) void this.addTarget(jobId, session, process.pid).catch((err) => this.options.log(`job ${jobId}: adding ${session.hostId}/${process.pid} failed: ${String(err)}`));
        return;
      }
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
      this.unfollow(job);
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
    // Jobs that select this host: look for late joiners again, and arm a host that joined.
    for (const job of this.store.all()) {
      if (isJobFinal(job) || !job.spec?.target || !this.selectsHost(job, session.info)) continue;
      const selector = job.spec.target;
      if (isFollowable(selector)) session.send({ msg: { case: "follow", value: { jobId: job.id, selector: processPart(selector) } } });
      if (job.targets.some((t) => t.hostId === session.hostId) || !(selector.allHosts || selector.hostSelector)) continue;
      this.options.log(`job ${job.id}: host ${session.hostId} joined; looking for its targets`);
      const processes = await this.discover(session, selector).catch(() => [] as DiscoveredProcess[]);
      for (const p of processes) await this.addTarget(job.id, session, p.pid);
    }
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
      const result = await session.disarm({ jobId: a.jobId, pid: a.pid, epoch: this.options.epoch });
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
          const result = await session.arm(armRequest(job, target, this.options.epoch));
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
