// Batch envelopes of AgentService sessions (SessionRequest.batch,
// SessionResponse.batch): the queues that build them and the reading side
// that takes them apart.
import { create } from "@bufbuild/protobuf";
import { SessionRequestSchema, SessionResponseSchema, type SessionRequest, type SessionResponse } from "./gen/fleetwatch/v1/agent_pb.js";
import { MessageQueue } from "./message-queue.js";

/** The controller's side: commands to one agent, batched once the agent said it reads batches. */
export function sessionResponseQueue(): MessageQueue<SessionResponse> {
  return new MessageQueue<SessionResponse>({
    wrap: (messages) => create(SessionResponseSchema, { msg: { case: "batch", value: { messages } } }),
    count: (m) => (m.msg.case === "batch" ? m.msg.value.messages.length : 1),
  });
}

/** The agent's side: answers and reports, batched once the controller said it reads batches. */
export function sessionRequestQueue(): MessageQueue<SessionRequest> {
  return new MessageQueue<SessionRequest>({
    wrap: (messages) => create(SessionRequestSchema, { msg: { case: "batch", value: { messages } } }),
    count: (m) => (m.msg.case === "batch" ? m.msg.value.messages.length : 1),
  });
}

/** The messages one received message carries: a batch's (a batch inside a batch is dropped), or itself. */
export function unbatched<M extends SessionRequest | SessionResponse>(message: M): readonly M[] {
  if (message.msg.case !== "batch") return [message];
  return (message.msg.value.messages as M[]).filter((m) => m.msg.case !== "batch");
}
