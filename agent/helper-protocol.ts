// Pure encode/decode of the fleetwatch-helper wire protocol, its version in PROTOCOL_VERSION
// (agent/native/PROTOCOL.md): 12-byte frame headers, request encoders, reply and
// event decoders, a streaming frame decoder, and the expansion of a hit's
// stack ips through the SYMBOLS definitions. No I/O here.
import { conditionOperators, helperProtocolVersion, maxConditions, maxStackDepth, maxTids, type CompareOperatorText } from "../proto/limits.js";

/** Protocol version this client speaks; HELLO must carry the same. */
export const PROTOCOL_VERSION = helperProtocolVersion;
export const FRAME_HEADER_BYTES = 12;
/** Largest frame either side may send, header included. */
export const FRAME_MAX_BYTES = 1 << 20;
/** Fixed part of a hit record; then u8 frame count and that many u64 ips. */
export const HIT_FIXED_BYTES = 64;
export const CHUNK_BYTES = 12;
export const CONDITION_BYTES = 16;
/** ARM's fixed part, before its chunks. */
export const ARM_FIXED_BYTES = 40;
/** ARM limits (the helper re-checks them). */
export const MAX_CONDITIONS = maxConditions;
export const MAX_TID_FILTER = maxTids;
export const MAX_STACK_DEPTH = maxStackDepth;

/** Frame types (PROTOCOL.md). */
export const MessageType = {
  Hello: 0x0001,
  Resolve: 0x0101,
  Arm: 0x0102,
  Disarm: 0x0103,
  Shutdown: 0x0105,
  Resolved: 0x0181,
  Armed: 0x0182,
  Disarmed: 0x0183,
  ShutdownOk: 0x0185,
  Error: 0x01ff,
  Hits: 0x0201,
  GroupDone: 0x0202,
  TargetExited: 0x0203,
  TargetExec: 0x0204,
  Log: 0x0205,
  Symbols: 0x0206,
  GroupBackoff: 0x0207,
  GroupResumed: 0x0208,
  TargetFork: 0x0209,
  Threads: 0x020a,
  Counts: 0x020b,
} as const;

export type HelperMode = "x" | "w" | "rw";

/**
 * How a group is armed. "ptrace": the helper traces the pid and handles each
 * trap while the thread is stopped. "perf": perf_event_open breakpoints,
 * no attach and no stop; they vanish with the helper's file descriptors.
 */
export type HelperBackend = "ptrace" | "perf";

/**
 * How the perf backend reads a hit's values on this host: "unavailable"
 * (no perf), "after-trap" (when the sample is drained), "exact" (in the
 * kernel at the trap).
 */
export type PerfValues = "unavailable" | "after-trap" | "exact";

/** One debug-register chunk: already aligned, `length` bytes at `address`. */
export interface HelperChunk {
  dr: number;
  mode: HelperMode;
  length: number;
  address: bigint;
}

/** Unsigned 64-bit comparisons of a chunk's new value against `value`. */
export type HelperCompareOp = CompareOperatorText;

/**
 * A value predicate evaluated by the helper on each chunk's new value.
 * "changed": new != old; "unchanged": new == old (with mode "rw", a read-only watch).
 */
export type HelperCondition = { op: HelperCompareOp; value: bigint } | { op: "changed" | "unchanged" };

export interface ResolvedSymbol {
  /** Symbol address plus the requested offset, load bias applied. */
  address: bigint;
  size: bigint;
  /** Path of the module that defines it. */
  module: string;
  symbol: string;
}

export interface ArmResult {
  threadsTotal: number;
  threadsArmed: number;
  drMask: number;
  /** DR indexes the helper ever wrote in this process: the kernel keeps those slots until its threads exit or exec. */
  reservedMask: number;
}

/** Per group: trapped = delivered + suppressed + filtered + lost. */
export interface GroupCounts {
  trapped: bigint;
  /** Hit records sent; for a counting group, hits counted. */
  delivered: bigint;
  /** Budget used up or rate limit hit before the slots were cleared. */
  suppressed: bigint;
  /** Failed the group's thread filter or conditions. */
  filtered: bigint;
  /** perf samples the kernel could not write (a ring buffer was full); always 0 with ptrace. */
  lost: bigint;
}

/** DISARM's answer: the group's final counts and the process's reserved DR indexes. */
export interface DisarmResult extends GroupCounts {
  reservedMask: number;
}

/** One frame of a hit's stack, named by the helper's SYMBOLS definitions. */
export interface StackFrame {
  ip: bigint;
  /** "" when no symbol covers ip. */
  function: string;
  /** ip minus the function's start. */
  offset: bigint;
  /** Path of the module holding ip; "" if none. */
  module: string;
}

/** A SYMBOLS entry: what ip means in one process. */
export interface SymbolDefinition {
  ip: bigint;
  offset: bigint;
  function: string;
  module: string;
}

interface HitFields {
  group: bigint;
  pid: number;
  tid: number;
  ip: bigint;
  /** Address of the chunk that fired. */
  address: bigint;
  oldValue: bigint;
  newValue: bigint;
  /** CLOCK_REALTIME at the trap stop, nanoseconds. */
  timeNs: bigint;
  dr: number;
  length: number;
  mode: HelperMode;
  /** newValue was read at the trap (ptrace); false: read when a perf sample was drained. */
  valueExact: boolean;
}

/** A hit as it travels: its stack as bare ips (innermost first). */
export interface HelperHitRecord extends HitFields {
  ips: bigint[];
}

/** A hit as the client hands it out: its stack symbolized ([] when the group asked for none). */
export interface HelperHit extends HitFields {
  stack: StackFrame[];
}

export type GroupDoneReason = "budget" | "exited" | "exec";
/** How a process ended: "gone" when the helper could not learn its status (only perf watched it: not its tracee). */
export type ExitKind = "exited" | "killed" | "gone";

/** One thread's hits in a COUNTS interval. */
export interface ThreadHits {
  tid: number;
  hits: bigint;
}
export type HelperLogLevel = "debug" | "info" | "warning" | "error";

/** Events other than hits and symbol definitions, the same on the wire and from the client. */
export type HelperLifecycleEvent =
  | { kind: "group-done"; pid: number; group: bigint; reason: GroupDoneReason; counts: GroupCounts }
  | { kind: "group-backoff"; pid: number; group: bigint; untilNs: bigint; suppressedSoFar: bigint }
  | { kind: "group-resumed"; pid: number; group: bigint }
  | { kind: "target-exited"; pid: number; how: ExitKind; code: number }
  | { kind: "target-exec"; pid: number }
  | { kind: "target-fork"; pid: number; childPid: number }
  | { kind: "threads"; pid: number; threadsTotal: number; threadsArmed: number }
  /** A counting group's totals so far and each thread's hits since its previous COUNTS. */
  | { kind: "counts"; pid: number; group: bigint; timeNs: bigint; counts: GroupCounts; threads: ThreadHits[] }
  | { kind: "log"; level: HelperLogLevel; message: string };

/** An event frame as decoded. */
export type HelperWireEvent =
  | { kind: "hits"; hits: HelperHitRecord[] }
  | { kind: "symbols"; pid: number; symbols: SymbolDefinition[] }
  | HelperLifecycleEvent;

/** What HelperProcess.events() yields: hits carry symbolized stacks. */
export type HelperEvent = { kind: "hits"; hits: HelperHit[] } | HelperLifecycleEvent;

export interface Frame {
  type: number;
  flags: number;
  requestId: number;
  payload: Buffer;
}

export interface HelloPayload {
  protocolVersion: number;
  slotsPerThread: number;
  /** What works on this host. */
  backends: HelperBackend[];
  perfValues: PerfValues;
  helperVersion: string;
  /** Why perf is unavailable or its values are not exact; "" otherwise. */
  perfNote: string;
  /** The helper's start-up trap self-test: one entry per backend, ptrace first. */
  traps: TrapCheck[];
}

/**
 * Whether a backend's watched writes really trap on this host: "delivered"
 * only when every probe write trapped; "not-delivered" when the probe ran and
 * some or all writes did not trap; "not-run" when the probe could not run at
 * all (no ptrace permission, perf forbidden), which is no proof either way.
 */
export type TrapDelivery = "delivered" | "not-delivered" | "not-run";

/** One backend's trap self-test result, from HELLO. */
export interface TrapCheck {
  backend: HelperBackend;
  delivery: TrapDelivery;
  /** Probe writes made to the watched word (0 when not run). */
  writes: number;
  /** Of those, how many trapped. */
  traps: number;
  /** Measured cost of one trap in nanoseconds (0 when none trapped). */
  nsPerTrap: number;
  /** What the probe saw, in words, e.g. "DR0 armed, 0 of 8 probe writes trapped: ...". */
  detail: string;
}

export interface ErrorPayload {
  errno: number;
  errnoName: string;
  message: string;
}

export interface ResolveRequest {
  pid: number;
  offset: bigint;
  name: string;
}

export interface ArmRequest {
  pid: number;
  group: bigint;
  /** 0n: no budget. */
  maxHits: bigint;
  /** 0: no rate limit. */
  maxHitsPerSecond: number;
  /** 0: until the current 1-second window ends. */
  backoffMs: number;
  chunks: HelperChunk[];
  conditions: HelperCondition[];
  /** []: every thread. */
  tids: number[];
  /** 0: no stack. */
  stackDepth: number;
  backend: HelperBackend;
  /** No hit records: COUNTS every countIntervalMs (perf only). */
  countOnly: boolean;
  /** 0: 1000. */
  countIntervalMs: number;
}

export interface DisarmRequest {
  pid: number;
  group: bigint;
}

/** The byte stream or a payload does not follow the protocol. */
export class HelperProtocolError extends Error {
  override readonly name = "HelperProtocolError";
  /** Frame type being decoded, when known. */
  readonly frameType: number | undefined;

  constructor(message: string, options: { frameType?: number; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.frameType = options.frameType;
  }
}

const MODE_TO_WIRE: Record<HelperMode, number> = { x: 0, w: 1, rw: 3 };
const DONE_REASONS: Record<number, GroupDoneReason> = { 1: "budget", 2: "exited", 3: "exec" };
const EXIT_KINDS: ExitKind[] = ["exited", "killed", "gone"];
const BACKENDS: HelperBackend[] = ["ptrace", "perf"];
const PERF_VALUES: PerfValues[] = ["unavailable", "after-trap", "exact"];
/** HELLO's delivery codes, by value. */
const TRAP_DELIVERIES: TrapDelivery[] = ["not-run", "delivered", "not-delivered"];
const ARM_FLAG_COUNT_ONLY = 1;
const HIT_FLAG_VALUE_EXACT = 1;
const LOG_LEVELS: HelperLogLevel[] = ["debug", "info", "warning", "error"];
const U64_MAX = (1n << 64n) - 1n;

/** DR7 RW encoding of a mode. */
export function modeToWire(mode: HelperMode): number {
  const v = MODE_TO_WIRE[mode];
  if (v === undefined) throw new RangeError(`unknown watch mode ${String(mode)}`);
  return v;
}

/** Mode of a DR7 RW encoding (2, I/O, has no mode and is a protocol error). */
export function modeFromWire(v: number): HelperMode {
  switch (v) {
    case 0:
      return "x";
    case 1:
      return "w";
    case 3:
      return "rw";
    default:
      throw new HelperProtocolError(`unknown mode ${v} in a hit record`);
  }
}

/** Appends little-endian fields; sizes are checked when written. */
class PayloadWriter {
  private readonly parts: Buffer[] = [];

  u8(v: number): this {
    const b = Buffer.alloc(1);
    b.writeUInt8(v);
    this.parts.push(b);
    return this;
  }
  u16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16LE(v);
    this.parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.parts.push(b);
    return this;
  }
  i32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.parts.push(b);
    return this;
  }
  u64(v: bigint): this {
    if (v < 0n || v > U64_MAX) throw new RangeError(`${v} does not fit in u64`);
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    this.parts.push(b);
    return this;
  }
  pad(n: number): this {
    this.parts.push(Buffer.alloc(n));
    return this;
  }
  str(s: string): this {
    const bytes = Buffer.from(s, "utf8");
    if (bytes.length > 0xffff) throw new RangeError(`string of ${bytes.length} bytes is too long`);
    this.u16(bytes.length);
    this.parts.push(bytes);
    return this;
  }
  bytes(b: Buffer): this {
    this.parts.push(b);
    return this;
  }
  done(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** Reads little-endian fields of one payload; overruns are protocol errors. */
export class PayloadReader {
  private offset = 0;

  constructor(
    private readonly buf: Buffer,
    private readonly frameType?: number,
  ) {}

  private take(n: number): number {
    if (this.offset + n > this.buf.length) {
      throw new HelperProtocolError(
        `payload of ${this.buf.length} bytes ends before a ${n}-byte field at ${this.offset}`,
        this.frameType === undefined ? {} : { frameType: this.frameType },
      );
    }
    const at = this.offset;
    this.offset += n;
    return at;
  }
  u8(): number {
    return this.buf.readUInt8(this.take(1));
  }
  u16(): number {
    return this.buf.readUInt16LE(this.take(2));
  }
  u32(): number {
    return this.buf.readUInt32LE(this.take(4));
  }
  i32(): number {
    return this.buf.readInt32LE(this.take(4));
  }
  u64(): bigint {
    return this.buf.readBigUInt64LE(this.take(8));
  }
  skip(n: number): void {
    this.take(n);
  }
  str(): string {
    const n = this.u16();
    const at = this.take(n);
    return this.buf.toString("utf8", at, at + n);
  }
}

/** One frame: header (length, type, flags 0, request id) plus payload. */
export function encodeFrame(type: number, requestId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const length = FRAME_HEADER_BYTES + payload.length;
  if (length > FRAME_MAX_BYTES) throw new RangeError(`frame of ${length} bytes exceeds ${FRAME_MAX_BYTES}`);
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt32LE(length, 0);
  header.writeUInt16LE(type, 4);
  header.writeUInt16LE(0, 6);
  header.writeUInt32LE(requestId, 8);
  return Buffer.concat([header, payload]);
}

export function encodeResolve(requestId: number, req: ResolveRequest): Buffer {
  const p = new PayloadWriter().u32(req.pid).u64(req.offset).str(req.name).done();
  return encodeFrame(MessageType.Resolve, requestId, p);
}

/** Operators by their wire code. */
const CONDITION_OPS: readonly HelperCondition["op"][] = conditionOperators.map((o) => o.text);

/** Wire code of a condition op (PROTOCOL.md). */
export function conditionOpToWire(op: HelperCondition["op"]): number {
  const v = CONDITION_OPS.indexOf(op);
  if (v < 0) throw new RangeError(`unknown condition op ${String(op)}`);
  return v;
}

function conditionFromWire(op: number, value: bigint): HelperCondition {
  const name = CONDITION_OPS[op];
  if (name === undefined) throw new HelperProtocolError(`unknown condition op ${op}`, { frameType: MessageType.Arm });
  return name === "changed" || name === "unchanged" ? { op: name } : { op: name, value };
}

function checkCount(what: string, n: number, max: number): void {
  if (n > max) throw new RangeError(`${n} ${what} (at most ${max})`);
}

export function encodeArm(requestId: number, req: ArmRequest): Buffer {
  if (!BACKENDS.includes(req.backend)) throw new RangeError(`unknown backend ${String(req.backend)}`);
  checkCount("conditions", req.conditions.length, MAX_CONDITIONS);
  checkCount("tids in the thread filter", req.tids.length, MAX_TID_FILTER);
  checkCount("frames of stack depth", req.stackDepth, MAX_STACK_DEPTH);
  const w = new PayloadWriter()
    .u32(req.pid)
    .u64(req.group)
    .u64(req.maxHits)
    .u32(req.maxHitsPerSecond)
    .u32(req.backoffMs)
    .u8(req.chunks.length)
    .u8(req.conditions.length)
    .u8(req.tids.length)
    .u8(req.stackDepth)
    .u8(BACKENDS.indexOf(req.backend))
    .u8(req.countOnly ? ARM_FLAG_COUNT_ONLY : 0)
    .pad(2)
    .u32(req.countIntervalMs);
  for (const c of req.chunks) {
    w.u8(c.dr).u8(modeToWire(c.mode)).u8(c.length).pad(1).u64(c.address);
  }
  for (const c of req.conditions) {
    w.u8(conditionOpToWire(c.op)).pad(7).u64("value" in c ? c.value : 0n);
  }
  for (const tid of req.tids) w.u32(tid);
  return encodeFrame(MessageType.Arm, requestId, w.done());
}

export function encodeDisarm(requestId: number, req: DisarmRequest): Buffer {
  return encodeFrame(MessageType.Disarm, requestId, new PayloadWriter().u32(req.pid).u64(req.group).done());
}

export function encodeShutdown(requestId: number): Buffer {
  return encodeFrame(MessageType.Shutdown, requestId);
}

export function decodeResolveRequest(payload: Buffer): ResolveRequest {
  const r = new PayloadReader(payload, MessageType.Resolve);
  return { pid: r.u32(), offset: r.u64(), name: r.str() };
}

export function decodeArmRequest(payload: Buffer): ArmRequest {
  const r = new PayloadReader(payload, MessageType.Arm);
  const pid = r.u32();
  const group = r.u64();
  const maxHits = r.u64();
  const maxHitsPerSecond = r.u32();
  const backoffMs = r.u32();
  const count = r.u8();
  const conditionCount = r.u8();
  const tidCount = r.u8();
  const stackDepth = r.u8();
  const backendCode = r.u8();
  const backend = BACKENDS[backendCode];
  if (backend === undefined) throw new HelperProtocolError(`unknown backend ${backendCode}`, { frameType: MessageType.Arm });
  const countOnly = (r.u8() & ARM_FLAG_COUNT_ONLY) !== 0;
  r.skip(2);
  const countIntervalMs = r.u32();
  const chunks: HelperChunk[] = [];
  for (let i = 0; i < count; i++) {
    const dr = r.u8();
    const mode = modeFromWire(r.u8());
    const length = r.u8();
    r.skip(1);
    chunks.push({ dr, mode, length, address: r.u64() });
  }
  const conditions: HelperCondition[] = [];
  for (let i = 0; i < conditionCount; i++) {
    const op = r.u8();
    r.skip(7);
    conditions.push(conditionFromWire(op, r.u64()));
  }
  const tids: number[] = [];
  for (let i = 0; i < tidCount; i++) tids.push(r.u32());
  return { pid, group, maxHits, maxHitsPerSecond, backoffMs, chunks, conditions, tids, stackDepth, backend, countOnly, countIntervalMs };
}

export function decodeDisarmRequest(payload: Buffer): DisarmRequest {
  const r = new PayloadReader(payload, MessageType.Disarm);
  return { pid: r.u32(), group: r.u64() };
}

export function encodeHello(hello: HelloPayload): Buffer {
  const backends = hello.backends.reduce((mask, b) => mask | (1 << BACKENDS.indexOf(b)), 0);
  const p = new PayloadWriter()
    .u32(hello.protocolVersion)
    .u32(hello.slotsPerThread)
    .u32(backends)
    .u8(PERF_VALUES.indexOf(hello.perfValues))
    .pad(3)
    .str(hello.helperVersion)
    .str(hello.perfNote);
  for (const backend of BACKENDS) {
    const c = hello.traps.find((t) => t.backend === backend) ?? { delivery: "not-run" as const, writes: 0, traps: 0, nsPerTrap: 0, detail: "" };
    p.u8(TRAP_DELIVERIES.indexOf(c.delivery)).pad(3).u32(c.writes).u32(c.traps).u32(c.nsPerTrap).str(c.detail);
  }
  return encodeFrame(MessageType.Hello, 0, p.done());
}

/** The protocol version a HELLO announces: read on its own, since the rest of its layout depends on it. */
export function helloProtocolVersion(payload: Buffer): number {
  return new PayloadReader(payload, MessageType.Hello).u32();
}

export function decodeHello(payload: Buffer): HelloPayload {
  const r = new PayloadReader(payload, MessageType.Hello);
  const protocolVersion = r.u32();
  const slotsPerThread = r.u32();
  const mask = r.u32();
  const perfCode = r.u8();
  r.skip(3);
  const perfValues = PERF_VALUES[perfCode];
  if (perfValues === undefined) throw new HelperProtocolError(`unknown perf_values ${perfCode} in HELLO`, { frameType: MessageType.Hello });
  const backends = BACKENDS.filter((_, bit) => (mask >> bit) & 1);
  const helperVersion = r.str();
  const perfNote = r.str();
  const traps = BACKENDS.map((backend): TrapCheck => {
    const code = r.u8();
    r.skip(3);
    const delivery = TRAP_DELIVERIES[code];
    if (delivery === undefined) throw new HelperProtocolError(`unknown trap delivery ${code} for ${backend} in HELLO`, { frameType: MessageType.Hello });
    return { backend, delivery, writes: r.u32(), traps: r.u32(), nsPerTrap: r.u32(), detail: r.str() };
  });
  return { protocolVersion, slotsPerThread, backends, perfValues, helperVersion, perfNote, traps };
}

export function encodeResolved(requestId: number, s: ResolvedSymbol): Buffer {
  const p = new PayloadWriter().u64(s.address).u64(s.size).str(s.module).str(s.symbol).done();
  return encodeFrame(MessageType.Resolved, requestId, p);
}

export function decodeResolved(payload: Buffer): ResolvedSymbol {
  const r = new PayloadReader(payload, MessageType.Resolved);
  return { address: r.u64(), size: r.u64(), module: r.str(), symbol: r.str() };
}

export function encodeArmed(requestId: number, a: ArmResult): Buffer {
  const p = new PayloadWriter().u32(a.threadsTotal).u32(a.threadsArmed).u8(a.drMask).u8(a.reservedMask).pad(2).done();
  return encodeFrame(MessageType.Armed, requestId, p);
}

export function decodeArmed(payload: Buffer): ArmResult {
  const r = new PayloadReader(payload, MessageType.Armed);
  return { threadsTotal: r.u32(), threadsArmed: r.u32(), drMask: r.u8(), reservedMask: r.u8() };
}

function writeCounts(w: PayloadWriter, c: GroupCounts): PayloadWriter {
  return w.u64(c.trapped).u64(c.delivered).u64(c.suppressed).u64(c.filtered).u64(c.lost);
}

function readCounts(r: PayloadReader): GroupCounts {
  return { trapped: r.u64(), delivered: r.u64(), suppressed: r.u64(), filtered: r.u64(), lost: r.u64() };
}

export function encodeDisarmed(requestId: number, d: DisarmResult): Buffer {
  const p = writeCounts(new PayloadWriter(), d).u8(d.reservedMask).pad(7).done();
  return encodeFrame(MessageType.Disarmed, requestId, p);
}

export function decodeDisarmed(payload: Buffer): DisarmResult {
  const r = new PayloadReader(payload, MessageType.Disarmed);
  const counts = readCounts(r);
  return { ...counts, reservedMask: r.u8() };
}

export function encodeError(requestId: number, e: ErrorPayload): Buffer {
  const p = new PayloadWriter().i32(e.errno).str(e.errnoName).str(e.message).done();
  return encodeFrame(MessageType.Error, requestId, p);
}

export function decodeError(payload: Buffer): ErrorPayload {
  const r = new PayloadReader(payload, MessageType.Error);
  return { errno: r.i32(), errnoName: r.str(), message: r.str() };
}

/** One hit record: the 64-byte fixed part, u8 frame count, the ips. */
export function encodeHitRecord(h: HelperHitRecord): Buffer {
  checkCount("stack frames", h.ips.length, MAX_STACK_DEPTH);
  const w = new PayloadWriter()
    .u64(h.group)
    .u32(h.pid)
    .u32(h.tid)
    .u64(h.ip)
    .u64(h.address)
    .u64(h.oldValue)
    .u64(h.newValue)
    .u64(h.timeNs)
    .u8(h.dr)
    .u8(h.length)
    .u8(modeToWire(h.mode))
    .u8(h.valueExact ? HIT_FLAG_VALUE_EXACT : 0)
    .pad(4)
    .u8(h.ips.length);
  for (const ip of h.ips) w.u64(ip);
  return w.done();
}

/** The hit record at offset, and the offset just past it. */
export function decodeHitRecord(buf: Buffer, offset = 0): { hit: HelperHitRecord; end: number } {
  if (offset + HIT_FIXED_BYTES + 1 > buf.length) {
    throw new HelperProtocolError(`hit record at ${offset} runs past ${buf.length} bytes`, {
      frameType: MessageType.Hits,
    });
  }
  const frames = buf.readUInt8(offset + HIT_FIXED_BYTES);
  const end = offset + HIT_FIXED_BYTES + 1 + 8 * frames;
  if (end > buf.length) {
    throw new HelperProtocolError(`hit record at ${offset} with ${frames} frames runs past ${buf.length} bytes`, {
      frameType: MessageType.Hits,
    });
  }
  const ips: bigint[] = [];
  for (let i = 0; i < frames; i++) ips.push(buf.readBigUInt64LE(offset + HIT_FIXED_BYTES + 1 + 8 * i));
  const hit: HelperHitRecord = {
    group: buf.readBigUInt64LE(offset),
    pid: buf.readUInt32LE(offset + 8),
    tid: buf.readUInt32LE(offset + 12),
    ip: buf.readBigUInt64LE(offset + 16),
    address: buf.readBigUInt64LE(offset + 24),
    oldValue: buf.readBigUInt64LE(offset + 32),
    newValue: buf.readBigUInt64LE(offset + 40),
    timeNs: buf.readBigUInt64LE(offset + 48),
    dr: buf.readUInt8(offset + 56),
    length: buf.readUInt8(offset + 57),
    mode: modeFromWire(buf.readUInt8(offset + 58)),
    valueExact: (buf.readUInt8(offset + 59) & HIT_FLAG_VALUE_EXACT) !== 0,
    ips,
  };
  return { hit, end };
}

export function encodeHits(hits: HelperHitRecord[]): Buffer {
  const head = new PayloadWriter().u32(hits.length).pad(4).done();
  return encodeFrame(MessageType.Hits, 0, Buffer.concat([head, ...hits.map(encodeHitRecord)]));
}

export function decodeHits(payload: Buffer): HelperHitRecord[] {
  const r = new PayloadReader(payload, MessageType.Hits);
  const count = r.u32();
  r.skip(4);
  const hits: HelperHitRecord[] = [];
  let offset = 8;
  for (let i = 0; i < count; i++) {
    const { hit, end } = decodeHitRecord(payload, offset);
    hits.push(hit);
    offset = end;
  }
  if (offset !== payload.length) {
    throw new HelperProtocolError(`HITS of ${count} records ends at ${offset}, payload has ${payload.length} bytes`, {
      frameType: MessageType.Hits,
    });
  }
  return hits;
}

export function encodeSymbols(pid: number, symbols: SymbolDefinition[]): Buffer {
  const w = new PayloadWriter().u32(pid).u32(symbols.length);
  for (const s of symbols) w.u64(s.ip).u64(s.offset).str(s.function).str(s.module);
  return encodeFrame(MessageType.Symbols, 0, w.done());
}

export function encodeGroupDone(pid: number, group: bigint, reason: GroupDoneReason, c: GroupCounts): Buffer {
  const code = Number(Object.entries(DONE_REASONS).find(([, v]) => v === reason)?.[0]);
  const p = writeCounts(new PayloadWriter().u32(pid).u8(code).pad(3).u64(group), c).done();
  return encodeFrame(MessageType.GroupDone, 0, p);
}

export function encodeGroupBackoff(pid: number, group: bigint, untilNs: bigint, suppressedSoFar: bigint): Buffer {
  const p = new PayloadWriter().u32(pid).pad(4).u64(group).u64(untilNs).u64(suppressedSoFar).done();
  return encodeFrame(MessageType.GroupBackoff, 0, p);
}

export function encodeGroupResumed(pid: number, group: bigint): Buffer {
  return encodeFrame(MessageType.GroupResumed, 0, new PayloadWriter().u32(pid).pad(4).u64(group).done());
}

export function encodeTargetFork(pid: number, childPid: number): Buffer {
  return encodeFrame(MessageType.TargetFork, 0, new PayloadWriter().u32(pid).u32(childPid).done());
}

export function encodeThreads(pid: number, threadsTotal: number, threadsArmed: number): Buffer {
  return encodeFrame(MessageType.Threads, 0, new PayloadWriter().u32(pid).u32(threadsTotal).u32(threadsArmed).done());
}

export function encodeTargetExited(pid: number, how: ExitKind, code: number): Buffer {
  const p = new PayloadWriter().u32(pid).u8(EXIT_KINDS.indexOf(how)).pad(3).i32(code).done();
  return encodeFrame(MessageType.TargetExited, 0, p);
}

export function encodeCounts(pid: number, group: bigint, timeNs: bigint, counts: GroupCounts, threads: ThreadHits[]): Buffer {
  const w = writeCounts(new PayloadWriter().u32(pid).u32(threads.length).u64(group).u64(timeNs), counts);
  for (const t of threads) w.u32(t.tid).pad(4).u64(t.hits);
  return encodeFrame(MessageType.Counts, 0, w.done());
}

export function encodeTargetExec(pid: number): Buffer {
  return encodeFrame(MessageType.TargetExec, 0, new PayloadWriter().u32(pid).done());
}

export function encodeLog(level: HelperLogLevel, message: string): Buffer {
  const p = new PayloadWriter().u8(LOG_LEVELS.indexOf(level)).str(message).done();
  return encodeFrame(MessageType.Log, 0, p);
}

/** The event carried by an event frame (request id 0), or undefined for other types. */
export function decodeEvent(frame: Frame): HelperWireEvent | undefined {
  const r = new PayloadReader(frame.payload, frame.type);
  switch (frame.type) {
    case MessageType.Hits:
      return { kind: "hits", hits: decodeHits(frame.payload) };
    case MessageType.Symbols: {
      const pid = r.u32();
      const count = r.u32();
      const symbols: SymbolDefinition[] = [];
      for (let i = 0; i < count; i++) {
        const ip = r.u64();
        const offset = r.u64();
        symbols.push({ ip, offset, function: r.str(), module: r.str() });
      }
      return { kind: "symbols", pid, symbols };
    }
    case MessageType.GroupDone: {
      const pid = r.u32();
      const code = r.u8();
      r.skip(3);
      const group = r.u64();
      const counts = readCounts(r);
      const reason = DONE_REASONS[code];
      if (reason === undefined) {
        throw new HelperProtocolError(`unknown GROUP_DONE reason ${code}`, { frameType: frame.type });
      }
      return { kind: "group-done", pid, group, reason, counts };
    }
    case MessageType.GroupBackoff: {
      const pid = r.u32();
      r.skip(4);
      return { kind: "group-backoff", pid, group: r.u64(), untilNs: r.u64(), suppressedSoFar: r.u64() };
    }
    case MessageType.GroupResumed: {
      const pid = r.u32();
      r.skip(4);
      return { kind: "group-resumed", pid, group: r.u64() };
    }
    case MessageType.TargetExited: {
      const pid = r.u32();
      const code = r.u8();
      const how = EXIT_KINDS[code];
      if (how === undefined) throw new HelperProtocolError(`unknown TARGET_EXITED killed ${code}`, { frameType: frame.type });
      r.skip(3);
      return { kind: "target-exited", pid, how, code: r.i32() };
    }
    case MessageType.Counts: {
      const pid = r.u32();
      const threadCount = r.u32();
      const group = r.u64();
      const timeNs = r.u64();
      const counts = readCounts(r);
      // Each thread takes 16 bytes: a count the payload cannot hold is refused before anything is allocated for it.
      if (threadCount * 16 !== frame.payload.length - 64) {
        throw new HelperProtocolError(`COUNTS of ${threadCount} threads has a payload of ${frame.payload.length} bytes`, { frameType: frame.type });
      }
      const threads: ThreadHits[] = [];
      for (let i = 0; i < threadCount; i++) {
        const tid = r.u32();
        r.skip(4);
        threads.push({ tid, hits: r.u64() });
      }
      return { kind: "counts", pid, group, timeNs, counts, threads };
    }
    case MessageType.TargetExec:
      return { kind: "target-exec", pid: r.u32() };
    case MessageType.TargetFork:
      return { kind: "target-fork", pid: r.u32(), childPid: r.u32() };
    case MessageType.Threads:
      return { kind: "threads", pid: r.u32(), threadsTotal: r.u32(), threadsArmed: r.u32() };
    case MessageType.Log: {
      const lvl = r.u8();
      return { kind: "log", level: LOG_LEVELS[lvl] ?? "error", message: r.str() };
    }
    default:
      return undefined;
  }
}

/**
 * A hit record with its ips named through one process's SYMBOLS definitions
 * (the helper defines every ip before the first hit that uses it; an ip
 * without a definition is a protocol error).
 */
export function expandHit(record: HelperHitRecord, symbols: ReadonlyMap<bigint, SymbolDefinition> | undefined): HelperHit {
  const ips = record.ips;
  const stack = ips.length === 0 ? [] : ips.map((ip): StackFrame => {
    if (ip === 0n) return { ip, function: "", offset: 0n, module: "" };
    const def = symbols?.get(ip);
    if (def === undefined) {
      throw new HelperProtocolError(`hit of pid ${record.pid} uses ip 0x${ip.toString(16)} before a SYMBOLS definition`, {
        frameType: MessageType.Hits,
      });
    }
    return { ip, function: def.function, offset: def.offset, module: def.module };
  });
  // Field by field, not a rest/spread copy: this runs once per hit.
  return {
    group: record.group,
    pid: record.pid,
    tid: record.tid,
    ip: record.ip,
    address: record.address,
    oldValue: record.oldValue,
    newValue: record.newValue,
    timeNs: record.timeNs,
    dr: record.dr,
    length: record.length,
    mode: record.mode,
    valueExact: record.valueExact,
    stack,
  };
}

/** Splits a byte stream into frames; keeps partial frames across pushes. */
export class FrameDecoder {
  private pending: Buffer = Buffer.alloc(0);

  /** Bytes held that do not yet make a whole frame. */
  get bufferedBytes(): number {
    return this.pending.length;
  }

  push(chunk: Buffer): Frame[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const frames: Frame[] = [];
    let offset = 0;
    while (this.pending.length - offset >= FRAME_HEADER_BYTES) {
      const length = this.pending.readUInt32LE(offset);
      if (length < FRAME_HEADER_BYTES || length > FRAME_MAX_BYTES) {
        throw new HelperProtocolError(`frame length ${length} outside ${FRAME_HEADER_BYTES}..${FRAME_MAX_BYTES}`);
      }
      if (this.pending.length - offset < length) break;
      frames.push({
        type: this.pending.readUInt16LE(offset + 4),
        flags: this.pending.readUInt16LE(offset + 6),
        requestId: this.pending.readUInt32LE(offset + 8),
        // Copy: the payload outlives this decoder's buffer.
        payload: Buffer.from(this.pending.subarray(offset + FRAME_HEADER_BYTES, offset + length)),
      });
      offset += length;
    }
    this.pending = offset === 0 ? this.pending : Buffer.from(this.pending.subarray(offset));
    return frames;
  }
}
