// Errors of the contract layer: the status a call ended with, and the shape of
// the one table per service that turns an owner's errors into gRPC statuses.
import { status } from "@grpc/grpc-js";

/** A gRPC status seen by a client, or raised by a handler that already knows its code. */
export class RpcError extends Error {
  override readonly name = "RpcError";
  constructor(
    readonly code: status,
    readonly details: string,
    options?: { cause?: unknown },
  ) {
    super(details, options);
  }

  /** The status name, e.g. `RESOURCE_EXHAUSTED`. */
  get codeName(): string {
    return status[this.code] ?? String(this.code);
  }
}

/** Turns any error a handler throws into the status the client sees. */
export type StatusFor = (err: unknown) => { code: status; details: string };

/** A watch spec that breaks the rules in `watch-spec.ts`. */
export class WatchSpecError extends Error {
  override readonly name = "WatchSpecError";
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(message);
  }
}
