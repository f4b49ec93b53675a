import { test } from "node:test";
import assert from "node:assert/strict";
import { status } from "@grpc/grpc-js";
import { CommanderError } from "commander";
import { RpcError, WatchSpecError } from "../../proto/index.js";
import { CliError, DaemonStartError, InterruptedError, UsageError, describeFailure, reportFailure } from "../../cli/errors.js";
import { NatsServerError } from "../../cli/nats-server.js";

const context = { controller: "10.0.0.1:7070" };
const unreachable = "cannot reach the controller at 10.0.0.1:7070: is `fleetwatch up` or `fleetwatch controller` running? (one that serves mutual TLS needs --ca, --cert and --key)";

test("cli errors - maps every gRPC status to its exit code with the details verbatim", () => {
  const table: Array<[status, number, string]> = [
    [status.INVALID_ARGUMENT, 3, "watch #0: length 3 is not 1, 2, 4 or 8 bytes"],
    [status.RESOURCE_EXHAUSTED, 2, "h1/4242 has 1 free debug register, the job needs 2"],
    [status.NOT_FOUND, 2, "no job j-9"],
    [status.FAILED_PRECONDITION, 2, "no agent is connected"],
    [status.PERMISSION_DENIED, 4, "policy denies pid 1"],
    [status.UNAUTHENTICATED, 4, "no certificate"],
    [status.INTERNAL, 1, "internal error"],
    [status.UNAVAILABLE, 1, unreachable],
    [status.DEADLINE_EXCEEDED, 1, unreachable],
  ];
  for (const [code, exitCode, message] of table) {
    const details = code === status.UNAVAILABLE || code === status.DEADLINE_EXCEEDED ? "No connection established" : message;
    assert.deepEqual(describeFailure(new RpcError(code, details), context), { exitCode, message }, status[code]);
  }
});

test("cli errors - with mutual TLS: a controller certificate the CA did not sign, or an unreachable controller that may have refused ours", () => {
  const tls = { ...context, cert: "certs/user-alice.crt" };
  assert.deepEqual(describeFailure(new RpcError(status.UNAVAILABLE, "No connection established. Last error: Error: self-signed certificate in certificate chain. Resolution note: "), tls), {
    exitCode: 1,
    message: "TLS with the controller at 10.0.0.1:7070 failed (self-signed certificate in certificate chain): --ca must be the CA that issued the controller's certificate",
  });
  assert.deepEqual(describeFailure(new RpcError(status.UNAVAILABLE, "No connection established. Last error: Failed to connect"), tls), {
    exitCode: 1,
    message: "cannot reach the controller at 10.0.0.1:7070, or it refused certificate certs/user-alice.crt: is it running, and did its CA issue that certificate?",
  });
});

test("cli errors - an empty status detail falls back to the status name", () => {
  assert.deepEqual(describeFailure(new RpcError(status.ABORTED, ""), context), { exitCode: 1, message: "ABORTED" });
});

test("cli errors - local validation and usage errors exit 3, help and version exit 0 silently", () => {
  assert.deepEqual(describeFailure(new WatchSpecError("mode 'q' is not one of w, rw, x", "mode"), context), { exitCode: 3, message: "mode 'q' is not one of w, rw, x" });
  assert.deepEqual(describeFailure(new UsageError("--pid 'x' is not a non-negative integer"), context), { exitCode: 3, message: "--pid 'x' is not a non-negative integer" });
  assert.deepEqual(describeFailure(new CommanderError(1, "commander.unknownOption", "error: unknown option '--pdi'"), context), { exitCode: 3, message: "unknown option '--pdi'" });
  assert.deepEqual(describeFailure(new CommanderError(0, "commander.helpDisplayed", "(outputHelp)"), context), { exitCode: 0, message: "" });
  assert.deepEqual(describeFailure(new CommanderError(0, "commander.version", "0.1.0"), context), { exitCode: 0, message: "" });
  assert.deepEqual(describeFailure(new CommanderError(1, "commander.help", "(outputHelp)"), context), { exitCode: 3, message: "" });
});

test("cli errors - CLI errors keep their code; anything else is exit 1 with its message", () => {
  assert.deepEqual(describeFailure(new InterruptedError("interrupted after 3 hits; cancelled job j-1"), context), { exitCode: 130, message: "interrupted after 3 hits; cancelled job j-1" });
  assert.deepEqual(describeFailure(new CliError("2 missing"), context), { exitCode: 1, message: "2 missing" });
  assert.deepEqual(describeFailure(new Error("boom"), context), { exitCode: 1, message: "boom" });
  assert.deepEqual(describeFailure("odd", context), { exitCode: 1, message: "odd" });
});

test("cli errors - start failures say what to install or which NATS is unreachable", () => {
  const missing = new NatsServerError("nats-server not found", { cause: Object.assign(new Error("spawn nats-server ENOENT"), { code: "ENOENT" }) });
  assert.equal(new DaemonStartError("nats-server", missing).message, "nats-server did not start: nats-server not found on PATH: install it: apt-get install nats-server");
  const refused = Object.assign(new Error("CONNECTION_REFUSED"), { code: "CONNECTION_REFUSED" });
  assert.equal(new DaemonStartError("controller", refused, "nats://127.0.0.1:4999").message, "controller did not start: cannot reach NATS at nats://127.0.0.1:4999: is nats-server running?");
  assert.equal(new DaemonStartError("agent", new Error("helper not built")).exitCode, 1);
});

test("cli errors - the handler prints one 'fleetwatch: ' line on stderr, or nothing", () => {
  let written = "";
  const stderr = { write: (text: string) => (written += text) };
  assert.equal(reportFailure(new RpcError(status.NOT_FOUND, "no job j-9"), context, stderr), 2);
  assert.equal(written, "fleetwatch: no job j-9\n");
  written = "";
  assert.equal(reportFailure(new CommanderError(0, "commander.helpDisplayed", "(outputHelp)"), context, stderr), 0);
  assert.equal(written, "");
});
