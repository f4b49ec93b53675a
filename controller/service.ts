// The controller's gRPC services: thin handlers over the Controller core.
import { AgentService, ControllerService, type ServiceImpl } from "../proto/index.js";
import type { Controller } from "./controller.js";
import { InvalidRequestError } from "./errors.js";

/** ControllerService handlers. */
export function controllerService(controller: Controller): ServiceImpl<typeof ControllerService> {
  return {
    async submitJob(request) {
      if (!request.spec) throw new InvalidRequestError("SubmitJob needs a spec");
      return { job: await controller.submit(request.spec) };
    },
    async getJob(request) {
      return { job: controller.get(request.id) };
    },
    async listJobs() {
      return { jobs: controller.list() };
    },
    async cancelJob(request) {
      return { job: await controller.cancel(request.id) };
    },
    async listAgents() {
      return { agents: controller.agents() };
    },
    async *watchJob(request, ctx) {
      for await (const job of controller.watch(request.id, ctx.signal)) yield { job };
    },
  };
}

/** AgentService handlers. */
export function agentService(controller: Controller): ServiceImpl<typeof AgentService> {
  return {
    session(requests, ctx) {
      return controller.session(requests, ctx.signal);
    },
  };
}
