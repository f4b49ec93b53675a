// What a lapsed lease does to the watches of this host: each is disarmed at
// once, or, when its job allows a longer silence (lost-after), once that has
// passed too, unless a session is back first.
/** What the grace needs to know of a watch. */
export interface GraceWatch {
  readonly jobId: string;
  readonly pid: number;
  /** With no session for this long the agent disarms it itself (0 = at the lease). */
  readonly lostAfterMs: number;
  /** The helper no longer has it armed. */
  readonly ended: boolean;
}

/** What the grace needs of the agent around it. */
export interface LeaseGraceContext<W extends GraceWatch> {
  readonly hostId: string;
  readonly log: (line: string) => void;
  /** Disarms one watch now, keeping its counters (not a final state). */
  readonly suspend: (watch: W, reason: string) => Promise<void>;
  /** The agent disarmed watches on its own. */
  readonly onSuspended: () => void;
}

/** The watches waiting out their job's lost-after with no session. */
export class LeaseGrace<W extends GraceWatch> {
  /** Watches whose job allows more silence than the lease, waiting to be suspended. */
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(private readonly context: LeaseGraceContext<W>) {}

  /**
   * No session for `silentForMs` (`silence` says so in words): suspends each
   * watch now whose job allows no longer, and the others when their
   * lost-after has passed; logs which it did. Resolves once the ones
   * suspended now are.
   */
  async suspendAll(watches: readonly W[], silence: string, silentForMs: number): Promise<void> {
    const { hostId, log, suspend, onSuspended } = this.context;
    const reason = `${silence}: disarmed by the agent until the controller re-arms it`;
    const now: W[] = [];
    const staying: W[] = [];
    for (const watch of watches) {
      if (watch.ended) continue;
      const graceMs = watch.lostAfterMs - silentForMs;
      if (graceMs <= 0) {
        now.push(watch);
        continue;
      }
      staying.push(watch);
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        const why = `no session with a controller for ${watch.lostAfterMs} ms (the job's lost-after): disarmed by the agent until the controller re-arms it`;
        log(`agent ${hostId}: job ${watch.jobId} on pid ${watch.pid}: ${why}`);
        void suspend(watch, why).finally(() => onSuspended());
      }, graceMs);
      this.timers.add(timer);
    }
    // What happened, as it happened: a watch within its job's lost-after was not disarmed.
    const said: string[] = [];
    if (now.length > 0) said.push(`disarmed by the agent until the controller re-arms it (${now.length === 1 ? "1 watch" : `${now.length} watches`})`);
    if (staying.length > 0) said.push(`${staying.length === 1 ? "1 watch stays" : `${staying.length} watches stay`} armed within its job's lost-after`);
    log(`agent ${hostId}: ${silence}: ${said.length > 0 ? said.join("; ") : "no watch was armed"}`);
    if (now.length === 0) return;
    await Promise.all(now.map((watch) => suspend(watch, reason)));
    onSuspended();
  }

  /** A session is live again: watches still within their job's lost-after stay armed. */
  cancel(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }
}
