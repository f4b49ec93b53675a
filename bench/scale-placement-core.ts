// The scheduler's pure placement core (controller/placement.ts) timed on its
// own, in this process, with no I/O: a queue of single-target jobs decided
// and applied one after another on a fleet's snapshots, and one fleet-wide
// gang decision. It reaches past controller/index.ts on purpose, as tests may.
import { performance } from "node:perf_hooks";
import { create } from "@bufbuild/protobuf";
import { ChunkSchema, WatchMode, slotsPerThread, type Chunk } from "../proto/index.js";
import { applyDecision, place } from "../controller/placement.js";
import type { PlacementBackend, PlacementJob, TargetRef, TargetSnapshot } from "../controller/placement-types.js";
import { simPid } from "./sim-agent.js";

export interface PlacementCoreResult {
  /** Decisions per second over the queue, one per round. */
  queueDecisionsPerSecond: number[];
  queuedJobs: number;
  /** Outcomes of the last round's queue. */
  outcomes: Record<string, number>;
  /** Milliseconds of one `all` decision (and its apply) over every target, one per round. */
  fleetDecisionMs: number[];
  fleetCandidates: number;
}

function key(ref: TargetRef): string {
  return `${ref.hostId}/${ref.pid}`;
}

function freshTargets(hostIds: readonly string[], processes: number): Map<string, TargetSnapshot> {
  const targets = new Map<string, TargetSnapshot>();
  for (const hostId of hostIds) {
    for (let i = 0; i < processes; i++) {
      const t: TargetSnapshot = { hostId, pid: simPid(i), slots: new Array(slotsPerThread).fill(null), reservedMask: 0, foreignMask: 0 };
      targets.set(key(t), t);
    }
  }
  return targets;
}

function chunkAt(index: number): Chunk {
  return create(ChunkSchema, { address: 0x5555_5560_0000n + 8n * BigInt(index), length: 8, mode: WatchMode.WRITE, watchIndex: 0 });
}

/** Decides and applies `jobs` single-target jobs in queue order; returns decisions/s and outcomes. */
function runQueue(hostIds: readonly string[], processes: number, jobs: number, backend: PlacementBackend): { perSecond: number; outcomes: Record<string, number> } {
  const targets = freshTargets(hostIds, processes);
  const queue = Array.from({ length: jobs }, (_, i) => {
    const ref = { hostId: hostIds[i % hostIds.length] as string, pid: simPid(Math.floor(i / hostIds.length) % processes) };
    const job: PlacementJob = { id: `job-${i}`, priority: 0, createdUnixMs: i, placement: { kind: "all" }, backend };
    return { job, ref, chunk: chunkAt(i) };
  });
  const outcomes: Record<string, number> = {};
  const lookup = (ref: TargetRef) => targets.get(key(ref));
  const started = performance.now();
  for (const { job, ref, chunk } of queue) {
    const snapshot = targets.get(key(ref)) as TargetSnapshot;
    const decision = place(job, [{ ...snapshot, chunks: [chunk] }]);
    for (const after of applyDecision(lookup, job, decision)) targets.set(key(after), after);
    outcomes[decision.outcome] = (outcomes[decision.outcome] ?? 0) + 1;
  }
  const seconds = (performance.now() - started) / 1000;
  return { perSecond: jobs / seconds, outcomes };
}

/** One `all` decision over every target of the fleet, applied; returns milliseconds. */
function runFleetDecision(hostIds: readonly string[], processes: number, backend: PlacementBackend): number {
  const targets = freshTargets(hostIds, processes);
  const chunk = chunkAt(0);
  const job: PlacementJob = { id: "fleet", priority: 0, createdUnixMs: 0, placement: { kind: "all" }, backend };
  const started = performance.now();
  const candidates = [...targets.values()].map((t) => ({ ...t, chunks: [chunk] }));
  const decision = place(job, candidates);
  for (const after of applyDecision((ref) => targets.get(key(ref)), job, decision)) targets.set(key(after), after);
  const ms = performance.now() - started;
  if (decision.outcome !== "placed") throw new Error(`the fleet-wide decision was ${decision.outcome}: ${decision.shortfall?.reason ?? ""}`);
  return ms;
}

/** `rounds` runs of the queue and of the fleet-wide decision, interleaved, every job on `backend`. */
export function measurePlacementCore(hostIds: readonly string[], processes: number, jobs: number, rounds: number, backend: PlacementBackend): PlacementCoreResult {
  const result: PlacementCoreResult = { queueDecisionsPerSecond: [], queuedJobs: jobs, outcomes: {}, fleetDecisionMs: [], fleetCandidates: hostIds.length * processes };
  for (let r = 0; r < rounds; r++) {
    const q = runQueue(hostIds, processes, jobs, backend);
    result.queueDecisionsPerSecond.push(q.perSecond);
    result.outcomes = q.outcomes;
    result.fleetDecisionMs.push(runFleetDecision(hostIds, processes, backend));
  }
  return result;
}
