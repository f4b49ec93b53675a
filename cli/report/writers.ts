// The writers of a job, aggregated as its events stream past: hits grouped
// by who wrote (stack, top frame, ip, thread, process, host or the value
// written), the folded stacks a flame graph is drawn from, a counting job's
// totals per host, process and thread, and what the stream itself shows of
// hits it does not hold (sequence gaps). Memory grows with the distinct
// groups, stacks and hosts, never with the hits.
import { ValueRedaction, hex, type CountReport, type HitEvent, type StackFrame } from "../../proto/index.js";
import { UsageError } from "../errors.js";
import type { JobEvent } from "../events.js";
import { formatHitValue, topFrame } from "../output.js";

/** What hits can be grouped by (`--by`). */
export const groupKinds = ["stack", "frame", "ip", "tid", "process", "host", "value"] as const;
export type GroupKind = (typeof groupKinds)[number];

/** Transitions kept per group: the most frequent ones are exact while fewer distinct ones than this were seen. */
const transitionSlots = 16;
/** Transitions a group shows. */
const shownTransitions = 3;

/** A frame as a flame graph names it: the function, or where it is when no symbol is known. */
export function frameName(frame: StackFrame): string {
  if (frame.function !== "") return frame.function;
  if (frame.module !== "") return `${frame.module.slice(frame.module.lastIndexOf("/") + 1)}+${hex(frame.ip)}`;
  return hex(frame.ip);
}

/**
 * The hit's stack folded outermost frame first, the way flamegraph.pl,
 * inferno and speedscope read it (`main;worker;bump`). `;` inside a name
 * would split it: it becomes `:`. A hit without a stack is its ip.
 */
export function foldedStack(hit: HitEvent): string {
  if (hit.stack.length === 0) return hex(hit.ip);
  let folded = "";
  for (let i = hit.stack.length - 1; i >= 0; i--) folded += (folded === "" ? "" : ";") + frameName(hit.stack[i]!).replaceAll(";", ":");
  return folded;
}

/** The top frame as `function+0xoffset` (the ip when it has no symbol). */
export function frameKey(hit: HitEvent): string {
  const frame = topFrame(hit);
  if (!frame || frame.function === "") return hex(hit.ip);
  return `${frame.function}+${hex(frame.offset)}`;
}

/** A value in a transition: hex alone (the value group spells out the decimal too). */
function shortValue(value: bigint, redaction: ValueRedaction): string {
  return redaction === ValueRedaction.UNSPECIFIED ? hex(value) : formatHitValue(value, redaction);
}

/** The hit's key for one kind of grouping; `folded` is its folded stack, computed once per hit. */
function groupPart(kind: GroupKind, hit: HitEvent, folded: string): string {
  switch (kind) {
    case "stack":
      return folded;
    case "frame":
      return frameKey(hit);
    case "ip":
      return hex(hit.ip);
    case "tid":
      return `${hit.hostId}/${hit.pid}/${hit.tid}`;
    case "process":
      return `${hit.hostId}/${hit.pid}`;
    case "host":
      return hit.hostId;
    case "value":
      return formatHitValue(hit.newValue, hit.valueRedaction);
  }
}

/**
 * Counts of the most frequent keys in bounded memory (the space-saving
 * algorithm): a new key past `slots` takes the place of the least counted
 * one and inherits its count as possible error. Exact while no key was evicted.
 */
class FrequentKeys {
  readonly #counts = new Map<string, { hits: number; error: number }>();
  #evicted = false;

  add(key: string): void {
    const known = this.#counts.get(key);
    if (known) {
      known.hits++;
      return;
    }
    if (this.#counts.size < transitionSlots) {
      this.#counts.set(key, { hits: 1, error: 0 });
      return;
    }
    let least: string | undefined;
    let leastHits = Infinity;
    for (const [k, c] of this.#counts) {
      if (c.hits < leastHits) {
        least = k;
        leastHits = c.hits;
      }
    }
    this.#counts.delete(least!);
    this.#counts.set(key, { hits: leastHits + 1, error: leastHits });
    this.#evicted = true;
  }

  /**
   * The `n` keys counted most often for certain (their count less its
   * possible error), each with what it may have been at most; keys that
   * may never have repeated are left out once counts are estimates.
   */
  top(n: number): { key: string; hits: number; atMost: number }[] {
    return [...this.#counts]
      .map(([key, c]) => ({ key, hits: c.hits - c.error, atMost: c.hits }))
      .filter((c) => c.hits > 1 || !this.#evicted)
      .sort((a, b) => b.hits - a.hits || b.atMost - a.atMost || (a.key < b.key ? -1 : 1))
      .slice(0, n);
  }

  /** More distinct keys came than are kept: counts are estimates. */
  get evicted(): boolean {
    return this.#evicted;
  }
}

interface GroupState {
  parts: string[];
  hits: number;
  hosts: Set<string>;
  processes: Set<string>;
  firstNs: bigint;
  lastNs: bigint;
  transitions: FrequentKeys;
}

/** One old → new transition of a group, and how often it was written. */
export interface Transition {
  old: string;
  new: string;
  /** Written at least this often (exactly, while the group wrote few distinct transitions). */
  hits: number;
  /** Written at most this often; equal to hits when exact. */
  atMost: number;
}

/** One group of writers. */
export interface WriterGroup {
  /** One value per `by` kind, in their order. */
  key: string[];
  hits: number;
  /** Of all the report's hits, 0..1. */
  share: number;
  hosts: string[];
  /** `host/pid`. */
  processes: string[];
  firstUnixNano: bigint;
  lastUnixNano: bigint;
  /** The most frequent old → new transitions, most frequent first. */
  transitions: Transition[];
  /** More distinct transitions were written than are kept (16): the transitions are the certain ones only. */
  manyTransitions: boolean;
}

/** Hits of a counting job on one host, process or thread. */
export interface CountRow {
  /** `host`, `host/pid` or `host/pid/tid`. */
  key: string;
  hits: bigint;
  /** Hits per second over the time its reports covered (0 when they cover none). */
  perSecond: number;
}

/** What the stream showed of one host's sequence numbers. */
export interface HostSequences {
  hostId: string;
  /** Events (hits and count reports) read, each once. */
  seen: number;
  lowest: bigint;
  highest: bigint;
  /** Numbers between 1 (or the first read, when reading from a time) and the highest that never came. */
  missing: bigint;
}

/** The report at one moment. */
export interface WritersSnapshot {
  by: GroupKind[];
  /** Hits read (each once). */
  hits: number;
  /** Groups, most hits first, at most `top` of them. */
  groups: WriterGroup[];
  /** Groups in all (the shown ones and the rest). */
  groupCount: number;
  /** Folded stack → hits, for flame graphs (every stack, not only the top groups). */
  folded: Map<string, number>;
  /** A counting job: hits per host, process and thread, from its count reports. */
  counting?: { hosts: CountRow[]; processes: CountRow[]; threads: CountRow[] };
  sequences: HostSequences[];
  /** A value in the groups is a hash or masked by a host's policy. */
  redacted: boolean;
}

interface TargetCounts {
  delivered: bigint;
  /** Earliest start and latest end of its reports' intervals. */
  fromNs: bigint;
  toNs: bigint;
  threads: Map<number, bigint>;
}

/** Aggregates one job's events into its writers. */
export class WritersAggregator {
  readonly #by: GroupKind[];
  readonly #groups = new Map<string, GroupState>();
  readonly #folded = new Map<string, number>();
  readonly #targets = new Map<string, TargetCounts>();
  readonly #sequences = new Map<string, { seen: number; lowest: bigint; highest: bigint }>();
  #hits = 0;
  #redacted = false;

  /**
   * `fromStart`: the reading began at the stream's start, so a host's
   * numbers are missing from 1 on; otherwise from the first one read.
   */
  constructor(
    by: readonly GroupKind[],
    private readonly fromStart = true,
  ) {
    if (by.length === 0) throw new Error("group by at least one kind");
    this.#by = [...by];
  }

  /** Hits read so far. */
  get hits(): number {
    return this.#hits;
  }

  /** One event of the job's stream, as readJobEvents gives it. */
  add(event: JobEvent): void {
    if (event.kind === "hit") this.addHit(event.hit);
    else this.addCount(event.report);
  }

  /** One hit (already deduplicated by its sequence). */
  addHit(hit: HitEvent): void {
    this.#hits++;
    this.#sequence(hit.hostId, hit.sequence);
    const folded = foldedStack(hit);
    const parts = this.#by.map((kind) => groupPart(kind, hit, folded));
    const key = parts.join("\u0000");
    let group = this.#groups.get(key);
    if (!group) {
      group = { parts, hits: 0, hosts: new Set(), processes: new Set(), firstNs: hit.timeUnixNano, lastNs: hit.timeUnixNano, transitions: new FrequentKeys() };
      this.#groups.set(key, group);
    }
    group.hits++;
    group.hosts.add(hit.hostId);
    group.processes.add(`${hit.hostId}/${hit.pid}`);
    if (hit.timeUnixNano < group.firstNs) group.firstNs = hit.timeUnixNano;
    if (hit.timeUnixNano > group.lastNs) group.lastNs = hit.timeUnixNano;
    group.transitions.add(`${shortValue(hit.oldValue, hit.valueRedaction)}\u0000${shortValue(hit.newValue, hit.valueRedaction)}`);
    if (hit.valueRedaction !== ValueRedaction.UNSPECIFIED) this.#redacted = true;
    this.#folded.set(folded, (this.#folded.get(folded) ?? 0) + 1);
  }

  /** One count report of a counting job (already deduplicated by its sequence). */
  addCount(report: CountReport): void {
    this.#sequence(report.hostId, report.sequence);
    const key = `${report.hostId}/${report.pid}`;
    const fromNs = report.timeUnixNano - report.intervalMs * 1_000_000n;
    let target = this.#targets.get(key);
    if (!target) {
      target = { delivered: 0n, fromNs, toNs: report.timeUnixNano, threads: new Map() };
      this.#targets.set(key, target);
    }
    // Totals are cumulative: the highest is the latest.
    const delivered = report.totals?.delivered ?? 0n;
    if (delivered > target.delivered) target.delivered = delivered;
    if (fromNs < target.fromNs) target.fromNs = fromNs;
    if (report.timeUnixNano > target.toNs) target.toNs = report.timeUnixNano;
    for (const t of report.threads) target.threads.set(t.tid, (target.threads.get(t.tid) ?? 0n) + t.hits);
  }

  #sequence(hostId: string, sequence: bigint): void {
    if (sequence === 0n) return;
    const host = this.#sequences.get(hostId);
    if (!host) {
      this.#sequences.set(hostId, { seen: 1, lowest: sequence, highest: sequence });
      return;
    }
    host.seen++;
    if (sequence < host.lowest) host.lowest = sequence;
    if (sequence > host.highest) host.highest = sequence;
  }

  /** The report now: the `top` groups with the most hits (0: all). */
  snapshot(top = 0): WritersSnapshot {
    const all = [...this.#groups.values()].sort((a, b) => b.hits - a.hits || compareParts(a.parts, b.parts));
    const shown = top > 0 ? all.slice(0, top) : all;
    const groups = shown.map((g): WriterGroup => ({
      key: g.parts,
      hits: g.hits,
      share: this.#hits === 0 ? 0 : g.hits / this.#hits,
      hosts: [...g.hosts].sort(),
      processes: [...g.processes].sort(),
      firstUnixNano: g.firstNs,
      lastUnixNano: g.lastNs,
      transitions: g.transitions.top(shownTransitions).map(({ key, hits, atMost }) => {
        const [old, written] = key.split("\u0000");
        return { old: old!, new: written!, hits, atMost };
      }),
      manyTransitions: g.transitions.evicted,
    }));
    const snapshot: WritersSnapshot = {
      by: [...this.#by],
      hits: this.#hits,
      groups,
      groupCount: all.length,
      folded: new Map(this.#folded),
      sequences: [...this.#sequences]
        .map(([hostId, s]) => {
          const first = this.fromStart ? 1n : s.lowest;
          return { hostId, seen: s.seen, lowest: s.lowest, highest: s.highest, missing: s.highest - first + 1n - BigInt(s.seen) };
        })
        .sort((a, b) => (a.hostId < b.hostId ? -1 : a.hostId > b.hostId ? 1 : 0)),
      redacted: this.#redacted,
    };
    if (this.#targets.size > 0) snapshot.counting = this.#countRows();
    return snapshot;
  }

  #countRows(): { hosts: CountRow[]; processes: CountRow[]; threads: CountRow[] } {
    const hosts = new Map<string, { hits: bigint; fromNs: bigint; toNs: bigint }>();
    const processes: CountRow[] = [];
    const threads: CountRow[] = [];
    for (const [key, t] of this.#targets) {
      const seconds = Number(t.toNs - t.fromNs) / 1e9;
      const rate = (hits: bigint) => (seconds > 0 ? Number(hits) / seconds : 0);
      processes.push({ key, hits: t.delivered, perSecond: rate(t.delivered) });
      for (const [tid, hits] of t.threads) threads.push({ key: `${key}/${tid}`, hits, perSecond: rate(hits) });
      const hostId = key.slice(0, key.lastIndexOf("/"));
      const host = hosts.get(hostId);
      if (!host) hosts.set(hostId, { hits: t.delivered, fromNs: t.fromNs, toNs: t.toNs });
      else {
        host.hits += t.delivered;
        if (t.fromNs < host.fromNs) host.fromNs = t.fromNs;
        if (t.toNs > host.toNs) host.toNs = t.toNs;
      }
    }
    const byHits = (a: CountRow, b: CountRow) => (a.hits === b.hits ? (a.key < b.key ? -1 : 1) : a.hits > b.hits ? -1 : 1);
    return {
      hosts: [...hosts]
        .map(([key, h]) => {
          const seconds = Number(h.toNs - h.fromNs) / 1e9;
          return { key, hits: h.hits, perSecond: seconds > 0 ? Number(h.hits) / seconds : 0 };
        })
        .sort(byHits),
      processes: processes.sort(byHits),
      threads: threads.sort(byHits),
    };
  }
}

function compareParts(a: readonly string[], b: readonly string[]): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! < b[i]! ? -1 : 1;
  return 0;
}

/** Parses `--by stack,frame`: known kinds, each once. */
export function parseGroupBy(text: string): GroupKind[] {
  const kinds = text.split(",").map((k) => k.trim());
  const by: GroupKind[] = [];
  for (const kind of kinds) {
    if (!(groupKinds as readonly string[]).includes(kind)) throw new UsageError(`--by: '${kind}' is not one of ${groupKinds.join(", ")}`);
    if (by.includes(kind as GroupKind)) throw new UsageError(`--by: '${kind}' is named twice`);
    by.push(kind as GroupKind);
  }
  return by;
}
