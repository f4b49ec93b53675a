// The agent's core: the watches this host has armed, the commands that arm
// and disarm them through the helper, and the hit path from the helper to
// JetStream with exact per-watch accounting.
import { clone, create, toBinary } from "@bufbuild/protobuf";
import {
  ArmResultSchema,
  ArmedTargetSchema,
  CountReportSchema,
  DisarmResultSchema,
  HitCountsSchema,
  timerAt,
  HitBatchSchema,
  StackFrameSchema,
  ResolveResultSchema,
  TargetReportSchema,
  TargetState,
  WatchMode,
  ValueRedaction,
  eventSubject,
  hex,
  type Arm,
  type ArmResult,
  type ArmedTarget,
  type Disarm,
  type DisarmResult,
  type Discover,
  type DiscoverResult,
  type TimerAt,
  type Follow,
  type ProcessAppeared,
  type HitCounts,
  type HitEvent,
  type Resolve,
  type ResolveResult,
  type SlotAssignment,
  type TargetReport,
} from "../proto/index.js";
import { armFailure, checkBackend, countIntervalOf, helperBackend, helperChunks, helperWatchOptions, protoBackend } from "./arm-request.js";
import { AgentCommandError, toAgentError } from "./errors.js";
import { valuePolicyOf, type ValuePolicy } from "./host-policy.js";
import type { LoadedPolicy } from "./policy-file.js";
import type { ExitKind, GroupCounts, HelperBackend, HelperEvent, HelperHit, HelperMode, HelperProcess, ThreadHits } from "./helper-process.js";
import type { HitPublisher } from "./hit-publisher.js";
import { StoredHitResume } from "./stored-hit-resume.js";
import type { StoredHitsReader } from "./stored-hits.js";
import { LeaseGrace } from "./lease-grace.js";
import { mappedAt } from "./memory-map.js";
import { PolicyGate } from "./policy-gate.js";
import { ReservedRegisters } from "./reserved-registers.js";
import { TargetDiscovery } from "./target-discovery.js";

// The helper sends a counting group's last COUNTS before saying it ended; an
// ended counting watch waits this long for it to come through before its
// counts are taken as final without it.
const lastCountsWaitMs = 5_000;


/** One job's watch on one process of this host. */
interface Watch {
  readonly jobId: string;
  readonly pid: number;
  readonly group: bigint;
  readonly slots: SlotAssignment[];
  readonly watchIndexByDr: Map<number, number>;
  readonly counts: HitCounts;
  /** Counters of earlier watches of the same job and pid (before a lapse), which this one adds to. */
  readonly base: HitCounts;
  /** The earlier watch of the same job and pid, whose hits may still be settling (they count here too). */
  previous: Watch | undefined;
  /** The watch that took over from this one after a re-arm. */
  next: Watch | undefined;
  /** Hit records received from the helper. */
  received: bigint;
  /** Hit records the helper emitted in all, known once the group is disarmed. */
  expected: bigint | undefined;
  /** Hits received and not yet settled (buffered or in flight), and who waits for them. */
  pending: number;
  /** Hits waiting to go out in the next HitBatch, and about how many bytes they encode to. */
  batch: HitEvent[];
  batchBytes: number;
  flushTimer: NodeJS.Timeout | undefined;
  settledWaiters: Array<() => void>;
  deadlineTimer: TimerAt | undefined;
  /** Set once the helper no longer has the group armed. */
  ended: boolean;
  lastReported: string;
  /** What the target report says while armed (rate limited, forked, ...). */
  status: string;
  /** With no session for this long the agent disarms it itself (0 = at the lease). */
  readonly lostAfterMs: number;
  /** What the job's owner lets leave the host of the values (the host policy may be stricter). */
  readonly jobValues: ValuePolicy;
  threadsTotal: number;
  threadsArmed: number;
  readonly backend: HelperBackend;
  /** Hits' values are read at the trap: ptrace, or perf where the kernel reads them. */
  readonly valuesExact: boolean;
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
}

const protoModes: Record<HelperMode, WatchMode> = { w: WatchMode.WRITE, rw: WatchMode.READ_WRITE, x: WatchMode.EXECUTE };

function key(jobId: string, pid: number): string {
  return `${jobId}/${pid}`;
}

/** Why a watched process is gone, in words: perf watches a process without tracing it, so its exit status may be unknown. */
function exitReason(how: ExitKind, code: number): string {
  if (how === "killed") return `process killed by signal ${code}`;
  if (how === "gone") return "process exited";
  return `process exited with code ${code}`;
}

/** What a progress report says; unchanged means nothing to send. */
function progressKey(w: Watch): string {
  const c = w.counts;
  return `${c.trapped}/${c.delivered}/${c.suppressed}/${c.dropped}/${c.filtered} ${w.threadsArmed}/${w.threadsTotal}`;
}

/** A counting watch's totals: its earlier watches' plus the helper's (delivered = hits counted; lost samples are dropped). */
function countingTotals(base: HitCounts, counts: GroupCounts): HitCounts {
  return create(HitCountsSchema, {
    trapped: base.trapped + counts.trapped,
    delivered: base.delivered + counts.delivered,
    suppressed: base.suppressed + counts.suppressed,
    filtered: base.filtered + counts.filtered,
    dropped: base.dropped + counts.lost,
  });
}

/**
 * About this many encoded bytes make a HitBatch go out: well under the 1 MiB
 * a NATS server takes in one message by default, whatever the stacks carry.
 */
const maxBatchBytes = 256 * 1024;

/** An upper estimate of a HitEvent's encoded size (fixed fields, ids, each frame's strings). */
function encodedSizeGuess(e: HitEvent): number {
  let n = 96 + e.jobId.length + e.hostId.length;
  for (const f of e.stack) n += 32 + f.function.length * 3 + f.module.length * 3;
  return n;
}

/** The watches of one host. */
export class AgentCore {
  private readonly byGroup = new Map<bigint, Watch>();
  private readonly byKey = new Map<string, Watch>();
  /** Debug registers the kernel keeps reserved per process for our earlier watches. */
  private readonly reserved = new ReservedRegisters();
  private nextGroup = 1n;
  private progressTimer: NodeJS.Timeout | undefined;
  /** Receives every target report; the session forwards them (or keeps them until it reconnects). */
  onReport: (report: TargetReport) => void = () => {};
  /** Receives processes that started matching a followed job. */
  onAppeared: (appeared: ProcessAppeared) => void = () => {};
  /** The agent disarmed watches on its own (no session for the lease or a job's lost-after). */
  onSuspended: () => void = () => {};
  /**
   * The last hit sequence per job: HitEvent.sequence counts per job and host,
   * across all of the job's processes here, since readers drop a (host,
   * sequence) they have seen as a republished duplicate. Kept while the job
   * has a watch or a follow here, so a lapse or a late joiner goes on counting.
   */
  private readonly sequences = new Map<string, bigint>();
  /** (job, pid) pairs with an arm on its way: a second one (another session's, a retry) is refused. */
  private readonly arming = new Set<string>();

  /** The current helper; replaced after a helper dies. */
  private helper: HelperProcess | undefined;
  /** Which processes may be watched and what leaves the host of their values. */
  private readonly gate = new PolicyGate(() => this.helper?.pid);
  private readonly discovery: TargetDiscovery;
  private readonly resume: StoredHitResume;
  private readonly grace: LeaseGrace<Watch>;

  constructor(
    private readonly publisher: HitPublisher,
    readStoredHits: StoredHitsReader,
    private readonly hostId: string,
    private readonly log: (line: string) => void,
    private readonly progressIntervalMs = 1_000,
    /** A HitBatch goes out when it holds this many hits, or about maxBatchBytes (stacks make hits large)... */
    private readonly maxBatchHits = 2048,
    /** ...or this long after its first hit. */
    private readonly batchDelayMs = 2,
  ) {
    this.discovery = new TargetDiscovery({ hostId, gate: this.gate, helperPid: () => this.helper?.pid, onAppeared: (appeared) => this.onAppeared(appeared), log });
    this.resume = new StoredHitResume(readStoredHits, hostId, (jobId, lastSequence) => {
      if (lastSequence > (this.sequences.get(jobId) ?? 0n)) this.sequences.set(jobId, lastSequence);
    });
    this.grace = new LeaseGrace({ hostId, log, suspend: (watch, reason) => this.suspend(watch, reason), onSuspended: () => this.onSuspended() });
  }

  /** Consumes one helper's events until it exits; reports counters every second meanwhile. */
  async run(helper: HelperProcess): Promise<void> {
    this.helper = helper;
    this.progressTimer = setInterval(() => this.reportProgress(), this.progressIntervalMs);
    try {
      for await (const event of helper.events()) {
        // One event that cannot be handled must not stop the agent from draining the helper.
        await this.onHelperEvent(event).catch((err: unknown) => this.log(`agent ${this.hostId}: handling a helper ${event.kind} event failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`));
      }
    } finally {
      clearInterval(this.progressTimer);
      this.helper = undefined;
    }
  }

  private currentHelper(): HelperProcess {
    if (!this.helper) throw new AgentCommandError(`the helper on ${this.hostId} is restarting; try again in a moment`, "EAGAIN");
    return this.helper;
  }

  /**
   * The helper died: every watch it held is gone (a helper that could clean
   * up cleared the registers and detached first; perf breakpoints go with
   * it however it died). Each is reported failed with the reason for its
   * backend, so the job's status tells the truth.
   */
  helperLost(reason: (backend: HelperBackend) => string): void {
    for (const watch of this.byKey.values()) {
      if (watch.ended) continue;
      watch.ended = true;
      watch.deadlineTimer?.cancel();
      watch.expected = watch.received;
      // A counting watch keeps the totals of its last COUNTS: they add up on their own.
      if (!watch.countOnly) watch.counts.trapped = watch.base.trapped + watch.received;
      watch.finalTrapped = watch.countsTrapped;
      this.flush(watch);
      this.wakeIfSettled(watch);
      void this.settled(watch).then(() => this.report(watch, TargetState.FAILED, reason(watch.backend)));
    }
    this.byGroup.clear();
  }

  /** What is armed now, for the controller after a (re)connect. */
  armed(): ArmedTarget[] {
    return [...this.byKey.values()].filter((w) => !w.ended).map((w) => create(ArmedTargetSchema, { jobId: w.jobId, pid: w.pid, slots: w.slots, counts: w.counts }));
  }

  /** This host's processes matching a selector's pid, exe, comm and cgroup (never pid 1, the agent or its helper). */
  discover(request: Discover): Promise<DiscoverResult> {
    return this.discovery.discover(request);
  }

  /**
   * Watches for processes that start matching a job's selector and reports
   * each once; the ones matching now are already the job's targets.
   */
  follow(request: Follow): void {
    // Unfollowed first: with no watch of the job here, its hit sequence is taken up from the stream again at its next arm.
    this.unfollow(request.jobId);
    this.discovery.follow(request);
  }

  unfollow(jobId: string): void {
    this.discovery.unfollow(jobId);
    this.forgetSequenceIfDone(jobId);
  }

  /** Drops a job's hit sequence and stored hits once nothing here can produce its hits any more. */
  private forgetSequenceIfDone(jobId: string): void {
    if (this.discovery.isFollowed(jobId)) return;
    for (const watch of this.byKey.values()) if (watch.jobId === jobId) return;
    this.sequences.delete(jobId);
    this.resume.forget(jobId);
  }

  /** The policy in effect, in one line. */
  policySummary(): string {
    return this.gate.summary();
  }

  /**
   * Puts a (re)loaded policy in effect: hits from now on are redacted by it,
   * and every armed target it forbids is disarmed (never killed) and
   * reported failed with the rule.
   */
  async setPolicy(loaded: LoadedPolicy): Promise<void> {
    this.gate.set(loaded);
    await Promise.all([...this.byKey.values()].filter((w) => !w.ended).map((w) => this.enforcePolicy(w)));
  }

  private async enforcePolicy(watch: Watch): Promise<void> {
    const no = this.gate.refusalOfPid(watch.pid);
    if (!no || watch.ended) return;
    this.log(`agent ${this.hostId}: job ${watch.jobId} on pid ${watch.pid}: disarming, ${no.reason}`);
    try {
      await this.stop(watch);
    } catch (err) {
      this.log(`agent ${this.hostId}: disarming job ${watch.jobId} on pid ${watch.pid} failed: ${String(err)}`);
      return;
    }
    this.report(watch, TargetState.FAILED, no.reason);
  }

  async resolve(request: Resolve): Promise<ResolveResult> {
    try {
      this.gate.check(request.pid);
      if (request.symbol === "") return create(ResolveResultSchema, { requestId: request.requestId, ...(await mappedAt(request.pid, request.address, request.length)) });
      const symbol = await this.currentHelper().resolve(request.pid, request.symbol, request.offset);
      return create(ResolveResultSchema, { requestId: request.requestId, address: symbol.address, size: symbol.size, module: symbol.module });
    } catch (err) {
      return create(ResolveResultSchema, { requestId: request.requestId, error: toAgentError(err) });
    }
  }

  async arm(request: Arm): Promise<ArmResult> {
    const reply = { requestId: request.requestId, jobId: request.jobId, pid: request.pid };
    const k = key(request.jobId, request.pid);
    // Two arms of one target in flight would both reach the helper: one watch
    // would be forgotten here and keep its registers (and its tracer) for good.
    if (this.arming.has(k)) return create(ArmResultSchema, { ...reply, error: toAgentError(new AgentCommandError(`job ${request.jobId} is being armed on pid ${request.pid} already`, "EEXIST")) });
    this.arming.add(k);
    try {
      return await this.armOnce(request, reply);
    } finally {
      this.arming.delete(k);
    }
  }

  private async armOnce(request: Arm, reply: { requestId: bigint; jobId: string; pid: number }): Promise<ArmResult> {
    try {
      this.gate.check(request.pid);
      const policyAtCheck = this.gate.policy;
      const existing = this.byKey.get(key(request.jobId, request.pid));
      if (existing && !existing.ended) throw new AgentCommandError(`job ${request.jobId} is already armed on pid ${request.pid}`, "EEXIST");
      if (request.deadlineUnixMs > 0n && Number(request.deadlineUnixMs) <= Date.now()) throw new AgentCommandError(`job ${request.jobId}: its deadline has passed`, "ETIME");
      const backend = helperBackend(request.backend);
      checkBackend(this.currentHelper().capabilities, backend, this.hostId);
      // Armed again after a lapse: counters and hit sequence go on from the earlier watch.
      // The same counters object: hits of the earlier watch still being published land in it.
      // Otherwise from what the controller and the event stream know (this agent may have started again).
      const carried = existing ? existing.counts : await this.resume.counts(request);
      if (this.byKey.get(key(request.jobId, request.pid)) !== existing) throw new AgentCommandError(`job ${request.jobId} was armed on pid ${request.pid} meanwhile`, "EEXIST");
      const chunks = helperChunks(request.slots);
      const group = this.nextGroup++;
      const watch: Watch = {
        jobId: request.jobId,
        pid: request.pid,
        group,
        slots: request.slots,
        watchIndexByDr: new Map(request.slots.map((s) => [s.dr, s.chunk?.watchIndex ?? 0])),
        counts: carried,
        base: clone(HitCountsSchema, carried),
        previous: existing,
        next: undefined,
        received: 0n,
        expected: undefined,
        pending: 0,
        batch: [],
        batchBytes: 0,
        flushTimer: undefined,
        settledWaiters: [],
        deadlineTimer: undefined,
        ended: false,
        lastReported: "",
        status: "armed",
        lostAfterMs: Number(request.lostAfterMs),
        jobValues: valuePolicyOf(request.redaction),
        threadsTotal: 0,
        threadsArmed: 0,
        backend,
        valuesExact: backend === "ptrace" || this.currentHelper().capabilities.perfValues === "exact",
        countOnly: request.countOnly,
        countIntervalMs: countIntervalOf(request),
        lostCounted: 0n,
        countsTrapped: 0n,
        finalTrapped: undefined,
        lastCountsTimer: undefined,
      };
      // Registered before arming: hits can arrive before the helper's reply.
      this.byGroup.set(group, watch);
      let result;
      try {
        result = await this.currentHelper().arm(request.pid, group, chunks, helperWatchOptions(request, backend));
      } catch (err) {
        this.byGroup.delete(group);
        throw err;
      }
      this.byKey.set(key(request.jobId, request.pid), watch);
      if (existing) existing.next = watch;
      // A reload while the helper armed it has not seen this watch: the new policy decides now.
      if (this.gate.policy !== policyAtCheck) {
        try {
          this.gate.check(request.pid);
        } catch (err) {
          await this.stop(watch);
          this.report(watch, TargetState.FAILED, (err as Error).message);
          throw err;
        }
      }
      this.reserved.note(request.pid, result.reservedMask);
      watch.threadsTotal = result.threadsTotal;
      watch.threadsArmed = result.threadsArmed;
      if (request.deadlineUnixMs > 0n) watch.deadlineTimer = timerAt(Number(request.deadlineUnixMs), () => void this.endAtDeadline(watch));
      this.log(`agent ${this.hostId}: job ${request.jobId} armed on pid ${request.pid} (${backend}${watch.countOnly ? ", counting" : ""}): ${request.slots.map((s) => `DR${s.dr}=${hex(s.chunk?.address ?? 0n)}/${s.chunk?.length}`).join(" ")}, ${result.threadsArmed}/${result.threadsTotal} threads`);
      return create(ArmResultSchema, {
        ...reply,
        threadsTotal: result.threadsTotal,
        threadsArmed: result.threadsArmed,
        slots: request.slots,
        reservedMask: this.reserved.of(request.pid),
        backend: protoBackend(backend),
        valuesExact: watch.valuesExact,
      });
    } catch (err) {
      return create(ArmResultSchema, { ...reply, error: armFailure(err, request.pid) });
    }
  }

  async disarm(request: Disarm): Promise<DisarmResult> {
    const reply = { requestId: request.requestId, jobId: request.jobId, pid: request.pid };
    const watch = this.byKey.get(key(request.jobId, request.pid));
    if (!watch) return create(DisarmResultSchema, { ...reply, error: toAgentError(new AgentCommandError(`job ${request.jobId} has no watch on pid ${request.pid} here`, "ENOENT")) });
    try {
      await this.stop(watch);
      return create(DisarmResultSchema, { ...reply, counts: watch.counts, reservedMask: this.reserved.of(watch.pid) });
    } catch (err) {
      return create(DisarmResultSchema, { ...reply, error: toAgentError(err) });
    }
  }

  /**
   * Disarms every watch while keeping its counters: no session for
   * `silentForMs` (the lease). A watch whose job allows a longer silence
   * (lost-after) stays armed, publishing its hits, until that time has
   * passed too or a session is back (sessionRestored). Not a final state:
   * the counts are reported once the watch's hits are settled, and when the
   * controller arms the same job and pid again the counters and hit
   * sequence continue from here. Resolves once the registers are cleared,
   * without waiting for hits still on their way to NATS (which may be out
   * of reach too): no watch stays armed behind another one's hits.
   */
  suspendAll(reason: string, silentForMs = 0): Promise<void> {
    return this.grace.suspendAll([...this.byKey.values()], reason, silentForMs);
  }

  /** A session is live again: watches still within their job's lost-after stay armed. */
  sessionRestored(): void {
    this.grace.cancel();
  }

  /** Disarms one watch now; reports it (not final) once its hits are settled. */
  private async suspend(watch: Watch, reason: string): Promise<void> {
    if (watch.ended) return;
    try {
      await this.disarmInHelper(watch);
    } catch (err) {
      this.log(`agent ${this.hostId}: disarming job ${watch.jobId} on pid ${watch.pid} failed: ${String(err)}`);
      return;
    }
    watch.status = reason;
    // Armed again meanwhile: the new watch reports the shared counters itself.
    void this.settled(watch).then(() => watch.next || this.report(watch, TargetState.UNSPECIFIED, reason));
  }

  /** Disarms every watch (agent shutdown), reporting each as cancelled once its hits are settled. */
  async disarmAll(reason: string): Promise<void> {
    this.sessionRestored();
    for (const jobId of this.discovery.followed()) this.unfollow(jobId);
    const { disarmed } = await this.clearAll();
    for (const watch of disarmed) {
      await this.settled(watch);
      this.report(watch, TargetState.CANCELLED, reason);
    }
  }

  /**
   * The kill switch: clears every register this agent holds, whatever job
   * it is for, and resolves with how many watches that was once the
   * registers are clear (hits still on their way settle after; each watch
   * is then reported cancelled with `reason`). Fails naming any watch the
   * helper could not disarm.
   */
  async disarmEverything(reason: string): Promise<number> {
    const { disarmed, failed } = await this.clearAll();
    for (const watch of disarmed) void this.settled(watch).then(() => this.report(watch, TargetState.CANCELLED, reason));
    if (failed.length > 0) throw new AgentCommandError(`could not disarm ${failed.join("; ")}`, "EIO");
    return disarmed.length;
  }

  /** Every register first, then (the caller's) wait for hits: none stays armed while another's hits settle. */
  private async clearAll(): Promise<{ disarmed: Watch[]; failed: string[] }> {
    const disarmed: Watch[] = [];
    const failed: string[] = [];
    for (const watch of [...this.byKey.values()]) {
      if (watch.ended) continue;
      try {
        await this.disarmInHelper(watch);
        disarmed.push(watch);
      } catch (err) {
        failed.push(`job ${watch.jobId} on pid ${watch.pid}: ${err instanceof Error ? err.message : String(err)}`);
        this.log(`agent ${this.hostId}: disarming job ${watch.jobId} on pid ${watch.pid} failed: ${String(err)}`);
      }
    }
    return { disarmed, failed };
  }

  /** Disarms one watch in the helper and waits until its hits are settled; counts are then final. */
  private async stop(watch: Watch): Promise<void> {
    await this.disarmInHelper(watch);
    await this.settled(watch);
  }

  /** Clears the watch's registers in the helper; its hits may still be on their way. */
  private async disarmInHelper(watch: Watch): Promise<void> {
    watch.deadlineTimer?.cancel();
    if (watch.ended) return;
    try {
      const result = await this.currentHelper().disarm(watch.pid, watch.group);
      this.reserved.note(watch.pid, result.reservedMask);
      this.endWatch(watch, result);
    } catch (err) {
      // The group may have ended on its own (budget, exit) while the disarm was on its way.
      if (!watch.ended) throw err;
    }
  }

  /**
   * The helper no longer traps for this watch. Hit records it sent before
   * saying so may still be queued here: they are published like any other,
   * and the watch is forgotten once all of them have come through.
   */
  private endWatch(watch: Watch, counts: GroupCounts): void {
    watch.ended = true;
    watch.deadlineTimer?.cancel();
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

  /** A counting watch's counters from the helper's totals (delivered = hits counted; lost samples are dropped). */
  private takeCountingTotals(watch: Watch, counts: GroupCounts): void {
    Object.assign(watch.counts, countingTotals(watch.base, counts));
    watch.lostCounted = counts.lost;
  }

  private isSettled(watch: Watch): boolean {
    // An earlier watch's hits still being published are this one's too: its counts are final only after them.
    if (watch.pending !== 0 || watch.expected === undefined || watch.received < watch.expected) return false;
    if (watch.finalTrapped !== undefined && watch.countsTrapped < watch.finalTrapped) return false;
    for (let p = watch.previous; p; p = p.previous) if (p.pending !== 0) return false;
    return true;
  }

  private wakeIfSettled(watch: Watch): void {
    if (!this.isSettled(watch)) return;
    clearTimeout(watch.lastCountsTimer);
    this.byGroup.delete(watch.group);
    for (const resolve of watch.settledWaiters.splice(0)) resolve();
  }

  /** Resolves once every hit of an ended watch is received and published (or dropped). */
  private settled(watch: Watch): Promise<void> {
    if (this.isSettled(watch)) return Promise.resolve();
    return new Promise((resolve) => watch.settledWaiters.push(resolve));
  }


  private async endAtDeadline(watch: Watch): Promise<void> {
    if (watch.ended) return;
    try {
      await this.stop(watch);
      this.report(watch, TargetState.COMPLETED, "duration elapsed");
    } catch (err) {
      this.log(`agent ${this.hostId}: disarming job ${watch.jobId} at its deadline failed: ${String(err)}`);
    }
  }

  private report(watch: Watch, state: TargetState, reason: string): void {
    watch.lastReported = progressKey(watch);
    this.onReport(
      create(TargetReportSchema, {
        jobId: watch.jobId,
        pid: watch.pid,
        state,
        reason,
        counts: watch.counts,
        threadsTotal: watch.threadsTotal,
        threadsArmed: watch.threadsArmed,
        reservedMask: this.reserved.of(watch.pid),
      }),
    );
  }

  private reportProgress(): void {
    for (const watch of this.byKey.values()) {
      if (watch.ended || progressKey(watch) === watch.lastReported) continue;
      this.report(watch, TargetState.ARMED, watch.status);
    }
    this.forgetGoneProcesses();
  }

  /**
   * Processes we are no longer attached to still hold kernel reservations
   * until they exit, and the helper no longer sees them: notice their exit
   * here, so the ledger forgets them and ended watches are dropped.
   */
  private forgetGoneProcesses(): void {
    // A watch still settling its hits (NATS slow or away) is reported by the process's own exit event.
    const busy = (pid: number) => [...this.byKey.values()].some((w) => w.pid === pid && (!w.ended || !this.isSettled(w)));
    for (const { pid, mask } of this.reserved.exited(busy)) {
      for (const [k, w] of this.byKey) {
        if (w.pid !== pid) continue;
        this.byKey.delete(k);
        this.forgetSequenceIfDone(w.jobId);
      }
      this.onReport(create(TargetReportSchema, { pid, state: TargetState.EXITED, reason: "process exited", reservedMask: mask }));
    }
  }

  private watchesOf(pid: number): Watch[] {
    return [...this.byKey.values()].filter((w) => w.pid === pid && !w.ended);
  }

  private async onHelperEvent(event: HelperEvent): Promise<void> {
    switch (event.kind) {
      case "hits":
        for (const hit of event.hits) this.onHit(hit);
        return;
      case "group-done": {
        const watch = this.byGroup.get(event.group);
        if (!watch) return;
        this.endWatch(watch, event.counts);
        await this.settled(watch);
        if (event.reason === "budget") this.report(watch, TargetState.COMPLETED, `max hits reached (${event.counts.delivered})`);
        // Exit and exec are reported with the process's own event, which follows.
        return;
      }
      case "target-exited":
      case "target-exec": {
        const why = event.kind === "target-exec" ? "process exec'd: the watched address space is gone" : exitReason(event.how, event.code);
        for (const watch of this.byKey.values()) {
          if (watch.pid !== event.pid || watch.lastReported === "final") continue;
          await this.settled(watch);
          this.report(watch, TargetState.EXITED, why);
          watch.lastReported = "final";
          this.byKey.delete(key(watch.jobId, watch.pid));
          this.forgetSequenceIfDone(watch.jobId);
        }
        // The process and its kernel reservations are gone.
        this.reserved.forget(event.pid);
        return;
      }
      case "group-backoff": {
        const watch = this.byGroup.get(event.group);
        if (!watch) return;
        const until = new Date(Number(event.untilNs / 1_000_000n)).toISOString();
        watch.status = `rate limited: registers cleared until ${until} (${event.suppressedSoFar} suppressed so far)`;
        this.report(watch, TargetState.ARMED, watch.status);
        return;
      }
      case "group-resumed": {
        const watch = this.byGroup.get(event.group);
        if (!watch) return;
        watch.status = "armed";
        this.report(watch, TargetState.ARMED, watch.status);
        return;
      }
      case "target-fork":
        for (const watch of this.watchesOf(event.pid)) {
          watch.status = `armed; forked child ${event.childPid} is not watched`;
          this.report(watch, TargetState.ARMED, watch.status);
        }
        return;
      case "counts": {
        const watch = this.byGroup.get(event.group);
        if (!watch) return;
        this.onCounts(watch, event.timeNs, event.counts, event.threads);
        return;
      }
      case "threads":
        for (const watch of this.watchesOf(event.pid)) {
          watch.threadsTotal = event.threadsTotal;
          watch.threadsArmed = event.threadsArmed;
        }
        return;
      case "log":
        this.log(`helper ${event.level}: ${event.message}`);
        return;
    }
  }

  /**
   * A counting group's totals so far and its threads' hits of the interval:
   * the watch's counters move, and a CountReport goes out on the job's
   * event subject (its publishing is waited for like a hit's before the
   * watch's final report).
   */
  private onCounts(watch: Watch, timeNs: bigint, counts: GroupCounts, threads: ThreadHits[]): void {
    // The final counts (DISARMED) may have been taken already: totals only go forward.
    if (counts.trapped < watch.countsTrapped) return;
    // A watch that took over after a re-arm shares the counters: a late report of this one must not set them back.
    if (!watch.next) this.takeCountingTotals(watch, counts);
    watch.countsTrapped = counts.trapped;
    const sequence = this.nextSequence(watch.jobId);
    const report = create(CountReportSchema, {
      jobId: watch.jobId,
      hostId: this.hostId,
      pid: watch.pid,
      timeUnixNano: timeNs,
      intervalMs: watch.countIntervalMs,
      totals: countingTotals(watch.base, counts),
      threads: threads.map((t) => ({ tid: t.tid, hits: t.hits })),
      sequence,
    });
    watch.pending++;
    // The totals are cumulative: a report that cannot be published is made good by the next, and the target's counts carry them anyway.
    this.publisher.publish(eventSubject(watch.jobId, this.hostId), toBinary(HitBatchSchema, create(HitBatchSchema, { counts: [report] })), `${watch.jobId}.${watch.pid}.${sequence}`, () => {
      this.published(watch, 1);
    });
    this.wakeIfSettled(watch);
  }

  private onHit(hit: HelperHit): void {
    const watch = this.byGroup.get(hit.group);
    if (!watch) {
      this.log(`agent ${this.hostId}: hit for unknown group ${hit.group} (pid ${hit.pid}) ignored`);
      return;
    }
    watch.received++;
    if (!watch.ended) watch.counts.trapped = watch.base.trapped + watch.received;
    const sequence = this.nextSequence(watch.jobId);
    const values = this.valuesOf(hit, watch);
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
      valueRedaction: values.valueRedaction,
      // ptrace reads the value while the writing thread is stopped right after its store.
      valueExact: hit.valueExact || watch.backend === "ptrace",
    };
    watch.pending++;
    watch.batch.push(event);
    watch.batchBytes += encodedSizeGuess(event);
    // The last hit of an ended watch goes out at once: its final report waits for it.
    if (watch.batch.length >= this.maxBatchHits || watch.batchBytes >= maxBatchBytes || this.isLastHit(watch)) this.flush(watch);
    else watch.flushTimer ??= setTimeout(() => this.flush(watch), this.batchDelayMs);
  }

  /** A hit's values as the host policy and the job's owner let them leave the host (the stricter of the two). */
  private valuesOf(hit: HelperHit, watch: Watch): { oldValue: bigint; newValue: bigint; valueRedaction: ValueRedaction } {
    const r = this.gate.redact(watch.jobValues, hit.oldValue, hit.newValue);
    return { oldValue: r.oldValue, newValue: r.newValue, valueRedaction: r.redaction };
  }

  private isLastHit(watch: Watch): boolean {
    return watch.expected !== undefined && watch.received >= watch.expected;
  }

  /** Publishes the watch's buffered hits as one HitBatch; each hit ends delivered or dropped. */
  private flush(watch: Watch): void {
    clearTimeout(watch.flushTimer);
    watch.flushTimer = undefined;
    const hits = watch.batch;
    if (hits.length === 0) return;
    watch.batch = [];
    watch.batchBytes = 0;
    const n = BigInt(hits.length);
    const id = `${watch.jobId}.${watch.pid}.${hits[0]!.sequence}`;
    this.publisher.publish(eventSubject(watch.jobId, this.hostId), toBinary(HitBatchSchema, create(HitBatchSchema, { hits })), id, (ok) => {
      if (ok) watch.counts.delivered += n;
      else watch.counts.dropped += n;
      this.published(watch, hits.length);
    });
  }

  /** n of the watch's messages are settled: it, and the watches that took over from it, may be too. */
  private published(watch: Watch, n: number): void {
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
