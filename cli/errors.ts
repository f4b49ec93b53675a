// Errors of the CLI and the one handler that turns any failure into a message
// on stderr and an exit code: gRPC statuses, local validation, commander
// usage errors, NATS and daemon start-up failures all end here.
import { CommanderError } from "commander";
import { RpcError, WatchSpecError } from "../proto/index.js";
import { ExitCode, exitCodeForStatus, isUnreachableStatus } from "./exit-codes.js";
import { NatsServerError } from "./nats-server.js";

/** A failure the CLI already knows how to word, with its exit code. */
export class CliError extends Error {
  override readonly name: string = "CliError";
  constructor(
    message: string,
    readonly exitCode: ExitCode = ExitCode.error,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A bad command line or value, found before anything was sent (exit 3). */
export class UsageError extends CliError {
  override readonly name = "UsageError";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, ExitCode.badInput, options);
  }
}

/** Ctrl-C (or SIGTERM) ended a command that had not finished (exit 130). */
export class InterruptedError extends CliError {
  override readonly name = "InterruptedError";
  constructor(message = "interrupted", options?: { cause?: unknown }) {
    super(message, ExitCode.interrupted, options);
  }
}

/** NATS did not accept a connection. */
export class NatsUnreachableError extends CliError {
  override readonly name = "NatsUnreachableError";
  constructor(
    readonly url: string,
    options?: { cause?: unknown },
  ) {
    super(`cannot reach NATS at ${url}: is \`fleetwatch up\` running, or is --nats / FLEETWATCH_NATS right?`, ExitCode.error, options);
  }
}

/** NATS refused the connection's credentials, or their absence. */
export class NatsAuthError extends CliError {
  override readonly name = "NatsAuthError";
  constructor(
    readonly url: string,
    readonly credsPath: string | undefined,
    options?: { cause?: unknown },
  ) {
    super(
      credsPath
        ? `NATS at ${url} refused the credentials in ${credsPath}: is that party's public key in the server's nats-auth.conf (written by \`fleetwatch certs init\`)?`
        : `NATS at ${url} requires credentials: give this party's nkey seed with --nats-creds (or FLEETWATCH_NATS_CREDS)`,
      ExitCode.error,
      options,
    );
  }
}

/** NATS refused a subject under this party's permissions. */
export class NatsPermissionError extends CliError {
  override readonly name = "NatsPermissionError";
  constructor(
    readonly what: string,
    readonly credsPath: string | undefined,
    readonly operation: string | undefined,
    readonly subject: string | undefined,
    options?: { cause?: unknown },
  ) {
    const lacked = subject ? `permission to ${operation ?? "use"} ${subject}` : "a permission";
    super(`NATS refused to ${what}: the credentials ${credsPath ? `in ${credsPath} ` : ""}lack ${lacked}`, ExitCode.error, options);
  }
}

/** NATS is up but the controller's event stream is not there. */
export class EventStreamMissingError extends CliError {
  override readonly name = "EventStreamMissingError";
  constructor(
    readonly url: string,
    options?: { cause?: unknown },
  ) {
    super(`no event stream: is the controller running against this NATS (${url})?`, ExitCode.error, options);
  }
}

/** The console could not listen where it was asked to. */
export class ConsoleListenError extends CliError {
  override readonly name = "ConsoleListenError";
  constructor(
    readonly address: string,
    options?: { cause?: unknown },
  ) {
    const code = (options?.cause as NodeJS.ErrnoException | undefined)?.code;
    const why = code === "EADDRINUSE" ? "the address is in use" : code === "EACCES" ? "permission denied (a port below 1024 needs privileges)" : code === "EADDRNOTAVAIL" ? "no interface of this host has that address" : ((options?.cause as Error | undefined)?.message ?? "unknown error");
    super(`console: cannot listen on ${address}: ${why}`, ExitCode.error, options);
  }
}

/** What the handler needs to word a failure. */
export interface FailureContext {
  /** The controller address the command used. */
  controller: string;
  /** The certificate presented, when the command used mutual TLS. */
  cert?: string | undefined;
}

/** A failure as the user sees it: the exit code and the line after `fleetwatch: ` (empty: print nothing). */
export interface Failure {
  exitCode: number;
  message: string;
}

// Commander signals help and version output by throwing too (exitOverride);
// those are successes and have already printed.
const commanderSuccessCodes = new Set(["commander.helpDisplayed", "commander.version"]);

/** Maps any thrown value to its exit code and message; the one table of the CLI. */
export function describeFailure(err: unknown, context: FailureContext): Failure {
  if (err instanceof CommanderError) {
    if (commanderSuccessCodes.has(err.code)) return { exitCode: ExitCode.ok, message: "" };
    // `commander.help` is a bare `fleetwatch` or group: help went to stderr already.
    if (err.code === "commander.help") return { exitCode: ExitCode.badInput, message: "" };
    return { exitCode: ExitCode.badInput, message: err.message.replace(/^error: /, "") };
  }
  if (err instanceof RpcError) {
    if (isUnreachableStatus(err.code)) {
      // A standby answered: say who leads, and how to follow it by itself.
      if (/standing by/.test(err.details)) {
        return { exitCode: ExitCode.error, message: `${context.controller}: ${err.details}; give every controller address (--controller a,b) to follow the leader` };
      }
      // The handshake's own words when the controller's certificate was not trusted.
      const tlsProblem = /Last error: Error: ([^.]*certificate[^.]*)/.exec(err.details)?.[1];
      if (context.cert && tlsProblem) {
        return { exitCode: ExitCode.error, message: `TLS with the controller at ${context.controller} failed (${tlsProblem}): --ca must be the CA that issued the controller's certificate` };
      }
      return {
        exitCode: ExitCode.error,
        message: context.cert
          ? `cannot reach the controller at ${context.controller}, or it refused certificate ${context.cert}: is it running, and did its CA issue that certificate?`
          : `cannot reach the controller at ${context.controller}: is \`fleetwatch up\` or \`fleetwatch controller\` running? (one that serves mutual TLS needs --ca, --cert and --key)`,
      };
    }
    return { exitCode: exitCodeForStatus(err.code), message: err.details || err.codeName };
  }
  if (err instanceof WatchSpecError) return { exitCode: ExitCode.badInput, message: err.message };
  if (err instanceof CliError) return { exitCode: err.exitCode, message: err.message };
  if (err instanceof Error) return { exitCode: ExitCode.error, message: err.message || err.name };
  return { exitCode: ExitCode.error, message: String(err) };
}

/** Prints `fleetwatch: <message>` on stderr (unless there is nothing to say) and returns the exit code. */
export function reportFailure(err: unknown, context: FailureContext, stderr: { write(text: string): unknown }): number {
  const { exitCode, message } = describeFailure(err, context);
  if (message) stderr.write(`fleetwatch: ${message}\n`);
  return exitCode;
}

/** A daemon part (`nats-server`, `controller`, `agent`) did not start. */
export class DaemonStartError extends CliError {
  override readonly name = "DaemonStartError";
  constructor(
    readonly part: string,
    cause: unknown,
    natsUrl?: string,
  ) {
    super(`${part} did not start: ${startFailureReason(cause, natsUrl)}`, ExitCode.error, { cause });
  }
}

/** The reason a start failed, in words: missing binaries and refused connections get advice. */
export function startFailureReason(cause: unknown, natsUrl?: string): string {
  if (cause instanceof NatsServerError && (cause.cause as NodeJS.ErrnoException | undefined)?.code === "ENOENT") {
    return "nats-server not found on PATH: install it: apt-get install nats-server";
  }
  // nats.js reports a refused first connection as a NatsError with this code.
  if ((cause as { code?: unknown } | null)?.code === "CONNECTION_REFUSED") return `cannot reach NATS at ${natsUrl ?? "its URL"}: is nats-server running?`;
  if ((cause as { code?: unknown } | null)?.code === "AUTHORIZATION_VIOLATION") {
    return `NATS at ${natsUrl ?? "its URL"} refused the connection (authorization violation): give this party's nkey seed with --nats-creds, one listed in the server's nats-auth.conf`;
  }
  if (cause instanceof Error) return cause.message || cause.name;
  return String(cause);
}
