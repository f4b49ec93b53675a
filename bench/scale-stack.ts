// The real services under the scale bench: nats-server on a free port in a
// temp dir and `fleetwatch controller` as a child process (so its memory and
// CPU are its own, read from /proc), plus the stop that tears both down.
import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { startNatsServer, type RunningNatsServer } from "../cli/nats-server.js";
import { ControllerService, createClient, type ServiceClient } from "../proto/index.js";
import { cliPath } from "../test/support/paths.js";
import { BenchProcess } from "./processes.js";

/** Memory and CPU of one process, from /proc. */
export interface ProcStats {
  rssMiB: number;
  /** Peak RSS since the process started (VmHWM). */
  peakRssMiB: number;
  /** User + system CPU since the process started. */
  cpuSeconds: number;
}

// Clock ticks per second of /proc/PID/stat's utime and stime.
const clockTicks = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

function statusKiB(status: string, field: string): number {
  const m = new RegExp(`^${field}:\\s*(\\d+) kB`, "m").exec(status);
  return m ? Number(m[1]) : Number.NaN;
}

/** RSS, peak RSS and CPU time of a live process; undefined once it is gone. */
export async function procStats(pid: number): Promise<ProcStats | undefined> {
  try {
    const [status, stat] = await Promise.all([readFile(`/proc/${pid}/status`, "utf8"), readFile(`/proc/${pid}/stat`, "utf8")]);
    // Fields after the command name (which may hold spaces): utime and stime are fields 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]);
    return { rssMiB: statusKiB(status, "VmRSS") / 1024, peakRssMiB: statusKiB(status, "VmHWM") / 1024, cpuSeconds: ticks / clockTicks };
  } catch {
    return undefined;
  }
}

/** The soft limit on open files of this process (its children inherit it). */
export async function openFileLimit(): Promise<number> {
  const limits = await readFile("/proc/self/limits", "utf8");
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
  return !m || m[1] === "unlimited" ? Number.POSITIVE_INFINITY : Number(m[1]);
}

export interface ScaleStackOptions {
  /** The controller drops an agent session silent this long (its `--lease`). */
  leaseMs: number;
  /** The controller's `--election-lease`; unset leaves its default. */
  electionLeaseMs: number | undefined;
  /** Extra node options for the controller process, e.g. `--cpu-prof`. */
  controllerNodeArgs: string[];
  signal: AbortSignal;
}

/** A line of the controller's log worth showing beside the figures (leadership, internal errors, dropped sessions). */
export interface ControllerEvent {
  /** Seconds since the controller started. */
  atSeconds: number;
  line: string;
}

// Controller log lines that change how the figures read.
const notableLine = /^(leader election:|controller: (leading|standing by|leadership|internal error))|lease expired/;
const maxEvents = 200;

/** nats-server + a controller process, and a client of the controller's API. */
export class ScaleStack {
  /** Notable lines of the controller's log, in order (at most a few hundred). */
  readonly events: ControllerEvent[] = [];
  /** How many notable lines there were in all. */
  eventCount = 0;
  /** Agent sessions whose lease expired at the controller. */
  leaseExpiries = 0;

  private constructor(
    readonly dataDir: string,
    readonly nats: RunningNatsServer,
    readonly controller: BenchProcess,
    readonly address: string,
    readonly api: ServiceClient<typeof ControllerService>,
  ) {}

  static async start(options: ScaleStackOptions): Promise<ScaleStack> {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-scale-"));
    let nats: RunningNatsServer | undefined;
    let controller: BenchProcess | undefined;
    try {
      // Own process group: a terminal's Ctrl-C reaches the bench, which stops the server last.
      nats = await startNatsServer({ dataDir: path.join(dataDir, "nats"), ownProcessGroup: true });
      const args = [...options.controllerNodeArgs, cliPath, "controller", "--listen", "127.0.0.1:0", "--nats", nats.url, "--lease", `${options.leaseMs}ms`];
      if (options.electionLeaseMs !== undefined) args.push("--election-lease", `${options.electionLeaseMs}ms`);
      controller = await BenchProcess.start("controller", process.execPath, args);
      const line = await controller.waitForLine(/listening on \S+:\d+/, options.signal, 30_000);
      const address = /listening on (\S+:\d+)/.exec(line)?.[1] as string;
      const stack = new ScaleStack(dataDir, nats, controller, address, createClient(ControllerService, address));
      stack.collectEvents(Date.now());
      return stack;
    } catch (err) {
      await controller?.kill("SIGKILL");
      await nats?.stop();
      await rm(dataDir, { recursive: true, force: true });
      throw err;
    }
  }

  /** Keeps the notable lines of the controller's log (on top of BenchProcess's tail). */
  private collectEvents(startedMs: number): void {
    const take = (line: string): void => {
      if (!notableLine.test(line)) return;
      // Thousands of these at once would bury the rest: counted only.
      if (line.includes("lease expired")) {
        this.leaseExpiries++;
        return;
      }
      this.eventCount++;
      if (this.events.length < maxEvents) this.events.push({ atSeconds: (Date.now() - startedMs) / 1000, line: line.length > 240 ? `${line.slice(0, 240)}…` : line });
    };
    // What it printed while starting is in BenchProcess's tail already.
    for (const line of this.controller.stderrTail.split("\n").slice(0, -1)) take(line);
    let partial = this.controller.stderrTail.split("\n").at(-1) ?? "";
    this.controller.child.stderr.on("data", (text: string) => {
      const parts = (partial + text).split("\n");
      partial = parts.pop() ?? "";
      for (const line of parts) take(line);
    });
  }

  get natsUrl(): string {
    return this.nats.url;
  }

  controllerStats(): Promise<ProcStats | undefined> {
    return procStats(this.controller.pid);
  }

  natsStats(): Promise<ProcStats | undefined> {
    return this.nats.process.pid === undefined ? Promise.resolve(undefined) : procStats(this.nats.process.pid);
  }

  /** The end of the controller's log, for error messages. */
  controllerLogTail(): string {
    return this.controller.stderrTail.trim();
  }

  /** The last `controller: internal error: ...` line of its log: INTERNAL statuses carry no text over the wire. */
  lastInternalError(): string | undefined {
    const lines = this.controller.stderrTail.split("\n").filter((line) => line.includes("internal error:"));
    return lines.at(-1)?.trim();
  }

  /** Stops the controller (SIGTERM, SIGKILL after 10 s), then nats-server; removes the data. */
  async stop(): Promise<void> {
    this.api.close();
    if (this.controller.running) {
      const force = setTimeout(() => void this.controller.kill("SIGKILL"), 10_000);
      await this.controller.kill("SIGTERM");
      clearTimeout(force);
    }
    await this.nats.stop();
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
