// Every process the bench starts itself (writers, the bare loop, gdb), kept in
// one registry so that an error or Ctrl-C stops and reaps all of them; and
// waits that end early when the bench is interrupted.
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { readFile } from "node:fs/promises";

/** The bench was interrupted (SIGINT, SIGTERM, SIGHUP). */
export class BenchInterruptedError extends Error {
  override readonly name = "BenchInterruptedError";
}

/**
 * The bench's command line: `{ options }`, or the exit code once usage was
 * printed (2 after a bad option, with why; 0 for --help, when `parse` gives
 * undefined).
 */
export function parseCommandLine<T>(parse: (argv: string[]) => T | undefined, usage: string, errorText: (err: unknown) => string): { options: T } | { code: number } {
  let options: T | undefined;
  try {
    options = parse(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${errorText(err)}\n${usage}\n`);
    return { code: 2 };
  }
  if (!options) {
    process.stdout.write(`${usage}\n`);
    return { code: 0 };
  }
  return { options };
}

/** Aborted with BenchInterruptedError at SIGINT, SIGTERM or SIGHUP, saying so as `name`. */
export function abortOnSignals(name: string): AbortController {
  const interrupt = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    process.stderr.write(`\n${name}: ${sig}: stopping everything it started\n`);
    interrupt.abort(new BenchInterruptedError(sig));
  };
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(sig, onSignal);
  return interrupt;
}

/** A wait passed its deadline. */
export class BenchTimeoutError extends Error {
  override readonly name = "BenchTimeoutError";
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** Resolves like `promise`, or rejects when `signal` aborts or `timeoutMs` passes, naming `what`. */
export async function until<T>(promise: Promise<T>, what: string, signal: AbortSignal, timeoutMs: number): Promise<T> {
  if (signal.aborted) throw new BenchInterruptedError(`interrupted before ${what}`);
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new BenchTimeoutError(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
    onAbort = () => reject(new BenchInterruptedError(`interrupted while waiting for ${what}`));
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([promise, stop]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal.removeEventListener("abort", onAbort);
  }
}

const live = new Set<BenchProcess>();

/** A child with its stdout kept as lines and the tail of its stderr. */
export class BenchProcess {
  readonly lines: string[] = [];
  stderrTail = "";
  readonly exited: Promise<ExitStatus>;
  private exit: ExitStatus | undefined;
  private partial = "";
  private readonly waiters = new Set<() => void>();

  private constructor(
    readonly name: string,
    readonly child: ChildProcessWithoutNullStreams,
  ) {
    child.stdout.setEncoding("utf8").on("data", (text: string) => {
      const parts = (this.partial + text).split("\n");
      this.partial = parts.pop() ?? "";
      this.lines.push(...parts);
      for (const w of this.waiters) w();
    });
    child.stderr.setEncoding("utf8").on("data", (text: string) => {
      this.stderrTail = (this.stderrTail + text).slice(-4000);
    });
    child.stdin.on("error", () => undefined);
    this.exited = new Promise((resolve) => {
      // "close": every line has been read by then.
      child.once("close", (code, signal) => {
        this.exit = { code, signal };
        live.delete(this);
        for (const w of this.waiters) w();
        resolve(this.exit);
      });
    });
  }

  /**
   * Starts a tracked child in its own process group: a terminal's Ctrl-C then
   * reaches only the bench, which stops its children in order.
   */
  static async start(name: string, command: string, args: string[]): Promise<BenchProcess> {
    const child = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"], detached: true });
    const proc = new BenchProcess(name, child);
    live.add(proc);
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", () => resolve());
      child.once("error", (err) => {
        live.delete(proc);
        reject(new Error(`cannot start ${name} (${command}): ${err.message}`, { cause: err }));
      });
    });
    return proc;
  }

  get pid(): number {
    return this.child.pid as number;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  /** Writes line + "\n" to its stdin. */
  send(line: string): void {
    this.child.stdin.write(`${line}\n`);
  }

  /** The first stdout line matching `re`; fails if the process exits first. */
  waitForLine(re: RegExp, signal: AbortSignal, timeoutMs: number): Promise<string> {
    const found = new Promise<string>((resolve, reject) => {
      const check = (): void => {
        const line = this.lines.find((l) => re.test(l));
        if (line !== undefined) {
          this.waiters.delete(check);
          resolve(line);
        } else if (this.exit) {
          this.waiters.delete(check);
          reject(new Error(`${this.name} exited (${this.exit.code ?? this.exit.signal}) without printing ${re}: ${this.stderrTail.trim() || this.lines.slice(-5).join(" | ")}`));
        }
      };
      this.waiters.add(check);
      check();
    });
    return until(found, `${this.name} to print ${re}`, signal, timeoutMs);
  }

  waitForExit(signal: AbortSignal, timeoutMs: number): Promise<ExitStatus> {
    return until(this.exited, `${this.name} (pid ${this.pid}) to exit`, signal, timeoutMs);
  }

  /** Sends `sig` unless it already exited, and waits for (and so reaps) it. */
  async kill(sig: NodeJS.Signals = "SIGKILL"): Promise<ExitStatus> {
    if (this.running) {
      try {
        process.kill(this.pid, sig);
      } catch {
        // exited meanwhile
      }
    }
    return this.exited;
  }
}

/** SIGKILLs and reaps every tracked child still running. */
export async function stopAllProcesses(): Promise<void> {
  await Promise.all([...live].map((p) => p.kill("SIGKILL")));
}

/** Names of tracked children still running (for the final leak check). */
export function liveProcessNames(): string[] {
  return [...live].map((p) => `${p.name} (pid ${p.pid})`);
}

/** TracerPid from /proc/PID/status: 0 when untraced, undefined when gone. */
export async function tracerPidOf(pid: number): Promise<number | undefined> {
  try {
    const m = /^TracerPid:\s*(\d+)/m.exec(await readFile(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The helper's trap self-test on this host: undefined when traps are
 * delivered, else its report. A trap-path figure from a host that delivers
 * no traps would time nothing at all, so the benchmarks say so instead.
 */
export async function noTrapsHere(helper: string): Promise<string | undefined> {
  const r = spawnSync(helper, ["--self-test"], { encoding: "utf8", timeout: 10_000 });
  if (r.status === 0) return undefined;
  return (r.stdout || r.stderr || `exit ${r.status}`).trim().split("\n").join("; ");
}
