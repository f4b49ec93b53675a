// What the scale bench measured, as plain data: one StackReport per fleet
// size and backend (each on its own nats-server, controller and fleet), and
// the run around them. Types only; scale-figures.ts reads them,
// scale-report.ts prints them.
import type { PlacementCoreResult } from "./scale-placement-core.js";
import type { ControllerEvent, ProcStats } from "./scale-stack.js";
import type { SimFleetTotals } from "./sim-fleet.js";
import type { SimBackend } from "./sim-registers.js";

/** One fleet-wide job: its SubmitJob calls in parallel until the last answered, then its cancels. */
export interface FleetRound {
  /** SubmitJob of the first call to the answer of the last: every target acked. */
  allAckedSeconds: number;
  /** Each SubmitJob call on its own. */
  submitSeconds: number[];
  /** CancelJob of the first call to the answer of the last. */
  cancelSeconds: number;
  armedTargets: number;
  /** Registers held in the simulated fleet once every SubmitJob answered, and after the cancels. */
  slotsAfterSubmit: number;
  slotsAfterCancel: number;
}

export interface FleetModeResult {
  /** The short name (`per-pid`, ...) and how it reads in words. */
  mode: string;
  label: string;
  jobsPerRound: number;
  expectedTargets: number;
  rounds: FleetRound[];
  warmup: FleetRound | undefined;
  /** Why rounds failed (status and details), in order. */
  failures: string[];
  /** Seconds spent before a round waiting for agents the controller had dropped to register again (only waits that happened). */
  reregisterWaits: number[];
}

/** The queue run: jobs waiting behind a fleet-wide blocker, placed when it is cancelled. */
export interface QueueRunResult {
  jobs: number;
  /** Seconds to submit them all (each answered pending). */
  submitSeconds: number;
  queued: number;
  /** From the blocker's cancel to every queued job's register held on its simulated agent. */
  drainSeconds: number;
  placed: number;
  controllerCpuSeconds: number | undefined;
  /** Registers held in the fleet after the queued jobs were cancelled. */
  slotsAfterCancel: number;
  failedSample: string | undefined;
}

export interface PlacementRunResult {
  jobs: number;
  concurrency: number;
  seconds: number;
  succeeded: number;
  latenciesMs: number[];
  failed: Record<string, number>;
  failedSample: string | undefined;
  cancelled: number;
  cancelSeconds: number;
  cancelFailed: number;
  slotsAfterSubmit: number;
  slotsAfterCancel: number;
  /** CPU seconds the controller used over the submits. */
  controllerCpuSeconds: number | undefined;
}

/** The controller's memory after some jobs of the finished run reached a final state. */
export interface FinishedSample {
  /** Jobs of this run submitted and cancelled so far. */
  finished: number;
  /** Seconds since the run started. */
  atSeconds: number;
  controller: ProcStats | undefined;
  nats: ProcStats | undefined;
}

/** The finished run: single-target jobs submitted and cancelled, the controller's RSS read as they pile up. */
export interface FinishedRunResult {
  jobs: number;
  concurrency: number;
  /** A sample is taken each time this many more jobs finished. */
  sampleEvery: number;
  /** Jobs the bench had already ended on this controller in earlier phases. */
  finishedBefore: number;
  seconds: number;
  /** Jobs submitted and then cancelled. */
  finished: number;
  /** SubmitJob or CancelJob failures, by status. */
  failed: Record<string, number>;
  failedSample: string | undefined;
  /** At 0, every `sampleEvery` finished jobs, and at the end. */
  samples: FinishedSample[];
  /** Registers held in the fleet at the end. */
  slotsAfter: number;
  /** Why it ended before `jobs` finished (an interrupt), if it did. */
  stoppedAt: string | undefined;
}

/** Resources of the processes at one moment. */
export interface StatsSnapshot {
  phase: string;
  atMs: number;
  controller: ProcStats | undefined;
  nats: ProcStats | undefined;
  /** This process: the simulated agents and the driver. */
  bench: ProcStats;
}

/** One fleet size with one backend, on its own nats-server, controller and simulated fleet. */
export interface StackReport {
  /** `1000-agents-perf`: also the subdirectory of its controller's profiles. */
  name: string;
  agents: number;
  processes: number;
  backend: SimBackend;
  controllerPid: number | undefined;
  /** Where its controller writes profiles (from --controller-node-args), if anywhere. */
  outputDirs: string[];
  /** Wall time from starting nats-server to stopping it. */
  seconds: number;
  connect: { seconds: number; channels: number; agentsPerChannel: number } | undefined;
  fleet: FleetModeResult[];
  placement: PlacementRunResult | undefined;
  queue: QueueRunResult | undefined;
  finished: FinishedRunResult | undefined;
  core: PlacementCoreResult | undefined;
  coreError: string | undefined;
  stats: StatsSnapshot[];
  /** This process's CPU seconds when the stack started: its snapshots' CPU is counted from there. */
  benchCpuSecondsAtStart: number;
  totals: SimFleetTotals | undefined;
  /** Notable controller log lines (leadership, internal errors), their count, and agent lease expiries it logged. */
  controllerEvents: ControllerEvent[];
  controllerEventCount: number;
  leaseExpiries: number;
  /** Where this stack's run stopped early, if it did. */
  stoppedAt: string | undefined;
}

/** The whole run: every size × backend. */
export interface ScaleReport {
  header: string[];
  /** The sizes and backends asked for (a run stopped early has fewer stacks). */
  sizes: number[];
  backends: SimBackend[];
  stacks: StackReport[];
  /** Why the run as a whole stopped early (an interrupt), if it did. */
  stoppedAt: string | undefined;
}
