// The controller's gRPC services: thin handlers over the Controller core of
// the current leader term (a standby answers UNAVAILABLE, naming the leader).
import { AgentService, ControllerService, type ServiceImpl } from "../proto/index.js";
import type { Controller } from "./controller.js";
import { InvalidRequestError } from "./errors.js";

/** ControllerService handlers. */
export function controllerService(leader: () => Controller): ServiceImpl<typeof ControllerService> {
  return {
    async submitJob(request) {
      if (!request.spec) throw new InvalidRequestError("SubmitJob needs a spec");
      return { job: await leader().submit(request.spec) };
    },
    async getJob(request) {
      return { job: leader().get(request.id) };
    },
    async listJobs() {
      return { jobs: leader().list() };
    },
    async cancelJob(request) {
      return { job: await leader().cancel(request.id) };
    },
    async listAgents() {
      return { agents: leader().agents() };
    },
    async *watchJob(request, ctx) {
      for await (const job of leader().watch(request.id, ctx.signal)) yield { job };
    },
  };
}

/** AgentService handlers. */
export function agentService(leader: () => Controller): ServiceImpl<typeof AgentService> {
  return {
    session(requests, ctx) {
      return leader().session(requests, ctx.signal);
    },
  };
}
