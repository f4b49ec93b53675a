// What the controller keeps of each finished job instead of the job: its id,
// state and times, in listing order (newest first), so that pages of
// `jobs ls`, counts by state and retention need no read of the store.
import type { JobState } from "../proto/index.js";

/** Where a job sits in a listing: newer (createdUnixMs) first, then by id. */
export interface ListPosition {
  readonly createdUnixMs: number;
  readonly id: string;
}

/** A finished job as memory keeps it (about 150 bytes with its id and place in the index, not the Job). */
export interface FinishedEntry extends ListPosition {
  readonly state: JobState;
  /** When it ended; 0 when the record does not say (its creation counts then). */
  readonly endedUnixMs: number;
  /** Its targets may be in shard values "<id>.<n>", which go with it. */
  readonly sharded: boolean;
}

/** Listing order: negative when `a` comes before `b` (newer first, then lower id). */
export function listOrder(a: ListPosition, b: ListPosition): number {
  return b.createdUnixMs - a.createdUnixMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** When a finished job counts as ended for retention. */
export function endedAt(entry: FinishedEntry): number {
  return entry.endedUnixMs || entry.createdUnixMs;
}

/** Every finished job of the store as a compact entry, in listing order, with counts by state. */
export class FinishedIndex {
  /** In listing order. */
  private sorted: FinishedEntry[] = [];
  private readonly byId = new Map<string, FinishedEntry>();
  private readonly byState = new Map<JobState, number>();

  /** An index of these entries (one sort, for a load). */
  static of(entries: Iterable<FinishedEntry>): FinishedIndex {
    const index = new FinishedIndex();
    for (const e of entries) {
      const before = index.byId.get(e.id);
      if (before) index.count(before.state, -1);
      index.byId.set(e.id, e);
      index.count(e.state, 1);
    }
    index.sorted = [...index.byId.values()].sort(listOrder);
    return index;
  }

  get size(): number {
    return this.sorted.length;
  }

  get(id: string): FinishedEntry | undefined {
    return this.byId.get(id);
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  /** The entry at a place of the listing order (0: the newest). */
  at(place: number): FinishedEntry | undefined {
    return this.sorted[place];
  }

  /** The place of the first entry after `position` in listing order (0 without one). */
  placeAfter(position: ListPosition | undefined): number {
    if (!position) return 0;
    let lo = 0;
    let hi = this.sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (listOrder(this.sorted[mid]!, position) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Finished jobs in these states (every state when undefined). */
  countIn(states: ReadonlySet<JobState> | undefined): number {
    if (!states) return this.sorted.length;
    let n = 0;
    for (const s of states) n += this.byState.get(s) ?? 0;
    return n;
  }

  /** Adds a finished job, or replaces its entry (a final job's state does not change, but its record may). */
  add(entry: FinishedEntry): void {
    const before = this.byId.get(entry.id);
    if (before && listOrder(before, entry) === 0) {
      this.sorted[this.placeOf(before)] = entry;
      this.count(before.state, -1);
    } else {
      if (before) this.remove(before.id);
      this.sorted.splice(this.placeAfter(entry), 0, entry);
    }
    this.byId.set(entry.id, entry);
    this.count(entry.state, 1);
  }

  /** Forgets one job (deleted from the store). */
  remove(id: string): void {
    const entry = this.byId.get(id);
    if (!entry) return;
    this.sorted.splice(this.placeOf(entry), 1);
    this.byId.delete(id);
    this.count(entry.state, -1);
  }

  /**
   * The finished jobs retention deletes, oldest end first: those that ended
   * `keepMs` or more before `nowMs`, and beyond them the oldest of those over
   * `keepCount`.
   */
  expired(nowMs: number, keepMs: number, keepCount: number): FinishedEntry[] {
    const cutoff = nowMs - keepMs;
    const over = this.sorted.length - keepCount;
    if (over <= 0) {
      const old = this.sorted.filter((e) => endedAt(e) <= cutoff);
      return old.sort((a, b) => endedAt(a) - endedAt(b) || listOrder(b, a));
    }
    const byEnd = [...this.sorted].sort((a, b) => endedAt(a) - endedAt(b) || listOrder(b, a));
    let n = over;
    while (n < byEnd.length && endedAt(byEnd[n]!) <= cutoff) n++;
    return byEnd.slice(0, n);
  }

  private placeOf(entry: FinishedEntry): number {
    // The entry is in the array: the place just before the first one after it.
    return this.placeAfter(entry) - 1;
  }

  private count(state: JobState, delta: number): void {
    this.byState.set(state, (this.byState.get(state) ?? 0) + delta);
  }
}
