// The contract: generated messages and services, the grpc-js adapter, the
// watch-spec rules, NATS names and permissions. Every folder imports it; it imports nobody.
export * from "./gen/fleetwatch/v1/watch_pb.js";
export * from "./gen/fleetwatch/v1/controller_pb.js";
export * from "./gen/fleetwatch/v1/agent_pb.js";
export * from "./gen/fleetwatch/v1/store_pb.js";
export * from "./grpc.js";
export * from "./errors.js";
export * from "./watch-spec.js";
export * from "./limits.js";
export * from "./subjects.js";
export * from "./async-queue.js";
export * from "./latest-queue.js";
export * from "./states.js";
export * from "./selector.js";
export * from "./epoch-guard.js";
export * from "./sequence-tracker.js";
export * from "./deadline.js";
export * from "./tls.js";
export * from "./process-scope.js";
export * from "./watched-file.js";
export * from "./nats-permissions.js";
export * from "./nats-credentials.js";
export * from "./timer-at.js";
export * from "./text.js";
export * from "./stored-messages.js";
export * from "./metrics-server.js";
