// The kill switch: every connected agent clears every register it holds,
// every active job ends cancelled, and each agent's confirmation (or why
// there is none) is reported.
import { JobState } from "../proto/index.js";
import type { ControllerCore } from "./controller-core.js";
import { errorText } from "./errors.js";
import { applyFinals, applyNotes, type JobEnding } from "./job-ending.js";
import { addCounts, finish, isJobFinal, isTargetActive, notBehind } from "./job-state.js";

/** One agent's answer to the kill switch. */
export interface KillSwitchAgent {
  hostId: string;
  connected: boolean;
  /** It said it cleared every register within the time given. */
  confirmed: boolean;
  /** Targets it disarmed. */
  disarmed: number;
  /** When it answered, counted from the switch. */
  afterMs: number;
  error: string;
}

/** What the kill switch did: the jobs it cancelled and each agent's answer (by host id). */
export interface KillSwitchResult {
  cancelled: string[];
  agents: KillSwitchAgent[];
  /** When the last connected agent answered, counted from the switch. */
  allAfterMs: number;
}

/**
 * The kill switch: every connected agent clears every register it holds
 * (confirmed within `timeoutMs` or named as not confirmed), then every
 * active job ends cancelled with `reason` (their final counts come from
 * the agents as usual). Agents not connected clear theirs when their
 * lease runs out or, back, when they find their jobs cancelled.
 */
export async function disarmAll(core: ControllerCore, ending: Pick<JobEnding, "afterEnd" | "disarmTargets">, reason: string, timeoutMs: number): Promise<KillSwitchResult> {
  const startMs = Date.now();
  // Cancelled in the store first: nothing (a report, a reconnect, the queue) arms them again meanwhile.
  const live = core.store.active();
  const wereActive = new Map(live.map((j) => [j.id, j.targets.filter(isTargetActive)]));
  const cancelled: string[] = [];
  await Promise.all(
    live.map(async (j) => {
      try {
        const ended = await core.store.mutate(j.id, (x) => {
          if (!isJobFinal(x)) finish(x, JobState.CANCELLED, reason);
        });
        cancelled.push(j.id);
        ending.afterEnd(ended, reason);
      } catch (err) {
        core.options.log(`job ${j.id}: marking it cancelled for the kill switch failed (its agent still clears it): ${String(err)}`);
      }
    }),
  );
  const open = [...core.sessions.values()].filter((s) => s.isOpen);
  const agents = await Promise.all(
    open.map(async (session) => {
      try {
        const result = await session.disarmAll({ epoch: core.options.epoch, reason }, timeoutMs);
        const afterMs = Date.now() - startMs;
        if (result.error) return { hostId: session.hostId, connected: true, confirmed: false, disarmed: 0, afterMs, error: result.error.message };
        return { hostId: session.hostId, connected: true, confirmed: true, disarmed: result.disarmed, afterMs, error: "" };
      } catch (err) {
        return { hostId: session.hostId, connected: true, confirmed: false, disarmed: 0, afterMs: Date.now() - startMs, error: errorText(err) };
      }
    }),
  );
  const allAfterMs = Date.now() - startMs;
  for (const [hostId, known] of core.known) {
    if (!core.sessions.get(hostId)?.isOpen) agents.push({ hostId, connected: false, confirmed: false, disarmed: 0, afterMs: 0, error: `not connected (last seen ${new Date(known.lastSeenMs).toISOString()}): it disarms when its lease runs out` });
  }
  // The final counts, as a cancel would have them.
  await Promise.all(
    cancelled.map(async (id) => {
      const finals = await ending.disarmTargets(id, wereActive.get(id) ?? []);
      const updated = await core.store.mutate(id, (j) => {
        applyFinals(j, finals, (t, counts) => !t.counts || notBehind(counts, t.counts));
        applyNotes(j, finals, () => true);
        j.counts = addCounts(j.targets.map((t) => t.counts));
      });
      core.publish(updated);
    }),
  ).catch((err) => core.options.log(`kill switch: collecting final counts failed: ${String(err)}`));
  core.options.log(`kill switch: ${agents.filter((a) => a.confirmed).length}/${agents.length} agents confirmed in ${allAfterMs} ms; ${cancelled.length} job(s) cancelled (${reason})`);
  return { cancelled, agents: agents.sort((a, b) => a.hostId.localeCompare(b.hostId)), allAfterMs };
}
