// The C writer (bench/writer.c) as a tracked child: start it, learn its pid
// and the address of fw_counter from its "ready" line, read its "done" line.
import { BenchProcess } from "./processes.js";

const READY_TIMEOUT_MS = 10_000;

/** How the writer runs; `writesPerThread` or `seconds` (or both) bounds it. */
export interface WriterOptions {
  threads: number;
  writesPerThread?: number;
  seconds?: number;
  /** Start it pinned to this CPU (taskset). */
  cpu?: number;
}

/** The writer's own report, printed after its last thread joined. */
export interface WriterDone {
  threads: number;
  writes: number;
  ns: number;
  writesPerSecond: number;
}

export interface Writer {
  proc: BenchProcess;
  pid: number;
  /** &fw_counter in the writer. */
  address: bigint;
}

/** Arguments of bench/writer.c for these options. */
export function writerArgs(options: WriterOptions): string[] {
  const args = ["--threads", String(options.threads)];
  if (options.writesPerThread !== undefined) args.push("--writes", String(options.writesPerThread));
  if (options.seconds !== undefined) args.push("--seconds", String(options.seconds));
  return args;
}

/** Starts the writer and waits for "ready"; it writes only after go(). */
export async function startWriter(binary: string, options: WriterOptions, signal: AbortSignal): Promise<Writer> {
  const args = writerArgs(options);
  const proc =
    options.cpu === undefined
      ? await BenchProcess.start("writer", binary, args)
      : await BenchProcess.start("writer", "taskset", ["-c", String(options.cpu), binary, ...args]);
  const ready = await proc.waitForLine(/^ready \d+ 0x[0-9a-f]+/, signal, READY_TIMEOUT_MS);
  const [, pid, address] = ready.split(" ");
  return { proc, pid: Number(pid), address: BigInt(address as string) };
}

/** Parses "done threads=T writes=N ns=E writes_per_s=R". */
export function parseWriterDone(line: string): WriterDone {
  const m = /^done threads=(\d+) writes=(\d+) ns=(\d+) writes_per_s=(\d+)/.exec(line);
  if (!m) throw new Error(`not a writer "done" line: ${line}`);
  return { threads: Number(m[1]), writes: Number(m[2]), ns: Number(m[3]), writesPerSecond: Number(m[4]) };
}

/** Waits for the writer's "done" line and its exit. */
export async function waitWriterDone(writer: Writer, signal: AbortSignal, timeoutMs: number): Promise<WriterDone> {
  const line = await writer.proc.waitForLine(/^done /, signal, timeoutMs);
  const status = await writer.proc.waitForExit(signal, 10_000);
  if (status.code !== 0) throw new Error(`writer exited with ${status.code ?? status.signal}: ${writer.proc.stderrTail.trim()}`);
  return parseWriterDone(line);
}
