// The agent's client of the native fleetwatch-helper: spawns it, speaks the
// frame protocol over its stdin/stdout, turns replies into promises and
// events into one buffered AsyncIterable. Never SIGKILLs the helper: a killed
// helper would leave targets armed (they would die at their next watched write).
import { spawn } from "node:child_process";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { fileURLToPath } from "node:url";

import {
  FrameDecoder,
  HelperProtocolError,
  MessageType,
  PROTOCOL_VERSION,
  decodeArmed,
  decodeDisarmed,
  decodeError,
  decodeEvent,
  decodeHello,
  decodeResolved,
  helloProtocolVersion,
  encodeArm,
  expandHit,
  encodeDisarm,
  encodeResolve,
  encodeShutdown,
} from "./helper-protocol.js";
import type {
  ArmResult,
  DisarmResult,
  Frame,
  HelloPayload,
  HelperBackend,
  HelperChunk,
  HelperCondition,
  HelperEvent,
  PerfValues,
  ResolvedSymbol,
  SymbolDefinition,
  TrapCheck,
} from "./helper-protocol.js";

export type {
  ArmResult,
  DisarmResult,
  ExitKind,
  GroupCounts,
  GroupDoneReason,
  HelperBackend,
  HelperChunk,
  HelperCompareOp,
  HelperCondition,
  HelperEvent,
  HelperHit,
  HelperLogLevel,
  HelperMode,
  PerfValues,
  ResolvedSymbol,
  StackFrame,
  ThreadHits,
} from "./helper-protocol.js";
export { HelperProtocolError } from "./helper-protocol.js";

/**
 * Where the helper's tracer thread runs. "follow" (the helper's default): it
 * pins itself to the CPU the most recently trapping target thread last ran
 * on, re-checked every 50 ms while traps come; "none": the scheduler's
 * choice. The target's own affinity is never changed.
 */
export type CpuPolicy = "follow" | "none";

/** How to run the helper; behaviour lives in HelperProcess. */
export interface HelperOptions {
  /** Helper binary; default: agent/native/build/fleetwatch-helper of this repository. */
  path?: string;
  /** Deadline of each request (and of HELLO, and of each shutdown step). Default 10000. */
  requestTimeoutMs?: number;
  /** Default: the helper's own ("follow"). */
  cpuPolicy?: CpuPolicy;
  /** Each CPU's perf ring buffer of a sampling job, in KiB (a power of two, 64 to 262144). Default: the helper's, by what samples carry. */
  perfBufferKiB?: number;
}

/** Per-group options of arm(); every field defaults to "off". */
export interface WatchOptions {
  /** Delivered hits after which the group is retired (group-done "budget"). Default 0n: no budget. */
  maxHits?: bigint;
  /** Above this many delivered hits in a 1-second window, the group's slots are cleared for backoffMs. Default 0: no limit. */
  maxHitsPerSecond?: number;
  /** Length of a rate-limit back-off. Default 0: until the current 1-second window ends. */
  backoffMs?: number;
  /** Up to 4 predicates, ANDed, on each chunk's new value; hits failing them are counted as filtered. */
  conditions?: HelperCondition[];
  /** Up to 16 tids whose traps are delivered; others are counted as filtered. Default []: every thread. */
  tids?: number[];
  /** Frames of symbolized stack per hit, 0-64. Default 0: no stack. */
  stackDepth?: number;
  /** Default "ptrace". */
  backend?: HelperBackend;
  /** No hit records: "counts" events every countIntervalMs (perf only). Default false. */
  countOnly?: boolean;
  /** Default 0: the helper's 1000. */
  countIntervalMs?: number;
}

/** What the helper can do on this host, from its HELLO. */
export interface HelperCapabilities {
  backends: HelperBackend[];
  perfValues: PerfValues;
  /** Why perf is unavailable or its values are not exact; "" otherwise. */
  perfNote: string;
  /** The start-up trap self-test of each backend (ptrace first); a restarted helper tests again. */
  traps: TrapCheck[];
}

const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
const STDERR_TAIL_BYTES = 4096;

/** Compiled to dist/agent/: the repository root is two levels up. */
const defaultHelperPath = (): string =>
  fileURLToPath(new URL("../../agent/native/build/fleetwatch-helper", import.meta.url));

/** The helper refused or failed a request; fields come from its ERROR frame. */
export class HelperError extends Error {
  override readonly name = "HelperError";
  readonly errno: number;
  /** "ESRCH", "EPERM", "ENOSPC", ... */
  readonly errnoName: string;
  /** The request, e.g. "arm pid 4242 group 7". */
  readonly attempted: string;

  constructor(message: string, fields: { errno: number; errnoName: string; attempted: string; cause?: unknown }) {
    super(message, { cause: fields.cause });
    this.errno = fields.errno;
    this.errnoName = fields.errnoName;
    this.attempted = fields.attempted;
  }
}

/** The helper exited (or could not start) before answering. */
export class HelperExitedError extends Error {
  override readonly name = "HelperExitedError";
  readonly code: number | null;
  readonly signal: string | null;
  readonly attempted: string;
  /** Last lines the helper wrote to stderr. */
  readonly stderrTail: string;

  constructor(
    message: string,
    fields: { code: number | null; signal: string | null; attempted: string; stderrTail: string; cause?: unknown },
  ) {
    super(message, { cause: fields.cause });
    this.code = fields.code;
    this.signal = fields.signal;
    this.attempted = fields.attempted;
    this.stderrTail = fields.stderrTail;
  }
}

/** No reply within the request deadline. */
export class HelperTimeoutError extends Error {
  override readonly name = "HelperTimeoutError";
  readonly attempted: string;
  readonly timeoutMs: number;

  constructor(attempted: string, timeoutMs: number) {
    super(`fleetwatch-helper did not answer "${attempted}" within ${timeoutMs} ms`);
    this.attempted = attempted;
    this.timeoutMs = timeoutMs;
  }
}

interface PendingRequest {
  expect: number;
  attempted: string;
  resolve(frame: Frame): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

/** Unbounded FIFO with one async consumer: events are buffered, never dropped. */
class EventQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private waiter: ((r: IteratorResult<T>) => void) | undefined;
  private ended = false;
  private taken = false;

  push(item: T): void {
    if (this.ended) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  end(): void {
    this.ended = true;
    if (this.waiter && this.items.length === 0) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.taken) throw new Error("helper events have a single consumer; events() was already iterated");
    this.taken = true;
    return {
      next: (): Promise<IteratorResult<T>> => {
        const item = this.items.shift();
        if (item !== undefined) return Promise.resolve({ value: item, done: false });
        if (this.ended) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.waiter = resolve;
        });
      },
      return: (): Promise<IteratorResult<T>> => {
        // The consumer left: keep nothing more in memory.
        this.ended = true;
        this.items.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/** A running fleetwatch-helper. Create with HelperProcess.start(). */
export class HelperProcess {
  readonly pid: number;
  /** Settles when the helper has exited and its output is consumed. */
  readonly exited: Promise<{ code: number | null; signal: string | null }>;

  private readonly child: ChildProcessWithoutNullStreams;
  private readonly timeoutMs: number;
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, PendingRequest>();
  private readonly queue = new EventQueue<HelperEvent>();
  private nextRequestId = 1;
  private stderrTail = "";
  private exitInfo: { code: number | null; signal: string | null } | undefined;
  private fatal: Error | undefined;
  private helloWaiter: { resolve(): void; reject(err: Error): void } | undefined;
  private helloSeen = false;
  private hello: HelloPayload | undefined;
  /** Per pid: what each stack ip means (SYMBOLS events). */
  private readonly symbols = new Map<number, Map<bigint, SymbolDefinition>>();

  private constructor(child: ChildProcessWithoutNullStreams, timeoutMs: number) {
    if (child.pid === undefined) throw new Error("fleetwatch-helper has no pid");
    this.child = child;
    this.pid = child.pid;
    this.timeoutMs = timeoutMs;
    this.exited = new Promise((resolve) => {
      child.once("close", (code, signal) => {
        this.exitInfo = { code, signal };
        this.onClosed();
        resolve(this.exitInfo);
      });
    });
    child.stdout.on("data", (chunk: Buffer) => this.onData(chunk));
    child.stderr.on("data", (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString("utf8")).slice(-STDERR_TAIL_BYTES);
    });
    // EPIPE after the helper died: reported through "close" instead.
    child.stdin.on("error", () => undefined);
  }

  /** Version string the helper announced in HELLO. */
  get helperVersion(): string {
    return this.hello?.helperVersion ?? "";
  }

  /** The backends and perf value mode the helper announced in HELLO. */
  get capabilities(): HelperCapabilities {
    return { backends: this.hello?.backends ?? [], perfValues: this.hello?.perfValues ?? "unavailable", perfNote: this.hello?.perfNote ?? "", traps: this.hello?.traps ?? [] };
  }

  /** Spawns the helper and waits for its HELLO (protocol version must be PROTOCOL_VERSION). */
  static async start(options: HelperOptions = {}): Promise<HelperProcess> {
    const path = options.path ?? defaultHelperPath();
    const timeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    const args = [...(options.cpuPolicy === undefined ? [] : ["--cpu-policy", options.cpuPolicy]), ...(options.perfBufferKiB === undefined ? [] : ["--perf-buffer-kib", String(options.perfBufferKiB)])];
    const child = spawn(path, args, { stdio: ["pipe", "pipe", "pipe"] });
    await new Promise<void>((resolve, reject) => {
      child.once("spawn", () => resolve());
      child.once("error", (err) =>
        reject(
          new HelperExitedError(`cannot start fleetwatch-helper at ${path}: ${err.message}`, {
            code: null,
            signal: null,
            attempted: "start",
            stderrTail: "",
            cause: err,
          }),
        ),
      );
    });
    const helper = new HelperProcess(child, timeoutMs);
    try {
      await helper.waitForHello();
    } catch (err) {
      // Closing stdin makes a live helper exit (nothing is armed yet).
      child.stdin.end();
      if (!(await helper.exitedWithin(timeoutMs))) {
        child.kill("SIGTERM");
        await helper.exited;
      }
      throw err;
    }
    return helper;
  }

  /** Address of `name` (+ offset) in pid's memory, load bias applied. */
  async resolve(pid: number, name: string, offset = 0n): Promise<ResolvedSymbol> {
    const attempted = `resolve '${name}' in pid ${pid}`;
    const frame = await this.request(
      (id) => encodeResolve(id, { pid, name, offset }),
      MessageType.Resolved,
      attempted,
    );
    return decodeResolved(frame.payload);
  }

  /** Arms one group of chunks on every thread of pid (all or nothing). */
  async arm(pid: number, group: bigint, chunks: HelperChunk[], options: WatchOptions = {}): Promise<ArmResult> {
    const attempted = `arm pid ${pid} group ${group}`;
    const request = {
      pid,
      group,
      chunks,
      maxHits: options.maxHits ?? 0n,
      maxHitsPerSecond: options.maxHitsPerSecond ?? 0,
      backoffMs: options.backoffMs ?? 0,
      conditions: options.conditions ?? [],
      tids: options.tids ?? [],
      stackDepth: options.stackDepth ?? 0,
      backend: options.backend ?? "ptrace",
      countOnly: options.countOnly ?? false,
      countIntervalMs: options.countIntervalMs ?? 0,
    };
    const frame = await this.request((id) => encodeArm(id, request), MessageType.Armed, attempted);
    return decodeArmed(frame.payload);
  }

  /** Clears a group's registers; the helper detaches when pid has no group left. */
  async disarm(pid: number, group: bigint): Promise<DisarmResult> {
    const attempted = `disarm pid ${pid} group ${group}`;
    const frame = await this.request((id) => encodeDisarm(id, { pid, group }), MessageType.Disarmed, attempted);
    return decodeDisarmed(frame.payload);
  }

  /**
   * Hits (in batches, stacks symbolized), counting groups' counts, group
   * lifecycle (done, back-off, resumed), target lifecycle (exited, exec,
   * fork, thread counts), logs.
   * The helper's SYMBOLS definitions are consumed here, kept per pid until
   * its exit or exec. Single consumer; ends when the helper exits.
   */
  events(): AsyncIterable<HelperEvent> {
    return this.queue;
  }

  /**
   * Asks the helper to disarm everything, detach and exit, and waits for it.
   * Fallbacks, each after the request deadline: close stdin (EOF means the
   * same to the helper), then SIGTERM (its handler also disarms first).
   */
  async shutdown(): Promise<void> {
    if (this.exitInfo) return;
    try {
      await this.request((id) => encodeShutdown(id), MessageType.ShutdownOk, "shutdown");
    } catch {
      // Already exiting, or no answer: fall through to the fallbacks.
    }
    if (await this.exitedWithin(this.timeoutMs)) return;
    this.child.stdin.end();
    if (await this.exitedWithin(this.timeoutMs)) return;
    this.child.kill("SIGTERM");
    await this.exited;
  }

  private async exitedWithin(ms: number): Promise<boolean> {
    if (this.exitInfo) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    });
    try {
      return await Promise.race([this.exited.then(() => true as const), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private waitForHello(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new HelperTimeoutError("start (HELLO)", this.timeoutMs)),
        this.timeoutMs,
      );
      this.helloWaiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      if (this.fatal) this.helloWaiter.reject(this.fatal);
    });
  }

  private request(encode: (id: number) => Buffer, expect: number, attempted: string): Promise<Frame> {
    if (this.exitInfo || this.fatal) return Promise.reject(this.exitError(attempted));
    const id = this.nextRequestId;
    this.nextRequestId = this.nextRequestId >= 0xffffffff ? 1 : this.nextRequestId + 1;
    let frame: Buffer;
    try {
      frame = encode(id);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new HelperTimeoutError(attempted, this.timeoutMs));
      }, this.timeoutMs);
      this.pending.set(id, { expect, attempted, resolve, reject, timer });
      this.child.stdin.write(frame);
    });
  }

  private exitError(attempted: string): Error {
    if (this.fatal && !this.exitInfo) return this.fatal;
    const code = this.exitInfo?.code ?? null;
    const signal = this.exitInfo?.signal ?? null;
    const how = signal ? `signal ${signal}` : `code ${code}`;
    const tail = this.stderrTail.trim();
    return new HelperExitedError(
      `fleetwatch-helper (pid ${this.pid}) exited (${how}) before answering "${attempted}"` +
        (tail ? `; stderr: ${tail}` : ""),
      { code, signal, attempted, stderrTail: this.stderrTail, cause: this.fatal },
    );
  }

  private onData(chunk: Buffer): void {
    if (this.fatal) return;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
      for (const frame of frames) this.onFrame(frame);
    } catch (err) {
      this.onProtocolError(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private onProtocolError(err: Error): void {
    this.fatal = err;
    this.helloWaiter?.reject(err);
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(err);
    }
    this.queue.push({ kind: "log", level: "error", message: `helper protocol error: ${err.message}` });
    // EOF makes the helper disarm, detach and exit.
    this.child.stdin.end();
  }

  private onFrame(frame: Frame): void {
    if (!this.helloSeen) {
      if (frame.type !== MessageType.Hello) {
        throw new HelperProtocolError(`first frame is type 0x${frame.type.toString(16)}, not HELLO`, {
          frameType: frame.type,
        });
      }
      // The version first: the rest of a HELLO of another version has another layout.
      const version = helloProtocolVersion(frame.payload);
      if (version !== PROTOCOL_VERSION) {
        throw new HelperProtocolError(`helper speaks protocol ${version}, this agent speaks ${PROTOCOL_VERSION}`, {
          frameType: frame.type,
        });
      }
      this.hello = decodeHello(frame.payload);
      this.helloSeen = true;
      this.helloWaiter?.resolve();
      return;
    }
    if (frame.requestId === 0) {
      const event = decodeEvent(frame);
      if (event === undefined) {
        throw new HelperProtocolError(`unexpected event frame type 0x${frame.type.toString(16)}`, {
          frameType: frame.type,
        });
      }
      if (event.kind === "symbols") {
        let table = this.symbols.get(event.pid);
        if (!table) this.symbols.set(event.pid, (table = new Map()));
        for (const def of event.symbols) table.set(def.ip, def);
        return;
      }
      if (event.kind === "hits") {
        this.queue.push({ kind: "hits", hits: event.hits.map((h) => expandHit(h, this.symbols.get(h.pid))) });
        return;
      }
      // The address space is gone: so are the meanings of its ips.
      if (event.kind === "target-exited" || event.kind === "target-exec") this.symbols.delete(event.pid);
      this.queue.push(event);
      return;
    }
    const p = this.pending.get(frame.requestId);
    if (!p) return; // its caller timed out already
    this.pending.delete(frame.requestId);
    clearTimeout(p.timer);
    if (frame.type === MessageType.Error) {
      const e = decodeError(frame.payload);
      p.reject(new HelperError(e.message, { errno: e.errno, errnoName: e.errnoName, attempted: p.attempted }));
    } else if (frame.type === p.expect) {
      p.resolve(frame);
    } else {
      p.reject(
        new HelperProtocolError(
          `"${p.attempted}" answered with type 0x${frame.type.toString(16)}, expected 0x${p.expect.toString(16)}`,
          { frameType: frame.type },
        ),
      );
    }
  }

  private onClosed(): void {
    this.helloWaiter?.reject(this.exitError("start (HELLO)"));
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(this.exitError(p.attempted));
    }
    this.queue.end();
  }
}
