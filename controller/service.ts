// The controller's gRPC services: thin handlers over the Controller core of
// the current leader term (a standby answers UNAVAILABLE, naming the leader;
// a leader confirming a lease that ran out while it was busy answers after).
import { AgentService, ControllerService, type ServiceImpl } from "../proto/index.js";
import type { Controller } from "./controller.js";
import { InvalidRequestError } from "./errors.js";

/** ControllerService handlers. */
export function controllerService(leader: () => Controller | Promise<Controller>): ServiceImpl<typeof ControllerService> {
  return {
    async submitJob(request) {
      if (!request.spec) throw new InvalidRequestError("SubmitJob needs a spec");
      return { job: await (await leader()).submit(request.spec) };
    },
    async getJob(request) {
      return { job: await (await leader()).getFull(request.id) };
    },
    async listJobs() {
      return { jobs: (await leader()).list() };
    },
    async cancelJob(request) {
      return { job: await (await leader()).cancel(request.id) };
    },
    async listAgents() {
      return { agents: (await leader()).agents() };
    },
    async *watchJob(request, ctx) {
      yield* (await leader()).watch(request.id, ctx.signal);
    },
  };
}

/** AgentService handlers. */
export function agentService(leader: () => Controller | Promise<Controller>): ServiceImpl<typeof AgentService> {
  return {
    async *session(requests, ctx) {
      yield* (await leader()).session(requests, ctx.signal);
    },
  };
}
