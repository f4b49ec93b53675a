// Job and target state names as every output shows them, and which job
// states are final: one definition for the controller and the CLI.
import { create } from "@bufbuild/protobuf";
import { TargetStateCountSchema, type TargetStateCount } from "./gen/fleetwatch/v1/controller_pb.js";
import { JobState, TargetState, type Target } from "./gen/fleetwatch/v1/watch_pb.js";

/** Lowercase job state: pending, armed, completed, cancelled, failed. */
export function jobStateName(state: JobState): string {
  return (JobState[state] ?? String(state)).toLowerCase();
}

/** Lowercase target state: pending, armed, completed, cancelled, failed, exited. */
export function targetStateName(state: TargetState): string {
  return (TargetState[state] ?? String(state)).toLowerCase();
}

/** Whether a job in this state will not change any more. */
export function isFinalJobState(state: JobState): boolean {
  return state === JobState.COMPLETED || state === JobState.CANCELLED || state === JobState.FAILED;
}

/** How many targets are in each state, in TargetState order, states with none left out (SubmitJobResponse.target_states). */
export function countTargetStates(targets: readonly Pick<Target, "state">[]): TargetStateCount[] {
  const counts = new Map<TargetState, number>();
  for (const t of targets) counts.set(t.state, (counts.get(t.state) ?? 0) + 1);
  return [...counts]
    .sort(([a], [b]) => a - b)
    .map(([state, targets]) => create(TargetStateCountSchema, { state, targets }));
}

/**
 * Targets by state of a SubmitJob answer: its target_states when the
 * controller counted them (the request said without_targets), else counted
 * from the job's targets (an answer listing every target, from any controller).
 */
export function submittedTargetStates(response: { job?: { targets: readonly Pick<Target, "state">[] } | undefined; targetStates: readonly TargetStateCount[] }): TargetStateCount[] {
  return response.targetStates.length > 0 ? [...response.targetStates] : countTargetStates(response.job?.targets ?? []);
}
