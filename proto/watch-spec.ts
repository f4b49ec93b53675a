// The watch-spec rules every side shares: valid lengths and modes, the user
// address range, and the exact split of a watched range into aligned
// debug-register chunks (the same count the ledger reserves and the helper arms).
import { create, toBinary } from "@bufbuild/protobuf";
import { WatchSpecError } from "./errors.js";
import { Backend, ChunkSchema, ConditionOp, ConditionSchema, JobSpecSchema, WatchMode, type Chunk, type Condition, type JobSpec, type TargetSelector, type WatchSpec } from "./gen/fleetwatch/v1/watch_pb.js";
import { conditionOperatorOf, conditionOperators, maxConditions, maxStackDepth, maxTids, slotsPerThread } from "./limits.js";
import { parseSelector } from "./selector.js";

/** Widths one debug register can watch. */
export const chunkLengths = [1, 2, 4, 8] as const;

/**
 * First address the kernel refuses in a debug register (TASK_SIZE_MAX on
 * x86-64 with 4-level paging, minus the guard page): DR0 writes at or above it
 * give EINVAL and leave the old address armed, so never send one.
 */
export const userAddressLimit = 0x7ffffffff000n;

/** Stack frames per hit when a job does not say. */
export const defaultStackDepth = 16;

const modeNames: Record<string, WatchMode> = {
  w: WatchMode.WRITE,
  rw: WatchMode.READ_WRITE,
  r: WatchMode.READ,
  x: WatchMode.EXECUTE,
};

/** Parses the CLI's `w`, `rw`, `r`, `x`. */
export function parseMode(text: string): WatchMode {
  const mode = modeNames[text];
  if (mode === undefined) throw new WatchSpecError(`mode '${text}' is not one of w, rw, r, x`, "mode");
  return mode;
}

/** The mode a debug register is armed with: reads are emulated with read/write. */
export function registerMode(mode: WatchMode): WatchMode {
  return mode === WatchMode.READ ? WatchMode.READ_WRITE : mode;
}

/** The comparisons, by how they are written. */
const compareOps = new Map<string, ConditionOp>(conditionOperators.filter((o) => o.text !== "changed" && o.text !== "unchanged").map((o) => [o.text, o.op]));
/** `value OP NUMBER`, the longer operators tried first (`<=` before `<`). */
const comparison = new RegExp(`^(?:value\\s*)?(${[...compareOps.keys()].sort((a, b) => b.length - a.length).join("|")})\\s*(0x[0-9a-fA-F]+|\\d+)$`);

/** Parses `changed`, `unchanged`, or a comparison of the new value: `value > 0x10`, `== 5`. */
export function parseCondition(text: string): Condition {
  const t = text.trim();
  if (t === "changed") return create(ConditionSchema, { op: ConditionOp.CHANGED });
  if (t === "unchanged") return create(ConditionSchema, { op: ConditionOp.UNCHANGED });
  const match = comparison.exec(t);
  if (!match) throw new WatchSpecError(`condition '${text}' is not 'changed', 'unchanged' or 'value OP NUMBER' (OP one of ${[...compareOps.keys()].join(" ")})`, "conditions");
  const value = BigInt(match[2]!);
  if (value >= 1n << 64n) throw new WatchSpecError(`condition '${text}': ${match[2]} does not fit in 64 bits`, "conditions");
  return create(ConditionSchema, { op: compareOps.get(match[1]!)!, value });
}

/** `value > 0x10`, `changed`. */
export function formatCondition(condition: Condition): string {
  if (condition.op === ConditionOp.CHANGED) return "changed";
  if (condition.op === ConditionOp.UNCHANGED) return "unchanged";
  const op = conditionOperatorOf(condition.op)?.text ?? "?";
  return `value ${op} ${hex(condition.value)}`;
}

/** `w`, `rw` or `x`. */
export function modeName(mode: WatchMode): string {
  switch (mode) {
    case WatchMode.WRITE:
      return "w";
    case WatchMode.READ_WRITE:
      return "rw";
    case WatchMode.EXECUTE:
      return "x";
    case WatchMode.READ:
      return "r";
    default:
      return "unspecified";
  }
}

/**
 * Parses `name`, `name+16`, `name+0x10`, or a DWARF expression the helper
 * resolves with debug info: `conf.limits.max`, `conf->ptr->x`, `table[3].b`.
 */
export function parseSymbol(text: string): { name: string; offset: bigint } {
  const match = /^([A-Za-z_.$][\w.$@:]*(?:(?:\.|->)[A-Za-z_]\w*|\[\d+\])*)(?:\+(0x[0-9a-fA-F]+|\d+))?$/.exec(text.trim());
  if (!match) throw new WatchSpecError(`symbol '${text}' is not NAME, NAME+OFFSET (e.g. counter+0x8) or a field path (conf.limits.max, conf->ptr->x, table[3].b)`, "symbol");
  return { name: match[1]!, offset: match[2] ? BigInt(match[2]) : 0n };
}

/** Parses a hex (0x…) or decimal address. */
export function parseAddress(text: string): bigint {
  if (!/^(0x[0-9a-fA-F]+|\d+)$/.test(text.trim())) throw new WatchSpecError(`address '${text}' is not a number (e.g. 0x5555555580a0)`, "address");
  return BigInt(text.trim());
}

/** `0x…` for people. */
export function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}

/** Checks a width and mode pair: 1, 2, 4 or 8 bytes; execute only with 1. */
export function checkLength(length: number, mode: WatchMode): void {
  if (!(chunkLengths as readonly number[]).includes(length)) {
    throw new WatchSpecError(`length ${length} is not 1, 2, 4 or 8 bytes`, "length");
  }
  if (mode === WatchMode.EXECUTE && length !== 1) {
    throw new WatchSpecError(`execute watches take length 1 (got ${length}): x86 debug registers trap instruction fetch at one address`, "length");
  }
}

/** Checks that a range lies in user space. */
export function checkAddressRange(address: bigint, length: number): void {
  if (address === 0n) throw new WatchSpecError("address 0 is never mapped; give the variable's address or --symbol", "address");
  if (address + BigInt(length) > userAddressLimit) {
    throw new WatchSpecError(`address ${hex(address)} is not a user-space address (must end below ${hex(userAddressLimit)})`, "address");
  }
}

/**
 * Splits [address, address+length) into debug-register chunks: each chunk is
 * the largest of 8, 4, 2, 1 that both divides the current address and fits in
 * the remaining length (as gdb's x86_handle_nonaligned_watchpoint does).
 */
export function splitRange(address: bigint, length: number, mode: WatchMode, watchIndex = 0): Chunk[] {
  const chunks: Chunk[] = [];
  let at = address;
  let left = length;
  while (left > 0) {
    let size = 8;
    while (size > 1 && (at % BigInt(size) !== 0n || size > left)) size /= 2;
    chunks.push(create(ChunkSchema, { address: at, length: size, mode, watchIndex }));
    at += BigInt(size);
    left -= size;
  }
  return chunks;
}

/** `500ms`, `30s`, `10m`, `1h30m`, `1.5s`: the shortest exact spelling. */
export function formatDuration(ms: number | bigint): string {
  let left = Number(ms);
  if (left === 0) return "0s";
  if (left < 1_000) return `${left}ms`;
  if (left < 60_000 && left % 1_000 !== 0) return `${left / 1_000}s`;
  const parts: string[] = [];
  for (const [unit, size] of [["h", 3_600_000], ["m", 60_000], ["s", 1_000]] as const) {
    const count = Math.floor(left / size);
    if (count > 0) parts.push(`${count}${unit}`);
    left -= count * size;
  }
  if (left > 0) parts.push(`${left}ms`);
  return parts.join("");
}

/** Registers share only an identical address, length and mode (gdb's rule); the watch index is a job's own business. */
export function sameChunk(a: Chunk, b: Chunk): boolean {
  return a.address === b.address && a.length === b.length && a.mode === b.mode;
}

/** `0x55d0a8/8 w #0` for messages and tables. */
export function formatChunk(chunk: Chunk): string {
  return `${hex(chunk.address)}/${chunk.length} ${modeName(chunk.mode)} #${chunk.watchIndex}`;
}

/** Rejects a set of chunks that needs more registers than one thread has. */
export function checkChunkCount(chunks: readonly Chunk[]): void {
  if (chunks.length > slotsPerThread) {
    throw new WatchSpecError(
      `the watches need ${chunks.length} debug registers per target but a thread has ${slotsPerThread}: ${chunks.map(formatChunk).join(", ")}; watch fewer or aligned variables`,
      "watches",
    );
  }
}

/** Validates one watch as far as it can be without the target (symbols resolve later). */
export function checkWatch(watch: WatchSpec, index: number): void {
  if (watch.mode === WatchMode.UNSPECIFIED) throw new WatchSpecError(`watch #${index}: mode is required (w, rw or x)`, "mode");
  if (watch.location.case === undefined) throw new WatchSpecError(`watch #${index}: give a symbol or an address`, "location");
  if (watch.location.case === "symbol") {
    parseSymbol(watch.location.value);
    if (watch.length !== 0) checkLength(watch.length, watch.mode);
    return;
  }
  if (watch.length === 0) throw new WatchSpecError(`watch #${index}: an address watch needs a length (1, 2, 4 or 8)`, "length");
  checkLength(watch.length, watch.mode);
  checkAddressRange(watch.location.value, watch.length);
}

/** Validates a job spec's fields that need no target, and the chunk count of its address watches. */
export function checkJobSpec(spec: JobSpec): void {
  if (spec.watches.length === 0) throw new WatchSpecError("a job needs at least one watch (--symbol or --address)", "watches");
  // Each watch takes a register at least: more can never be placed (and each symbol would be resolved on every target first).
  if (spec.watches.length > slotsPerThread) throw new WatchSpecError(`${spec.watches.length} watches need more debug registers than a thread has (${slotsPerThread})`, "watches");
  // The spec is stored with the job: it must fit a store value with room for the targets.
  const specBytes = toBinary(JobSpecSchema, spec).byteLength;
  if (specBytes > maxJobSpecBytes) throw new WatchSpecError(`the job spec is ${specBytes} bytes; at most ${maxJobSpecBytes}`, "spec");
  spec.watches.forEach(checkWatch);
  checkTargetSelector(spec.target);
  const reads = spec.watches.filter((w) => w.mode === WatchMode.READ).length;
  if (reads > 0 && reads < spec.watches.length) throw new WatchSpecError("read watches (mode r) are emulated by value and cannot share a job with other modes: submit them as a separate job", "mode");
  const conditionCount = spec.conditions.length + (reads > 0 ? 1 : 0);
  if (conditionCount > maxConditions) throw new WatchSpecError(`at most ${maxConditions} conditions per job, read watches use one (got ${conditionCount})`, "conditions");
  for (const c of spec.conditions) {
    if (c.op === ConditionOp.UNSPECIFIED || ConditionOp[c.op] === undefined) throw new WatchSpecError(`condition operator ${c.op} is not known`, "conditions");
  }
  if (spec.tids.length > maxTids) throw new WatchSpecError(`at most ${maxTids} threads in a thread filter (got ${spec.tids.length})`, "tids");
  if (spec.tids.some((t) => t === 0)) throw new WatchSpecError("thread id 0 is not a thread", "tids");
  if ((spec.stackDepth ?? 0) > maxStackDepth) throw new WatchSpecError(`stack depth ${spec.stackDepth} is above ${maxStackDepth}`, "stack_depth");
  const addressChunks = spec.watches.flatMap((w, i) => (w.location.case === "address" ? splitRange(w.location.value, w.length, registerMode(w.mode), i) : []));
  checkChunkCount(addressChunks);
  const placement = parsePlacement(spec.placement);
  if (spec.allowUnmapped && !spec.watches.some((w) => w.location.case === "address")) throw new WatchSpecError("--allow-unmapped is for --address watches: a symbol is always mapped where it resolves", "allow_unmapped");
  if (spec.replaceLost && placement.kind !== "sample") throw new WatchSpecError("--replace-lost needs --placement sample:N: with all or any every matching target is already watched", "replace_lost");
  if (spec.lostAfterMs > maxLostAfterMs) throw new WatchSpecError(`lost-after ${spec.lostAfterMs} ms is above one hour`, "lost_after_ms");
  if (spec.queueTimeoutMs > maxQueueTimeoutMs) throw new WatchSpecError(`queue timeout ${spec.queueTimeoutMs} ms is above one day`, "queue_timeout_ms");
  if (spec.durationMs > maxDurationMs) throw new WatchSpecError(`duration ${spec.durationMs} ms is above one year: give none and cancel the job`, "duration_ms");
  if (spec.backoffMs > maxBackoffMs) throw new WatchSpecError(`back-off ${spec.backoffMs} ms is above one hour`, "backoff_ms");
  checkBackend(spec);
}

/** Shortest and longest interval between a counting job's reports (the helper's limits too); 0 asks for the default. */
export const minCountIntervalMs = 10n;
export const maxCountIntervalMs = 3_600_000n;
export const defaultCountIntervalMs = 1_000n;

const backendNames: Record<string, Backend> = { ptrace: Backend.PTRACE, perf: Backend.PERF, auto: Backend.UNSPECIFIED };

/** Parses the CLI's `ptrace`, `perf` (and `auto`: the controller chooses). */
export function parseBackend(text: string): Backend {
  const backend = backendNames[text.trim()];
  if (backend === undefined) throw new WatchSpecError(`backend '${text}' is not ptrace or perf`, "backend");
  return backend;
}

/** `ptrace`, `perf`, or `auto` for UNSPECIFIED. */
export function backendName(backend: Backend): string {
  switch (backend) {
    case Backend.PTRACE:
      return "ptrace";
    case Backend.PERF:
      return "perf";
    case Backend.UNSPECIFIED:
      return "auto";
    default:
      return `backend ${backend}`;
  }
}

/**
 * What in a spec needs each trap handled while the writing thread is stopped
 * (only ptrace can): conditions, and read watches (emulated with an
 * `unchanged` condition). Undefined when nothing does.
 */
export function stopNeededFor(spec: JobSpec): string | undefined {
  if (spec.conditions.length > 0) return "conditions (--if) need the value at the trap";
  if (spec.watches.some((w) => w.mode === WatchMode.READ)) return "read watches (--mode r) are emulated by comparing values at the trap";
  return undefined;
}

/**
 * The backend a job's targets are armed with. Automatic (UNSPECIFIED)
 * favours the target's safety: perf never stops or signals it and dies with
 * the helper; ptrace only when the spec needs a stop at each trap.
 */
export function resolveBackend(spec: JobSpec): Backend.PTRACE | Backend.PERF {
  if (spec.backend === Backend.PTRACE) return Backend.PTRACE;
  if (spec.backend === Backend.PERF) return Backend.PERF;
  return stopNeededFor(spec) === undefined ? Backend.PERF : Backend.PTRACE;
}

/** A counting job's interval between reports, its 0 made the default. */
export function countIntervalMs(spec: JobSpec): bigint {
  return spec.countIntervalMs === 0n ? defaultCountIntervalMs : spec.countIntervalMs;
}

/** The backend and counting rules: what each backend can do, and what counting takes. */
function checkBackend(spec: JobSpec): void {
  if (Backend[spec.backend] === undefined) throw new WatchSpecError(`backend ${spec.backend} is not known`, "backend");
  const stop = stopNeededFor(spec);
  if (spec.countOnly) {
    if (stop) throw new WatchSpecError(`a counting job (--count) counts every trap: ${stop}, and counting has none; drop them or watch without --count`, "count_only");
    if (spec.backend === Backend.PTRACE) throw new WatchSpecError("counting (--count) needs the perf backend, which counts in the kernel without stopping the target: use --backend perf or leave --backend out", "backend");
    if (spec.maxHitsPerSecond > 0) throw new WatchSpecError("a counting job (--count) has no rate limit (--rate): its traps never stop the target and no hit leaves the host", "max_hits_per_second");
  } else if (spec.countIntervalMs !== 0n) {
    throw new WatchSpecError("a count interval (--count-interval) needs a counting job (--count)", "count_interval_ms");
  }
  if (spec.countIntervalMs !== 0n && (spec.countIntervalMs < minCountIntervalMs || spec.countIntervalMs > maxCountIntervalMs)) {
    throw new WatchSpecError(`count interval ${formatDuration(spec.countIntervalMs)} is outside ${formatDuration(minCountIntervalMs)} .. ${formatDuration(maxCountIntervalMs)}`, "count_interval_ms");
  }
  if (spec.backend === Backend.PERF && stop) throw new WatchSpecError(`the perf backend handles traps without stopping the target, and ${stop}: use --backend ptrace`, "backend");
}

/** Longest a job may run by its duration (its deadline must stay a 64-bit time). */
export const maxDurationMs = 366n * 86_400_000n;
/** Longest back-off after the rate limit trips (the helper's limit too). */
export const maxBackoffMs = 3_600_000;
/** Largest encoded job spec: it is stored with the job, in a value of at most 1 MB. */
export const maxJobSpecBytes = 512 * 1024;

/** Longest silence of a host a job may tolerate before its targets are lost. */
export const maxLostAfterMs = 3_600_000n;
/** Longest a job may wait in the queue for registers. */
export const maxQueueTimeoutMs = 86_400_000n;

/**
 * Which of a job's matching targets it wants:
 * - `all`: a gang, every target or none;
 * - `any`: every target that fits;
 * - `sample`: `count` targets spread round-robin over hosts, or first over
 *   the values of the host label `spreadLabel` and then over hosts.
 */
export type PlacementMode = { readonly kind: "all" } | { readonly kind: "any" } | { readonly kind: "sample"; readonly count: number; readonly spreadLabel?: string };

/** `all`, `any` (also ""), `sample:N` or `sample:N:LABEL`. */
export function parsePlacement(text: string): PlacementMode {
  const t = text.trim();
  if (t === "" || t === "any") return { kind: "any" };
  if (t === "all") return { kind: "all" };
  const match = /^sample:(\d{1,6})(?::([A-Za-z0-9][-A-Za-z0-9_./]*))?$/.exec(t);
  if (!match || Number(match[1]) < 1) {
    throw new WatchSpecError(`placement '${text}' is not all, any, sample:N or sample:N:LABEL (N ≥ 1 targets, spread over hosts or over the values of host label LABEL)`, "placement");
  }
  return match[2] ? { kind: "sample", count: Number(match[1]), spreadLabel: match[2] } : { kind: "sample", count: Number(match[1]) };
}

/** The text parsePlacement reads. */
export function formatPlacement(mode: PlacementMode): string {
  return mode.kind === "sample" ? `sample:${mode.count}${mode.spreadLabel ? `:${mode.spreadLabel}` : ""}` : mode.kind;
}

/** Checks that a selector names processes, and hosts in at most one way. */
export function checkTargetSelector(target: TargetSelector | undefined): void {
  if (!target || (target.pid === 0 && !target.exe && !target.comm && !target.cgroup)) {
    throw new WatchSpecError("a job needs target processes: --pid, --exe, --comm or --cgroup", "target");
  }
  if (target.exe && !target.exe.startsWith("/")) throw new WatchSpecError(`--exe '${target.exe}' must be an absolute path`, "target.exe");
  if (target.cgroup && !target.cgroup.startsWith("/")) throw new WatchSpecError(`--cgroup '${target.cgroup}' must be a cgroup path starting with / (as in /proc/PID/cgroup)`, "target.cgroup");
  const hostWays = [target.hostIds.length > 0, target.hostSelector !== "", target.allHosts].filter(Boolean).length;
  if (hostWays > 1) throw new WatchSpecError("name hosts one way: --host, --selector or --all-hosts", "target");
  if (target.hostSelector) parseSelector(target.hostSelector);
}

/** The conditions the helper evaluates: the job's, plus `unchanged` for read watches. */
export function armConditions(spec: JobSpec): Condition[] {
  const reads = spec.watches.length > 0 && spec.watches.every((w) => w.mode === WatchMode.READ);
  return reads ? [...spec.conditions, create(ConditionSchema, { op: ConditionOp.UNCHANGED })] : [...spec.conditions];
}

/**
 * Chunks of every watch once symbols are resolved. `resolved[i]` is the
 * address and size of watch i when it names a symbol.
 */
export function chunksOf(spec: JobSpec, resolved: ReadonlyMap<number, { address: bigint; size: bigint }>): Chunk[] {
  const chunks = spec.watches.flatMap((watch, index) => {
    let address: bigint;
    let length = watch.length;
    if (watch.location.case === "address") {
      address = watch.location.value;
    } else {
      const symbol = resolved.get(index);
      if (!symbol) throw new WatchSpecError(`watch #${index}: symbol not resolved`, "symbol");
      address = symbol.address;
      if (length === 0) {
        length = Number(symbol.size);
        if (!(chunkLengths as readonly number[]).includes(length)) {
          throw new WatchSpecError(`watch #${index}: symbol '${watch.location.value}' is ${symbol.size} bytes; give --length 1, 2, 4 or 8 to watch part of it`, "length");
        }
      }
      checkLength(length, watch.mode);
    }
    checkAddressRange(address, length);
    return splitRange(address, length, registerMode(watch.mode), index);
  });
  checkChunkCount(chunks);
  return chunks;
}
