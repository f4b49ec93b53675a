// Where the tracer and the target actually ran during a measurement: their
// allowed CPU lists and, sampled every 100 ms, the CPU each busy thread last
// ran on (/proc/PID/task/TID/stat). The tracer is whoever TracerPid names.
import { readFile, readdir } from "node:fs/promises";

import { tracerPidOf } from "./processes.js";

const SAMPLE_EVERY_MS = 100;

/** What one measurement saw. */
export interface Placement {
  /** Cpus_allowed_list of the tracer and of the target ("0-1", "0", ...). */
  tracerAllowed: string;
  targetAllowed: string;
  /** Pairs (busy tracer thread, busy target thread) sampled on the same / on different CPUs. */
  samePairs: number;
  differentPairs: number;
}

interface TaskSample {
  cpu: number;
  /** utime + stime in clock ticks. */
  ticks: number;
}

async function readTasks(pid: number): Promise<Map<number, TaskSample>> {
  const tasks = new Map<number, TaskSample>();
  let tids: string[];
  try {
    tids = await readdir(`/proc/${pid}/task`);
  } catch {
    return tasks;
  }
  await Promise.all(
    tids.map(async (tid) => {
      try {
        const text = await readFile(`/proc/${pid}/task/${tid}/stat`, "utf8");
        // Fields after the ")" of comm start at field 3 (state).
        const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
        tasks.set(Number(tid), { ticks: Number(fields[11]) + Number(fields[12]), cpu: Number(fields[36]) });
      } catch {
        // thread gone
      }
    }),
  );
  return tasks;
}

async function allowedList(pid: number): Promise<string> {
  try {
    const m = /^Cpus_allowed_list:\s*(\S+)/m.exec(await readFile(`/proc/${pid}/status`, "utf8"));
    return m?.[1] ?? "?";
  } catch {
    return "?";
  }
}

/** Threads whose CPU time grew since the previous sample, with the CPU they last ran on. */
function busy(now: Map<number, TaskSample>, before: Map<number, TaskSample>): number[] {
  const cpus: number[] = [];
  for (const [tid, s] of now) {
    const prev = before.get(tid);
    if (prev && s.ticks > prev.ticks) cpus.push(s.cpu);
  }
  return cpus;
}

/** Samples the placement of a traced target until stop(). */
export class PlacementSampler {
  private tracerPid = 0;
  private tracerAllowed = "?";
  private targetAllowed = "?";
  private samePairs = 0;
  private differentPairs = 0;
  private prevTracer = new Map<number, TaskSample>();
  private prevTarget = new Map<number, TaskSample>();
  private timer: NodeJS.Timeout | undefined;
  private sampling: Promise<void> = Promise.resolve();

  constructor(private readonly targetPid: number) {}

  start(): void {
    this.timer = setInterval(() => {
      this.sampling = this.sampling.then(() => this.sample());
    }, SAMPLE_EVERY_MS);
  }

  private async sample(): Promise<void> {
    if (this.tracerPid === 0) {
      this.tracerPid = (await tracerPidOf(this.targetPid)) ?? 0;
      if (this.tracerPid === 0) return;
    }
    const [tracer, target] = await Promise.all([readTasks(this.tracerPid), readTasks(this.targetPid)]);
    // Read the allowed lists while running: a tracer may set its affinity at arm time.
    if (tracer.size > 0) this.tracerAllowed = await allowedList(this.tracerPid);
    if (target.size > 0) this.targetAllowed = await allowedList(this.targetPid);
    for (const a of busy(tracer, this.prevTracer)) {
      for (const b of busy(target, this.prevTarget)) {
        if (a === b) this.samePairs++;
        else this.differentPairs++;
      }
    }
    this.prevTracer = tracer;
    this.prevTarget = target;
  }

  async stop(): Promise<Placement> {
    clearInterval(this.timer);
    await this.sampling;
    return {
      tracerAllowed: this.tracerAllowed,
      targetAllowed: this.targetAllowed,
      samePairs: this.samePairs,
      differentPairs: this.differentPairs,
    };
  }
}

/** "same CPU (pinned 0)", "different CPUs (pinned)", or "unpinned, same CPU in 41 % of samples". */
export function describePlacement(placements: Placement[]): string {
  const first = placements[0];
  if (!first) return "-";
  const single = (list: string): boolean => /^\d+$/.test(list);
  if (single(first.tracerAllowed) && single(first.targetAllowed)) {
    return first.tracerAllowed === first.targetAllowed ? `same CPU (pinned ${first.tracerAllowed})` : `different CPUs (pinned ${first.tracerAllowed}/${first.targetAllowed})`;
  }
  const same = placements.reduce((n, p) => n + p.samePairs, 0);
  const all = placements.reduce((n, p) => n + p.samePairs + p.differentPairs, 0);
  const pinned = single(first.tracerAllowed) ? ` (tracer pinned ${first.tracerAllowed})` : single(first.targetAllowed) ? ` (target pinned ${first.targetAllowed})` : "";
  return all === 0 ? `unpinned${pinned}` : `unpinned${pinned}, same CPU ${Math.round((100 * same) / all)} %`;
}
