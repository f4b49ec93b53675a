// The process exit codes of `fleetwatch`: scripts branch on them, so each
// failure class has exactly one code and gRPC statuses map to them in one place.
import { status } from "@grpc/grpc-js";

/** Exit codes of every command. */
export const ExitCode = {
  /** Done as asked. */
  ok: 0,
  /** Anything else went wrong, including an unreachable controller or NATS. */
  error: 1,
  /** The controller could not place the job (no room, no such target or job, wrong state). */
  notPlaceable: 2,
  /** The command line or the watch spec is wrong; nothing was sent. */
  badInput: 3,
  /** The controller refused: this caller's certificate may not do this (the rule is in the message). */
  denied: 4,
  /** Stopped by Ctrl-C (128 + SIGINT) before the work was done. */
  interrupted: 130,
} as const;

/** One of the values of {@link ExitCode}. */
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** The exit code of a call that ended with a gRPC status other than OK. */
export function exitCodeForStatus(code: status): ExitCode {
  switch (code) {
    case status.INVALID_ARGUMENT:
      return ExitCode.badInput;
    case status.PERMISSION_DENIED:
    case status.UNAUTHENTICATED:
      return ExitCode.denied;
    case status.RESOURCE_EXHAUSTED:
    case status.NOT_FOUND:
    case status.FAILED_PRECONDITION:
      return ExitCode.notPlaceable;
    default:
      return ExitCode.error;
  }
}

/** Whether a status means the controller never answered (as opposed to answering no). */
export function isUnreachableStatus(code: status): boolean {
  return code === status.UNAVAILABLE || code === status.DEADLINE_EXCEEDED;
}
