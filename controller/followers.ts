// Followers of jobs: WatchJob streams that follow a job's states (a slow one
// is sent the newest state and the count it skipped), and the processes that
// start matching a job whose agents follow its selector (late joiners).
import { clone, create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { JobSchema, LatestQueue, RpcError, TargetSchema, TargetState, parsePlacement, resolveBackend, targetStateName, type DiscoveredProcess, type Job } from "../proto/index.js";
import { plaintextCaller, type Caller } from "./access.js";
import type { AgentSession } from "./agent-session.js";
import type { Arming } from "./arming.js";
import type { ControllerCore } from "./controller-core.js";
import { errorText } from "./errors.js";
import { decide, markPlaced, whyNot } from "./job-placement.js";
import type { JobQueue } from "./job-queue.js";
import { isJobFinal, rollUp } from "./job-state.js";
import { isFollowable } from "./job-targets.js";
import { scopeSubject, type SubmitFlow } from "./submit.js";
import type { PlacementDecision } from "./placement-types.js";

/** The caller a job's stored owner (`user alice`, or "" over plaintext) stands for. */
function ownerCaller(owner: string): Caller {
  const [kind, name] = owner.split(" ");
  return kind === "user" && name ? { who: owner, user: name } : plaintextCaller;
}

/** Job watchers, and late joiners of jobs agents follow. */
export class Followers {
  /** The queues of job followers (WatchJob). */
  private readonly queues = new Set<LatestQueue<Job>>();
  /** States skipped by followers that are gone. */
  private skippedStates = 0;

  constructor(
    private readonly core: ControllerCore,
    private readonly submit: Pick<SubmitFlow, "plan">,
    private readonly queue: Pick<JobQueue, "evict" | "enqueue">,
    private readonly arming: Pick<Arming, "armTargets">,
  ) {}

  /**
   * The job now, then after every change, until it is final. A follower that
   * reads slower than the job changes gets the newest state and the count of
   * states it skipped: what waits for it is one job, however slow it is.
   */
  async *watch(id: string, signal: AbortSignal): AsyncGenerator<{ job: Job; skipped: bigint }> {
    // An active job is in memory, read without a pause: no change can come between this read and the listener below.
    const cached = this.core.store.get(id) ?? (await this.core.get(id));
    // A final job does not change any more: its full record, once. A live one is never without its targets.
    if (isJobFinal(cached)) {
      yield { job: await this.core.getFull(id), skipped: 0n };
      return;
    }
    const first = cached;
    const queue = new LatestQueue<Job>();
    const listener = (job: Job) => {
      if (job.id === id) queue.push(job);
    };
    const onAbort = () => queue.close();
    const onStop = () => queue.fail(new RpcError(status.UNAVAILABLE, "this controller's leader term ended: reconnect to the leader"));
    this.core.changes.on("job", listener);
    signal.addEventListener("abort", onAbort);
    this.core.stopped.signal.addEventListener("abort", onStop);
    this.queues.add(queue);
    let skippedBefore = 0;
    try {
      yield { job: first, skipped: 0n };
      if (isJobFinal(first)) return;
      for await (const job of queue) {
        const skipped = queue.replaced - skippedBefore;
        skippedBefore = queue.replaced;
        yield { job, skipped: BigInt(skipped) };
        if (isJobFinal(job)) return;
      }
    } finally {
      this.queues.delete(queue);
      this.skippedStates += queue.replaced;
      this.core.changes.off("job", listener);
      signal.removeEventListener("abort", onAbort);
      this.core.stopped.signal.removeEventListener("abort", onStop);
    }
  }

  /** Job states waiting for followers that have not read them (at most one per follower), and states they skipped so far. */
  backlog(): { followers: number; pending: number; skipped: number } {
    let pending = 0;
    let skipped = this.skippedStates;
    for (const q of this.queues) {
      pending += q.size;
      skipped += q.replaced;
    }
    return { followers: this.queues.size, pending, skipped };
  }

  /** Agents stop looking for late joiners of a job that ended (unknown jobs are ignored there). */
  unfollow(job: Job): void {
    if (!job.spec?.target || !isFollowable(job.spec.target)) return;
    for (const session of this.core.sessions.values()) session.send({ msg: { case: "unfollow", value: { jobId: job.id } } });
  }

  /** A process that started matching an active job (late joiner), or a process of a host that joined. */
  async addTarget(jobId: string, session: AgentSession, process: DiscoveredProcess): Promise<void> {
    const pid = process.pid;
    const job = this.core.store.get(jobId);
    if (!job || isJobFinal(job) || job.targets.some((t) => t.hostId === session.hostId && t.pid === pid)) return;
    // A late joiner outside its owner's scope is left alone (and said so).
    const decision = this.core.options.access?.watchDecision(ownerCaller(job.owner), scopeSubject(session, process));
    if (decision && !decision.allowed) {
      this.core.options.log(`job ${jobId}: ${session.hostId}/${pid} not taken: ${decision.why}`);
      return;
    }
    const plan = await this.submit.plan(session, job.spec!, pid);
    const added = await this.core.withLedger(async () => {
      const current = this.core.store.get(jobId);
      if (!current || isJobFinal(current) || current.targets.some((t) => t.hostId === session.hostId && t.pid === pid)) return undefined;
      const base = { hostId: session.hostId, pid, counts: {}, backend: resolveBackend(current.spec!) };
      const target =
        "err" in plan
          ? create(TargetSchema, { ...base, state: TargetState.FAILED, reason: errorText(plan.err) })
          : create(TargetSchema, { ...base, state: TargetState.PENDING, reason: "waiting to be placed", chunks: plan.chunks });
      let decision: PlacementDecision | undefined;
      const trial = clone(JobSchema, current);
      trial.targets.push(target);
      const before = this.core.ledgerCheckpoint(trial);
      if (target.state === TargetState.PENDING) decision = decide(this.core, trial);
      const placedHere = decision?.placed.some((p) => p.hostId === session.hostId && p.pid === pid) ?? false;
      // A sample that has its targets does not take more.
      if (!placedHere && parsePlacement(current.spec?.placement ?? "").kind === "sample" && target.state === TargetState.PENDING) {
        this.core.ledgerRollback(before);
        this.core.options.log(`job ${jobId}: ${session.hostId}/${pid} not taken into the sample (${decision?.outcome === "placed" ? "it has its targets" : (decision?.shortfall?.reason ?? "no room")})`);
        return undefined;
      }
      const waits = current.queueDeadlineUnixMs > BigInt(Date.now());
      try {
        const updated = await this.core.store.mutate(jobId, (j) => {
          j.targets.push(clone(TargetSchema, target));
          if (decision) markPlaced(j, decision);
          const t = j.targets.find((x) => x.hostId === session.hostId && x.pid === pid)!;
          if (t.state === TargetState.PENDING) {
            t.reason = whyNot(this.core.ledger, j, t);
            if (!waits) t.state = TargetState.FAILED;
          }
          rollUp(j);
        }, [session.hostId, ...(decision?.placed.map((p) => p.hostId) ?? [])]);
        return { updated, decision };
      } catch (err) {
        this.core.ledgerRollback(before);
        throw err;
      }
    });
    if (!added) return;
    this.core.publish(added.updated);
    const t = added.updated.targets.find((x) => x.hostId === session.hostId && x.pid === pid)!;
    this.core.options.log(`job ${jobId}: ${session.hostId}/${pid} joined (${targetStateName(t.state)}${t.state === TargetState.ARMING ? "" : `: ${t.reason}`})`);
    await this.queue.evict(added.updated, added.decision?.preempted ?? []);
    // The decision may also have placed other waiting targets of the job (a gang completed by this one).
    const placed = new Set(added.decision?.placed.map((p) => `${p.hostId}/${p.pid}`) ?? []);
    const arming = added.updated.targets.filter((x) => x.state === TargetState.ARMING && placed.has(`${x.hostId}/${x.pid}`));
    if (arming.length > 0) await this.arming.armTargets(added.updated, arming, []);
    else this.queue.enqueue(added.updated);
  }
}
