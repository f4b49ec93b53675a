// The controller's gRPC services: thin handlers over the Controller core of
// the current leader term (a standby answers UNAVAILABLE, naming the leader;
// a leader confirming a lease that ran out while it was busy answers after).
// Each request passes the access gate first; submits, cancels and the kill
// switch go to the audit trail with how they ended.
import { performance } from "node:perf_hooks";
import { status } from "@grpc/grpc-js";
import { AgentService, ControllerService, countTargetStates, type CallContext, type ServiceImpl } from "../proto/index.js";
import type { AccessControl, Caller } from "./access.js";
import type { AuditEntry, AuditTrail } from "./audit.js";
import type { Controller } from "./controller.js";
import type { ControllerMetrics } from "./metrics.js";
import { describeJobSpec } from "./job-description.js";
import { parseListQuery } from "./job-listing.js";
import { InvalidRequestError, PermissionDeniedError, statusFor } from "./errors.js";

// How long the kill switch waits for each agent's confirmation.
const disarmAllTimeoutMs = 10_000;

/** Runs `work` and records it in the audit trail with its outcome (the status name and why, when it failed). */
async function audited<T>(audit: AuditTrail, entry: Omit<AuditEntry, "result">, work: () => Promise<T>, details: (value: T) => Partial<AuditEntry>): Promise<T> {
  try {
    const value = await work();
    await audit.record({ ...entry, ...details(value), result: "ok" });
    return value;
  } catch (err) {
    const s = statusFor(err);
    await audit.record({ ...entry, result: status[s.code] ?? String(s.code), reason: s.details });
    throw err;
  }
}

/** ControllerService handlers; `metrics` times each SubmitJob by the status it ends with. */
export function controllerService(leader: () => Controller | Promise<Controller>, access: AccessControl, audit: AuditTrail, metrics?: Pick<ControllerMetrics, "submitted">): ServiceImpl<typeof ControllerService> {
  const viewer = (ctx: CallContext, method: string, jobId?: string): Promise<Caller> => access.authorize(ctx, "user", "view", { method, ...(jobId ? { jobId } : {}) });
  return {
    async submitJob(request, ctx) {
      const startedMs = performance.now();
      let code = "OK";
      try {
        const caller = await access.authorize(ctx, "user", "submit", { method: "submit" });
        const spec = request.spec;
        if (!spec) throw new InvalidRequestError("SubmitJob needs a spec");
        const job = await audited(
          audit,
          { who: caller.who, action: "submit", what: describeJobSpec(spec) },
          async () => (await leader()).submit(spec, caller),
          (j) => ({ jobId: j.id, where: j.targets.map((t) => `${t.hostId}/${t.pid}`) }),
        );
        // A fleet-wide job's every target is megabytes to encode here and to decode there: counts instead, when asked.
        if (request.withoutTargets) return { job: { ...job, targets: [] }, targetStates: countTargetStates(job.targets) };
        return { job };
      } catch (err) {
        code = status[statusFor(err).code] ?? "UNKNOWN";
        throw err;
      } finally {
        metrics?.submitted(code, (performance.now() - startedMs) / 1000);
      }
    },
    async getJob(request, ctx) {
      await viewer(ctx, "get", request.id);
      return { job: await (await leader()).getFull(request.id) };
    },
    async listJobs(request, ctx) {
      await viewer(ctx, "list");
      const query = parseListQuery(request);
      return (await leader()).list(query);
    },
    async cancelJob(request, ctx) {
      const caller = await access.authorize(ctx, "user", "cancel", { method: "cancel", jobId: request.id });
      const core = await leader();
      // An operator cancels its own jobs; someone else's takes an admin.
      const owner = (await core.get(request.id)).owner;
      if (owner !== caller.who && !access.may(caller, "cancel-any")) {
        await access.deny(caller.who, { method: "cancel", jobId: request.id }, `job ${request.id} belongs to ${owner || "an unauthenticated caller"}; ${caller.who} may cancel its own jobs only (cancelling others' needs admin)`);
      }
      const job = await audited(audit, { who: caller.who, action: "cancel", jobId: request.id }, () => core.cancel(request.id, caller), (j) => ({ where: j.targets.map((t) => `${t.hostId}/${t.pid}`) }));
      return { job };
    },
    async listAgents(_request, ctx) {
      await viewer(ctx, "agents");
      return { agents: (await leader()).agents() };
    },
    async *watchJob(request, ctx) {
      await viewer(ctx, "watch", request.id);
      yield* (await leader()).watch(request.id, ctx.signal);
    },
    async disarmAll(request, ctx) {
      const caller = await access.authorize(ctx, "user", "disarm-all", { method: "disarm-all" });
      const reason = `disarmed fleet-wide${caller.who ? ` by ${caller.who}` : ""}${request.reason ? `: ${request.reason}` : ""}`;
      const core = await leader();
      const result = await audited(audit, { who: caller.who, action: "disarm-all", what: reason }, () => core.disarmAll(reason, disarmAllTimeoutMs), (r) => ({
        where: r.agents.map((a) => `${a.hostId} ${a.confirmed ? `confirmed ${a.disarmed} after ${a.afterMs} ms` : `not confirmed: ${a.error}`}`),
        reason: `${r.cancelled.length} job(s) cancelled`,
      }));
      return {
        cancelledJobIds: result.cancelled,
        agents: result.agents.map((a) => ({ hostId: a.hostId, connected: a.connected, confirmed: a.confirmed, disarmed: a.disarmed, confirmedAfterMs: BigInt(a.afterMs), error: a.error })),
        allConfirmedAfterMs: BigInt(result.allAfterMs),
      };
    },
    async listAudit(request, ctx) {
      await access.authorize(ctx, "user", "audit", { method: "audit" });
      // Milliseconds since 1970, within what a Date can hold.
      const since = Number(request.sinceUnixMs);
      if (since < 0 || since > 8.64e15) throw new InvalidRequestError(`since ${request.sinceUnixMs} is not a time (milliseconds since 1970, 0 for the whole trail)`);
      return { records: await audit.list(since) };
    },
  };
}

/** AgentService handlers; an agent refused its registration (another host's id) goes to the audit trail too. */
export function agentService(leader: () => Controller | Promise<Controller>, access: Pick<AccessControl, "authorize">, audit?: Pick<AuditTrail, "record">): ServiceImpl<typeof AgentService> {
  return {
    async *session(requests, ctx) {
      const agent = await access.authorize(ctx, "agent", undefined, { method: "agent-session" });
      try {
        yield* (await leader()).session(requests, ctx.signal, agent.user);
      } catch (err) {
        if (err instanceof PermissionDeniedError) await audit?.record({ who: agent.who, action: "agent-session", result: "PERMISSION_DENIED", reason: err.message });
        throw err;
      }
    },
  };
}
