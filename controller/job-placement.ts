// The placement core's decisions applied to the controller's ledger and jobs:
// what it is told of a job and its candidates, placed targets marked arming,
// and why a waiting target does not fit (its reason, or the refusal).
import { Backend, TargetState, parsePlacement, resolveBackend, sameChunk, slotsPerThread, type Chunk, type Job, type Target } from "../proto/index.js";
import type { ControllerCore } from "./controller-core.js";
import { InvalidRequestError, PreconditionError, SlotsExhaustedError } from "./errors.js";
import { isTargetActive, isTargetWaiting, rollUp } from "./job-state.js";
import { targetIndex } from "./job-targets.js";
import { place } from "./placement.js";
import { otherShortfalls, type Candidate, type PlacementDecision, type PlacementJob } from "./placement-types.js";
import { assignmentsOf, type SlotLedger } from "./slot-ledger.js";

/** What the placement core needs to know about a job. */
export function placementJob(job: Job): PlacementJob {
  const backend = job.spec && resolveBackend(job.spec) === Backend.PERF ? "perf" : "ptrace";
  return { id: job.id, priority: job.spec?.priority ?? 0, createdUnixMs: Number(job.createdUnixMs), placement: parsePlacement(job.spec?.placement ?? ""), backend };
}

/** The job's side of a decision already applied to the ledger: placed targets are arming with their registers. */
export function markPlaced(job: Job, decision: PlacementDecision): void {
  const byKey = decision.placed.length > 8 ? targetIndex(job) : undefined;
  for (const p of decision.placed) {
    const t = byKey ? byKey.get(p.hostId, p.pid) : job.targets.find((x) => x.hostId === p.hostId && x.pid === p.pid);
    if (!t) continue;
    t.state = TargetState.ARMING;
    t.reason = "arming";
    t.slots = assignmentsOf(p.assignments);
  }
  rollUp(job);
}

/** A decision no amount of waiting changes: every candidate needs more registers than a thread has. */
export function neverFits(decision: PlacementDecision): boolean {
  const c = decision.shortfall?.counts;
  return c !== undefined && c.tooMany > 0 && otherShortfalls(c, "tooMany") === 0 && decision.placed.length + decision.kept.length === 0;
}

/** Chunks with repeats (same address, length, mode) left out. */
function distinctChunks(chunks: readonly Chunk[]): Chunk[] {
  const out: Chunk[] = [];
  for (const c of chunks) if (!out.some((o) => sameChunk(o, c))) out.push(c);
  return out;
}

/**
 * Asks the placement core where a job's waiting targets go, given what the
 * ledger holds, and applies the decision to the ledger (call under the
 * ledger lock; markPlaced applies it to the job).
 */
export function decide(core: Pick<ControllerCore, "ledger" | "known" | "options">, job: Job): PlacementDecision {
  const pj = placementJob(job);
  const candidates: Candidate[] = [];
  for (const t of job.targets) {
    if (!isTargetWaiting(t) && !(isTargetActive(t) && t.chunks.length > 0)) continue;
    // Field by field: spreading snapshots of several shapes took a quarter of deciding a 40,000-target job.
    const s = core.ledger.snapshot(t.hostId, t.pid);
    candidates.push({ hostId: s.hostId, pid: s.pid, slots: s.slots, reservedMask: s.reservedMask, foreignMask: s.foreignMask, tracedBy: s.tracedBy, hostLabels: core.known.get(t.hostId)?.info.labels ?? {}, chunks: t.chunks });
  }
  const decision = place(pj, candidates);
  // markPlaced gives the job its slot assignments.
  for (const p of decision.placed) core.ledger.take(pj, p);
  core.options.metrics?.placed(decision.placed.length);
  return decision;
}

/** Why one waiting target of a job does not fit, for its reason and for refusals. */
export function whyNot(ledger: SlotLedger, job: Job, target: Target): string {
  const s = ledger.snapshot(target.hostId, target.pid);
  const where = `pid ${target.pid} on ${target.hostId}`;
  const { backend } = placementJob(job);
  if (s.tracedBy && backend !== "perf") return `${where} is already traced by pid ${s.tracedBy.pid} (${s.tracedBy.comm}): stop that tracer first, or watch it with --backend perf`;
  const shares = backend === "ptrace";
  const need = distinctChunks(target.chunks).filter((c) => !shares || !s.slots.some((slot) => slot && !slot.exclusive && sameChunk(slot.chunk, c))).length;
  const held = ledger.describe(target.hostId, target.pid);
  // A perf event cannot use a register the kernel keeps reserved for an earlier ptrace watch: those are not free to this job.
  const free = ledger.freeCount(target.hostId, target.pid, backend === "perf");
  const reserved = backend === "perf" ? ledger.freeCount(target.hostId, target.pid) - free : 0;
  return (
    `${where} has ${free} free debug register(s) of ${slotsPerThread} and the job needs ${need}` +
    (reserved > 0 ? `; ${reserved} more ${reserved === 1 ? "is" : "are"} reserved by earlier ptrace watches until the process's threads exit (--backend ptrace reuses them)` : "") +
    (held.text ? `; held by ${held.text}` : "") +
    (need > slotsPerThread ? `; a thread has only ${slotsPerThread}: watch fewer or narrower ranges` : "")
  );
}

/** The error for a job that cannot be placed now and may not wait. */
export function refusal(ledger: SlotLedger, job: Job, decision: PlacementDecision): Error {
  const shortfall = decision.shortfall!;
  const waiting = job.targets.filter(isTargetWaiting);
  const details = waiting.slice(0, 3).map((t) => whyNot(ledger, job, t));
  if (waiting.length > details.length) details.push(`and ${waiting.length - details.length} more`);
  const text = waiting.length === 1 ? details[0]! : `${shortfall.reason}. ${details.join(". ")}`;
  const { counts } = shortfall;
  if (counts.tooMany > 0 && otherShortfalls(counts, "tooMany") === 0) return new InvalidRequestError(text);
  if (counts.traced > 0 && otherShortfalls(counts, "traced") === 0) return new PreconditionError(text);
  const first = waiting[0]!;
  const holders = [...new Set(waiting.flatMap((t) => ledger.describe(t.hostId, t.pid).holders))];
  const hint = holders.length > 0 ? `. Cancel one of ${holders.join(", ")} or wait for it to end; ` : ". ";
  return new SlotsExhaustedError(`${text}${hint}--queue-timeout DURATION waits in the queue, a higher --priority preempts lower jobs`, first.hostId, first.pid, holders);
}
