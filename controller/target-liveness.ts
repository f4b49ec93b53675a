// Whether targets are still watched where they were armed: targets on hosts
// silent for longer than their job allows become lost (and may be replaced
// on other hosts), and an agent that registers is reconciled with the jobs.
import { clone, create } from "@bufbuild/protobuf";
import { JobSchema, TargetSchema, TargetState, matches as matchesSelector, parseSelector, resolveBackend, type AgentInfo, type ArmedTarget, type Chunk, type DiscoveredProcess, type Job } from "../proto/index.js";
import type { AgentSession } from "./agent-session.js";
import { armRequest, type Arming } from "./arming.js";
import type { ControllerCore } from "./controller-core.js";
import { errorText } from "./errors.js";
import type { Followers } from "./followers.js";
import { checkHostBackend } from "./host-backend.js";
import { decide, markPlaced } from "./job-placement.js";
import type { JobQueue } from "./job-queue.js";
import { isJobFinal, isTargetActive, rollUp } from "./job-state.js";
import { isFollowable, processPart } from "./job-targets.js";
import type { Plan, SubmitFlow } from "./submit.js";

/** Whether a job's hosts include this one (by id, labels or all). */
function selectsHost(job: Job, info: AgentInfo): boolean {
  const target = job.spec?.target;
  if (!target) return false;
  if (target.allHosts) return true;
  if (target.hostSelector) return matchesSelector(parseSelector(target.hostSelector), info.labels);
  return target.hostIds.includes(info.hostId) || job.targets.some((t) => t.hostId === info.hostId);
}

/** Lost targets, their replacement, and the reconcile of an agent that registers. */
export class TargetLiveness {
  /** Jobs whose targets are being marked lost right now. */
  private readonly losing = new Set<string>();

  constructor(
    private readonly core: ControllerCore,
    private readonly submit: Pick<SubmitFlow, "discover" | "plan">,
    private readonly queue: Pick<JobQueue, "evict" | "drainSoon">,
    private readonly arming: Pick<Arming, "armTargets">,
    private readonly followers: Pick<Followers, "addTarget">,
  ) {}

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
  markSilentHostsLost(now: number): void {
    for (const job of this.core.store.active()) {
      if (this.losing.has(job.id)) continue;
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
    const open = [...this.core.sessions.values()].filter((s) => s.isOpen && !taken.has(s.hostId) && selectsHost(job, s.info));
    const found = await Promise.all(
      open.map(async (session) => ({
        session,
        processes: await this.submit.discover(session, job.spec!.target!).catch((err: unknown) => {
          this.core.options.log(`job ${jobId}: looking for a replacement on ${session.hostId} failed: ${errorText(err)}`);
          return [] as DiscoveredProcess[];
        }),
      })),
    );
    const plans = (await Promise.all(found.flatMap(({ session, processes }) => processes.map((p) => this.submit.plan(session, job.spec!, p.pid))))).filter((p): p is Plan & { chunks: Chunk[] } => !("err" in p));
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

  /** Whether an active job holds this armed target of the agent's. */
  private holdsActive(hostId: string, a: ArmedTarget): boolean {
    const job = this.core.store.get(a.jobId);
    const target = job?.targets.find((t) => t.hostId === hostId && t.pid === a.pid);
    return job !== undefined && !isJobFinal(job) && target !== undefined && isTargetActive(target);
  }

  /**
   * Holds in the ledger the registers of a watch an agent has armed for no
   * active job, until it is disarmed: exclusive, and above every priority,
   * so that nothing is placed on them or preempts them. False when the
   * ledger has them held already (by an active job: the agent's list is
   * older than the ledger) or nothing is named.
   */
  private holdOrphan(hostId: string, a: ArmedTarget): boolean {
    if (a.slots.length === 0) return false;
    try {
      this.core.ledger.restore(hostId, a.pid, { id: a.jobId, priority: Number.MAX_SAFE_INTEGER, createdUnixMs: 0, placement: { kind: "any" }, backend: "perf" }, a.slots);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Makes a (re)connected agent and the stored jobs agree: registers armed
   * for no active job are disarmed; active targets the agent no longer has
   * are armed again with the same slots.
   */
  async reconcile(session: AgentSession, armed: readonly ArmedTarget[]): Promise<void> {
    const have = new Set(armed.map((a) => `${a.jobId}/${a.pid}`));
    // Before anything waits: what the agent holds for no active job (a job whose controller stopped between
    // its arms and its first write, a cancel whose disarm never went out) keeps its registers until disarmed below.
    const orphans = new Set(armed.filter((a) => !this.holdsActive(session.hostId, a)));
    const held = new Set([...orphans].filter((a) => this.holdOrphan(session.hostId, a)));
    // Jobs that select this host: look for late joiners again, and arm a host that joined.
    for (const job of this.core.store.active()) {
      if (!job.spec?.target || !selectsHost(job, session.info)) continue;
      const selector = job.spec.target;
      if (isFollowable(selector)) session.send({ msg: { case: "follow", value: { jobId: job.id, selector: processPart(selector) } } });
      if (job.targets.some((t) => t.hostId === session.hostId) || !(selector.allHosts || selector.hostSelector)) continue;
      this.core.options.log(`job ${job.id}: host ${session.hostId} joined; looking for its targets`);
      const processes = await this.submit.discover(session, selector).catch(() => [] as DiscoveredProcess[]);
      for (const p of processes) await this.followers.addTarget(job.id, session, p);
    }
    for (const a of armed) {
      const job = this.core.store.get(a.jobId);
      const target = job?.targets.find((t) => t.hostId === session.hostId && t.pid === a.pid);
      if (!orphans.has(a) && job && !isJobFinal(job) && target && isTargetActive(target)) {
        // Arming: the agent carried out an arm whose answer went to an earlier session (a controller
        // killed while its batch was on the way); nothing else would ever record it armed.
        if (target.state === TargetState.LOST || target.state === TargetState.ARMING) {
          const updated = await this.core.store.mutate(job.id, (j) => {
            const t = j.targets.find((x) => x.hostId === session.hostId && x.pid === a.pid);
            if (!t || (t.state !== TargetState.LOST && t.state !== TargetState.ARMING)) return;
            t.reason = t.state === TargetState.LOST ? "agent reconnected; the target stayed armed" : "armed; the agent's answer was lost with its earlier session, its registration says so";
            t.state = TargetState.ARMED;
            if (a.counts) t.counts = a.counts;
            rollUp(j);
          }, [session.hostId]);
          this.core.publish(updated);
        }
        continue;
      }
      this.core.options.log(`agent ${session.hostId}: disarming pid ${a.pid} of job ${a.jobId}, which no active job wants`);
      let result;
      try {
        result = await session.disarm({ jobId: a.jobId, pid: a.pid, epoch: this.core.options.epoch });
      } finally {
        // Disarmed, or the session is gone (the agent disarms after its lease, and lists it again when back).
        if (held.has(a)) {
          this.core.ledger.release(session.hostId, a.pid, a.jobId);
          this.queue.drainSoon();
        }
      }
      // Its final counts, also for a finished job that memory no longer holds (the change reads it back).
      if (result.counts && this.core.store.has(a.jobId)) {
        const updated = await this.core.store.mutate(a.jobId, (j) => {
          const t = j.targets.find((x) => x.hostId === session.hostId && x.pid === a.pid);
          if (t && result.counts) t.counts = result.counts;
          rollUp(j);
        }, [session.hostId]);
        this.core.publish(updated);
      }
    }
    for (const job of this.core.store.active()) {
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
          failure = errorText(err);
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
