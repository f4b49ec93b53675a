// The controller's errors, and the one table that turns them into gRPC
// statuses at the RPC edge. Unknown errors never leak their text.
import { status } from "@grpc/grpc-js";
import { RpcError, WatchSpecError, type AgentError, type StatusFor } from "../proto/index.js";
import { NotLeaderError } from "./leader-election.js";

/** The request is malformed or can never work as written. */
export class InvalidRequestError extends Error {
  override readonly name = "InvalidRequestError";
}

/** The caller may not do this: the wrong kind of certificate, or a rule that denies it (named in the message). */
export class PermissionDeniedError extends Error {
  override readonly name = "PermissionDeniedError";
}

/** A job, host or process that does not exist. */
export class NotFoundError extends Error {
  override readonly name = "NotFoundError";
}

/** The fleet is not in a state where this can work now (no agent, traced by someone else). */
export class PreconditionError extends Error {
  override readonly name = "PreconditionError";
}

/** Not enough free debug registers on a target. */
export class SlotsExhaustedError extends Error {
  override readonly name = "SlotsExhaustedError";
  constructor(
    message: string,
    readonly hostId: string,
    readonly pid: number,
    readonly holders: readonly string[],
  ) {
    super(message);
  }
}

/** A host refused or failed an operation; `errnoName` is what its kernel said. */
export class AgentOperationError extends Error {
  override readonly name = "AgentOperationError";
  /** The host's policy refused it, not its kernel: asking again will not help. */
  readonly hostPolicy: boolean;
  constructor(
    message: string,
    readonly hostId: string,
    readonly errnoName: string,
    options?: { cause?: unknown; hostPolicy?: boolean },
  ) {
    super(message, options);
    this.hostPolicy = options?.hostPolicy ?? false;
  }
}

/** What a host's agent answered as an error, as the error the controller reports: named after the host. */
export function agentFailure(hostId: string, error: AgentError): AgentOperationError {
  return new AgentOperationError(`${hostId}: ${error.message}`, hostId, error.errnoName, { hostPolicy: error.hostPolicy });
}

/** The text of anything thrown, for targets' reasons and the log. */
export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The agent did not answer in time or its session ended. */
export class AgentUnavailableError extends Error {
  override readonly name = "AgentUnavailableError";
  constructor(
    message: string,
    readonly hostId: string,
  ) {
    super(message);
  }
}

// What each errno an agent reports means for the caller.
const errnoStatus: Record<string, status> = {
  ESRCH: status.NOT_FOUND,
  ENOENT: status.NOT_FOUND,
  EPERM: status.FAILED_PRECONDITION,
  EACCES: status.PERMISSION_DENIED,
  EBUSY: status.RESOURCE_EXHAUSTED,
  ENOSPC: status.RESOURCE_EXHAUSTED,
  EINVAL: status.INVALID_ARGUMENT,
};

/** The controller's error → status table. */
export const statusFor: StatusFor = (err) => {
  if (err instanceof RpcError) return { code: err.code, details: err.details };
  if (err instanceof WatchSpecError || err instanceof InvalidRequestError) return { code: status.INVALID_ARGUMENT, details: err.message };
  if (err instanceof NotFoundError) return { code: status.NOT_FOUND, details: err.message };
  if (err instanceof PermissionDeniedError) return { code: status.PERMISSION_DENIED, details: err.message };
  if (err instanceof PreconditionError) return { code: status.FAILED_PRECONDITION, details: err.message };
  if (err instanceof SlotsExhaustedError) return { code: status.RESOURCE_EXHAUSTED, details: err.message };
  if (err instanceof AgentOperationError && err.hostPolicy) return { code: status.PERMISSION_DENIED, details: err.message };
  if (err instanceof AgentOperationError) return { code: errnoStatus[err.errnoName] ?? status.FAILED_PRECONDITION, details: err.message };
  if (err instanceof AgentUnavailableError) return { code: status.FAILED_PRECONDITION, details: err.message };
  // Clients with several controller addresses move on to the next one.
  if (err instanceof NotLeaderError) return { code: status.UNAVAILABLE, details: err.message };
  return { code: status.INTERNAL, details: "internal error in the controller; see its log" };
};
