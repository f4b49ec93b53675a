// Small facts about a job's targets and selector that several parts of the
// controller ask: targets by host and pid, the process part of a selector
// agents are sent, and whether a job follows processes that start later.
import { create } from "@bufbuild/protobuf";
import { TargetSelectorSchema, type Job, type Target, type TargetSelector } from "../proto/index.js";
import { isJobFinal } from "./job-state.js";

/** A job's targets by host, then pid. */
export interface TargetIndex {
  get(hostId: string, pid: number): Target | undefined;
}

/**
 * A job's targets by host and pid: lookups of many targets in a job of
 * thousands must not each scan it. By host first (a host has a few), not by a
 * `host/pid` string: making and hashing a new key string per target and per
 * lookup cost several times the lookups themselves.
 */
export function targetIndex(job: Job): TargetIndex {
  const byHost = new Map<string, Target[]>();
  for (const t of job.targets) {
    const list = byHost.get(t.hostId);
    if (list) list.push(t);
    else byHost.set(t.hostId, [t]);
  }
  // The last of a host and pid, as a map by `host/pid` kept it.
  return { get: (hostId, pid) => byHost.get(hostId)?.findLast((t) => t.pid === pid) };
}

/** The part of a selector an agent needs: which processes (hosts are the controller's business, and a list of thousands of host ids is not worth sending to each). */
export function processPart(selector: TargetSelector): TargetSelector {
  return create(TargetSelectorSchema, { pid: selector.pid, exe: selector.exe, comm: selector.comm, cgroup: selector.cgroup });
}

/** Whether agents should watch for processes that start matching later (not for a bare pid). */
export function isFollowable(selector: TargetSelector): boolean {
  return selector.exe !== "" || selector.comm !== "" || selector.cgroup !== "";
}

/** A job that has no target yet and may still wait for a matching process to start. */
export function awaitsFirstMatch(job: Job): boolean {
  return !isJobFinal(job) && job.targets.length === 0 && job.queueDeadlineUnixMs > 0n;
}
