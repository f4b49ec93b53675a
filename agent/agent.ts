// The agent's core: the watches this host has armed and their lifecycle
// (arm, disarm, suspend after a lapsed lease, helper lost), driven through the
// helper. Hits, discovery, the host policy and stored-hit resume have files of their own.
import { create } from "@bufbuild/protobuf";
import { ArmResultSchema, ArmedTargetSchema, DisarmResultSchema, ResolveResultSchema, ResolveSchema, TargetReportSchema, TargetState, hex, timerAt } from "../proto/index.js";
import type { Arm, ArmResult, ArmedTarget, Disarm, DisarmResult, Discover, DiscoverResult, Follow, ProcessAppeared, Resolve, ResolveResult, TargetReport } from "../proto/index.js";
import { armFailure, checkBackend, helperBackend, helperChunks, helperWatchOptions, protoBackend, watchHitsOf } from "./arm-request.js";
import { AgentCommandError, toAgentError } from "./errors.js";
import type { GroupCounts, HelperBackend, HelperEvent, HelperProcess } from "./helper-process.js";
import { HitPipeline, type HitTotals } from "./hit-pipeline.js";
import type { HitPublisher } from "./hit-publisher.js";
import { LeaseGrace } from "./lease-grace.js";
import { mappedAt } from "./memory-map.js";
import type { LoadedPolicy } from "./policy-file.js";
import { PolicyGate } from "./policy-gate.js";
import { ReservedRegisters } from "./reserved-registers.js";
import { StoredHitResume } from "./stored-hit-resume.js";
import type { StoredHitsReader } from "./stored-hits.js";
import { TargetDiscovery } from "./target-discovery.js";
import { exitReason, newWatch, progressKey, watchKey, type Watch } from "./watch.js";
import { ForeignRegisters, slotMask, type ProcessRegisters } from "./foreign-registers.js";
import { WatchBook } from "./watch-book.js";

/** The watches of one host. */
export class AgentCore {
  private readonly watches = new WatchBook();
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
  /** (job, pid) pairs with an arm on its way: a second one (another session's, a retry) is refused. */
  private readonly arming = new Set<string>();
  /** Registers arms met ENOSPC on: held outside fleetwatch. */
  private readonly foreign = new ForeignRegisters();

  /** The current helper; replaced after a helper dies. */
  private helper: HelperProcess | undefined;
  /** Which processes may be watched and what leaves the host of their values. */
  private readonly gate = new PolicyGate(() => this.helper?.pid);
  private readonly pipeline: HitPipeline;
  private readonly discovery: TargetDiscovery;
  private readonly resume: StoredHitResume;
  private readonly grace: LeaseGrace<Watch>;

  constructor(
    publisher: HitPublisher,
    readStoredHits: StoredHitsReader,
    private readonly hostId: string,
    private readonly log: (line: string) => void,
    private readonly progressIntervalMs = 1_000,
    /** A HitBatch goes out when it holds this many hits, or about 256 KiB (stacks make hits large)... */
    maxBatchHits = 2048,
    /** ...or this long after its first hit. */
    batchDelayMs = 2,
  ) {
    this.pipeline = new HitPipeline(publisher, hostId, log, (jobValues, oldValue, newValue) => this.gate.redact(jobValues, oldValue, newValue), { maxBatchHits, batchDelayMs });
    this.discovery = new TargetDiscovery({ hostId, gate: this.gate, helperPid: () => this.helper?.pid, onAppeared: (appeared) => this.onAppeared(appeared), log });
    this.resume = new StoredHitResume(readStoredHits, hostId, (jobId, lastSequence) => this.pipeline.continueAfter(jobId, lastSequence));
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

  /** Whether a helper runs (false while a dead one is being restarted). */
  get helperRunning(): boolean {
    return this.helper !== undefined;
  }

  /** How many watches the helper has armed now. */
  armedCount(): number {
    return this.watches.live().length;
  }

  /** Hits of this agent's watches since it started, by outcome (see HitPipeline.hitTotals). */
  hitTotals(): HitTotals {
    return this.pipeline.hitTotals();
  }

  /** The debug registers of every process this agent watches, holds reservations in, or found registers busy in. */
  processRegisters(nowMs = Date.now()): ProcessRegisters[] {
    const pids = new Set(this.watches.live().map((w) => w.pid));
    for (const pid of this.reserved.pids()) pids.add(pid);
    for (const pid of this.foreign.pids(nowMs)) pids.add(pid);
    return [...pids].map((pid) => ({ ours: this.watches.registersOf(pid), reserved: this.reserved.of(pid), foreign: this.foreign.of(pid) }));
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
    for (const watch of this.watches.all()) {
      if (watch.ended) continue;
      watch.ended = true;
      watch.deadlineTimer?.cancel();
      this.pipeline.lost(watch.hits);
      void this.pipeline.settled(watch.hits).then(() => this.report(watch, TargetState.FAILED, reason(watch.backend)));
    }
    this.watches.clearGroups();
  }

  /** What is armed now, for the controller after a (re)connect. */
  armed(): ArmedTarget[] {
    return this.watches.live().map((w) => create(ArmedTargetSchema, { jobId: w.jobId, pid: w.pid, slots: w.slots, counts: w.hits.counts }));
  }

  /**
   * This host's processes matching a selector's pid, exe, comm and cgroup
   * (never pid 1, the agent or its helper), with the request's symbols and
   * addresses resolved in each.
   */
  async discover(request: Discover): Promise<DiscoverResult> {
    const result = await this.discovery.discover(request);
    if (request.resolve.length > 0) {
      await Promise.all(
        result.processes.map(async (p) => {
          p.resolved = await Promise.all(request.resolve.map((r) => this.resolve(create(ResolveSchema, { ...r, requestId: 0n, pid: p.pid }))));
        }),
      );
    }
    return result;
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
    this.forgetJobIfDone(jobId);
  }

  /** Drops a job's hit sequence and stored hits once nothing here can produce its hits any more. */
  private forgetJobIfDone(jobId: string): void {
    if (this.discovery.isFollowed(jobId)) return;
    if (this.watches.hasJob(jobId)) return;
    this.pipeline.forgetJob(jobId);
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
    await Promise.all(this.watches.live().map((w) => this.enforcePolicy(w)));
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
    const k = watchKey(request.jobId, request.pid);
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
      const existing = this.watches.get(request.jobId, request.pid);
      if (existing && !existing.ended) throw new AgentCommandError(`job ${request.jobId} is already armed on pid ${request.pid}`, "EEXIST");
      if (request.deadlineUnixMs > 0n && Number(request.deadlineUnixMs) <= Date.now()) throw new AgentCommandError(`job ${request.jobId}: its deadline has passed`, "ETIME");
      const backend = helperBackend(request.backend);
      checkBackend(this.currentHelper().capabilities, backend, this.hostId);
      // Armed again after a lapse: counters and hit sequence go on from the earlier watch.
      // The same counters object: hits of the earlier watch still being published land in it.
      // Otherwise from what the controller and the event stream know (this agent may have started again).
      const carried = existing ? existing.hits.counts : await this.resume.counts(request);
      if (this.watches.get(request.jobId, request.pid) !== existing) throw new AgentCommandError(`job ${request.jobId} was armed on pid ${request.pid} meanwhile`, "EEXIST");
      const chunks = helperChunks(request.slots);
      const group = this.nextGroup++;
      // Hits' values are read at the trap: ptrace, or perf where the kernel reads them.
      const valuesExact = backend === "ptrace" || this.currentHelper().capabilities.perfValues === "exact";
      const hits = this.pipeline.open({ ...watchHitsOf(request, backend), counts: carried, previous: existing?.hits, onSettled: () => this.watches.dropGroup(group) });
      const watch = newWatch(request, group, backend, hits);
      // Registered before arming: hits can arrive before the helper's reply.
      this.watches.addGroup(group, watch);
      let result;
      try {
        result = await this.currentHelper().arm(request.pid, group, chunks, helperWatchOptions(request, backend));
      } catch (err) {
        this.watches.dropGroup(group);
        // Never kept: its counters gained nothing (a re-arm's chain stays with the watch it continues).
        if (!existing) this.pipeline.retire(hits);
        throw err;
      }
      this.watches.keep(watch);
      if (existing) this.pipeline.takeOver(existing.hits, hits);
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
      this.log(`agent ${this.hostId}: job ${request.jobId} armed on pid ${request.pid} (${backend}${request.countOnly ? ", counting" : ""}): ${request.slots.map((s) => `DR${s.dr}=${hex(s.chunk?.address ?? 0n)}/${s.chunk?.length}`).join(" ")}, ${result.threadsArmed}/${result.threadsTotal} threads`);
      return create(ArmResultSchema, {
        ...reply,
        threadsTotal: result.threadsTotal,
        threadsArmed: result.threadsArmed,
        slots: request.slots,
        reservedMask: this.reserved.of(request.pid),
        backend: protoBackend(backend),
        valuesExact,
      });
    } catch (err) {
      const error = armFailure(err, request.pid);
      if (error.errnoName === "ENOSPC") this.foreign.note(request.pid, slotMask(request.slots), this.watches.registersOf(request.pid));
      return create(ArmResultSchema, { ...reply, error });
    }
  }

  async disarm(request: Disarm): Promise<DisarmResult> {
    const reply = { requestId: request.requestId, jobId: request.jobId, pid: request.pid };
    const watch = this.watches.get(request.jobId, request.pid);
    if (!watch) return create(DisarmResultSchema, { ...reply, error: toAgentError(new AgentCommandError(`job ${request.jobId} has no watch on pid ${request.pid} here`, "ENOENT")) });
    try {
      await this.stop(watch);
      return create(DisarmResultSchema, { ...reply, counts: watch.hits.counts, reservedMask: this.reserved.of(watch.pid) });
    } catch (err) {
      return create(DisarmResultSchema, { ...reply, error: toAgentError(err) });
    }
  }

  /**
   * Disarms every watch while keeping its counters: no session for
   * `silentForMs` (the lease; `silence` says so in words). A watch whose job allows a longer silence
   * (lost-after) stays armed, publishing its hits, until that time has
   * passed too or a session is back (sessionRestored). Not a final state:
   * the counts are reported once the watch's hits are settled, and when the
   * controller arms the same job and pid again the counters and hit
   * sequence continue from here. Resolves once the registers are cleared,
   * without waiting for hits still on their way to NATS (which may be out
   * of reach too): no watch stays armed behind another one's hits.
   */
  suspendAll(silence: string, silentForMs = 0): Promise<void> {
    return this.grace.suspendAll(this.watches.all(), silence, silentForMs);
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
    void this.pipeline.settled(watch.hits).then(() => watch.hits.next || this.report(watch, TargetState.UNSPECIFIED, reason));
  }

  /** Disarms every watch (agent shutdown), reporting each as cancelled once its hits are settled. */
  async disarmAll(reason: string): Promise<void> {
    this.sessionRestored();
    for (const jobId of this.discovery.followed()) this.unfollow(jobId);
    const { disarmed } = await this.clearAll();
    for (const watch of disarmed) {
      await this.pipeline.settled(watch.hits);
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
    for (const watch of disarmed) void this.pipeline.settled(watch.hits).then(() => this.report(watch, TargetState.CANCELLED, reason));
    if (failed.length > 0) throw new AgentCommandError(`could not disarm ${failed.join("; ")}`, "EIO");
    return disarmed.length;
  }

  /** Every register first, then (the caller's) wait for hits: none stays armed while another's hits settle. */
  private async clearAll(): Promise<{ disarmed: Watch[]; failed: string[] }> {
    const disarmed: Watch[] = [];
    const failed: string[] = [];
    for (const watch of this.watches.all()) {
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
    await this.pipeline.settled(watch.hits);
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
    this.pipeline.end(watch.hits, counts);
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
        counts: watch.hits.counts,
        threadsTotal: watch.threadsTotal,
        threadsArmed: watch.threadsArmed,
        reservedMask: this.reserved.of(watch.pid),
      }),
    );
  }

  private reportProgress(): void {
    for (const watch of this.watches.all()) {
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
    const busy = (pid: number) => this.watches.all().some((w) => w.pid === pid && (!w.ended || !this.pipeline.isSettled(w.hits)));
    for (const { pid, mask } of this.reserved.exited(busy)) {
      for (const w of this.watches.all()) if (w.pid === pid) this.forget(w);
      this.foreign.forget(pid);
      this.onReport(create(TargetReportSchema, { pid, state: TargetState.EXITED, reason: "process exited", reservedMask: mask }));
    }
  }

  /** Drops an ended watch for good: its process is gone. */
  private forget(watch: Watch): void {
    this.watches.drop(watch);
    this.pipeline.retire(watch.hits);
    this.forgetJobIfDone(watch.jobId);
  }

  private async onHelperEvent(event: HelperEvent): Promise<void> {
    switch (event.kind) {
      case "hits":
        for (const hit of event.hits) {
          const watch = this.watches.group(hit.group);
          if (watch) this.pipeline.hit(watch.hits, hit);
          else this.log(`agent ${this.hostId}: hit for unknown group ${hit.group} (pid ${hit.pid}) ignored`);
        }
        return;
      case "group-done": {
        const watch = this.watches.group(event.group);
        if (!watch) return;
        this.endWatch(watch, event.counts);
        await this.pipeline.settled(watch.hits);
        if (event.reason === "budget") this.report(watch, TargetState.COMPLETED, `max hits reached (${event.counts.delivered})`);
        // Exit and exec are reported with the process's own event, which follows.
        return;
      }
      case "target-exited":
      case "target-exec": {
        for (const watch of this.watches.all()) {
          // Dropped meanwhile (while an earlier one settled): reported by whoever dropped it.
          if (watch.pid !== event.pid || watch.lastReported === "final" || this.watches.get(watch.jobId, watch.pid) !== watch) continue;
          await this.pipeline.settled(watch.hits);
          const why = event.kind === "target-exec" ? "process exec'd: the watched address space is gone" : exitReason(event.how, event.code, watch.backend);
          this.report(watch, TargetState.EXITED, why);
          watch.lastReported = "final";
          this.forget(watch);
        }
        // The process and its kernel reservations are gone.
        this.reserved.forget(event.pid);
        this.foreign.forget(event.pid);
        return;
      }
      case "group-backoff": {
        const watch = this.watches.group(event.group);
        if (!watch) return;
        const until = new Date(Number(event.untilNs / 1_000_000n)).toISOString();
        watch.status = `rate limited: registers cleared until ${until} (${event.suppressedSoFar} suppressed so far)`;
        this.report(watch, TargetState.ARMED, watch.status);
        return;
      }
      case "group-resumed": {
        const watch = this.watches.group(event.group);
        if (!watch) return;
        watch.status = "armed";
        this.report(watch, TargetState.ARMED, watch.status);
        return;
      }
      case "target-fork":
        for (const watch of this.watches.ofPid(event.pid)) {
          watch.status = `armed; forked child ${event.childPid} is not watched`;
          this.report(watch, TargetState.ARMED, watch.status);
        }
        return;
      case "counts": {
        const watch = this.watches.group(event.group);
        if (!watch) return;
        this.pipeline.counts(watch.hits, event.timeNs, event.counts, event.threads);
        return;
      }
      case "threads":
        for (const watch of this.watches.ofPid(event.pid)) {
          watch.threadsTotal = event.threadsTotal;
          watch.threadsArmed = event.threadsArmed;
        }
        return;
      case "log":
        this.log(`helper ${event.level}: ${event.message}`);
        return;
    }
  }
}
