// The scheduler's pure core: given a job and a snapshot of its candidate
// targets, decide which debug registers it gets where, whom it preempts, and
// why it waits. No I/O and no clock: the same input always gives the same decision.
import { sameChunk, slotsPerThread, type Chunk } from "../proto/index.js";
import { InvalidRequestError } from "./errors.js";
import type {
  Assignment,
  PlacementBackend,
  Candidate,
  Eviction,
  HeldSlot,
  PlacementDecision,
  PlacementJob,
  Shortfall,
  SlotHolder,
  TargetPlacement,
  TargetRef,
  TargetSnapshot,
} from "./placement-types.js";

/** How one candidate looks to the job. `need` is the number of new registers after sharing. */
type Fit =
  | { readonly kind: "kept" }
  | { readonly kind: "free"; readonly need: number; readonly assignments: Assignment[] }
  | { readonly kind: "preempt"; readonly need: number; readonly assignments: Assignment[]; readonly victims: string[] }
  | { readonly kind: "traced"; readonly need: number; readonly by: { readonly pid: number; readonly comm: string } }
  | { readonly kind: "tooMany"; readonly need: number }
  | { readonly kind: "foreign"; readonly need: number }
  | { readonly kind: "reserved"; readonly need: number }
  | { readonly kind: "full"; readonly need: number; readonly holders: string[] };

const allRegisters = (1 << slotsPerThread) - 1;
const kept: Fit = { kind: "kept" };

function bitCount(mask: number): number {
  let n = 0;
  for (let m = mask & allRegisters; m !== 0; m &= m - 1) n++;
  return n;
}

/** Registers of `available` in the order they are handed out: reserved ones first (the kernel already holds them for us), then by index. */
function registerOrder(available: number, reservedMask: number): number[] {
  const order: number[] = [];
  for (let dr = 0; dr < slotsPerThread; dr++) if ((available >> dr) & 1 && (reservedMask >> dr) & 1) order.push(dr);
  for (let dr = 0; dr < slotsPerThread; dr++) if ((available >> dr) & 1 && !((reservedMask >> dr) & 1)) order.push(dr);
  return order;
}

/**
 * Orders two victim sets: fewer victims; then spare the most important
 * (priorities compared highest first); then evict the newest (creation
 * times compared oldest first, later is better); then by job id.
 */
function compareVictims(a: readonly SlotHolder[], b: readonly SlotHolder[]): number {
  if (a.length !== b.length) return a.length - b.length;
  const pa = a.map((h) => h.priority).sort((x, y) => y - x);
  const pb = b.map((h) => h.priority).sort((x, y) => y - x);
  for (let i = 0; i < pa.length; i++) if (pa[i] !== pb[i]) return pa[i]! - pb[i]!;
  const ca = a.map((h) => h.createdUnixMs).sort((x, y) => x - y);
  const cb = b.map((h) => h.createdUnixMs).sort((x, y) => x - y);
  for (let i = 0; i < ca.length; i++) if (ca[i] !== cb[i]) return cb[i]! - ca[i]!;
  const ia = a.map((h) => h.jobId).sort();
  const ib = b.map((h) => h.jobId).sort();
  for (let i = 0; i < ia.length; i++) if (ia[i] !== ib[i]) return ia[i]! < ib[i]! ? -1 : 1;
  return 0;
}

/**
 * The job's chunks in registers: chunks already placed by sharing keep
 * theirs, duplicates follow their first copy, the rest take `available` in
 * handout order.
 */
function assign(chunks: readonly Chunk[], drOf: number[], sameAs: readonly number[], available: number, reservedMask: number): Assignment[] {
  const order = registerOrder(available, reservedMask);
  let next = 0;
  const out: Assignment[] = [];
  for (let i = 0; i < chunks.length; i++) {
    const first = sameAs[i]!;
    const shared = first !== -1 || drOf[i] !== -1;
    if (!shared) drOf[i] = order[next++]!;
    out.push({ dr: first === -1 ? drOf[i]! : drOf[first]!, chunk: chunks[i]!, shared });
  }
  return out;
}

/** Whether a job of this backend may take one more reference on a held register: ptrace with ptrace only (perf events are each job's own). */
function canShare(slot: HeldSlot, backend: PlacementBackend): boolean {
  return backend === "ptrace" && !slot.exclusive;
}

/** Decides one candidate on its own: targets are independent, the mode only chooses among them. */
function evaluate(c: Candidate, job: PlacementJob): Fit {
  // A register nobody holds any more is free, whatever the snapshot left in it.
  const live: Array<HeldSlot | null> = [];
  for (let dr = 0; dr < slotsPerThread; dr++) {
    const s = c.slots[dr];
    if (!s || s.holders.length === 0) {
      live.push(null);
      continue;
    }
    for (const h of s.holders) if (h.jobId === job.id) return kept;
    live.push(s);
  }
  const foreign = c.foreignMask & allRegisters;
  // A register an earlier ptrace watch wrote stays reserved in the kernel
  // until the process's threads exit: a ptrace job reuses it at no cost, a
  // perf event needs a slot of its own and cannot have it.
  const reservedBlock = job.backend === "perf" ? c.reservedMask & allRegisters & ~foreign : 0;
  const blocked = foreign | reservedBlock;

  // Sharing first: an identical chunk already in a register of another ptrace job, or earlier in this job, costs no slot.
  const chunks = c.chunks;
  const drOf: number[] = [];
  const sameAs: number[] = [];
  let joinedMask = 0;
  let need = 0;
  for (let i = 0; i < chunks.length; i++) {
    const chunk = chunks[i]!;
    let first = -1;
    for (let j = 0; j < i && first === -1; j++) if (sameAs[j] === -1 && sameChunk(chunks[j]!, chunk)) first = j;
    sameAs.push(first);
    let dr = -1;
    if (first === -1) {
      for (let r = 0; r < slotsPerThread && dr === -1; r++) {
        const s = live[r];
        if (s && !((foreign >> r) & 1) && canShare(s, job.backend) && sameChunk(s.chunk, chunk)) dr = r;
      }
      if (dr === -1) need++;
      else joinedMask |= 1 << dr;
    }
    drOf.push(dr);
  }

  // Another tracer (gdb, strace) rules out ptrace; perf breakpoints neither
  // attach nor stop, so they sit beside it.
  if (c.tracedBy && job.backend !== "perf") return { kind: "traced", need, by: c.tracedBy };
  if (need > slotsPerThread) return { kind: "tooMany", need };

  let freeMask = 0;
  let evictableMask = 0;
  for (let dr = 0; dr < slotsPerThread; dr++) {
    if ((blocked >> dr) & 1) continue;
    const s = live[dr];
    if (!s) freeMask |= 1 << dr;
    else if (!((joinedMask >> dr) & 1) && s.holders.every((h) => h.priority < job.priority)) evictableMask |= 1 << dr;
  }

  const free = bitCount(freeMask);
  if (need <= free) return { kind: "free", need, assignments: assign(chunks, drOf, sameAs, freeMask, c.reservedMask) };

  const deficit = need - free;
  if (deficit <= bitCount(evictableMask)) {
    // At most C(4,2) = 6 register subsets of the deficit's size; a larger one only adds victims.
    let best: SlotHolder[] | undefined;
    for (let subset = evictableMask; subset !== 0; subset = (subset - 1) & evictableMask) {
      if (bitCount(subset) !== deficit) continue;
      const victims = new Map<string, SlotHolder>();
      for (let dr = 0; dr < slotsPerThread; dr++) {
        if ((subset >> dr) & 1) for (const h of live[dr]!.holders) victims.set(h.jobId, h);
      }
      const set = [...victims.values()];
      if (!best || compareVictims(set, best) < 0) best = set;
    }
    const ids = new Set(best!.map((h) => h.jobId));
    // Evicting a job frees every register all of whose holders leave, not only the chosen ones.
    let available = freeMask;
    for (let dr = 0; dr < slotsPerThread; dr++) {
      const s = live[dr];
      if (s && !((blocked >> dr) & 1) && !((joinedMask >> dr) & 1) && s.holders.every((h) => ids.has(h.jobId))) available |= 1 << dr;
    }
    return { kind: "preempt", need, assignments: assign(chunks, drOf, sameAs, available, c.reservedMask), victims: [...ids].sort() };
  }

  if (foreign !== 0 && need <= free + bitCount(evictableMask) + bitCount(foreign)) return { kind: "foreign", need };
  if (reservedBlock !== 0 && need <= free + bitCount(evictableMask) + bitCount(reservedBlock)) return { kind: "reserved", need };
  const holders = new Set<string>();
  for (const s of live) for (const h of s?.holders ?? []) holders.add(h.jobId);
  return { kind: "full", need, holders: [...holders] };
}

function compareTargets(a: TargetRef, b: TargetRef): number {
  if (a.hostId !== b.hostId) return a.hostId < b.hostId ? -1 : 1;
  return a.pid - b.pid;
}

function isSorted(candidates: readonly Candidate[]): boolean {
  for (let i = 1; i < candidates.length; i++) if (compareTargets(candidates[i - 1]!, candidates[i]!) > 0) return false;
  return true;
}

/** Round-robin over groups: the first of each group, then the second of each, ... */
function interleave<T>(groups: readonly (readonly T[])[]): T[] {
  const out: T[] = [];
  for (let round = 0; ; round++) {
    let took = false;
    for (const group of groups) {
      if (round < group.length) {
        out.push(group[round]!);
        took = true;
      }
    }
    if (!took) return out;
  }
}

/**
 * Groups items by key (keeping their order inside a group) and orders the
 * groups by how many of the job's targets they already have, then by key.
 */
function groupsBy<T>(items: readonly T[], keyOf: (item: T) => string, already: ReadonlyMap<string, number>): T[][] {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const key = keyOf(item);
    const group = groups.get(key);
    if (group) group.push(item);
    else groups.set(key, [item]);
  }
  return [...groups.entries()]
    .sort(([a], [b]) => (already.get(a) ?? 0) - (already.get(b) ?? 0) || (a < b ? -1 : a > b ? 1 : 0))
    .map(([, group]) => group);
}

/**
 * Sample order of candidate indices: round-robin over hosts, or over label
 * values and within each over hosts; hosts (values) that already have more of
 * the job's targets (`used`) come later.
 */
function spreadOrder(indices: readonly number[], sorted: readonly Candidate[], spreadLabel: string | undefined, used: readonly number[]): number[] {
  const count = (keyOf: (i: number) => string) => {
    const m = new Map<string, number>();
    for (const i of used) {
      const key = keyOf(i);
      m.set(key, (m.get(key) ?? 0) + 1);
    }
    return m;
  };
  const byHost = (i: number) => sorted[i]!.hostId;
  const hostsFirst = (list: readonly number[]) => interleave(groupsBy(list, byHost, count(byHost)));
  if (spreadLabel === undefined) return hostsFirst(indices);
  const byLabel = (i: number) => sorted[i]!.hostLabels?.[spreadLabel] ?? "";
  return interleave(groupsBy(indices, byLabel, count(byLabel)).map(hostsFirst));
}

function plural(n: number, one: string, many: string): string {
  return n === 1 ? one : many;
}

/** `job a`, `jobs a, b`, `jobs a, b, c, d, e and 3 more`. */
function jobList(ids: Iterable<string>): string {
  const sorted = [...new Set(ids)].sort();
  const shown = sorted.slice(0, 5).join(", ");
  const more = sorted.length > 5 ? ` and ${sorted.length - 5} more` : "";
  return `${plural(sorted.length, "job", "jobs")} ${shown}${more}`;
}

/** The pending reason in words and numbers, counted over every candidate. */
function describe(fits: readonly Fit[], needed: number, suffix: string): Shortfall {
  const counts = { full: 0, foreign: 0, reserved: 0, traced: 0, tooMany: 0 };
  let fitting = 0;
  let keptCount = 0;
  let preempting = 0;
  let minNeed = Infinity;
  let maxNeed = -Infinity;
  const victims = new Set<string>();
  const holders = new Set<string>();
  const tracers = new Map<string, { pid: number; comm: string; n: number }>();
  for (const fit of fits) {
    if (fit.kind === "kept") {
      fitting++;
      keptCount++;
      continue;
    }
    minNeed = Math.min(minNeed, fit.need);
    maxNeed = Math.max(maxNeed, fit.need);
    switch (fit.kind) {
      case "free":
        fitting++;
        break;
      case "preempt":
        fitting++;
        preempting++;
        for (const v of fit.victims) victims.add(v);
        break;
      case "full":
        counts.full++;
        for (const h of fit.holders) holders.add(h);
        break;
      case "foreign":
        counts.foreign++;
        break;
      case "reserved":
        counts.reserved++;
        break;
      case "traced": {
        counts.traced++;
        const key = `${fit.by.pid} ${fit.by.comm}`;
        const t = tracers.get(key);
        if (t) t.n++;
        else tracers.set(key, { pid: fit.by.pid, comm: fit.by.comm, n: 1 });
        break;
      }
      case "tooMany":
        counts.tooMany++;
        break;
    }
  }
  if (fits.length === 0) return { reason: `no candidate targets${suffix}`, fits: 0, needed, counts };

  const needText =
    minNeed === Infinity
      ? "fit"
      : minNeed === maxNeed
        ? `have ${minNeed} free debug ${plural(minNeed, "register", "registers")}`
        : `have ${minNeed}-${maxNeed} free debug registers`;
  const notes: string[] = [];
  if (preempting > 0) notes.push(`${preempting} after preempting lower-priority ${jobList(victims)}`);
  if (keptCount > 0) notes.push(`${keptCount} already placed`);
  const causes: string[] = [];
  if (counts.full > 0) causes.push(`${counts.full} full (${jobList(holders)})`);
  if (counts.foreign > 0) causes.push(`${counts.foreign} blocked by debug registers in use outside fleetwatch (perf or another debugger)`);
  if (counts.reserved > 0) causes.push(`${counts.reserved} blocked by registers earlier ptrace watches reserved, which the kernel frees only when the threads exit (--backend ptrace can reuse them)`);
  const byCount = [...tracers.values()].sort((a, b) => b.n - a.n || a.pid - b.pid);
  const shownTracers = byCount.length > 4 ? byCount.slice(0, 3) : byCount;
  for (const t of shownTracers) causes.push(`${t.n} traced by pid ${t.pid} (${t.comm})`);
  if (shownTracers.length < byCount.length) {
    const rest = byCount.slice(shownTracers.length);
    causes.push(`${rest.reduce((sum, t) => sum + t.n, 0)} traced by ${rest.length} other tracers`);
  }
  if (counts.tooMany > 0) causes.push(`${counts.tooMany} need more than ${slotsPerThread} debug registers`);
  const reason =
    `${fitting}/${fits.length} targets ${needText}` +
    (notes.length > 0 ? ` (${notes.join("; ")})` : "") +
    (causes.length > 0 ? `: ${causes.join(", ")}` : "") +
    suffix;
  return { reason, fits: fitting, needed, counts };
}

function toPlacement(c: Candidate, fit: Fit & { kind: "free" | "preempt" }): TargetPlacement {
  return { hostId: c.hostId, pid: c.pid, assignments: fit.assignments, evicts: fit.kind === "preempt" ? fit.victims : [] };
}

function decision(outcome: PlacementDecision["outcome"], placed: TargetPlacement[], keptRefs: TargetRef[], shortfall?: Shortfall): PlacementDecision {
  placed.sort(compareTargets);
  const preempted: Eviction[] = [];
  for (const p of placed) for (const jobId of p.evicts) preempted.push({ hostId: p.hostId, pid: p.pid, jobId });
  return shortfall ? { outcome, placed, preempted, kept: keptRefs, shortfall } : { outcome, placed, preempted, kept: keptRefs };
}

/**
 * Decides where a job's watches go among its candidate targets.
 *
 * Per target: identical chunks (address, length, mode) of ptrace jobs share
 * a register (one more reference, no new slot), a perf job's registers are
 * its own; the job's chunks are placed all or none;
 * new chunks take free registers the kernel reserved for us first, then the
 * lowest free index, never one in foreignMask; a target traced by another
 * tracer is unusable for ptrace jobs (perf jobs do not attach). When a target lacks room the job may evict holders of
 * strictly lower priority from that whole target: the fewest jobs, sparing
 * the highest priorities, then the oldest (see compareVictims); a shared
 * register is freed only when all its holders go.
 *
 * Per job: `all` places every candidate or none (and then evicts nobody);
 * `any` places every candidate that fits; `sample` places `count` targets,
 * first those that fit without preemption and then those that need it, each
 * round-robin over hosts (sorted by host id, then pid) that have fewest of
 * the job's targets; fewer when fewer fit (`partial`). Candidates where the
 * job already holds registers are `kept` and count as placed.
 */
export function place(job: PlacementJob, candidates: readonly Candidate[]): PlacementDecision {
  const mode = job.placement;
  if (mode.kind === "sample" && !(Number.isInteger(mode.count) && mode.count >= 1)) {
    throw new InvalidRequestError(`sample:${mode.count}: a sample needs a whole number of targets, at least 1`);
  }
  const sorted = isSorted(candidates) ? candidates : [...candidates].sort(compareTargets);
  const fits = sorted.map((c) => evaluate(c, job));
  const keptRefs: TargetRef[] = [];
  const fresh: number[] = [];
  const preempting: number[] = [];
  fits.forEach((fit, i) => {
    if (fit.kind === "kept") keptRefs.push({ hostId: sorted[i]!.hostId, pid: sorted[i]!.pid });
    else if (fit.kind === "free") fresh.push(i);
    else if (fit.kind === "preempt") preempting.push(i);
  });
  const placeable = (i: number) => toPlacement(sorted[i]!, fits[i] as Fit & { kind: "free" | "preempt" });
  const fitting = keptRefs.length + fresh.length + preempting.length;

  switch (mode.kind) {
    case "all": {
      if (sorted.length > 0 && fitting === sorted.length) return decision("placed", [...fresh, ...preempting].map(placeable), keptRefs);
      return decision("pending", [], keptRefs, describe(fits, sorted.length, sorted.length > 0 ? `; placement all needs all ${sorted.length}` : ""));
    }
    case "any": {
      const placed = [...fresh, ...preempting].map(placeable);
      if (fitting === sorted.length && sorted.length > 0) return decision("placed", placed, keptRefs);
      const shortfall = describe(fits, sorted.length, "");
      return decision(placed.length + keptRefs.length > 0 ? "partial" : "pending", placed, keptRefs, shortfall);
    }
    case "sample": {
      const used: number[] = [];
      fits.forEach((fit, i) => fit.kind === "kept" && used.push(i));
      const picked: number[] = [];
      for (const pass of [fresh, preempting]) {
        if (used.length >= mode.count) break;
        for (const i of spreadOrder(pass, sorted, mode.spreadLabel, used)) {
          if (used.length >= mode.count) break;
          used.push(i);
          picked.push(i);
        }
      }
      const placed = picked.map(placeable);
      if (used.length >= mode.count) return decision("placed", placed, keptRefs);
      const suffix = used.length > 0 ? `; placed ${used.length} of sample:${mode.count}` : "";
      return decision(used.length > 0 ? "partial" : "pending", placed, keptRefs, describe(fits, mode.count, suffix));
    }
  }
}

/**
 * A target after some jobs leave it: each loses its reference on every
 * register; `cleared` lists the registers whose last holder left (the agent
 * clears them in DR7).
 */
export function releaseJobs<T extends TargetSnapshot>(target: T, jobIds: Iterable<string>): { target: T; cleared: number[] } {
  const leaving = new Set(jobIds);
  const cleared: number[] = [];
  const slots = Array.from({ length: slotsPerThread }, (_, dr): HeldSlot | null => {
    const s = target.slots[dr] ?? null;
    if (!s) return null;
    const holders = s.holders.filter((h) => !leaving.has(h.jobId));
    if (holders.length === s.holders.length) return s;
    if (holders.length > 0) return { ...s, holders };
    cleared.push(dr);
    return null;
  });
  return { target: { ...target, slots }, cleared };
}

/** releaseJobs for one job. */
export function releaseJob<T extends TargetSnapshot>(target: T, jobId: string): { target: T; cleared: number[] } {
  return releaseJobs(target, [jobId]);
}

/**
 * A target after one placement of a decision: its victims leave, then the
 * job takes one reference on every register it was assigned. Throws when the
 * snapshot moved under the decision (a register now watches another chunk).
 */
export function applyPlacement<T extends TargetSnapshot>(target: T, job: PlacementJob, placement: TargetPlacement): T {
  const after = releaseJobs(target, placement.evicts).target;
  const slots = [...after.slots];
  const holder: SlotHolder = { jobId: job.id, priority: job.priority, createdUnixMs: job.createdUnixMs };
  for (const { dr, chunk } of placement.assignments) {
    const s = slots[dr] ?? null;
    if (s?.holders.some((h) => h.jobId === job.id)) continue;
    if (s && !sameChunk(s.chunk, chunk)) {
      throw new Error(`stale placement: DR${dr} of pid ${target.pid} on ${target.hostId} watches another chunk (held by ${s.holders.map((h) => h.jobId).join(", ")})`);
    }
    if (s && !canShare(s, job.backend)) {
      throw new Error(`stale placement: DR${dr} of pid ${target.pid} on ${target.hostId} is held by ${s.holders.map((h) => h.jobId).join(", ")}, and perf registers are never shared`);
    }
    slots[dr] = s ? { chunk: s.chunk, holders: [...s.holders, holder] } : job.backend === "perf" ? { chunk, holders: [holder], exclusive: true } : { chunk, holders: [holder] };
  }
  return { ...after, slots };
}

/** Every placed target of a decision after applying it; `lookup` gives the snapshot each was decided on. */
export function applyDecision<T extends TargetSnapshot>(lookup: (ref: TargetRef) => T | undefined, job: PlacementJob, decision: PlacementDecision): T[] {
  return decision.placed.map((p) => {
    const target = lookup(p);
    if (!target) throw new Error(`stale placement: no snapshot of pid ${p.pid} on ${p.hostId}`);
    return applyPlacement(target, job, p);
  });
}
