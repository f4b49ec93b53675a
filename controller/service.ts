// The controller's gRPC services: thin handlers over the Controller core of
// the current leader term (a standby answers UNAVAILABLE, naming the leader;
// a leader confirming a lease that ran out while it was busy answers after).
import { AgentService, ControllerService, describeIdentity, type CallContext, type Identity, type IdentityKind, type ServiceImpl } from "../proto/index.js";
import type { Controller } from "./controller.js";
import { InvalidRequestError, PermissionDeniedError } from "./errors.js";

/**
 * Over mutual TLS, the caller's certificate must be of the kind the service
 * is for (users call ControllerService, agents AgentService); over plaintext
 * nobody is authenticated and the check has nothing to go on.
 */
export function requireCaller(ctx: CallContext, kind: IdentityKind, secure: boolean): Identity | undefined {
  if (!secure) return undefined;
  const identity = ctx.identity;
  if (identity?.kind !== kind) throw new PermissionDeniedError(`this service is for ${kind} certificates; the caller presented one of ${describeIdentity(identity)}`);
  return identity;
}

/** ControllerService handlers. */
export function controllerService(leader: () => Controller | Promise<Controller>, secure: boolean): ServiceImpl<typeof ControllerService> {
  const user = (ctx: CallContext) => requireCaller(ctx, "user", secure);
  return {
    async submitJob(request, ctx) {
      user(ctx);
      if (!request.spec) throw new InvalidRequestError("SubmitJob needs a spec");
      return { job: await (await leader()).submit(request.spec) };
    },
    async getJob(request, ctx) {
      user(ctx);
      return { job: await (await leader()).getFull(request.id) };
    },
    async listJobs(_request, ctx) {
      user(ctx);
      return { jobs: (await leader()).list() };
    },
    async cancelJob(request, ctx) {
      user(ctx);
      return { job: await (await leader()).cancel(request.id) };
    },
    async listAgents(_request, ctx) {
      user(ctx);
      return { agents: (await leader()).agents() };
    },
    async *watchJob(request, ctx) {
      user(ctx);
      for await (const job of (await leader()).watch(request.id, ctx.signal)) yield { job };
    },
  };
}

/** AgentService handlers. */
export function agentService(leader: () => Controller | Promise<Controller>, secure: boolean): ServiceImpl<typeof AgentService> {
  return {
    async *session(requests, ctx) {
      const agent = requireCaller(ctx, "agent", secure);
      yield* (await leader()).session(requests, ctx.signal, agent?.name);
    },
  };
}
