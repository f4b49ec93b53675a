// What one leader term's controller core is started with: the agents' session
// timing, the fencing epoch, the log, what a job's owner may watch, the
// retention of finished jobs, and the metrics.
import type { AccessControl } from "./access.js";
import type { RetentionOptions } from "./finished-retention.js";
import type { ControllerMetrics } from "./metrics.js";

/** The options of one leader term's Controller (`startController` derives them from its own). */
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
  /** How long and how many finished jobs the store keeps; unset: every one, forever. */
  retention?: RetentionOptions;
  /** What a job's owner may watch (late joiners are checked too); unset: anything. */
  access?: Pick<AccessControl, "watchDecision">;
  /** The daemon's metrics (they outlive the term); unset: none kept. */
  metrics?: Pick<ControllerMetrics, "placed" | "preempted" | "registered" | "jobChanged">;
}
