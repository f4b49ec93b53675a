// The agent's errors: what it sends back as AgentError on the session.
import { create } from "@bufbuild/protobuf";
import { AgentErrorSchema, type AgentError } from "../proto/index.js";
import { HelperError } from "./helper-process.js";
import { ProcessSelectorError } from "./process-match.js";

/** A command the agent cannot carry out, with the errno-style name the controller maps. */
export class AgentCommandError extends Error {
  override readonly name = "AgentCommandError";
  constructor(
    message: string,
    readonly errnoName: string,
  ) {
    super(message);
  }
}

/** The host policy forbids watching a process; the message names the file and the rule. */
export class HostPolicyRefusal extends Error {
  override readonly name = "HostPolicyRefusal";
  readonly errnoName = "EPERM";
}

/** Turns any failure into the AgentError the controller understands. */
export function toAgentError(err: unknown): AgentError {
  if (err instanceof HostPolicyRefusal) return create(AgentErrorSchema, { errnoName: err.errnoName, message: err.message, hostPolicy: true });
  if (err instanceof HelperError || err instanceof AgentCommandError) return create(AgentErrorSchema, { errnoName: err.errnoName, message: err.message });
  // pid 1 is refused by policy; any other bad selector is bad input.
  if (err instanceof ProcessSelectorError) {
    const policy = /policy/.test(err.message);
    return create(AgentErrorSchema, { errnoName: policy ? "EPERM" : "EINVAL", message: err.message, hostPolicy: policy });
  }
  return create(AgentErrorSchema, { errnoName: "EIO", message: `agent failure: ${err instanceof Error ? err.message : String(err)}` });
}
