// Leader election among controllers on a JetStream KV lease: one key holds the
// leader's id, gRPC address, fencing epoch and last renewal; every change is a
// compare-and-set. The agent's side of fencing, EpochGuard, lives in proto.
import { performance } from "node:perf_hooks";
import type { JetStreamClient, KV, KvEntry, QueuedIterator } from "nats";
import { leaderBucket, withDeadline as deadline } from "../proto/index.js";
import { openBucket } from "./kv-bucket.js";

// ---------------------------------------------------------------- options

/** How to run one candidate. Durations are in milliseconds. */
export interface LeaderElectionOptions {
  /** An open bucket (history 1 is enough). Give this or `js`. */
  kv?: KV;
  /** Opens (or creates) `bucket` with history 1 when `kv` is not given. */
  js?: JetStreamClient;
  /** Default `fleetwatch-leader`. */
  bucket?: string;
  /** Default `leader`. */
  key?: string;
  /** This candidate's stable, unique id (a controller id). */
  id: string;
  /** Where clients reach this candidate's gRPC service (`host:port`), published while it leads. */
  address: string;
  /** How long a lease lasts without renewal; the leader renews every leaseMs / 3. */
  leaseMs: number;
  /**
   * A leader that has not renewed for this long steps down by itself. Must lie
   * between leaseMs / 3 and leaseMs so that it is gone before anyone may take
   * over. Default leaseMs × 2 / 3 (Kubernetes' ratio of renew deadline to lease).
   */
  renewDeadlineMs?: number;
  /** Allowance for clock differences in the wall-clock expiry rule. Default leaseMs / 5. */
  clockMarginMs?: number;
  /** Deadline of one KV request (a renewal gets less when its lease runs out sooner). Default leaseMs / 2. */
  requestTimeoutMs?: number;
  /** How often a follower re-reads the key even without news from the watch. Default leaseMs / 4. */
  pollMs?: number;
  /** Follow the key with a KV watch as well as polling (faster hand-over). Default true. */
  watch?: boolean;
  /** Wall clock in Unix ms; default Date.now. Tests pass a skewed one. */
  wallClock?: () => number;
  /** Aborting it is the same as stop(). */
  signal?: AbortSignal;
  /** Default: lines to stderr. */
  log?: (line: string) => void;
}

/** Who leads, as seen by one candidate. */
export interface LeaderInfo {
  readonly id: string;
  readonly address: string;
  readonly epoch: bigint;
}

/** Why this candidate stopped leading. */
export type StepDownReason =
  /** The key changed under us (a renewal lost its compare-and-set, or the watch showed another holder). */
  | "superseded"
  /** No renewal succeeded within renewDeadlineMs (NATS unreachable or too slow). */
  | "expired"
  /** resign() was called. */
  | "resigned"
  /** stop() was called or the signal aborted. */
  | "stopped";

/** One change of leadership as seen by this candidate. */
export interface LeadershipChange {
  /** True from the moment this candidate leads until it steps down. */
  readonly leader: boolean;
  /** Our epoch while we lead; otherwise the epoch of the holder last seen, if any. */
  readonly epoch?: bigint;
  readonly leaderId?: string;
  readonly leaderAddress?: string;
  /** Present on the change that ends this candidate's leadership. */
  readonly stepDown?: { readonly reason: StepDownReason; readonly detail: string };
}

/** The value stored under the key. `leaseMs` 0 marks a lease released by resign(). */
export interface LeaderRecord {
  readonly id: string;
  /** Fencing token: +1 on every change of leader, never reused. */
  readonly epoch: bigint;
  /** The holder's wall clock when it sent the write. */
  readonly renewedUnixMs: number;
  readonly leaseMs: number;
  readonly address: string;
}

// ----------------------------------------------------------------- errors
// NotLeaderError maps to UNAVAILABLE (controller/errors.ts): clients with
// several controller addresses move on to the next one.

/** The options cannot work as written. */
export class LeaderElectionOptionsError extends Error {
  override readonly name = "LeaderElectionOptionsError";
  constructor(
    message: string,
    readonly field: string,
  ) {
    super(message);
  }
}

/** A stored lease value that is not a LeaderRecord. */
export class LeaderRecordError extends Error {
  override readonly name = "LeaderRecordError";
}

/** A KV request got no answer within its deadline. */
export class LeaseRequestTimeoutError extends Error {
  override readonly name = "LeaseRequestTimeoutError";
  constructor(
    readonly what: string,
    readonly timeoutMs: number,
  ) {
    super(`${what}: no answer from NATS within ${timeoutMs} ms`);
  }
}

/** This candidate does not lead; `leader` is who did when last seen. */
export class NotLeaderError extends Error {
  override readonly name = "NotLeaderError";
  constructor(
    message: string,
    readonly leader: LeaderInfo | undefined,
  ) {
    super(message);
  }
}

// ------------------------------------------------------------ pure parts

/** Encodes a record as small JSON (epoch as a decimal string: it is a uint64). */
export function encodeLeaderRecord(record: LeaderRecord): Uint8Array {
  const { id, epoch, renewedUnixMs, leaseMs, address } = record;
  return new TextEncoder().encode(JSON.stringify({ id, epoch: epoch.toString(), renewedUnixMs, leaseMs, address }));
}

/** Decodes and checks a stored record; throws LeaderRecordError on anything else. */
export function decodeLeaderRecord(bytes: Uint8Array): LeaderRecord {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(bytes));
  } catch (err) {
    throw new LeaderRecordError("lease value is not JSON", { cause: err });
  }
  const r = raw as Record<string, unknown> | null;
  const nonNegative = (v: unknown) => typeof v === "number" && Number.isFinite(v) && v >= 0;
  if (
    typeof r !== "object" || r === null ||
    typeof r.id !== "string" || r.id === "" ||
    typeof r.epoch !== "string" || !/^\d{1,20}$/.test(r.epoch) ||
    !nonNegative(r.renewedUnixMs) || !nonNegative(r.leaseMs) ||
    typeof r.address !== "string"
  ) {
    throw new LeaderRecordError(`lease value has missing or malformed fields: ${JSON.stringify(raw).slice(0, 200)}`);
  }
  return { id: r.id, epoch: BigInt(r.epoch), renewedUnixMs: r.renewedUnixMs as number, leaseMs: r.leaseMs as number, address: r.address };
}

/** What a follower knows about the key: enough to judge whether the lease ran out. */
export interface LeaseView {
  /** Undefined when the key is absent or deleted, or its value is malformed. */
  readonly record?: LeaderRecord;
  /** The key holds a value that is not a LeaderRecord. */
  readonly malformed?: boolean;
  /** Our monotonic clock when we first saw this revision of the key. */
  readonly firstSeenMonoMs: number;
}

/**
 * How long until a follower may take over (≤ 0: now). Both rules must agree:
 *  - wall clock: renewedUnixMs + leaseMs + margin has passed on our clock;
 *  - monotonic: this revision has stood unchanged for leaseMs since we first
 *    saw it, which is after it was written.
 * The leader steps down renewDeadlineMs (< leaseMs) after it sent its last
 * successful write, so the monotonic rule alone keeps two leaders apart
 * whatever the clocks say. The wall-clock rule can only delay a takeover: a
 * follower whose clock runs S behind the leader's takes over S late (beyond
 * the margin); one whose clock runs ahead never takes over early.
 */
export function remainingLeaseMs(view: LeaseView, now: { monoMs: number; unixMs: number }, rules: { clockMarginMs: number; defaultLeaseMs: number }): number {
  if (view.malformed) return view.firstSeenMonoMs + rules.defaultLeaseMs - now.monoMs;
  const r = view.record;
  if (!r || r.leaseMs === 0) return 0;
  const wall = r.renewedUnixMs + r.leaseMs + rules.clockMarginMs - now.unixMs;
  const mono = view.firstSeenMonoMs + r.leaseMs - now.monoMs;
  return Math.max(wall, mono);
}

// ------------------------------------------------------------- behaviour

// JetStream's "wrong last sequence": a compare-and-set lost the race.
const wrongLastSequence = 10071;

function isCasConflict(err: unknown): boolean {
  const api = (err as { api_error?: { err_code?: number } } | undefined)?.api_error;
  return api?.err_code === wrongLastSequence || /wrong last sequence/i.test(String((err as Error | undefined)?.message));
}

function withDeadline<T>(what: string, pending: Promise<T>, timeoutMs: number): Promise<T> {
  return deadline(pending, timeoutMs, (ms) => new LeaseRequestTimeoutError(what, ms));
}

// Two changes that say the same (renewals, re-reads) are one.
const changeKey = (c: LeadershipChange) => `${c.leader}|${c.epoch}|${c.leaderId}|${c.leaderAddress}`;

const maxBigint = (a: bigint, b: bigint) => (a > b ? a : b);

interface Settings {
  bucket: string;
  key: string;
  id: string;
  address: string;
  leaseMs: number;
  renewEveryMs: number;
  renewDeadlineMs: number;
  clockMarginMs: number;
  requestTimeoutMs: number;
  pollMs: number;
  retryMs: number;
  watch: boolean;
  wallClock: () => number;
}

function settingsFrom(o: LeaderElectionOptions): Settings {
  const positive = (field: string, v: number | undefined) => {
    if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw new LeaderElectionOptionsError(`${field} must be a positive number of milliseconds, got ${v}`, field);
  };
  if (!o.id) throw new LeaderElectionOptionsError("id must not be empty", "id");
  if ((o.kv === undefined) === (o.js === undefined)) throw new LeaderElectionOptionsError("give exactly one of kv or js", o.kv ? "js" : "kv");
  positive("leaseMs", o.leaseMs);
  if (!Number.isFinite(o.leaseMs)) throw new LeaderElectionOptionsError("leaseMs is required", "leaseMs");
  positive("renewDeadlineMs", o.renewDeadlineMs);
  positive("requestTimeoutMs", o.requestTimeoutMs);
  positive("pollMs", o.pollMs);
  if (o.clockMarginMs !== undefined && !(Number.isFinite(o.clockMarginMs) && o.clockMarginMs >= 0)) throw new LeaderElectionOptionsError(`clockMarginMs must be ≥ 0, got ${o.clockMarginMs}`, "clockMarginMs");
  const leaseMs = o.leaseMs;
  // Rounded down: renewing a little sooner and stepping down a little earlier only adds safety.
  const renewEveryMs = Math.floor(leaseMs / 3);
  const renewDeadlineMs = o.renewDeadlineMs ?? Math.floor((leaseMs * 2) / 3);
  if (renewDeadlineMs <= renewEveryMs || renewDeadlineMs >= leaseMs) {
    throw new LeaderElectionOptionsError(`renewDeadlineMs must lie between leaseMs / 3 (${renewEveryMs}) and leaseMs (${leaseMs}), got ${renewDeadlineMs}`, "renewDeadlineMs");
  }
  return {
    bucket: o.bucket ?? leaderBucket,
    key: o.key ?? "leader",
    id: o.id,
    address: o.address,
    leaseMs,
    renewEveryMs,
    renewDeadlineMs,
    clockMarginMs: o.clockMarginMs ?? Math.round(leaseMs / 5),
    requestTimeoutMs: o.requestTimeoutMs ?? Math.max(1, Math.floor(leaseMs / 2)),
    pollMs: o.pollMs ?? Math.max(1, Math.floor(leaseMs / 4)),
    retryMs: Math.max(10, Math.floor(leaseMs / 10)),
    watch: o.watch ?? true,
    wallClock: o.wallClock ?? Date.now,
  };
}

/** One term of our leadership; replaced (never revived) when we lead again. */
interface Term {
  readonly epoch: bigint;
  /** KV revision of our last successful write. */
  revision: number;
  /** Monotonic time just before that write was sent: the lease counts from here. */
  sentMonoMs: number;
  /** Past this we no longer lead, whether or not the timer has fired yet. */
  validUntilMonoMs: number;
  /** Set after a failed renewal: try again at this time. */
  retryAtMonoMs?: number;
}

interface Observation extends LeaseView {
  /** 0 when the key has never been written (or the stream was purged). */
  readonly revision: number;
}

/** An unbounded queue for one changes() reader: leadership changes are rare. */
class ChangeQueue {
  private readonly items: LeadershipChange[] = [];
  private waiting: ((c: LeadershipChange | undefined) => void) | undefined;
  private closed = false;

  push(change: LeadershipChange): void {
    if (this.closed) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w(change);
    } else this.items.push(change);
  }

  close(): void {
    this.closed = true;
    this.waiting?.(undefined);
    this.waiting = undefined;
  }

  next(): Promise<LeadershipChange | undefined> {
    const item = this.items.shift();
    if (item || this.closed) return Promise.resolve(item);
    return new Promise((resolve) => (this.waiting = resolve));
  }
}

/**
 * One candidate in the election. Start with LeaderElection.start(); it keeps
 * campaigning (and, while leading, renewing) until stop() or resign().
 *
 * Safety: a leader acts only while isLeader() is true, and carries epoch() on
 * every command; agents refuse lower epochs (EpochGuard). isLeader() turns
 * false renewDeadlineMs after the last successful renewal was sent even if
 * the event loop was too busy to run the step-down timer; a process paused
 * longer than that (SIGSTOP, swap) may still send commands it had prepared,
 * which is what the fencing epoch is for.
 */
export class LeaderElection {
  private term: Term | undefined;
  private observation: Observation | undefined;
  private highestEpoch = 0n;
  /** Our last successful write, kept after stepping down so resign() can release it. */
  private own: { epoch: bigint; revision: number } | undefined;
  private stopping = false;
  private stopped: Promise<void> | undefined;
  private released: Promise<void> | undefined;
  private loopDone: Promise<void> = Promise.resolve();
  private watchDone: Promise<void> = Promise.resolve();
  private watchIter: QueuedIterator<KvEntry> | undefined;
  private validityTimer: NodeJS.Timeout | undefined;
  private readonly loopWakers = new Set<() => void>();
  private readonly stopWakers = new Set<() => void>();
  private readonly readers = new Set<ChangeQueue>();
  private lastChangeKey = changeKey({ leader: false });
  /** Set while our acquiring write is in flight: the watch may show it before the answer comes. */
  private acquiringEpoch: bigint | undefined;
  /** A renewal on the same revision after our lease ran out locally; we do not act until it answers. */
  private lapse: Promise<void> | undefined;
  private failing: string | undefined;
  private readonly skewReported = new Set<string>();
  private detachSignal: (() => void) | undefined;

  private constructor(
    private readonly kv: KV,
    private readonly s: Settings,
    private readonly log: (line: string) => void,
  ) {}

  /**
   * Opens the bucket (when given `js`) and starts campaigning; resolves before
   * the first decision, so watch changes() or poll isLeader() for the outcome.
   * Throws LeaderElectionOptionsError on bad options, the signal's reason if
   * already aborted, or NATS' error if the bucket cannot be opened (bounded by
   * the JetStream client's own request timeout).
   */
  static async start(options: LeaderElectionOptions): Promise<LeaderElection> {
    const s = settingsFrom(options);
    options.signal?.throwIfAborted();
    const kv = options.kv ?? (await openBucket(options.js!, s.bucket));
    const election = new LeaderElection(kv, s, options.log ?? ((line) => process.stderr.write(`${line}\n`)));
    const signal = options.signal;
    if (signal) {
      if (signal.aborted) {
        election.stopping = true;
        election.stopped = Promise.resolve();
        return election;
      }
      const onAbort = () => void election.stop();
      signal.addEventListener("abort", onAbort, { once: true });
      election.detachSignal = () => signal.removeEventListener("abort", onAbort);
    }
    election.loopDone = election.run();
    if (s.watch) election.watchDone = election.followKey();
    return election;
  }

  /** This candidate's id. */
  get id(): string {
    return this.s.id;
  }

  /** True while this candidate holds an unexpired lease it has not lost (false while a lapsed one is being confirmed). */
  isLeader(): boolean {
    this.checkValidity();
    return this.term !== undefined && this.lapse === undefined;
  }

  /**
   * Whether we lead with `epoch`, waiting for the answer when our lease ran
   * out locally (the process was busy or paused) and is being confirmed.
   * For writes that must not be done by a deposed leader.
   */
  async holds(epoch: bigint): Promise<boolean> {
    this.checkValidity();
    if (this.lapse) await this.lapse;
    return this.isLeader() && this.term!.epoch === epoch;
  }

  /** Our fencing epoch while we lead, else undefined. */
  epoch(): bigint | undefined {
    return this.isLeader() ? this.term!.epoch : undefined;
  }

  /** Our epoch, or NotLeaderError naming who led when last seen. Call it before every command. */
  requireLeader(): bigint {
    const epoch = this.epoch();
    if (epoch !== undefined) return epoch;
    const leader = this.leader();
    throw new NotLeaderError(leader ? `not the leader: ${leader.id} at ${leader.address} leads with epoch ${leader.epoch}` : "not the leader, and no leader is known", leader);
  }

  /**
   * Who leads: ourselves while we do, otherwise the holder of the key when we
   * last read it (which may have died since; it is replaced once a successor
   * is seen). Undefined when the key is empty or the lease was released.
   */
  leader(): LeaderInfo | undefined {
    if (this.isLeader()) return { id: this.s.id, address: this.s.address, epoch: this.term!.epoch };
    const r = this.observation?.record;
    if (!r || r.leaseMs === 0) return undefined;
    return { id: r.id, address: r.address, epoch: r.epoch };
  }

  /**
   * The current state first, then every change (becoming leader, stepping
   * down with the reason, another holder seen) until the election stops.
   * Renewals are not changes. Each call is an independent reader.
   */
  changes(): AsyncIterable<LeadershipChange> {
    return { [Symbol.asyncIterator]: () => this.read() };
  }

  /**
   * Stops campaigning and, if we lead, steps down and releases the lease
   * (compare-and-set on our last write), so a follower takes over at once.
   * Never throws: if NATS cannot be reached, the lease runs out on its own.
   */
  async resign(): Promise<void> {
    await this.shutdown("resigned", "resigned: the lease is handed over");
    this.released ??= this.release();
    await this.released;
  }

  /**
   * Stops campaigning and renewing without touching the key: as if the process
   * died, another candidate takes over when the lease runs out.
   */
  stop(): Promise<void> {
    return this.shutdown("stopped", "stopped without resigning: the lease runs out on its own");
  }

  // -------------------------------------------------------------- internals

  private async *read(): AsyncGenerator<LeadershipChange> {
    const queue = new ChangeQueue();
    queue.push(this.snapshot());
    if (this.stopping) queue.close();
    else this.readers.add(queue);
    try {
      for (;;) {
        const change = await queue.next();
        if (!change) return;
        yield change;
      }
    } finally {
      this.readers.delete(queue);
    }
  }

  private shutdown(reason: StepDownReason, detail: string): Promise<void> {
    this.stopped ??= (async () => {
      this.stopping = true;
      this.detachSignal?.();
      this.stepDown(reason, detail);
      this.watchIter?.stop();
      this.wake(this.loopWakers);
      this.wake(this.stopWakers);
      await Promise.allSettled([this.loopDone, this.watchDone]);
      clearTimeout(this.validityTimer);
      for (const reader of this.readers) reader.close();
      this.readers.clear();
    })();
    return this.stopped;
  }

  private async release(): Promise<void> {
    const own = this.own;
    if (!own) return;
    const record: LeaderRecord = { id: this.s.id, epoch: own.epoch, renewedUnixMs: 0, leaseMs: 0, address: this.s.address };
    try {
      await withDeadline("release the lease", this.kv.update(this.s.key, encodeLeaderRecord(record), own.revision), this.s.requestTimeoutMs);
      this.log(`leader election: ${this.s.id} released the lease of epoch ${own.epoch}`);
    } catch (err) {
      // A conflict means the key moved on without us: nothing of ours to release.
      if (!isCasConflict(err)) this.log(`leader election: ${this.s.id} could not release the lease (${String(err)}); it runs out within ${this.s.leaseMs} ms`);
    }
  }

  /** Campaigns while following, renews while leading, until stopped. */
  private async run(): Promise<void> {
    while (!this.stopping) {
      try {
        if (this.term) await this.renew(this.term);
        else await this.campaign();
      } catch (err) {
        // Nothing above should throw; if it does, say so and keep the election alive.
        this.log(`leader election: ${this.s.id}: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
        await this.pause(this.s.retryMs, this.stopWakers);
      }
    }
  }

  private async campaign(): Promise<void> {
    let entry: KvEntry | null;
    try {
      entry = await withDeadline("read the lease", this.kv.get(this.s.key), this.s.requestTimeoutMs);
    } catch (err) {
      this.failed("read the lease", err);
      await this.pause(this.s.retryMs, this.loopWakers);
      return;
    }
    this.recovered();
    if (this.stopping) return;
    this.observe(entry, "read");
    const view = this.observation!;
    const remaining = remainingLeaseMs(view, { monoMs: performance.now(), unixMs: this.s.wallClock() }, { clockMarginMs: this.s.clockMarginMs, defaultLeaseMs: this.s.leaseMs });
    // A lease recorded under our own id belongs to an earlier incarnation of
    // this candidate (ids name a host and a bound address, which no two live
    // processes share): take it back now instead of waiting it out.
    const ours = view.record?.id === this.s.id;
    if (remaining > 0 && !ours) {
      await this.pause(Math.min(remaining, this.s.pollMs), this.loopWakers);
      return;
    }
    await this.acquire(view);
  }

  private async acquire(view: Observation): Promise<void> {
    // The highest epoch we have ever seen counts too: should the key be lost
    // (bucket purged), epochs still never go back for agents that remember them.
    const epoch = maxBigint(view.record?.epoch ?? 0n, this.highestEpoch) + 1n;
    const sentMonoMs = performance.now();
    const bytes = encodeLeaderRecord({ id: this.s.id, epoch, renewedUnixMs: this.s.wallClock(), leaseMs: this.s.leaseMs, address: this.s.address });
    let revision: number;
    try {
      // Absent key: create. Otherwise (expired, released, deleted): update on the revision we judged.
      const write = view.revision === 0 ? this.kv.create(this.s.key, bytes) : this.kv.update(this.s.key, bytes, view.revision);
      this.acquiringEpoch = epoch;
      revision = await withDeadline("acquire the lease", write, this.s.requestTimeoutMs);
    } catch (err) {
      // Lost the race: the next read shows the winner.
      if (!isCasConflict(err)) {
        this.failed("acquire the lease", err);
        await this.pause(this.s.retryMs, this.loopWakers);
      }
      return;
    } finally {
      this.acquiringEpoch = undefined;
    }
    this.recovered();
    this.noteEpoch(epoch);
    this.own = { epoch, revision };
    const validUntilMonoMs = sentMonoMs + this.s.renewDeadlineMs;
    // Stopped meanwhile, or the answer came so late the lease is already unsafe: do not lead on it.
    if (this.stopping || performance.now() >= validUntilMonoMs) return;
    this.term = { epoch, revision, sentMonoMs, validUntilMonoMs };
    this.armValidityTimer();
    this.log(`leader election: ${this.s.id} leads with epoch ${epoch} (${this.s.address})`);
    this.emit();
  }

  /**
   * After a lost compare-and-set: the revision the key holds when it still
   * carries this term (our id and epoch), else undefined. A write of ours
   * that timed out may have landed; the epoch proves nobody took over since,
   * because every acquisition writes a new one.
   */
  private async ownRevision(term: Term): Promise<number | undefined> {
    try {
      const entry = await withDeadline("read the lease", this.kv.get(this.s.key), this.s.requestTimeoutMs);
      if (!entry || entry.operation !== "PUT") return undefined;
      const record = decodeLeaderRecord(entry.value);
      return record.id === this.s.id && record.epoch === term.epoch ? entry.revision : undefined;
    } catch {
      return undefined;
    }
  }

  private async renew(term: Term): Promise<void> {
    const dueMonoMs = term.retryAtMonoMs ?? term.sentMonoMs + this.s.renewEveryMs;
    await this.pause(dueMonoMs - performance.now(), this.loopWakers);
    if (this.lapse) await this.lapse;
    if (this.term !== term || this.stopping) return;
    const leftMs = term.validUntilMonoMs - performance.now();
    if (leftMs <= 0) {
      this.checkValidity();
      return;
    }
    const sentMonoMs = performance.now();
    const bytes = encodeLeaderRecord({ id: this.s.id, epoch: term.epoch, renewedUnixMs: this.s.wallClock(), leaseMs: this.s.leaseMs, address: this.s.address });
    try {
      // Never wait past the lease: an answer after that could not keep us leader anyway.
      const revision = await withDeadline("renew the lease", this.kv.update(this.s.key, bytes, term.revision), Math.min(this.s.requestTimeoutMs, leftMs));
      this.recovered();
      this.own = { epoch: term.epoch, revision };
      // Stepped down while the write was in flight: that term is over for good.
      if (this.term !== term) return;
      term.revision = revision;
      term.sentMonoMs = sentMonoMs;
      term.validUntilMonoMs = sentMonoMs + this.s.renewDeadlineMs;
      term.retryAtMonoMs = undefined;
      this.armValidityTimer();
    } catch (err) {
      if (isCasConflict(err)) {
        const ours = await this.ownRevision(term);
        if (this.term !== term) return;
        if (ours !== undefined) {
          // An earlier renewal that timed out had landed: go on from its revision.
          term.revision = ours;
          term.retryAtMonoMs = performance.now();
          return;
        }
        this.stepDown("superseded", `renewal lost the compare-and-set on revision ${term.revision}: another candidate took the lease`);
        return;
      }
      this.failed("renew the lease", err);
      term.retryAtMonoMs = performance.now() + this.s.retryMs;
    }
  }

  /** Follows the key with a KV watch (restarted when it ends) to hear of changes between polls. */
  private async followKey(): Promise<void> {
    let reported = false;
    while (!this.stopping) {
      try {
        const pending = this.kv.watch({ key: this.s.key });
        const iter = await withDeadline("watch the lease", pending, this.s.requestTimeoutMs).catch((err: unknown) => {
          pending.then((late) => late.stop(), () => {});
          throw err;
        });
        this.watchIter = iter;
        if (this.stopping) iter.stop();
        reported = false;
        for await (const entry of iter) this.observe(entry, "watch");
      } catch (err) {
        // Polling carries on without the watch; say so once per outage.
        if (!reported && !this.stopping) this.log(`leader election: ${this.s.id}: watch of the lease failed (${String(err)}); polling every ${this.s.pollMs} ms until it is back`);
        reported = true;
      } finally {
        this.watchIter?.stop();
        this.watchIter = undefined;
      }
      if (!this.stopping) await this.pause(this.s.pollMs, this.stopWakers);
    }
  }

  /**
   * Records what the key holds. A read replaces what we saw (even with an older
   * revision: the stream may have lost writes); a watch entry only if newer.
   * The first-seen time of a revision is never moved earlier.
   */
  private observe(entry: KvEntry | null, source: "read" | "watch"): void {
    const revision = entry?.revision ?? 0;
    const previous = this.observation;
    if (previous && (revision === previous.revision || (source === "watch" && revision < previous.revision))) return;
    let record: LeaderRecord | undefined;
    let malformed = false;
    if (entry && entry.operation === "PUT") {
      try {
        record = decodeLeaderRecord(entry.value);
      } catch (err) {
        malformed = true;
        this.log(`leader election: ${this.s.id}: ${String(err)}; treating it as a lease of ${this.s.leaseMs} ms`);
      }
    }
    this.observation = { revision, record, malformed, firstSeenMonoMs: performance.now() };
    if (record) {
      this.noteEpoch(record.epoch);
      if (source === "watch" && entry) this.reportSkew(record, entry.created.getTime());
    }

    const term = this.term;
    if (term) {
      const ours = record !== undefined && record.id === this.s.id && record.epoch === term.epoch;
      if (revision > term.revision && !ours) {
        this.stepDown("superseded", record ? `the lease now holds epoch ${record.epoch} of ${record.id}` : "the lease was deleted");
      }
      // A renewal of ours whose answer timed out landed after all: renew on from it.
      if (revision > term.revision && ours && source === "watch") term.revision = revision;
      return;
    }
    // Our own acquiring write, seen before its answer: "we lead" follows, not "a leads".
    const ownInFlight = record !== undefined && record.id === this.s.id && record.epoch === this.acquiringEpoch;
    if (!ownInFlight) this.emit();
    // A released or deleted lease is free now: do not wait for the next poll.
    if (source === "watch" && (!record || record.leaseMs === 0) && !malformed) this.wake(this.loopWakers);
  }

  /** Says once per holder when its clock and the NATS server's differ by more than the margin. */
  private reportSkew(record: LeaderRecord, serverUnixMs: number): void {
    if (record.leaseMs === 0 || this.skewReported.has(record.id)) return;
    const aheadMs = record.renewedUnixMs - serverUnixMs;
    if (Math.abs(aheadMs) <= this.s.clockMarginMs) return;
    this.skewReported.add(record.id);
    this.log(`leader election: ${record.id}'s clock is ~${Math.round(Math.abs(aheadMs))} ms ${aheadMs > 0 ? "ahead of" : "behind"} the NATS server's (margin ${this.s.clockMarginMs} ms); takeovers may come that much later, never earlier`);
  }

  /**
   * Our lease ran out by our own clock. That may be a stall of this process
   * (a busy event loop, SIGSTOP) rather than a lost lease: stop acting at
   * once, then renew on the revision we last wrote. If nobody took over,
   * that compare-and-set succeeds and the term goes on from its send time,
   * exactly as after a normal renewal; if someone did, it fails and we step
   * down. Without an answer in time we step down as well.
   */
  private checkValidity(): void {
    const term = this.term;
    if (!term || this.lapse || performance.now() < term.validUntilMonoMs) return;
    this.lapse = this.reconfirm(term).finally(() => {
      this.lapse = undefined;
    });
  }

  private async reconfirm(term: Term): Promise<void> {
    const sentMonoMs = performance.now();
    const bytes = encodeLeaderRecord({ id: this.s.id, epoch: term.epoch, renewedUnixMs: this.s.wallClock(), leaseMs: this.s.leaseMs, address: this.s.address });
    const deadlineMs = Math.min(this.s.requestTimeoutMs, this.s.renewDeadlineMs);
    const update = async (): Promise<number> => {
      try {
        return await withDeadline("confirm the lease", this.kv.update(this.s.key, bytes, term.revision), deadlineMs);
      } catch (err) {
        // A renewal of ours that timed out may have landed: the key still holds our epoch.
        const ours = isCasConflict(err) ? await this.ownRevision(term) : undefined;
        if (ours === undefined) throw err;
        term.revision = ours;
        return await withDeadline("confirm the lease", this.kv.update(this.s.key, bytes, ours), deadlineMs);
      }
    };
    try {
      const revision = await update();
      if (this.term !== term || this.stopping) return;
      if (performance.now() - sentMonoMs >= this.s.renewDeadlineMs) {
        this.stepDown("expired", `no renewal succeeded within ${this.s.renewDeadlineMs} ms, and confirming the lease took too long; stepping down`);
        return;
      }
      this.recovered();
      this.own = { epoch: term.epoch, revision };
      term.revision = revision;
      term.sentMonoMs = sentMonoMs;
      term.validUntilMonoMs = sentMonoMs + this.s.renewDeadlineMs;
      term.retryAtMonoMs = undefined;
      this.armValidityTimer();
      this.log(`leader election: ${this.s.id}: no renewal within ${this.s.renewDeadlineMs} ms (this process was busy or paused), but nobody took over: leading on with epoch ${term.epoch}`);
    } catch (err) {
      if (this.term !== term) return;
      if (isCasConflict(err)) this.stepDown("superseded", `the lease ran out and another candidate took it (compare-and-set on revision ${term.revision} lost)`);
      else this.stepDown("expired", `no renewal succeeded within ${this.s.renewDeadlineMs} ms and the lease could not be confirmed (${String(err)}); stepping down before anyone may take over`);
    }
  }

  private armValidityTimer(): void {
    clearTimeout(this.validityTimer);
    const term = this.term;
    if (!term) return;
    this.validityTimer = setTimeout(() => this.checkValidity(), Math.max(0, term.validUntilMonoMs - performance.now()) + 1);
  }

  private stepDown(reason: StepDownReason, detail: string): void {
    const term = this.term;
    if (!term) return;
    this.term = undefined;
    clearTimeout(this.validityTimer);
    this.log(`leader election: ${this.s.id} stepped down from epoch ${term.epoch} (${reason}): ${detail}`);
    this.emit({ reason, detail });
    this.wake(this.loopWakers);
  }

  private snapshot(stepDown?: LeadershipChange["stepDown"]): LeadershipChange {
    if (this.term) return { leader: true, epoch: this.term.epoch, leaderId: this.s.id, leaderAddress: this.s.address };
    const r = this.observation?.record;
    const other = r && r.leaseMs > 0 ? { epoch: r.epoch, leaderId: r.id, leaderAddress: r.address } : {};
    return { leader: false, ...other, ...(stepDown ? { stepDown } : {}) };
  }

  private emit(stepDown?: LeadershipChange["stepDown"]): void {
    const change = this.snapshot(stepDown);
    const key = changeKey(change);
    if (!stepDown && key === this.lastChangeKey) return;
    this.lastChangeKey = key;
    for (const reader of this.readers) reader.push(change);
  }

  private noteEpoch(epoch: bigint): void {
    this.highestEpoch = maxBigint(this.highestEpoch, epoch);
  }

  private failed(what: string, err: unknown): void {
    if (this.failing === what) return;
    this.failing = what;
    this.log(`leader election: ${this.s.id} could not ${what}: ${String(err)}; retrying`);
  }

  private recovered(): void {
    if (this.failing === undefined) return;
    this.log(`leader election: ${this.s.id} reaches the lease again`);
    this.failing = undefined;
  }

  /** Sleeps up to `ms`; anything in `wakers` (or stopping) ends it early. */
  private pause(ms: number, wakers: Set<() => void>): Promise<void> {
    if (this.stopping || ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        clearTimeout(timer);
        wakers.delete(done);
        resolve();
      };
      wakers.add(done);
      timer = setTimeout(done, ms);
    });
  }

  private wake(wakers: Set<() => void>): void {
    for (const done of [...wakers]) done();
  }
}
