// The submit flow: a job's hosts picked, their matching processes discovered
// and checked against the owner's scope, each planned into chunks (symbols
// resolved), placed within the ledger (or refused, or queued), stored, armed.
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  HitCountsSchema,
  JobSchema,
  JobState,
  TargetSchema,
  TargetState,
  ValueRedaction,
  checkJobSpec,
  chunksOf,
  formatDuration,
  matches as matchesSelector,
  parsePlacement,
  parseSelector,
  parseSymbol,
  resolveBackend,
  type Chunk,
  type DiscoveredProcess,
  type Job,
  type JobSpec,
  type ResolveResult,
  type TargetSelector,
} from "../proto/index.js";
import type { ScopeSubject } from "./access-policy.js";
import { plaintextCaller, type Caller } from "./access.js";
import type { AgentSession } from "./agent-session.js";
import type { Arming } from "./arming.js";
import type { ControllerCore } from "./controller-core.js";
import { AgentOperationError, InvalidRequestError, NotFoundError, PermissionDeniedError, PreconditionError, agentFailure, errorText } from "./errors.js";
import { checkHostBackend } from "./host-backend.js";
import { describeProcesses } from "./job-description.js";
import type { JobEnding } from "./job-ending.js";
import { decide, markPlaced, neverFits, refusal, whyNot } from "./job-placement.js";
import type { JobQueue } from "./job-queue.js";
import { isTargetActive, isTargetWaiting, nameTargets, rollUp } from "./job-state.js";
import { isFollowable, processPart } from "./job-targets.js";

/** What a scope is checked against: a discovered process on its host. */
export function scopeSubject(session: AgentSession, p: DiscoveredProcess): ScopeSubject {
  return { hostId: session.hostId, hostLabels: session.info.labels, pid: p.pid, exe: p.exe, uid: p.uid, euid: p.euid, user: p.user };
}

/** A target process planned for a job: its chunks, or why it cannot be watched. */
export type Plan = { session: AgentSession; pid: number; chunks: Chunk[] } | { session: AgentSession; pid: number; err: unknown };

/** What a job asks an agent to resolve in each target process: its symbols, and its addresses unless it allows unmapped ones. */
export interface ResolveRequest {
  watchIndex: number;
  request: { symbol?: string; offset?: bigint; address?: bigint; length?: number };
}

/** The lookups of a job's watches, in watch order (see ResolveRequest). */
export function resolveRequestsOf(spec: JobSpec): ResolveRequest[] {
  const out: ResolveRequest[] = [];
  for (const [watchIndex, watch] of spec.watches.entries()) {
    if (watch.location.case === "address") {
      // Refused like an unknown symbol when nothing is mapped there, unless the job allows it.
      if (!spec.allowUnmapped) out.push({ watchIndex, request: { address: watch.location.value, length: watch.length } });
    } else if (watch.location.case === "symbol") {
      const { name, offset } = parseSymbol(watch.location.value);
      out.push({ watchIndex, request: { symbol: name, offset } });
    }
  }
  return out;
}

// Written once: a submitted job is written with its arm outcomes, not first
// as "arming" and again when armed. That is one KV write and one flush less
// per submit, and no KV round trip under the ledger lock, which serialized
// every submit behind the one before it. What it keeps true:
//
// - While its targets arm, the job is staged in the store's memory: every
//   part of this controller sees it (a cancel, the kill switch, a target
//   report, the queue), its registers are held in the ledger, and whichever
//   change comes first writes it, with create. The fence is checked before
//   the arms are sent and again on that write: a deposed leader neither
//   arms for it nor writes it.
// - A controller that stops (killed, deposed) before that write leaves no
//   record, and its client no answer but an error: the job never existed.
//   Arms that reached agents are then watches of no job; the next leader's
//   reconcile disarms them when their agents register, and holds their
//   registers in its ledger until then (target-liveness.ts), so no other job
//   is placed on them meanwhile. (Stored "arming" first, such a job would be
//   armed by the reconcile, for a client that had been told it failed.)
// - A write that fails drops the job from memory; what was armed for it is
//   disarmed and its registers released (arming.ts), and the client gets
//   the error.
// - Once written, the record says what the agents answered (ARMED, FAILED,
//   ...), so a restart reads it as it is: nothing is left "arming".

/** A new job's id: ten random hex digits. */
function newJobId(): string {
  return randomBytes(5).toString("hex");
}

/** Submits jobs; discovers and plans targets for the other parts too (late joiners, replacements). */
export class SubmitFlow {
  constructor(
    private readonly core: ControllerCore,
    private readonly arming: Pick<Arming, "armTargets">,
    private readonly queue: Pick<JobQueue, "evict" | "enqueue">,
    private readonly ending: Pick<JobEnding, "scheduleDeadline">,
  ) {}

  /**
   * Validates a job, finds its targets, places it within the ledger and arms
   * what was placed. A job that cannot be placed is refused at once, unless
   * it may wait (queue timeout): then it is stored pending with the reason
   * and placed when registers free up.
   */
  async submit(spec: JobSpec, caller: Caller = plaintextCaller): Promise<Job> {
    checkJobSpec(spec);
    const mode = parsePlacement(spec.placement);
    if (spec.lostAfterMs > 0n && spec.lostAfterMs < BigInt(this.core.options.leaseMs)) {
      throw new InvalidRequestError(`--lost-after ${formatDuration(spec.lostAfterMs)} is shorter than the controller's session lease (${formatDuration(BigInt(this.core.options.leaseMs))}): a host cannot be told lost before its session is`);
    }
    const selector = spec.target!;
    const sessions = this.pickSessions(selector);
    const id = newJobId();

    // Which processes match on each host; then symbols and chunks per process.
    // Matching processes a host's policy forbids become failed targets naming the rule.
    const refused: Array<{ pid: number; err: AgentOperationError }> = [];
    // Each host resolves the job's symbols in its matching processes with the discovery: no Resolve per process.
    const lookups = resolveRequestsOf(spec);
    const found = await Promise.all(sessions.map(async (session) => ({ session, processes: await this.discover(session, selector, refused, lookups) })));
    // The owner may watch every one of them, or the job is refused naming the rule; its values may be masked.
    let redaction = ValueRedaction.UNSPECIFIED;
    for (const { session, processes } of found) {
      for (const p of processes) {
        const decision = this.core.options.access?.watchDecision(caller, scopeSubject(session, p));
        if (decision && !decision.allowed) throw new PermissionDeniedError(decision.why);
        if (decision?.allowed && !decision.binding.values) redaction = ValueRedaction.MASKED;
      }
    }
    const candidates = found.flatMap(({ session, processes }) => processes.map((p) => ({ session, pid: p.pid, resolved: p.resolved })));
    // A gang cannot include a process it may not watch.
    if (refused.length > 0 && (candidates.length === 0 || mode.kind === "all")) throw refused[0]!.err;
    // Only for messages: joined on every submit, a fleet's host ids cost more than placing the job.
    const hostList = () => sessions.map((s) => s.hostId).join(", ");
    // With a queue timeout, a job by exe, comm or cgroup waits for its first process to start.
    const awaitsMatch = candidates.length === 0 && spec.queueTimeoutMs > 0n && isFollowable(selector);
    if (candidates.length === 0 && !awaitsMatch) {
      throw new NotFoundError(`no process matches ${describeProcesses(selector)} on ${hostList()}${isFollowable(selector) ? ": give --queue-timeout to wait for one to start" : ""}`);
    }
    const plans = await Promise.all(candidates.map((c) => this.plan(c.session, spec, c.pid, c.resolved)));
    const planFailures = plans.flatMap((p) => ("err" in p ? [p.err] : []));
    // A gang cannot include a process it cannot watch.
    if (plans.length > 0 && (planFailures.length === plans.length || (mode.kind === "all" && planFailures.length > 0))) throw planFailures[0];

    const now = Date.now();
    const draft = create(JobSchema, {
      id,
      spec,
      state: JobState.PENDING,
      createdUnixMs: BigInt(now),
      deadlineUnixMs: spec.durationMs > 0n ? BigInt(now) + spec.durationMs : 0n,
      queueDeadlineUnixMs: spec.queueTimeoutMs > 0n ? BigInt(now) + spec.queueTimeoutMs : 0n,
      counts: {},
      owner: caller.who,
      redaction,
      reason: awaitsMatch ? `waiting for a process matching ${describeProcesses(selector)} to start on ${hostList()} (queue timeout ${formatDuration(spec.queueTimeoutMs)})` : "",
    });
    const backend = resolveBackend(spec);
    // One empty count for every target: a target's counts are replaced when they move, never edited (see copyTarget in
    // job-store.ts), and a fleet-wide job's 40,000 targets need not each make their own. Targets are made field by
    // field: spreading a shared part into each cost more than making the target.
    const noCounts = create(HitCountsSchema);
    for (const { pid, err } of refused) draft.targets.push(create(TargetSchema, { hostId: err.hostId, pid, counts: noCounts, backend, state: TargetState.FAILED, reason: err.message }));
    for (const plan of plans) {
      draft.targets.push(
        "err" in plan
          ? create(TargetSchema, { hostId: plan.session.hostId, pid: plan.pid, counts: noCounts, backend, state: TargetState.FAILED, reason: errorText(plan.err) })
          : create(TargetSchema, { hostId: plan.session.hostId, pid: plan.pid, counts: noCounts, backend, state: TargetState.PENDING, reason: "waiting to be placed", chunks: plan.chunks }),
      );
    }

    const { job, evictions } = await this.core.withLedger(async () => {
      if (awaitsMatch) return { job: await this.core.store.create(draft), evictions: [] };
      const before = this.core.ledgerCheckpoint(draft);
      const decision = decide(this.core, draft);
      const waits = spec.queueTimeoutMs > 0n && !neverFits(decision);
      if (decision.outcome === "pending" && !waits) throw refusal(this.core.ledger, draft, decision);
      markPlaced(draft, decision);
      // A sample that got its targets, or may not wait for more, leaves out the candidates it did not take.
      const dropUnplaced = mode.kind === "sample" && (decision.outcome === "placed" || !waits);
      if (dropUnplaced) draft.targets = draft.targets.filter((t) => t.state !== TargetState.PENDING);
      for (const t of draft.targets) {
        if (t.state !== TargetState.PENDING) continue;
        t.reason = whyNot(this.core.ledger, draft, t);
        if (!waits) t.state = TargetState.FAILED;
      }
      rollUp(draft);
      if (decision.shortfall && draft.state === JobState.PENDING && waits) draft.reason = `queued: ${decision.shortfall.reason}`;
      try {
        // Placed targets are armed before the job is first written (see "Written once" above); a job with
        // nothing to arm is written now.
        const stored = draft.targets.some((t) => t.state === TargetState.ARMING) ? await this.core.store.stage(draft) : await this.core.store.create(draft);
        return { job: stored, evictions: decision.preempted };
      } catch (err) {
        this.core.ledgerRollback(before);
        throw err;
      }
    });
    this.core.publish(job);
    const placedOn = job.targets.filter(isTargetActive);
    this.core.options.log(`job ${id}: ${placedOn.length > 0 ? `placed on ${nameTargets(placedOn, (t) => `${t.hostId}/${t.pid}`)}` : `queued (${job.reason})`}`);

    await this.queue.evict(job, evictions);
    const failures: unknown[] = [];
    let current = job;
    if (placedOn.length > 0) {
      current = await this.arming.armTargets(job, placedOn, failures);
      if (current.state === JobState.FAILED) throw failures[0] ?? new PreconditionError(`job ${id} failed: ${current.reason}`);
    }
    if (current.targets.some(isTargetWaiting) || awaitsMatch) this.queue.enqueue(current);
    if (isFollowable(selector)) {
      const processes = processPart(selector);
      for (const session of sessions) session.send({ msg: { case: "follow", value: { jobId: id, selector: processes } } });
    }
    this.ending.scheduleDeadline(current);
    return current;
  }

  /** The processes of one host that match the selector's pid, exe, comm and cgroup; who else traces them goes into the ledger. */
  async discover(session: AgentSession, selector: TargetSelector, refused?: Array<{ pid: number; err: AgentOperationError }>, resolve: readonly ResolveRequest[] = []): Promise<DiscoveredProcess[]> {
    const result = await session.discover({ selector: processPart(selector), resolve: resolve.map((r) => r.request) });
    if (result.error) throw agentFailure(session.hostId, result.error);
    for (const r of result.refused) {
      refused?.push({ pid: r.pid, err: new AgentOperationError(`${session.hostId}: ${r.reason}`, session.hostId, "EPERM", { hostPolicy: true }) });
    }
    for (const p of result.processes) this.core.ledger.noteTracer(session.hostId, p.pid, p.tracerPid ? { pid: p.tracerPid, comm: p.tracerComm } : undefined);
    return result.processes;
  }

  /**
   * Resolves the job's symbols in one process and splits its watches into
   * chunks. `resolved` are the answers its discovery brought, one per
   * resolveRequestsOf(spec); without them (an agent that does not resolve
   * while discovering, a late joiner) each is asked for with Resolve.
   */
  async plan(session: AgentSession, spec: JobSpec, pid: number, resolved?: readonly ResolveResult[]): Promise<Plan> {
    try {
      checkHostBackend(session.info, spec);
      const lookups = resolveRequestsOf(spec);
      const answers = resolved?.length === lookups.length ? resolved : undefined;
      const addresses = new Map<number, { address: bigint; size: bigint }>();
      for (const [k, { watchIndex, request }] of lookups.entries()) {
        const result = answers?.[k] ?? (await session.resolve({ pid, ...request }));
        if (result.error) throw agentFailure(session.hostId, result.error);
        // An address is only checked to be mapped; a symbol gives the address.
        if (request.symbol !== undefined) addresses.set(watchIndex, { address: result.address, size: result.size });
      }
      return { session, pid, chunks: chunksOf(spec, addresses) };
    } catch (err) {
      return { session, pid, err };
    }
  }

  private pickSessions(selector: TargetSelector): AgentSession[] {
    // Named hosts are looked up one by one: filtering every session on each submit costs more than placing the job.
    if (selector.hostIds.length > 0 && !selector.allHosts && !selector.hostSelector) return this.namedSessions(selector.hostIds);
    const open = [...this.core.sessions.values()].filter((s) => s.isOpen);
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
    return this.namedSessions(selector.hostIds);
  }

  /** The open sessions of hosts named by id; a host that is not connected is an error naming who is. */
  private namedSessions(hostIds: readonly string[]): AgentSession[] {
    const connected = () => [...this.core.sessions.values()].filter((s) => s.isOpen).map((s) => s.hostId).join(", ") || "none";
    return [...new Set(hostIds)].map((hostId) => {
      const session = this.core.sessions.get(hostId);
      if (session?.isOpen) return session;
      const seen = this.core.known.get(hostId);
      throw new PreconditionError(
        seen
          ? `agent '${hostId}' is not connected (last seen ${new Date(seen.lastSeenMs).toISOString()}); connected: ${connected()}`
          : `no agent '${hostId}' has ever connected; connected: ${connected()}`,
      );
    });
  }
}
