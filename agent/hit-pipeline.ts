// The hit path from the helper to JetStream with exact per-watch accounting:
// hit records become HitEvents numbered per job, go out in HitBatches through
// the HitPublisher, and each ends delivered or dropped in the watch's counters.
import { clone, create, toBinary } from "@bufbuild/protobuf";
import { HitBatchSchema, HitCountsSchema, StackFrameSchema, WatchMode, eventSubject, type HitCounts, type HitEvent, type SlotAssignment } from "../proto/index.js";
import { countReport, countingTotals } from "./counting-totals.js";
import type { GroupCounts, HelperBackend, HelperHit, HelperMode, ThreadHits } from "./helper-process.js";
import type { RedactedValues, ValuePolicy } from "./host-policy.js";
import type { HitPublisher } from "./hit-publisher.js";

// The helper sends a counting group's last COUNTS before saying it ended; an
// ended counting watch waits this long for it to come through before its
// counts are taken as final without it.
const lastCountsWaitMs = 5_000;

/**
 * About this many encoded bytes make a HitBatch go out: well under the 1 MiB
 * a NATS server takes in one message by default, whatever the stacks carry.
 */
const maxBatchBytes = 256 * 1024;

const protoModes: Record<HelperMode, WatchMode> = { w: WatchMode.WRITE, rw: WatchMode.READ_WRITE, x: WatchMode.EXECUTE };

/** An upper estimate of a HitEvent's encoded size (fixed fields, ids, each frame's strings). */
function encodedSizeGuess(e: HitEvent): number {
  let n = 96 + e.jobId.length + e.hostId.length;
  for (const f of e.stack) n += 32 + f.function.length * 3 + f.module.length * 3;
  return n;
}

/** What the publisher knows of one watch: its counters and its hits on their way. Only the pipeline changes it. */
export interface WatchHits {
  readonly jobId: string;
  readonly pid: number;
  readonly watchIndexByDr: ReadonlyMap<number, number>;
  readonly counts: HitCounts;
  /** Counters of earlier watches of the same job and pid (before a lapse), which this one adds to. */
  readonly base: HitCounts;
  /** The earlier watch of the same job and pid, whose hits may still be settling (they count here too). */
  readonly previous: WatchHits | undefined;
  /** The watch that took over from this one after a re-arm. */
  next: WatchHits | undefined;
  /** Hit records received from the helper. */
  received: bigint;
  /** Hit records the helper emitted in all, known once the group is disarmed. */
  expected: bigint | undefined;
  /** Hits received and not yet settled (buffered or in flight), and who waits for them. */
  pending: number;
  settledWaiters: Array<() => void>;
  /** Hits waiting to go out in the next HitBatch, and about how many bytes they encode to. */
  batch: HitEvent[];
  batchBytes: number;
  flushTimer: NodeJS.Timeout | undefined;
  /** What the job's owner lets leave the host of the values (the host policy may be stricter). */
  readonly jobValues: ValuePolicy;
  /** ptrace reads the value while the writing thread is stopped right after its store. */
  readonly valuesAtStop: boolean;
  /** A counting watch: no hit records, count reports every countIntervalMs. */
  readonly countOnly: boolean;
  readonly countIntervalMs: bigint;
  /** perf samples lost (ring buffer full) already counted as dropped. */
  lostCounted: bigint;
  /** A counting watch: `trapped` of the latest COUNTS received, and of the group's final counts once it ended. */
  countsTrapped: bigint;
  finalTrapped: bigint | undefined;
  /** Gives up waiting for a counting watch's last COUNTS. */
  lastCountsTimer: NodeJS.Timeout | undefined;
  /** Called each time the watch is found settled: every hit it will ever have is published or dropped. */
  readonly onSettled: () => void;
}

/** How a new watch's hits start. */
export interface WatchHitsInit {
  readonly jobId: string;
  readonly pid: number;
  readonly slots: readonly SlotAssignment[];
  /** The counters to go on with: an earlier watch's own object (its late hits land in it too), or where they resume. */
  readonly counts: HitCounts;
  readonly previous: WatchHits | undefined;
  readonly jobValues: ValuePolicy;
  readonly backend: HelperBackend;
  readonly countOnly: boolean;
  readonly countIntervalMs: bigint;
  readonly onSettled: () => void;
}

/** Hits by outcome, as plain numbers (the metrics' view of HitCounts). */
export interface HitTotals {
  trapped: number;
  delivered: number;
  suppressed: number;
  dropped: number;
  filtered: number;
}

/** No hits yet. */
export function noHits(): HitTotals {
  return { trapped: 0, delivered: 0, suppressed: 0, dropped: 0, filtered: 0 };
}

/** Adds what counters gained over `base` to `into` (pure). */
export function addGain(into: HitTotals, counts: HitCounts, base: HitCounts): HitTotals {
  into.trapped += Number(counts.trapped - base.trapped);
  into.delivered += Number(counts.delivered - base.delivered);
  into.suppressed += Number(counts.suppressed - base.suppressed);
  into.dropped += Number(counts.dropped - base.dropped);
  into.filtered += Number(counts.filtered - base.filtered);
  return into;
}

/** When a HitBatch goes out. */
export interface HitBatching {
  /** A HitBatch goes out when it holds this many hits, or about maxBatchBytes (stacks make hits large)... */
  readonly maxBatchHits: number;
  /** ...or this long after its first hit. */
  readonly batchDelayMs: number;
}

/** Publishes every watch's hits and count reports, and knows when a watch's are all settled. */
export class HitPipeline {
  /**
   * The last hit sequence per job: HitEvent.sequence counts per job and host,
   * across all of the job's processes here, since readers drop a (host,
   * sequence) they have seen as a republished duplicate. Kept while the job
   * has a watch or a follow here, so a lapse or a late joiner goes on counting.
   */
  private readonly sequences = new Map<string, bigint>();
  /**
   * The first watch of each chain of watches that share counters (a re-arm
   * after a lapse goes on in the same object), while the agent keeps it; its
   * `base` is where the counters stood when this agent armed it.
   */
  private readonly chains = new Set<WatchHits>();
  /** What chains no longer kept had gained here. */
  private readonly retired = noHits();

  /** `redact` says what of a hit's values may leave the host, under the policy in effect when it is published. */
  constructor(
    private readonly publisher: HitPublisher,
    private readonly hostId: string,
    private readonly log: (line: string) => void,
    private readonly redact: (jobValues: ValuePolicy, oldValue: bigint, newValue: bigint) => RedactedValues,
    private readonly batching: HitBatching,
  ) {}

  /** A new watch's hits; they add to `init.counts`. */
  open(init: WatchHitsInit): WatchHits {
    const watch: WatchHits = {
      jobId: init.jobId,
      pid: init.pid,
      watchIndexByDr: new Map(init.slots.map((s) => [s.dr, s.chunk?.watchIndex ?? 0])),
      counts: init.counts,
      base: clone(HitCountsSchema, init.counts),
      previous: init.previous,
      next: undefined,
      received: 0n,
      expected: undefined,
      pending: 0,
      settledWaiters: [],
      batch: [],
      batchBytes: 0,
      flushTimer: undefined,
      jobValues: init.jobValues,
      valuesAtStop: init.backend === "ptrace",
      countOnly: init.countOnly,
      countIntervalMs: init.countIntervalMs,
      lostCounted: 0n,
      countsTrapped: 0n,
      finalTrapped: undefined,
      lastCountsTimer: undefined,
      onSettled: init.onSettled,
    };
    if (!init.previous) this.chains.add(watch);
    return watch;
  }

  /**
   * Every hit of this agent's watches by outcome, since it started: what the
   * targets' counters (the ones the controller shows) gained here. Read at a
   * scrape, never on the hit path.
   */
  hitTotals(): HitTotals {
    const totals = { ...this.retired };
    for (const head of this.chains) addGain(totals, head.counts, head.base);
    return totals;
  }

  /** The agent forgets a settled watch (its process is gone): its chain's gains stay in the totals. */
  retire(watch: WatchHits): void {
    let head = watch;
    while (head.previous) head = head.previous;
    if (!this.chains.delete(head)) return;
    addGain(this.retired, head.counts, head.base);
  }

  /** `later` took over from `earlier` after a re-arm: they share the counters, and `earlier`'s late hits settle `later` too. */
  takeOver(earlier: WatchHits, later: WatchHits): void {
    earlier.next = later;
  }

  /** One hit record of the watch: it becomes a HitEvent in the watch's next batch. */
  hit(watch: WatchHits, hit: HelperHit): void {
    watch.received++;
    if (!ended(watch)) watch.counts.trapped = watch.base.trapped + watch.received;
    const sequence = this.nextSequence(watch.jobId);
    const values = this.redact(watch.jobValues, hit.oldValue, hit.newValue);
    // The message spelled out field by field rather than through create():
    // this runs once per hit, up to ~100,000 times a second with perf, and
    // the type makes sure no field is left out.
    const event: HitEvent = {
      $typeName: "fleetwatch.v1.HitEvent",
      jobId: watch.jobId,
      hostId: this.hostId,
      pid: hit.pid,
      tid: hit.tid,
      address: hit.address,
      length: hit.length,
      mode: protoModes[hit.mode],
      slot: hit.dr,
      ip: hit.ip,
      newValue: values.newValue,
      oldValue: values.oldValue,
      timeUnixNano: hit.timeNs,
      stack: hit.stack.length === 0 ? [] : hit.stack.map((f) => create(StackFrameSchema, f)),
      watchIndex: watch.watchIndexByDr.get(hit.dr) ?? 0,
      sequence,
      valueRedaction: values.redaction,
      valueExact: hit.valueExact || watch.valuesAtStop,
    };
    watch.pending++;
    watch.batch.push(event);
    watch.batchBytes += encodedSizeGuess(event);
    // The last hit of an ended watch goes out at once: its final report waits for it.
    if (watch.batch.length >= this.batching.maxBatchHits || watch.batchBytes >= maxBatchBytes || this.isLastHit(watch)) this.flush(watch);
    else watch.flushTimer ??= setTimeout(() => this.flush(watch), this.batching.batchDelayMs);
  }

  /**
   * A counting group's totals so far and its threads' hits of the interval:
   * the watch's counters move, and a CountReport goes out on the job's
   * event subject (its publishing is waited for like a hit's before the
   * watch's final report).
   */
  counts(watch: WatchHits, timeNs: bigint, counts: GroupCounts, threads: ThreadHits[]): void {
    // The final counts (DISARMED) may have been taken already: totals only go forward.
    if (counts.trapped < watch.countsTrapped) return;
    // A watch that took over after a re-arm shares the counters: a late report of this one must not set them back.
    if (!watch.next) this.takeCountingTotals(watch, counts);
    watch.countsTrapped = counts.trapped;
    const sequence = this.nextSequence(watch.jobId);
    const report = countReport(watch, this.hostId, timeNs, counts, threads, sequence);
    watch.pending++;
    // The totals are cumulative: a report that cannot be published is made good by the next, and the target's counts carry them anyway.
    this.publisher.publish(eventSubject(watch.jobId, this.hostId), toBinary(HitBatchSchema, create(HitBatchSchema, { counts: [report] })), `${watch.jobId}.${watch.pid}.${sequence}`, () => {
      this.published(watch, 1);
    });
    this.wakeIfSettled(watch);
  }

  /**
   * The helper no longer traps for this watch and says what its group
   * counted. Hit records it sent before saying so may still be queued here:
   * they are published like any other, and the watch is settled once all of
   * them have come through.
   */
  end(watch: WatchHits, counts: GroupCounts): void {
    if (watch.countOnly) {
      // No hit records: the counts are the helper's, and its last COUNTS (published as a report) may still be on its way here.
      watch.expected = 0n;
      this.takeCountingTotals(watch, counts);
      watch.finalTrapped = counts.trapped;
      if (watch.countsTrapped < counts.trapped) {
        watch.lastCountsTimer = setTimeout(() => {
          this.log(`agent ${this.hostId}: job ${watch.jobId} on pid ${watch.pid}: no last COUNTS from the helper within ${lastCountsWaitMs} ms; its final counts stand without a last report`);
          watch.countsTrapped = counts.trapped;
          this.wakeIfSettled(watch);
        }, lastCountsWaitMs);
      }
      this.wakeIfSettled(watch);
      return;
    }
    watch.expected = counts.delivered;
    if (this.isLastHit(watch)) this.flush(watch);
    watch.counts.trapped = watch.base.trapped + counts.trapped;
    watch.counts.suppressed = watch.base.suppressed + counts.suppressed;
    watch.counts.filtered = watch.base.filtered + counts.filtered;
    // perf samples the kernel could not write never became hits: dropped, so the counts still add up.
    watch.counts.dropped += counts.lost - watch.lostCounted;
    watch.lostCounted = counts.lost;
    this.wakeIfSettled(watch);
  }

  /** The helper died with the watch armed: what it received is all there will be. */
  lost(watch: WatchHits): void {
    watch.expected = watch.received;
    // A counting watch keeps the totals of its last COUNTS: they add up on their own.
    if (!watch.countOnly) watch.counts.trapped = watch.base.trapped + watch.received;
    watch.finalTrapped = watch.countsTrapped;
    this.flush(watch);
    this.wakeIfSettled(watch);
  }

  /** Every hit of an ended watch is received and published (or dropped), and so are its earlier watches'. */
  isSettled(watch: WatchHits): boolean {
    // An earlier watch's hits still being published are this one's too: its counts are final only after them.
    if (watch.pending !== 0 || watch.expected === undefined || watch.received < watch.expected) return false;
    if (watch.finalTrapped !== undefined && watch.countsTrapped < watch.finalTrapped) return false;
    for (let p = watch.previous; p; p = p.previous) if (p.pending !== 0) return false;
    return true;
  }

  /** Resolves once every hit of an ended watch is received and published (or dropped). */
  settled(watch: WatchHits): Promise<void> {
    if (this.isSettled(watch)) return Promise.resolve();
    return new Promise((resolve) => watch.settledWaiters.push(resolve));
  }

  /** The job's hit sequence goes on after `lastSequence` (stored before this agent armed it), unless it is past it already. */
  continueAfter(jobId: string, lastSequence: bigint): void {
    if (lastSequence > (this.sequences.get(jobId) ?? 0n)) this.sequences.set(jobId, lastSequence);
  }

  /** Drops a job's hit sequence: nothing here can produce its hits any more. */
  forgetJob(jobId: string): void {
    this.sequences.delete(jobId);
  }

  /** A counting watch's counters from the helper's totals (delivered = hits counted; lost samples are dropped). */
  private takeCountingTotals(watch: WatchHits, counts: GroupCounts): void {
    Object.assign(watch.counts, countingTotals(watch.base, counts));
    watch.lostCounted = counts.lost;
  }

  private wakeIfSettled(watch: WatchHits): void {
    if (!this.isSettled(watch)) return;
    clearTimeout(watch.lastCountsTimer);
    watch.onSettled();
    for (const resolve of watch.settledWaiters.splice(0)) resolve();
  }

  private isLastHit(watch: WatchHits): boolean {
    return watch.expected !== undefined && watch.received >= watch.expected;
  }

  /** Publishes the watch's buffered hits as one HitBatch; each hit ends delivered or dropped. */
  private flush(watch: WatchHits): void {
    clearTimeout(watch.flushTimer);
    watch.flushTimer = undefined;
    const hits = watch.batch;
    if (hits.length === 0) return;
    watch.batch = [];
    watch.batchBytes = 0;
    const n = BigInt(hits.length);
    const id = `${watch.jobId}.${watch.pid}.${hits[0]!.sequence}`;
    this.publisher.publish(
      eventSubject(watch.jobId, this.hostId),
      toBinary(HitBatchSchema, create(HitBatchSchema, { hits })),
      id,
      (ok) => {
        if (ok) watch.counts.delivered += n;
        else watch.counts.dropped += n;
        this.published(watch, hits.length);
      },
      hits.length,
    );
  }

  /** n of the watch's messages are settled: it, and the watches that took over from it, may be too. */
  private published(watch: WatchHits, n: number): void {
    watch.pending -= n;
    this.wakeIfSettled(watch);
    for (let next = watch.next; next; next = next.next) this.wakeIfSettled(next);
  }

  /** The next hit or count report sequence of a job on this host (1, 2, 3, ...). */
  private nextSequence(jobId: string): bigint {
    const sequence = (this.sequences.get(jobId) ?? 0n) + 1n;
    this.sequences.set(jobId, sequence);
    return sequence;
  }
}

/** The helper has said how many records the watch's group sent: it is no longer armed. */
function ended(watch: WatchHits): boolean {
  return watch.expected !== undefined;
}
