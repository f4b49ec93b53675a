// The host policy in effect on this agent: which processes it refuses to
// watch (the agent and its helper included) and how a hit's values leave the
// host under it. The rules themselves are pure, in host-policy.ts.
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { PolicyRefusalSchema, type PolicyRefusal } from "../proto/index.js";
import { HostPolicyRefusal } from "./errors.js";
import { defaultPolicy, policyLabel, redactValues, refusal, stricterValues, summarizePolicy, type HostPolicy, type RedactedValues, type ValuePolicy } from "./host-policy.js";
import { userNames, type LoadedPolicy } from "./policy-file.js";
import { inspectProcess } from "./process-discovery.js";
import type { ProcessInfo } from "./process-match.js";

/** The policy in effect, its user names and the run's hash key. */
export class PolicyGate {
  private current: HostPolicy = defaultPolicy;
  /** This host's user names, read with the policy (and at start without one). */
  private names = userNames();
  /** The key of hashed values: random per run, so hashes cannot be compared across runs or hosts. */
  private readonly hashKey = randomBytes(32);

  /** `helperPid` is asked each time: a restarted helper has a new pid. */
  constructor(private readonly helperPid: () => number | undefined) {}

  /** The policy in effect; a new object after each reload. */
  get policy(): HostPolicy {
    return this.current;
  }

  /** The user name of a uid on this host, as read with the policy. */
  get userName(): (uid: number) => string | undefined {
    return this.names;
  }

  /** Puts a (re)loaded policy in effect; hits from now on are redacted by it. */
  set(loaded: LoadedPolicy): void {
    this.current = loaded.policy;
    this.names = loaded.userName;
  }

  /** The policy in effect, in one line ("" without a policy file). */
  summary(): string {
    return this.current.file === undefined ? "" : summarizePolicy(this.current);
  }

  /** Why the host policy forbids watching this process, or undefined when it may be watched. */
  refusalOf(p: ProcessInfo): PolicyRefusal | undefined {
    const reason = refusal(this.current, p, { agentPid: process.pid, helperPid: this.helperPid(), userName: this.names });
    return reason === undefined ? undefined : create(PolicyRefusalSchema, { pid: p.pid, reason });
  }

  /** Why the policy now forbids watching pid (a process that is gone is not refused here: the helper reports it). */
  refusalOfPid(pid: number): PolicyRefusal | undefined {
    const p = inspectProcess(pid);
    return p && this.refusalOf(p);
  }

  /** Throws HostPolicyRefusal when the policy forbids watching the pid; a pid that is gone is left to the helper to report. */
  check(pid: number): void {
    if (pid === 1) throw new HostPolicyRefusal(`${policyLabel(this.current)}: pid 1 (the init process) is never watched`);
    const no = this.refusalOfPid(pid);
    if (no) throw new HostPolicyRefusal(no.reason);
  }

  /** A hit's values as the host policy and the job's owner let them leave the host (the stricter of the two). */
  redact(jobValues: ValuePolicy, oldValue: bigint, newValue: bigint): RedactedValues {
    return redactValues(stricterValues(this.current.values, jobValues), this.hashKey, oldValue, newValue);
  }
}
