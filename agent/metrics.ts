// The agent's metrics and readiness: a prom-client Registry of its own
// (`fleetwatch up` runs an agent and a controller in one process). Hit
// counters are read at scrape from the counters the agent reports to the
// controller, so nothing is added to the hit path; publish batches are
// observed once per batch.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import { slotsPerThread, type Readiness } from "../proto/index.js";
import type { ProcessRegisters } from "./foreign-registers.js";
import type { HelperCapabilities } from "./helper-process.js";
import type { HitTotals } from "./hit-pipeline.js";
import type { PublishSettled } from "./hit-publisher.js";

/** Debug registers by state, summed over processes. */
export interface RegisterCensus {
  free: number;
  ours: number;
  reserved: number;
  foreign: number;
}

function bits(mask: number): number {
  let n = 0;
  for (let dr = 0; dr < slotsPerThread; dr++) n += (mask >> dr) & 1;
  return n;
}

/**
 * Each process's four registers counted once (pure): ours first, then the
 * kernel's reservations for us, then those held outside fleetwatch; the rest are free.
 */
export function registerCensus(processes: readonly ProcessRegisters[]): RegisterCensus {
  const census: RegisterCensus = { free: 0, ours: 0, reserved: 0, foreign: 0 };
  for (const p of processes) {
    const reserved = p.reserved & ~p.ours;
    const foreign = p.foreign & ~p.ours & ~reserved;
    census.ours += bits(p.ours);
    census.reserved += bits(reserved);
    census.foreign += bits(foreign);
    census.free += slotsPerThread - bits(p.ours | reserved | foreign);
  }
  return census;
}

/** Ready: a session with a controller is live and the helper runs (pure). */
export function agentReadiness(h: { sessionLive: boolean; helperRunning: boolean; controllers: readonly string[] }): Readiness {
  if (!h.helperRunning) return { ready: false, reason: "the helper is not running (it is being restarted)" };
  if (!h.sessionLive) return { ready: false, reason: `no session with a controller (${h.controllers.join(", ")})` };
  return { ready: true };
}

/** What the gauges read from the agent at each scrape. */
export interface AgentView {
  registers(): ProcessRegisters[];
  armedTargets(): number;
  hits(): HitTotals;
  pendingBytes(): number;
  /** The current helper's trap self-test. */
  traps(): HelperCapabilities["traps"];
  sessionLive(): boolean;
}

const outcomes = ["trapped", "delivered", "suppressed", "dropped", "filtered"] as const;
// A HitBatch holds up to 2,048 hits; publishing takes about a millisecond, up to a minute of resending when NATS is away.
const batchBuckets = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048];
const publishBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** One agent daemon's metrics. */
export class AgentMetrics {
  readonly registry = new Registry();
  private readonly batchHits: Histogram;
  private readonly publishSeconds: Histogram;
  private readonly helperRestarts: Counter;
  private readonly policyReloads: Counter;

  constructor(view: AgentView) {
    const registers = [this.registry];
    // Process metrics under their usual names, told apart from the controller's in `fleetwatch up` by a label.
    collectDefaultMetrics({ register: this.registry, labels: { daemon: "agent" } });
    new Gauge({
      name: "fleetwatch_agent_debug_registers",
      help: "Debug registers of the processes this agent watches (or holds reservations in), by state: ours, reserved (by the kernel for our earlier watches), foreign (held outside fleetwatch), free.",
      labelNames: ["state"],
      registers,
      collect() {
        for (const [state, n] of Object.entries(registerCensus(view.registers()))) this.set({ state }, n);
      },
    });
    new Gauge({
      name: "fleetwatch_agent_targets_armed",
      help: "Targets (job and process) the helper has armed now.",
      registers,
      collect() {
        this.set(view.armedTargets());
      },
    });
    // Counters that follow the targets' own counters: each scrape adds what they gained since the last.
    const exported = { trapped: 0, delivered: 0, suppressed: 0, dropped: 0, filtered: 0 };
    const hits = new Counter({
      name: "fleetwatch_agent_hits_total",
      help: "Hits of this agent's watches since it started, by outcome (trapped = delivered + suppressed + dropped + filtered); the same counters `jobs get` shows per target.",
      labelNames: ["outcome"],
      registers,
      collect() {
        const now = view.hits();
        for (const outcome of outcomes) {
          const gained = now[outcome] - exported[outcome];
          if (gained > 0) this.inc({ outcome }, gained);
          exported[outcome] = Math.max(exported[outcome], now[outcome]);
        }
      },
    });
    // Every outcome from the first scrape on, at 0 until it happens.
    for (const outcome of outcomes) hits.inc({ outcome }, 0);
    this.batchHits = new Histogram({ name: "fleetwatch_agent_publish_batch_hits", help: "Hits per HitBatch published to JetStream.", buckets: batchBuckets, registers });
    this.publishSeconds = new Histogram({ name: "fleetwatch_agent_publish_seconds", help: "From a batch handed to the publisher to its acknowledgement by JetStream (resends included).", buckets: publishBuckets, registers });
    new Gauge({
      name: "fleetwatch_agent_publish_pending_bytes",
      help: "Bytes of hit batches waiting for NATS to acknowledge them (queued, in flight or being resent); past 64 MiB new batches are dropped.",
      registers,
      collect() {
        this.set(view.pendingBytes());
      },
    });
    this.helperRestarts = new Counter({ name: "fleetwatch_agent_helper_restarts_total", help: "Times the helper died and a new one was started.", registers });
    new Gauge({
      name: "fleetwatch_agent_trap_delivered",
      help: "The helper's start-up self-test per backend: 1 when watched writes trapped, 0 when not (or it could not run).",
      labelNames: ["backend"],
      registers,
      collect() {
        this.reset();
        for (const t of view.traps()) this.set({ backend: t.backend }, t.delivery === "delivered" ? 1 : 0);
      },
    });
    new Gauge({
      name: "fleetwatch_agent_trap_cost_seconds",
      help: "The cost of one trap per backend, measured by the helper's self-test (only where traps are delivered).",
      labelNames: ["backend"],
      registers,
      collect() {
        this.reset();
        for (const t of view.traps()) if (t.delivery === "delivered" && t.nsPerTrap > 0) this.set({ backend: t.backend }, t.nsPerTrap / 1e9);
      },
    });
    this.policyReloads = new Counter({ name: "fleetwatch_agent_policy_reloads_total", help: "Host policy reloads put in effect (SIGHUP or the file changed).", registers });
    new Gauge({
      name: "fleetwatch_agent_controller_session",
      help: "1 while a session with a controller is live.",
      registers,
      collect() {
        this.set(view.sessionLive() ? 1 : 0);
      },
    });
  }

  /** One batch ended (HitPublisher's onSettled). */
  publishSettled(s: PublishSettled): void {
    if (s.hits > 0) this.batchHits.observe(s.hits);
    if (s.ok) this.publishSeconds.observe(s.waitedMs / 1000);
  }

  helperRestarted(): void {
    this.helperRestarts.inc();
  }

  policyReloaded(): void {
    this.policyReloads.inc();
  }
}
