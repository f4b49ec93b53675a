// What one leader term's controller core is started with: the agents' session
// timing, the fencing epoch, the log, and what a job's owner may watch.
import type { AccessControl } from "./access.js";

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
  /** What a job's owner may watch (late joiners are checked too); unset: anything. */
  access?: Pick<AccessControl, "watchDecision">;
}
