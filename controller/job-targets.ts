// Small facts about a job's targets and selector that several parts of the
// controller ask: targets by host and pid, the process part of a selector
// agents are sent, and whether a job follows processes that start later.
import { create } from "@bufbuild/protobuf";
import { TargetSelectorSchema, type Job, type Target, type TargetSelector } from "../proto/index.js";
import { isJobFinal } from "./job-state.js";

/** A job's targets by `host/pid`: lookups of many targets in a job of thousands must not each scan it. */
export function targetIndex(job: Job): Map<string, Target> {
  return new Map(job.targets.map((t) => [`${t.hostId}/${t.pid}`, t]));
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
