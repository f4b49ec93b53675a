// Job and target state names as every output shows them, and which job
// states are final: one definition for the controller and the CLI.
import { JobState, TargetState } from "./gen/fleetwatch/v1/watch_pb.js";

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
