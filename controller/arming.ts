// The arm step every placement ends in: what an agent is asked to arm for a
// target, and each arm's outcome recorded on the job (armed, exited, back to
// the queue, or failed), with what a failure teaches the ledger.
import { Backend, TargetState, armConditions, countIntervalMs, defaultStackDepth, resolveBackend, type HitCounts, type Job, type SlotAssignment, type Target } from "../proto/index.js";
import type { ControllerCore } from "./controller-core.js";
import { AgentOperationError, AgentUnavailableError, agentFailure, errorText } from "./errors.js";
import { checkHostBackend } from "./host-backend.js";
import { isTargetActive, isTargetWaiting, rollUp } from "./job-state.js";
import { targetIndex } from "./job-targets.js";

/** Back-off after a rate limit trips, when the job names none. */
const defaultBackoffMs = 1_000;

/** What an agent is asked to arm for one target of a job: registers, budget, deadline and the helper-side filters. */
export function armRequest(job: Job, target: { pid: number; slots: SlotAssignment[]; counts?: HitCounts | undefined }, epoch: bigint) {
  const spec = job.spec!;
  const counting = spec.countOnly;
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
    // A counting job sends no hits, so no stacks either.
    stackDepth: counting ? 0 : (spec.stackDepth ?? defaultStackDepth),
    lostAfterMs: spec.lostAfterMs,
    backend: resolveBackend(spec),
    countOnly: counting,
    countIntervalMs: counting ? countIntervalMs(spec) : 0n,
    epoch,
    ...(target.counts ? { counts: target.counts } : {}),
    redaction: job.redaction,
  };
}

/** Arm failures that may pass when the target is tried again later: registers taken, another tracer, agent away. */
function isRetryable(err: unknown): boolean {
  if (err instanceof AgentUnavailableError) return true;
  if (!(err instanceof AgentOperationError)) return false;
  return err.errnoName === "ENOSPC" || err.errnoName === "EBUSY" || /already traced by pid/.test(err.message);
}

/** What arming asks of the queue, which is wired after it. */
export interface ArmingQueue {
  /** A job with targets waiting for registers again. */
  enqueue(job: Job): void;
  /** Registers were freed: the queue may move. */
  drainSoon(): void;
}

/** Arms placed targets through their agents. */
export class Arming {
  constructor(
    private readonly core: ControllerCore,
    private readonly queue: ArmingQueue,
  ) {}

  /** Arms targets of a stored job through their agents and records each outcome; a target that may wait goes back to the queue. */
  async armTargets(job: Job, targets: readonly Target[], failures: unknown[]): Promise<Job> {
    const outcomes = await Promise.all(
      targets.map(async (t) => {
        const session = this.core.sessions.get(t.hostId);
        try {
          if (!session?.isOpen) throw new AgentUnavailableError(`agent ${t.hostId} is not connected`, t.hostId);
          // What the host said since the target was planned (a restarted helper's self-test) still allows it.
          checkHostBackend(session.info, job.spec!);
          const result = await session.arm(armRequest(job, t, this.core.options.epoch));
          if (result.reservedMask) this.core.ledger.noteReserved(t.hostId, t.pid, result.reservedMask);
          if (result.error) throw agentFailure(t.hostId, result.error);
          return { target: t, result };
        } catch (err) {
          this.learnFromArmFailure(t, err);
          this.core.options.log(`job ${job.id}: arming ${t.hostId}/${t.pid} failed: ${errorText(err)}`);
          failures.push(err);
          return { target: t, err };
        }
      }),
    );
    const nowMs = BigInt(Date.now());
    // A job staged by its submit is first written here, with these outcomes.
    const staged = this.core.store.isStaged(job.id);
    const armed = await this.core.store.mutate(job.id, (j) => {
      const byKey = targetIndex(j);
      for (const outcome of outcomes) {
        const t = byKey.get(outcome.target.hostId, outcome.target.pid)!;
        if (t.state !== TargetState.ARMING) continue;
        if ("result" in outcome && outcome.result) {
          t.state = TargetState.ARMED;
          t.reason = `${outcome.result.threadsArmed}/${outcome.result.threadsTotal} threads armed`;
          t.threadsTotal = outcome.result.threadsTotal;
          t.threadsArmed = outcome.result.threadsArmed;
          t.reservedMask = outcome.result.reservedMask;
          if (outcome.result.backend !== Backend.UNSPECIFIED) t.backend = outcome.result.backend;
          t.valuesExact = outcome.result.valuesExact;
        } else if (outcome.err instanceof AgentOperationError && outcome.err.errnoName === "ESRCH") {
          // Gone before its turn came (the agent had nothing armed there to see the exit).
          t.state = TargetState.EXITED;
          t.slots = [];
          t.reason = `the process exited before it could be armed (${errorText(outcome.err)})`;
        } else if (isRetryable(outcome.err) && (j.queueDeadlineUnixMs > nowMs || t.preemptions > 0)) {
          t.state = t.preemptions > 0 ? TargetState.PREEMPTED : TargetState.PENDING;
          t.slots = [];
          t.reason = `${errorText(outcome.err)}; waiting in the queue`;
        } else {
          t.state = TargetState.FAILED;
          t.reason = errorText(outcome.err);
        }
      }
      rollUp(j);
    }, targets.map((t) => t.hostId)).catch((err: unknown) => {
      if (staged && !this.core.store.has(job.id)) this.undoUnstored(job, outcomes);
      throw err;
    });
    for (const t of armed.targets) if (!isTargetActive(t)) this.core.ledger.release(t.hostId, t.pid, job.id);
    // The job ended while these were arming: take them back.
    const armedByKey = targetIndex(armed);
    for (const outcome of outcomes) {
      const t = armedByKey.get(outcome.target.hostId, outcome.target.pid);
      if ("result" in outcome && t && !isTargetActive(t)) this.takeBack(job.id, t, "the job ended");
    }
    this.core.publish(armed);
    if (armed.targets.some(isTargetWaiting)) this.queue.enqueue(armed);
    // Registers of targets that failed are free for others.
    if (outcomes.some((o) => "err" in o)) this.queue.drainSoon();
    return armed;
  }

  /**
   * A staged job whose first write failed was never stored: what its arms
   * took is given back (the agents disarm; a deposed leader's disarm may be
   * refused, and the next leader's reconcile disarms it), and the registers
   * are free again in the ledger.
   */
  private undoUnstored(job: Job, outcomes: ReadonlyArray<{ target: Target; result?: unknown }>): void {
    for (const { target, result } of outcomes) {
      this.core.ledger.release(target.hostId, target.pid, job.id);
      if (result) this.takeBack(job.id, target, "the job could not be stored");
    }
    this.queue.drainSoon();
  }

  /** Disarms an armed target no job wants any more, without waiting; a failure is logged. */
  private takeBack(jobId: string, t: Target, after: string): void {
    void this.core.sessions
      .get(t.hostId)
      ?.disarm({ jobId, pid: t.pid, epoch: this.core.options.epoch })
      .catch((err) => this.core.options.log(`job ${jobId}: disarming ${t.hostId}/${t.pid} after ${after} failed: ${String(err)}`));
  }

  /** An arm that met ENOSPC or another tracer tells the ledger about registers and processes it cannot use. */
  private learnFromArmFailure(target: Target, err: unknown): void {
    if (!(err instanceof AgentOperationError)) return;
    if (err.errnoName === "ENOSPC") {
      const held = this.core.ledger.snapshot(target.hostId, target.pid);
      // Registers only this target's job holds were new to the kernel: one of them met the limit.
      let mask = 0;
      for (const a of target.slots) if (held.slots[a.dr]?.holders.length === 1) mask |= 1 << a.dr;
      this.core.ledger.noteForeign(target.hostId, target.pid, mask);
    }
    const traced = /already traced by pid (\d+) \(([^)]*)\)/.exec(err.message);
    if (traced) this.core.ledger.noteTracer(target.hostId, target.pid, { pid: Number(traced[1]), comm: traced[2]! });
  }
}
