// The queue of jobs waiting for debug registers, and preemption: waiting
// jobs are offered freed registers in priority order (a job that fits goes
// ahead of earlier ones that do not), fail at their queue deadline, and the
// targets a higher job preempts are disarmed and wait in it again.
import { JobState, TargetState, formatDuration, parsePlacement, type HitCounts, type Job } from "../proto/index.js";
import type { Arming } from "./arming.js";
import type { ControllerCore } from "./controller-core.js";
import { errorText } from "./errors.js";
import { checkHostBackend } from "./host-backend.js";
import { describeProcesses } from "./job-description.js";
import type { JobEnding } from "./job-ending.js";
import { decide, markPlaced, whyNot } from "./job-placement.js";
import { finish, isJobFinal, isTargetActive, isTargetWaiting, rollUp } from "./job-state.js";
import { awaitsFirstMatch } from "./job-targets.js";
import type { Eviction } from "./placement-types.js";

/** How often the queue is offered registers again even when none were freed (foreign holders and tracers may have left). */
const retryQueueEveryMs = 5_000;

/** Jobs waiting for registers, placed as registers free up; preemption of lower jobs. */
export class JobQueue {
  /** Jobs with targets waiting for registers (order: see queuedInOrder). */
  private readonly queued = new Set<string>();
  /** Queue deadlines by job id. */
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private drainScheduled = false;
  private lastDrainMs = 0;
  /** When each queued job's reason was last rewritten. */
  private readonly reasonSaidMs = new Map<string, number>();

  constructor(
    private readonly core: ControllerCore,
    private readonly arming: Pick<Arming, "armTargets">,
    private readonly ending: Pick<JobEnding, "forgetJobTimers">,
  ) {}

  /** How many jobs wait for registers. */
  get size(): number {
    return this.queued.size;
  }

  /** Takes the registers of preempted jobs back from their agents; the victims are told (state, reason) and requeued. */
  async evict(by: Job, evictions: readonly Eviction[]): Promise<void> {
    await Promise.all(
      evictions.map(async (e) => {
        const session = this.core.sessions.get(e.hostId);
        let counts: HitCounts | undefined;
        let note = "";
        if (!session?.isOpen) note = `; agent ${e.hostId} not connected: it disarms when it reconnects`;
        else {
          try {
            const result = await session.disarm({ jobId: e.jobId, pid: e.pid, epoch: this.core.options.epoch });
            this.core.ledger.noteReserved(e.hostId, e.pid, result.reservedMask);
            if (result.error) note = `; disarm failed: ${result.error.message}`;
            else counts = result.counts;
          } catch (err) {
            note = `; disarm failed: ${errorText(err)}`;
          }
        }
        const priority = by.spec?.priority ?? 0;
        let preempted = false;
        const victim = await this.core.store.mutate(e.jobId, (j) => {
          const t = j.targets.find((x) => x.hostId === e.hostId && x.pid === e.pid);
          // Set on every attempt: a write that lost a race is applied again.
          preempted = t !== undefined && isTargetActive(t);
          if (!t || !isTargetActive(t)) return;
          // The agent keeps these counters and goes on from them when the target is armed again.
          if (counts) t.counts = counts;
          t.state = TargetState.PREEMPTED;
          t.preemptions++;
          t.slots = [];
          t.reason = `preempted by job ${by.id} (priority ${priority} over ${j.spec?.priority ?? 0})${note}; waiting to be placed again`;
          rollUp(j);
          if (j.state === JobState.PENDING) j.reason = `preempted by job ${by.id}; waiting in the queue`;
        }, [e.hostId]);
        if (preempted) this.core.options.metrics?.preempted();
        this.core.publish(victim);
        this.core.options.log(`job ${e.jobId}: ${e.hostId}/${e.pid} preempted by job ${by.id}`);
        this.enqueue(victim);
      }),
    );
  }

  /**
   * A job with targets waiting for registers: placed again when registers
   * free up; fails at its queue deadline. A job with no target yet (waiting
   * for a matching process to start) only gets the deadline.
   */
  enqueue(job: Job): void {
    if (isJobFinal(job) || !(job.targets.some(isTargetWaiting) || awaitsFirstMatch(job))) return;
    if (job.targets.length > 0) {
      if (!this.queued.has(job.id)) this.reasonSaidMs.set(job.id, Date.now());
      this.queued.add(job.id);
    }
    if (job.queueDeadlineUnixMs > 0n && !this.timers.has(job.id)) {
      const delay = Math.max(0, Number(job.queueDeadlineUnixMs) - Date.now());
      this.timers.set(
        job.id,
        setTimeout(() => {
          this.timers.delete(job.id);
          this.expireQueued(job.id).catch((err) => this.core.options.log(`job ${job.id}: ending its wait in the queue failed: ${String(err)}`));
        }, delay),
      );
    }
    // No drain here: it was just decided against what the ledger holds. Freed registers drain the queue.
  }

  /** The job no longer waits: its place and its queue deadline go. */
  dequeue(id: string): void {
    this.queued.delete(id);
    this.reasonSaidMs.delete(id);
    clearTimeout(this.timers.get(id));
    this.timers.delete(id);
  }

  /** Queued jobs in the order they get registers: higher priority first, then first come. */
  private queuedInOrder(): Job[] {
    const jobs: Job[] = [];
    for (const id of this.queued) {
      const job = this.core.store.get(id);
      if (job && !isJobFinal(job) && job.targets.some(isTargetWaiting)) jobs.push(job);
      else this.dequeue(id);
    }
    return jobs.sort((a, b) => (b.spec?.priority ?? 0) - (a.spec?.priority ?? 0) || Number(a.createdUnixMs - b.createdUnixMs) || (a.id < b.id ? -1 : 1));
  }

  /** Runs the queue once soon; several triggers in a row run it once. */
  drainSoon(): void {
    if (this.drainScheduled || this.queued.size === 0 || this.core.stopped.signal.aborted) return;
    this.drainScheduled = true;
    setImmediate(() => {
      this.drainScheduled = false;
      this.drain().catch((err) => this.core.options.log(`queue: placing waiting jobs failed: ${String(err)}`));
    });
  }

  /**
   * The job as the queue may place it now: its waiting targets on hosts
   * whose agent has a session with this controller. An arm sent to any other
   * fails at once as "not connected", which puts the target back in the
   * queue and frees its registers, which drains the queue again: a loop of
   * two KV writes and a log line per turn for as long as the agent is away.
   * Such targets wait; the agent's registration drains the queue. Undefined
   * when none may be placed, or when a gang (placement "all") would be
   * placed without some of them.
   */
  private placeable(job: Job): Job | undefined {
    const kept = job.targets.filter((t) => !isTargetWaiting(t) || this.core.sessions.get(t.hostId)?.isOpen === true);
    if (kept.length === job.targets.length) return job;
    if (!kept.some(isTargetWaiting) || parsePlacement(job.spec?.placement ?? "").kind === "all") return undefined;
    return { ...job, targets: kept };
  }

  /**
   * Offers free registers to the queued jobs in order; a job that fits goes
   * ahead of earlier ones that do not (backfill). Placements are applied to
   * the ledger one job after the other, so no register is given twice.
   */
  private async drain(): Promise<void> {
    const work = await this.core.withLedger(async () => {
      await this.failUnarmable();
      // Decisions one job after the other (each sees the registers the ones before it took); writes all at once.
      const writes: Promise<{ job: Job; evictions: readonly Eviction[] } | undefined>[] = [];
      const now = Date.now();
      for (const job of this.queuedInOrder()) {
        const view = this.placeable(job);
        if (!view) continue;
        const decision = decide(this.core, view);
        if (decision.placed.length === 0) {
          // A waiting job says why, in words and numbers, as the fleet changes (not more often than the queue is retried).
          const reason = decision.shortfall ? `queued: ${decision.shortfall.reason}` : "";
          const said = this.reasonSaidMs.get(job.id) ?? 0;
          if (reason && job.state === JobState.PENDING && job.reason !== reason && !job.reason.startsWith("preempted") && now - said >= retryQueueEveryMs) {
            this.reasonSaidMs.set(job.id, now);
            writes.push(
              this.core.store
                .mutate(job.id, (j) => {
                  if (j.state === JobState.PENDING) j.reason = reason;
                }, [])
                .then((updated) => void this.core.publish(updated)),
            );
          }
          continue;
        }
        writes.push(
          this.core.store
            .mutate(job.id, (j) => {
              markPlaced(j, decision);
              for (const t of j.targets) if (isTargetWaiting(t)) t.reason = whyNot(this.core.ledger, j, t);
              if (!j.targets.some((t) => isTargetWaiting(t) && t.preemptions === 0)) j.queueDeadlineUnixMs = 0n;
            }, [...decision.placed.map((p) => p.hostId), ...job.targets.filter(isTargetWaiting).map((t) => t.hostId)])
            .then((updated) => {
              if (!updated.targets.some(isTargetWaiting)) this.dequeue(job.id);
              return { job: updated, evictions: decision.preempted };
            })
            .catch((err: unknown) => {
              // Its registers go back; registers of jobs it would have preempted stay free until those report.
              for (const p of decision.placed) this.core.ledger.release(p.hostId, p.pid, job.id);
              this.core.options.log(`job ${job.id}: storing its placement failed: ${String(err)}`);
              return undefined;
            }),
        );
      }
      const settled = await Promise.all(writes.map((w) => w.catch((err: unknown) => void this.core.options.log(`queue: ${String(err)}`))));
      return settled.filter((w): w is { job: Job; evictions: readonly Eviction[] } => w !== undefined);
    });
    for (const { job } of work) this.core.publish(job);
    if (work.length > 0) {
      // One line per drain: a queue of thousands must not turn into thousands of log lines.
      const shown = work.slice(0, 5).map(({ job }) => `${job.id} on ${job.targets.filter((t) => t.state === TargetState.ARMING).map((t) => `${t.hostId}/${t.pid}`).join(", ")}`);
      this.core.options.log(`queue: placed ${work.length} job(s): ${shown.join("; ")}${work.length > shown.length ? `; and ${work.length - shown.length} more` : ""}`);
    }
    await Promise.all(
      work.map(async ({ job, evictions }) => {
        await this.evict(job, evictions);
        await this.arming.armTargets(job, job.targets.filter((t) => t.state === TargetState.ARMING), []);
      }),
    );
  }

  /**
   * Waiting targets on hosts that cannot arm their job's backend now (a
   * restarted helper whose self-test saw no traps) fail with the host's
   * reason instead of being placed: they would preempt others to watch
   * nothing. Call under the ledger lock; waiting targets hold no registers.
   */
  private async failUnarmable(): Promise<void> {
    for (const job of this.queuedInOrder()) {
      const why = new Map<string, string>();
      const checked = new Set<string>();
      for (const t of job.targets) {
        if (!isTargetWaiting(t) || checked.has(t.hostId)) continue;
        checked.add(t.hostId);
        const info = this.core.known.get(t.hostId)?.info;
        try {
          if (info && job.spec) checkHostBackend(info, job.spec);
        } catch (err) {
          why.set(t.hostId, errorText(err));
        }
      }
      if (why.size === 0) continue;
      const updated = await this.core.store
        .mutate(job.id, (j) => {
          for (const t of j.targets) {
            const reason = why.get(t.hostId);
            if (reason === undefined || !isTargetWaiting(t)) continue;
            t.state = TargetState.FAILED;
            t.reason = reason;
          }
          rollUp(j);
        }, why.keys())
        .catch((err: unknown) => void this.core.options.log(`job ${job.id}: failing its targets on hosts that cannot trap failed: ${String(err)}`));
      if (!updated) continue;
      if (!updated.targets.some(isTargetWaiting)) this.dequeue(job.id);
      if (isJobFinal(updated)) this.ending.forgetJobTimers(updated);
      this.core.publish(updated);
      this.core.options.log(`job ${job.id}: waiting targets on ${[...why.keys()].join(", ")} failed: ${[...why.values()][0]}`);
    }
  }

  /** The queue timeout passed: targets that never got registers fail (a gang fails whole). */
  private async expireQueued(id: string): Promise<void> {
    await this.core.withLedger(async () => {
      const job = this.core.store.get(id);
      const timeout = formatDuration(job?.spec?.queueTimeoutMs ?? 0n);
      if (job && awaitsFirstMatch(job)) {
        const selector = job.spec!.target!;
        const ended = await this.core.store.mutate(id, (j) => {
          if (j.targets.length > 0 || isJobFinal(j)) return;
          j.queueDeadlineUnixMs = 0n;
          finish(j, JobState.FAILED, `no process matching ${describeProcesses(selector)} started within the queue timeout (${timeout})`);
        }, []);
        this.core.publish(ended);
        this.core.options.log(`job ${id}: queue timeout (${timeout}) passed; ${ended.reason}`);
        if (isJobFinal(ended)) this.ending.forgetJobTimers(ended);
        return;
      }
      if (!job || isJobFinal(job) || !job.targets.some((t) => isTargetWaiting(t) && t.preemptions === 0)) return;
      const updated = await this.core.store.mutate(id, (j) => {
        const why = j.reason.replace(/^queued: /, "");
        for (const t of j.targets) {
          if (!isTargetWaiting(t) || t.preemptions > 0) continue;
          t.state = TargetState.FAILED;
          t.reason = `not placed within the queue timeout (${timeout}): ${t.reason}`;
        }
        j.queueDeadlineUnixMs = 0n;
        rollUp(j);
        if (j.state === JobState.FAILED) j.reason = `not placed within the queue timeout (${timeout}): ${why}`;
      }, job.targets.filter(isTargetWaiting).map((t) => t.hostId));
      if (!updated.targets.some(isTargetWaiting)) this.dequeue(id);
      this.core.publish(updated);
      this.core.options.log(`job ${id}: queue timeout (${timeout}) passed; ${updated.reason}`);
      if (isJobFinal(updated)) this.ending.forgetJobTimers(updated);
    });
  }

  /** Runs the queue when it has not run for a while: foreign registers and other tracers are tried again. */
  retryIfDue(now: number): void {
    if (now - this.lastDrainMs > retryQueueEveryMs) {
      this.lastDrainMs = now;
      this.drainSoon();
    }
  }

  /** Stops every queue deadline (the jobs stay as stored; the next term queues them again). */
  stop(): void {
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
  }
}
