// The controller's metrics and readiness: a prom-client Registry of its own
// (`fleetwatch up` runs a controller and an agent in one process), counters
// the parts bump where they already decide (placement, preemption, sessions,
// store conflicts, denials), and gauges read from the leader term at scrape.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { JobState, TargetState, isFinalJobState, jobStateName, targetStateName, type Job, type Readiness } from "../proto/index.js";

/** Job states as the `state` label spells them, every one exported (zeros too). */
const jobStates = [JobState.PENDING, JobState.ARMED, JobState.DEGRADED, JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED];
const targetStates = [TargetState.PENDING, TargetState.ARMING, TargetState.ARMED, TargetState.LOST, TargetState.PREEMPTED, TargetState.COMPLETED, TargetState.CANCELLED, TargetState.FAILED, TargetState.EXITED];

/** What the gauges say of the jobs a controller holds. */
export interface JobCensus {
  /** Jobs by state name. */
  jobs: Record<string, number>;
  /** Targets of jobs that have not ended, by state name. */
  targets: Record<string, number>;
  /** Age of the oldest pending job since it was submitted; 0 with none. */
  oldestPendingSeconds: number;
}

/**
 * Counts jobs and targets by state (pure): the jobs given, plus `finished`
 * jobs by state that memory only indexes. Ended jobs' targets are left out:
 * they no longer change.
 */
export function jobCensus(jobs: readonly Job[], nowMs: number, finished: (state: JobState) => number = () => 0): JobCensus {
  const census: JobCensus = { jobs: {}, targets: {}, oldestPendingSeconds: 0 };
  for (const s of jobStates) census.jobs[jobStateName(s)] = isFinalJobState(s) ? finished(s) : 0;
  for (const s of targetStates) census.targets[targetStateName(s)] = 0;
  let oldest = Infinity;
  for (const job of jobs) {
    const name = jobStateName(job.state);
    census.jobs[name] = (census.jobs[name] ?? 0) + 1;
    if (job.state === JobState.PENDING) oldest = Math.min(oldest, Number(job.createdUnixMs));
    if (isFinalJobState(job.state)) continue;
    for (const t of job.targets) {
      const target = targetStateName(t.state);
      census.targets[target] = (census.targets[target] ?? 0) + 1;
    }
  }
  if (oldest !== Infinity) census.oldestPendingSeconds = Math.max(0, (nowMs - oldest) / 1000);
  return census;
}

/** Whether every placed target of a job is armed: it leads as armed and none is still arming. */
export function everyTargetArmed(job: Job): boolean {
  return job.state === JobState.ARMED && !job.targets.some((t) => t.state === TargetState.ARMING);
}

/** What readiness is decided from. */
export interface ControllerHealth {
  /** Start-up is over: the first election decision is made and gRPC is served. */
  started: boolean;
  /** The election says we lead. */
  leading: boolean;
  /** A leader term serves (its jobs loaded). */
  termOpen: boolean;
  /** Why the store (NATS, JetStream KV) did not answer; undefined when it did. */
  storeError: string | undefined;
}

/** Ready: the store answers, and we serve as leader or stand by; a leader still loading its jobs is not (pure). */
export function controllerReadiness(h: ControllerHealth): Readiness {
  if (!h.started) return { ready: false, reason: "starting: the first leader election is not decided yet" };
  if (h.storeError !== undefined) return { ready: false, reason: `the store (NATS JetStream) does not answer: ${h.storeError}` };
  if (h.leading && !h.termOpen) return { ready: false, reason: "taking over as leader: loading the stored jobs" };
  return { ready: true };
}

/** What the gauges read from the controller at each scrape. */
export interface ControllerView {
  /** The leader term serving, or undefined while standing by. */
  term(): { activeJobs(): readonly Job[]; finishedJobs(state: JobState): number; connectedAgents(): number; queuedJobs(): number } | undefined;
  leading(): boolean;
  /** This controller's epoch while it leads, else the leader's last seen; 0 with none. */
  epoch(): bigint;
}

// Latency buckets in seconds: a submit discovers and resolves on agents (ms to s); arming a fleet takes up to ~10 s.
const submitBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const armedBuckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** One controller daemon's metrics, across its leader terms. */
export class ControllerMetrics {
  readonly registry = new Registry();
  private readonly placements: Counter;
  private readonly preemptions: Counter;
  private readonly registrations: Counter;
  private readonly reconnects: Counter;
  private readonly conflicts: Counter;
  private readonly denials: Counter<"action">;
  private readonly submitSeconds: Histogram<"code">;
  private readonly armedSeconds: Histogram;
  /** Jobs whose every target has been seen armed once (so each is observed once); they leave when they end. */
  private readonly armedSeen = new Set<string>();

  constructor(view: ControllerView) {
    const registers = [this.registry];
    // Process metrics under their usual names, told apart from the agent's in `fleetwatch up` by a label.
    collectDefaultMetrics({ register: this.registry, labels: { daemon: "controller" } });
    let census: JobCensus | undefined;
    // One census per scrape, shared by the three gauges that read it: a scrape collects them in one go, so it is dropped after.
    const take = (): JobCensus => {
      if (!census) {
        const term = view.term();
        census = jobCensus(term?.activeJobs() ?? [], Date.now(), (state) => term?.finishedJobs(state) ?? 0);
        queueMicrotask(() => (census = undefined));
      }
      return census;
    };
    new Gauge({
      name: "fleetwatch_controller_jobs",
      help: "Jobs this controller holds, by state (0 on a standby).",
      labelNames: ["state"],
      registers,
      collect() {
        for (const [state, n] of Object.entries(take().jobs)) this.set({ state }, n);
      },
    });
    new Gauge({
      name: "fleetwatch_controller_targets",
      help: "Targets of jobs that have not ended, by state.",
      labelNames: ["state"],
      registers,
      collect() {
        for (const [state, n] of Object.entries(take().targets)) this.set({ state }, n);
      },
    });
    new Gauge({
      name: "fleetwatch_controller_pending_oldest_seconds",
      help: "Seconds since the oldest pending job was submitted (0 with none pending).",
      registers,
      collect() {
        this.set(take().oldestPendingSeconds);
      },
    });
    new Gauge({
      name: "fleetwatch_controller_queue_jobs",
      help: "Jobs with targets waiting in the queue for debug registers.",
      registers,
      collect() {
        this.set(view.term()?.queuedJobs() ?? 0);
      },
    });
    new Gauge({
      name: "fleetwatch_controller_agents_connected",
      help: "Agents with an open session to this controller.",
      registers,
      collect() {
        this.set(view.term()?.connectedAgents() ?? 0);
      },
    });
    new Gauge({
      name: "fleetwatch_controller_leader",
      help: "1 while this controller leads, 0 while it stands by.",
      registers,
      collect() {
        this.set(view.leading() ? 1 : 0);
      },
    });
    new Gauge({
      name: "fleetwatch_controller_epoch",
      help: "The leader's fencing epoch: this controller's while it leads, else the leader's last seen (0: none known).",
      registers,
      collect() {
        this.set(Number(view.epoch()));
      },
    });
    this.placements = new Counter({ name: "fleetwatch_controller_placements_total", help: "Targets the scheduler placed on debug registers (at submit, from the queue, late joiners, replacements).", registers });
    this.preemptions = new Counter({ name: "fleetwatch_controller_preemptions_total", help: "Targets preempted by a job of higher priority.", registers });
    this.registrations = new Counter({ name: "fleetwatch_controller_agent_registrations_total", help: "Agent sessions registered (every connection and reconnection).", registers });
    this.reconnects = new Counter({ name: "fleetwatch_controller_agent_reconnects_total", help: "Registrations of a host that had registered with this leader term before.", registers });
    this.conflicts = new Counter({ name: "fleetwatch_controller_kv_conflicts_total", help: "Job writes that lost a compare-and-set race in the KV store (each is read again and retried, a few times at most).", registers });
    this.denials = new Counter({ name: "fleetwatch_controller_access_denials_total", help: "Requests denied (PERMISSION_DENIED, as in the audit trail), by action.", labelNames: ["action"], registers });
    this.submitSeconds = new Histogram({ name: "fleetwatch_controller_submit_seconds", help: "SubmitJob latency, by gRPC status.", labelNames: ["code"], buckets: submitBuckets, registers });
    this.armedSeconds = new Histogram({ name: "fleetwatch_controller_job_armed_seconds", help: "From a job's submit to every one of its placed targets armed.", buckets: armedBuckets, registers });
  }

  /** The scheduler placed n targets. */
  placed(n: number): void {
    if (n > 0) this.placements.inc(n);
  }

  preempted(): void {
    this.preemptions.inc();
  }

  /** An agent registered; `again` when this term had seen the host before. */
  registered(again: boolean): void {
    this.registrations.inc();
    if (again) this.reconnects.inc();
  }

  /** A job write lost a compare-and-set race. */
  kvConflict(): void {
    this.conflicts.inc();
  }

  /** An audit record was written: denials are counted by action. */
  audited(action: string, result: string): void {
    if (result === "PERMISSION_DENIED") this.denials.inc({ action });
  }

  /** A SubmitJob call ended with this status after `seconds`. */
  submitted(code: string, seconds: number): void {
    this.submitSeconds.observe({ code }, seconds);
  }

  /** A job's new state: the first time every target of it is armed, the time since submit is observed. */
  jobChanged(job: Job): void {
    if (isFinalJobState(job.state)) {
      this.armedSeen.delete(job.id);
      return;
    }
    if (this.armedSeen.has(job.id) || !everyTargetArmed(job)) return;
    this.armedSeen.add(job.id);
    this.armedSeconds.observe(Math.max(0, Date.now() - Number(job.createdUnixMs)) / 1000);
  }
}
