// An Arm from the controller in the helper's terms (backend, chunks, watch
// options) and the hit pipeline's, whether this host's helper can trap with
// that backend, and a failed arm as the controller will read it.
import { create } from "@bufbuild/protobuf";
import { AgentErrorSchema, Backend, WatchMode, conditionOperatorOf, type AgentError, type Arm, type Condition, type SlotAssignment } from "../proto/index.js";
import { AgentCommandError, toAgentError } from "./errors.js";
import type { HelperBackend, HelperCapabilities, HelperChunk, HelperCondition, HelperMode, WatchOptions } from "./helper-process.js";
import type { WatchHitsInit } from "./hit-pipeline.js";
import { valuePolicyOf } from "./host-policy.js";
import { isRunning } from "./process-liveness.js";

const helperModes: Record<number, HelperMode> = { [WatchMode.WRITE]: "w", [WatchMode.READ_WRITE]: "rw", [WatchMode.EXECUTE]: "x" };

/** The helper's name of an Arm's backend; UNSPECIFIED (a controller that does not choose) is ptrace, as before there was a choice. */
export function helperBackend(backend: Backend): HelperBackend {
  if (backend === Backend.PERF) return "perf";
  if (backend === Backend.PTRACE || backend === Backend.UNSPECIFIED) return "ptrace";
  throw new AgentCommandError(`backend ${backend} is not known`, "EINVAL");
}

/** The backend as an ArmResult names it. */
export function protoBackend(backend: HelperBackend): Backend {
  return backend === "perf" ? Backend.PERF : Backend.PTRACE;
}

/** Throws EOPNOTSUPP when the helper cannot open this backend's watches here or their traps are not known to arrive. */
export function checkBackend(capabilities: HelperCapabilities, backend: HelperBackend, hostId: string): void {
  if (backend === "perf" && !capabilities.backends.includes("perf")) {
    throw new AgentCommandError(`perf events are unavailable on ${hostId}: ${capabilities.perfNote || "the helper cannot open perf breakpoints here"}`, "EOPNOTSUPP");
  }
  // The controller does not place such a job here; a helper restarted since it last heard may have found otherwise.
  const trap = capabilities.traps.find((t) => t.backend === backend);
  if (trap && trap.delivery !== "delivered") {
    const what = trap.delivery === "not-run" ? "could not be tested" : "are not delivered";
    const so = trap.delivery === "not-run" ? "a watch armed here might never see a hit" : "a watch armed here could never see a hit";
    throw new AgentCommandError(`${backend} watch traps ${what} on ${hostId}: ${trap.detail || "the helper's self-test does not say why"}; ${so}`, "EOPNOTSUPP");
  }
}

/** The Arm's slots as the helper's chunks; EINVAL for a slot without a valid mode. */
export function helperChunks(slots: readonly SlotAssignment[]): HelperChunk[] {
  return slots.map((s) => {
    const mode = helperModes[s.chunk?.mode ?? WatchMode.UNSPECIFIED];
    if (!s.chunk || !mode) throw new AgentCommandError(`DR${s.dr}: chunk without a valid mode`, "EINVAL");
    return { dr: s.dr, mode, length: s.chunk.length, address: s.chunk.address };
  });
}

/** How often a counting watch reports (default each second); 0 for a watch of hits. */
function countIntervalOf(request: Arm): bigint {
  return request.countOnly ? request.countIntervalMs || 1_000n : 0n;
}

/** The Arm's options for the helper's watch. */
export function helperWatchOptions(request: Arm, backend: HelperBackend): WatchOptions {
  return {
    maxHits: request.maxHits,
    maxHitsPerSecond: request.maxHitsPerSecond,
    backoffMs: request.backoffMs,
    conditions: request.conditions.map(helperCondition),
    tids: request.tids,
    stackDepth: request.stackDepth,
    backend,
    countOnly: request.countOnly,
    countIntervalMs: Number(countIntervalOf(request)),
  };
}

/** What the hit pipeline takes of an Arm for the watch's hits (its counters come from elsewhere). */
export function watchHitsOf(request: Arm, backend: HelperBackend): Omit<WatchHitsInit, "counts" | "previous" | "onSettled"> {
  return {
    jobId: request.jobId,
    pid: request.pid,
    slots: request.slots,
    jobValues: valuePolicyOf(request.redaction),
    backend,
    countOnly: request.countOnly,
    countIntervalMs: countIntervalOf(request),
  };
}

function helperCondition(condition: Condition): HelperCondition {
  const op = conditionOperatorOf(condition.op)?.text;
  if (!op) throw new AgentCommandError(`condition operator ${condition.op} is not known`, "EINVAL");
  return op === "changed" || op === "unchanged" ? { op } : { op, value: condition.value };
}

/**
 * A failed arm as the controller will read it: ESRCH means the process is
 * gone, and a job takes its target for exited. A helper that said so of a
 * process still running is not believed; the failure stays, as one to retry.
 */
export function armFailure(err: unknown, pid: number): AgentError {
  const error = toAgentError(err);
  if (error.errnoName !== "ESRCH" || !isRunning(pid)) return error;
  return create(AgentErrorSchema, { errnoName: "EAGAIN", message: `pid ${pid} is running, but arming it failed (${error.message}): try again` });
}
