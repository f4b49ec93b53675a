// Which of this host's processes a job may target: discovery for the
// controller (with the host policy's refusals) and follows that report
// processes starting to match a job's selector later (late joiners).
import { readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import {
  DiscoverResultSchema,
  DiscoveredProcessSchema,
  ProcessAppearedSchema,
  type Discover,
  type DiscoverResult,
  type DiscoveredProcess,
  type Follow,
  type PolicyRefusal,
  type ProcessAppeared,
  type TargetSelector,
} from "../proto/index.js";
import { AgentCommandError, toAgentError } from "./errors.js";
import type { PolicyGate } from "./policy-gate.js";
import { inspectProcess, scanProcesses, watchProcesses } from "./process-discovery.js";
import { processKey, type ProcessInfo, type ProcessSelector } from "./process-match.js";

/** What discovery needs of the agent around it. */
export interface TargetDiscoveryContext {
  readonly hostId: string;
  readonly gate: PolicyGate;
  /** The helper's pid now, if one runs (a restarted helper has a new one). */
  readonly helperPid: () => number | undefined;
  /** Receives processes that started matching a followed job. */
  readonly onAppeared: (appeared: ProcessAppeared) => void;
  readonly log: (line: string) => void;
}

/** The process part of a job's target selector, as discovery takes it. */
function processSelector(selector: TargetSelector | undefined): ProcessSelector {
  if (!selector) throw new AgentCommandError("discover needs a selector", "EINVAL");
  return {
    ...(selector.pid ? { pid: selector.pid } : {}),
    ...(selector.exe ? { exe: selector.exe } : {}),
    ...(selector.comm ? { comm: selector.comm } : {}),
    ...(selector.cgroup ? { cgroup: selector.cgroup } : {}),
  };
}

/** A process as the controller sees it; `helperPid` tracing it is ours, anyone else is another tracer. */
function discovered(p: ProcessInfo, helperPid: number | undefined, userName: (uid: number) => string | undefined): DiscoveredProcess {
  const tracer = p.tracerPid && p.tracerPid !== helperPid ? p.tracerPid : 0;
  return create(DiscoveredProcessSchema, {
    pid: p.pid,
    comm: p.comm,
    exe: p.exe,
    startTime: BigInt(p.startTime),
    tracerPid: tracer,
    tracerComm: tracer ? commOf(tracer) : "",
    uid: p.uid,
    euid: p.euid ?? p.uid,
    user: userName(p.uid) ?? "",
  });
}

/** /proc/PID/comm, or "?" when the process is gone or hidden. */
function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return "?";
  }
}

/** Discovery and the follows of the jobs that watch this host for late joiners. */
export class TargetDiscovery {
  /** Jobs whose selectors this host watches for late joiners, each with what stops its watch. */
  private readonly follows = new Map<string, AbortController>();

  constructor(private readonly context: TargetDiscoveryContext) {}

  /** This host's processes matching a selector's pid, exe, comm and cgroup (never pid 1, the agent or its helper). */
  async discover(request: Discover): Promise<DiscoverResult> {
    const { gate } = this.context;
    try {
      const selector = processSelector(request.selector);
      // Asked for by pid, the agent and the helper are refused by name rather than not found.
      const own = selector.pid !== undefined ? inspectProcess(selector.pid) : undefined;
      if (own && this.ownPids().includes(own.pid)) return create(DiscoverResultSchema, { requestId: request.requestId, refused: [gate.refusalOf(own)!] });
      const processes = await scanProcesses(selector, { excludePids: () => this.ownPids() });
      const refused: PolicyRefusal[] = [];
      const allowed: DiscoveredProcess[] = [];
      for (const p of processes) {
        const no = gate.refusalOf(p);
        if (no) refused.push(no);
        else allowed.push(discovered(p, this.context.helperPid(), gate.userName));
      }
      return create(DiscoverResultSchema, { requestId: request.requestId, processes: allowed, refused });
    } catch (err) {
      return create(DiscoverResultSchema, { requestId: request.requestId, error: toAgentError(err) });
    }
  }

  /**
   * Watches for processes that start matching a job's selector and reports
   * each once; the ones matching now are already the job's targets.
   */
  follow(request: Follow): void {
    this.unfollow(request.jobId);
    const stop = new AbortController();
    this.follows.set(request.jobId, stop);
    const { gate } = this.context;
    void (async () => {
      const selector = processSelector(request.selector);
      const initial = new Set((await scanProcesses(selector, { excludePids: () => this.ownPids() })).map(processKey));
      for await (const event of watchProcesses(selector, { signal: stop.signal, excludePids: () => this.ownPids() })) {
        if (event.kind !== "started" || initial.has(processKey(event.process)) || gate.refusalOf(event.process)) continue;
        this.context.onAppeared(create(ProcessAppearedSchema, { jobId: request.jobId, process: discovered(event.process, this.context.helperPid(), gate.userName) }));
      }
    })().catch((err) => this.context.log(`agent ${this.context.hostId}: following job ${request.jobId} failed: ${err instanceof Error ? err.message : String(err)}`));
  }

  /** Stops following a job (nothing happens when it is not followed). */
  unfollow(jobId: string): void {
    this.follows.get(jobId)?.abort();
    this.follows.delete(jobId);
  }

  /** The job is followed here: it may still see late joiners. */
  isFollowed(jobId: string): boolean {
    return this.follows.has(jobId);
  }

  /** The jobs followed here now. */
  followed(): string[] {
    return [...this.follows.keys()];
  }

  private ownPids(): number[] {
    const helperPid = this.context.helperPid();
    return helperPid !== undefined ? [process.pid, helperPid] : [process.pid];
  }
}
