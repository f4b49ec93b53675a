// The jobs the scale bench submits. A "fleet-wide job" is one question asked
// of every simulated process on every host; how it is spelled as SubmitJob
// calls is decided here only, so a new way to target is one more entry.
// Every spec names its backend: the bench measures each one on purpose.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Backend, WatchMode, type JobSpecSchema } from "../proto/index.js";
import { simPid, simProcessShape } from "./sim-agent.js";
import type { SimBackend } from "./sim-registers.js";

export type JobSpecInit = MessageInitShape<typeof JobSpecSchema>;

/** The backends a run can measure, in the order they run. */
export const benchBackends: readonly SimBackend[] = ["ptrace", "perf"];

/** The job spec's field for `backend`. */
export function specBackend(backend: SimBackend): Backend {
  return backend === "perf" ? Backend.PERF : Backend.PTRACE;
}

/**
 * Ways to submit a fleet-wide job:
 * - `per-pid`: one job per process index (pid 1001, 1002, ...) naming every
 *   host by id: P SubmitJob calls for one fleet-wide question;
 * - `per-pid-label`: the same P jobs with the hosts picked by the label
 *   every simulated host has (`sim=1`) instead of a list of ids;
 * - `selector`: one job on all hosts selecting the processes by comm; the
 *   controller discovers the P processes on each host itself.
 */
export const fleetJobModes = ["per-pid", "per-pid-label", "selector"] as const;
export type FleetJobMode = (typeof fleetJobModes)[number];

/** The label selector that matches every simulated host (see simLabels). */
export const allSimHosts = "sim=1";

/** How each mode reads in the report. */
export function describeFleetJobMode(mode: FleetJobMode, processes: number): string {
  switch (mode) {
    case "per-pid":
      return `${processes} jobs, one per pid, hosts by id`;
    case "per-pid-label":
      return `${processes} jobs, one per pid, hosts by label ${allSimHosts}`;
    case "selector":
      return `1 job, all hosts, comm '${simProcessShape.comm}'`;
  }
}

// One 8-byte write watch on a symbol: every target costs the controller a
// Resolve, a register in the ledger and an Arm, like a real `fleetwatch watch --symbol`.
function watchOf(symbol: string) {
  return [{ location: { case: "symbol" as const, value: symbol }, length: 8, mode: WatchMode.WRITE }];
}

/** The SubmitJob specs that make up one fleet-wide job on `hostIds` × `processes` processes. */
export function fleetJobSpecs(mode: FleetJobMode, hostIds: readonly string[], processes: number, symbol: string, backend: SimBackend): JobSpecInit[] {
  const common = { watches: watchOf(symbol), backend: specBackend(backend) };
  switch (mode) {
    case "per-pid":
      return Array.from({ length: processes }, (_, i) => ({ ...common, target: { hostIds: [...hostIds], pid: simPid(i) } }));
    case "per-pid-label":
      return Array.from({ length: processes }, (_, i) => ({ ...common, target: { hostSelector: allSimHosts, pid: simPid(i) } }));
    case "selector":
      return [{ ...common, target: { allHosts: true, comm: simProcessShape.comm } }];
  }
}

/** The queue run's blocker: one job on every simulated process watching four symbols, so it holds all four registers of each. */
export function queueBlockerSpec(backend: SimBackend): JobSpecInit {
  const watches = [0, 1, 2, 3].flatMap((i) => watchOf(`blocker_${i}`));
  return { watches, backend: specBackend(backend), target: { allHosts: true, comm: simProcessShape.comm } };
}

/**
 * Single-target job `index` of the placement run: host and pid go round the
 * fleet (host first), and each job watches its own symbol so that no two
 * jobs on a target could share a register.
 */
export function singleTargetSpec(index: number, hostIds: readonly string[], processes: number, backend: SimBackend): JobSpecInit {
  const hostId = hostIds[index % hostIds.length] as string;
  const pid = simPid(Math.floor(index / hostIds.length) % processes);
  return { watches: watchOf(`bench_var_${index}`), backend: specBackend(backend), target: { hostIds: [hostId], pid } };
}

/** Targets per host and pid the placement run needs at most, so callers can check it fits in four registers. */
export function singleTargetsPerProcess(jobs: number, hosts: number, processes: number): number {
  return Math.ceil(jobs / (hosts * processes));
}
