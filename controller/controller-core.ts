// What every part of one leader term's controller shares: the job store, the
// agents' sessions and what they said, the slot ledger and the lock that
// orders decisions on it, the options and log, and job changes for followers.
import { EventEmitter } from "node:events";
import type { AgentInfo, Job } from "../proto/index.js";
import type { AgentSession } from "./agent-session.js";
import type { ControllerCoreOptions } from "./controller-options.js";
import { NotFoundError } from "./errors.js";
import type { JobStore } from "./job-store.js";
import type { TargetSnapshot } from "./placement-types.js";
import { SlotLedger } from "./slot-ledger.js";

/** The answer for an id the store does not have. */
function notFound(id: string): NotFoundError {
  return new NotFoundError(`no job '${id}': list jobs with \`fleetwatch jobs ls\``);
}

/** An agent this controller has seen: what it said of itself, and when it was last seen (as of its last session's start or end). */
export interface KnownAgent {
  info: AgentInfo;
  lastSeenMs: number;
}

/** The shared state of one controller; the parts (submit flow, queue, liveness, followers, kill switch) each hold it. */
export class ControllerCore {
  /** The open session of each connected host. */
  readonly sessions = new Map<string, AgentSession>();
  /** Every agent ever seen by this controller, connected or not. */
  readonly known = new Map<string, KnownAgent>();
  readonly ledger = new SlotLedger();
  /** Emits `job` with each job's new state (see publish). */
  readonly changes = new EventEmitter();
  /** Aborted when this leader term stops. */
  readonly stopped = new AbortController();
  /** When this controller started serving: no host counts as silent from before. */
  startedMs = Date.now();
  private placing: Promise<unknown> = Promise.resolve();

  constructor(
    readonly store: JobStore,
    readonly options: ControllerCoreOptions,
  ) {
    this.changes.setMaxListeners(0);
  }

  /** Tells the job's followers its new state. */
  publish(job: Job): void {
    this.options.metrics?.jobChanged(job);
    this.changes.emit("job", job);
  }

  /**
   * Runs `work` after every decision on the ledger started before it: a
   * decision, its write to the store and its undo on failure are not
   * interleaved with another's.
   */
  withLedger<T>(work: () => Promise<T>): Promise<T> {
    const next = this.placing.then(work, work);
    this.placing = next.catch(() => {});
    return next;
  }

  /** What the ledger said about a job's targets before a decision, to undo it when storing the job fails. */
  ledgerCheckpoint(job: Job): TargetSnapshot[] {
    return job.targets.map((t) => this.ledger.snapshot(t.hostId, t.pid));
  }

  /** Puts back what ledgerCheckpoint saw. */
  ledgerRollback(snapshots: readonly TargetSnapshot[]): void {
    for (const s of snapshots) this.ledger.put(s);
  }

  /** A job by id: from memory, or a finished one's stored record (a big finished job without its targets). */
  async get(id: string): Promise<Job> {
    const job = await this.store.summary(id);
    if (!job) throw notFound(id);
    return job;
  }

  /** The job with every target (a finished job's are read back from the store when memory does not hold them). */
  async getFull(id: string): Promise<Job> {
    const job = await this.store.full(id);
    if (!job) throw notFound(id);
    return job;
  }
}
