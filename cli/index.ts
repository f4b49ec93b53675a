// The cli folder's door: the program entry for tests and wrappers, the exit
// codes scripts rely on, and the embedded nats-server the test harness uses.
export { main, createProgram, defaultControllerAddress, defaultNatsUrl, type CliContext, type ControllerClient, type GlobalOptions, type MainIo } from "./main.js";
export { ExitCode, exitCodeForStatus } from "./exit-codes.js";
export { describeFailure, reportFailure, CliError, UsageError, InterruptedError, NatsUnreachableError, EventStreamMissingError, DaemonStartError, type Failure, type FailureContext } from "./errors.js";
export { readJobEvents, type JobEvent, type JobEventsOptions } from "./events.js";
export { startNatsServer, freePort, NatsServerError, type NatsServerOptions, type RunningNatsServer } from "./nats-server.js";
