// What the console's pages show, as plain JSON-ready objects built from the
// controller's messages with the same spellings as the CLI's tables (64-bit
// numbers as strings). Pure: the browser only lays these out.
import {
  JobState,
  backendName,
  hex,
  isFinalJobState,
  jobStateName,
  targetStateName,
  type Agent,
  type CountReport,
  type HitCounts,
  type HitEvent,
  type Job,
  type SlotUse,
  type TargetSlots,
} from "../../proto/index.js";
import {
  countReportHits,
  formatAge,
  formatChunkShort,
  formatHitTime,
  formatHitValue,
  formatHostBackends,
  formatHostTraps,
  formatIp,
  formatJobBackend,
  formatLabels,
  formatSlotAssignments,
  formatTime,
  formatWatch,
  hostTrapNotes,
  jobEnds,
} from "../output.js";

/** A job's or target's counters. */
export interface CountsView {
  trapped: string;
  delivered: string;
  suppressed: string;
  dropped: string;
  filtered: string;
}

/** One target of a job. */
export interface TargetView {
  host: string;
  pid: number;
  state: string;
  reason: string;
  /** `armed/total`. */
  threads: string;
  /** `DR0 0x4010/8 w, …` or `-`. */
  slots: string;
  backend: string;
  counts: CountsView;
}

/** One job as the jobs and job pages show it. */
export interface JobView {
  id: string;
  state: string;
  reason: string;
  final: boolean;
  watches: string;
  backend: string;
  countOnly: boolean;
  owner: string;
  created: string;
  ends: string;
  /** When a pending job fails if still not placed; `-` without a limit. */
  queueDeadline: string;
  counts: CountsView;
  targets: TargetView[];
  /** Targets left out of `targets` (a listing shows the first few of a fleet-wide job). */
  moreTargets: number;
}

/** One debug register of a watched process. */
export interface RegisterView {
  dr: number;
  /** Who holds it: nobody, nobody but the kernel keeps it reserved for us, someone outside fleetwatch, or jobs. */
  holder: "free" | "reserved" | "foreign" | "jobs";
  jobIds: string[];
  /** Held by several ptrace jobs watching the identical chunk. */
  shared: boolean;
  /** `0x4010/8 w`, or "" when free. */
  chunk: string;
  /** `ptrace`, `perf`, or "" when free. */
  backend: string;
}

/** One watched process of a host with its four registers. */
export interface WatchedProcessView {
  pid: number;
  /** `77 (gdb)`, or "" when nobody else traces it. */
  tracedBy: string;
  registers: RegisterView[];
}

/** One host of the fleet. */
export interface HostView {
  hostId: string;
  hostname: string;
  labels: string;
  connected: boolean;
  lastSeen: string;
  kernel: string;
  backends: string;
  traps: string;
  /** Why watches with a backend are refused there, one line each. */
  notes: string[];
  policy: string;
  processes: WatchedProcessView[];
}

/** The fleet page. */
export interface FleetView {
  hosts: HostView[];
  pending: JobView[];
}

/** One hit in the live list, numbered in the order the console read it. */
export interface HitRow {
  n: number;
  time: string;
  host: string;
  pid: number;
  tid: number;
  address: string;
  /** `old → new` as the host's policy let them out. */
  change: string;
  /** `0x401136 bump+0x6`. */
  ip: string;
  slot: string;
  sequence: string;
}

/** One count report of a counting job in the live list. */
export interface CountReportRow {
  n: number;
  time: string;
  host: string;
  pid: number;
  /** Hits in the report's interval. */
  hits: string;
  /** The target's delivered total so far. */
  total: string;
  /** `4243:5000 4244:123`, or `-`. */
  tids: string;
}

/** The counters as strings, zeros when absent. */
export function countsView(counts: HitCounts | undefined): CountsView {
  const c = counts ?? { trapped: 0n, delivered: 0n, suppressed: 0n, dropped: 0n, filtered: 0n };
  return { trapped: String(c.trapped), delivered: String(c.delivered), suppressed: String(c.suppressed), dropped: String(c.dropped), filtered: String(c.filtered) };
}

/** One job with its targets (the first `maxTargets` of them when given). */
export function jobView(job: Job, maxTargets = Infinity): JobView {
  const shown = job.targets.length > maxTargets ? job.targets.slice(0, maxTargets) : job.targets;
  return {
    id: job.id,
    state: jobStateName(job.state),
    reason: job.reason,
    final: isFinalJobState(job.state),
    watches: (job.spec?.watches ?? []).map(formatWatch).join(", ") || "-",
    backend: formatJobBackend(job),
    countOnly: job.spec?.countOnly === true,
    owner: job.owner,
    created: formatTime(job.createdUnixMs),
    ends: jobEnds(job),
    queueDeadline: formatTime(job.queueDeadlineUnixMs),
    counts: countsView(job.counts),
    moreTargets: job.targets.length - shown.length,
    targets: shown.map((t) => ({
      host: t.hostId,
      pid: t.pid,
      state: targetStateName(t.state),
      reason: t.reason,
      threads: `${t.threadsArmed}/${t.threadsTotal}`,
      slots: formatSlotAssignments(t.slots),
      backend: t.threadsTotal > 0 || t.slots.length > 0 ? backendName(t.backend) : "",
      counts: countsView(t.counts),
    })),
  };
}

/** One register as `agents ls` reads it: the ids of its jobs (or the single legacy id), else free, reserved or foreign. */
export function registerView(dr: number, use: SlotUse | undefined): RegisterView {
  const jobIds = use ? (use.jobIds.length > 0 ? [...use.jobIds] : use.jobId ? [use.jobId] : []) : [];
  if (!use || jobIds.length === 0) return { dr, holder: use?.foreign ? "foreign" : use?.reserved ? "reserved" : "free", jobIds: [], shared: false, chunk: "", backend: "" };
  return { dr, holder: "jobs", jobIds, shared: jobIds.length > 1, chunk: formatChunkShort(use.chunk), backend: backendName(use.backend) };
}

function processView(target: TargetSlots): WatchedProcessView {
  const byDr = new Map(target.slots.map((slot) => [slot.dr, slot]));
  return {
    pid: target.pid,
    tracedBy: target.tracedByPid ? `${target.tracedByPid} (${target.tracedByComm})` : "",
    registers: [0, 1, 2, 3].map((dr) => registerView(dr, byDr.get(dr))),
  };
}

/** Every host with its processes, and the jobs waiting in the queue; `nowMs` anchors "last seen". */
export function fleetView(agents: readonly Agent[], jobs: readonly Job[], nowMs: number): FleetView {
  return {
    hosts: agents.map((agent) => ({
      hostId: agent.info?.hostId ?? "?",
      hostname: agent.info?.hostname ?? "",
      labels: formatLabels(agent.info?.labels ?? {}),
      connected: agent.connected,
      lastSeen: formatAge(agent.lastSeenUnixMs, nowMs),
      kernel: agent.info?.kernel || "-",
      backends: formatHostBackends(agent.info),
      traps: formatHostTraps(agent.info),
      notes: hostTrapNotes(agent.info),
      policy: agent.info?.policy || "none",
      processes: agent.targets.map(processView),
    })),
    pending: jobs.filter((j) => j.state === JobState.PENDING).map((j) => jobView(j)),
  };
}

/** A hit as one row of the live list. */
export function hitRow(n: number, hit: HitEvent): HitRow {
  return {
    n,
    time: formatHitTime(hit.timeUnixNano),
    host: hit.hostId,
    pid: hit.pid,
    tid: hit.tid,
    address: hex(hit.address),
    change: `${formatHitValue(hit.oldValue, hit.valueRedaction)} → ${formatHitValue(hit.newValue, hit.valueRedaction)}`,
    ip: formatIp(hit),
    slot: `DR${hit.slot}`,
    sequence: String(hit.sequence),
  };
}

/** A count report as one row of the live list. */
export function countReportRow(n: number, report: CountReport): CountReportRow {
  return {
    n,
    time: formatHitTime(report.timeUnixNano),
    host: report.hostId,
    pid: report.pid,
    hits: String(countReportHits(report)),
    total: String(report.totals?.delivered ?? 0n),
    tids: report.threads.length === 0 ? "-" : report.threads.map((t) => `${t.tid}:${t.hits}`).join(" "),
  };
}
