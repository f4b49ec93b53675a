// Hostile input on the helper's stdin: unknown types, truncated and corrupted
// payloads, bad string lengths, ARM requests with every field out of range,
// and framing errors that must end the helper cleanly. The helper answers
// every request with exactly one reply (an ERROR for malformed ones), never
// dies of a signal, and leaves the real targets untraced and unharmed.
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import { FRAME_HEADER_BYTES, FRAME_MAX_BYTES, FrameDecoder, MessageType, decodeError, encodeDisarm, encodeFrame, encodeShutdown, type Frame } from "../../agent/helper-protocol.js";
import { caseNumbers, fuzzConfig, replayHint, Rng, type FuzzConfig } from "../support/fuzz.js";
import { helperPath, repoRoot } from "../support/paths.js";
import { buildFixtures, startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

const execFileAsync = promisify(execFile);

/** Default cases per run: with fuzz-grpc's, over 10,000 in CI. */
const DEFAULT_CASES = 6_000;
/** Cases in flight at once: the helper answers in order, so this only fills the pipe. */
const IN_FLIGHT = 32;
const REPLY_TIMEOUT_MS = 30_000;
/** Above PID_MAX_LIMIT (2^22): never a process. */
const NEVER_A_PID = 4_194_305;

/** The real helper spoken to frame by frame. */
class FuzzedHelper {
  readonly child: ChildProcessWithoutNullStreams;
  stderr = "";
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly decoder = new FrameDecoder();
  private readonly waiting = new Map<number, { resolve: (f: Frame) => void; reject: (e: Error) => void }>();
  private readonly early = new Map<number, Frame>();
  /** Frames the helper wrote, requests' replies and events alike. */
  readonly frames: Frame[] = [];
  private hello: Promise<void>;

  constructor() {
    this.child = spawn(helperPath, ["--cpu-policy", "none"], { stdio: ["pipe", "pipe", "pipe"] });
    this.child.stdin.on("error", () => undefined);
    this.child.stderr.setEncoding("utf8").on("data", (t: string) => (this.stderr += t));
    let helloSeen!: () => void;
    this.hello = new Promise((resolve) => (helloSeen = resolve));
    this.child.stdout.on("data", (chunk: Buffer) => {
      for (const frame of this.decoder.push(chunk)) {
        this.frames.push(frame);
        if (frame.type === MessageType.Hello) helloSeen();
        if (frame.requestId === 0) continue;
        const w = this.waiting.get(frame.requestId);
        if (w) {
          this.waiting.delete(frame.requestId);
          w.resolve(frame);
        } else this.early.set(frame.requestId, frame);
      }
    });
    this.exited = new Promise((resolve) => this.child.once("exit", (code, signal) => resolve({ code, signal })));
    void this.exited.then(({ code, signal }) => {
      for (const [id, w] of this.waiting) w.reject(new Error(`helper exited (${code ?? signal}) before answering request ${id}; stderr: ${this.stderr.slice(-1000)}`));
      this.waiting.clear();
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  ready(): Promise<void> {
    return Promise.race([this.hello, this.exited.then(() => Promise.reject(new Error(`helper exited before HELLO: ${this.stderr}`)))]);
  }

  write(bytes: Buffer): void {
    this.child.stdin.write(bytes);
  }

  /** The reply to request `id` (sent by the caller). */
  reply(id: number): Promise<Frame> {
    const early = this.early.get(id);
    if (early) {
      this.early.delete(id);
      return Promise.resolve(early);
    }
    if (!this.running) return Promise.reject(new Error(`helper is not running; request ${id} has no reply`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`no reply to request ${id} within ${REPLY_TIMEOUT_MS} ms`));
      }, REPLY_TIMEOUT_MS);
      this.waiting.set(id, {
        resolve: (f) => {
          clearTimeout(timer);
          resolve(f);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  async request(frame: Buffer, id: number): Promise<Frame> {
    const reply = this.reply(id);
    this.write(frame);
    return reply;
  }

  /** SHUTDOWN, then the exit it promises (0). */
  async shutdown(id: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running) {
      const ok = await this.request(encodeShutdown(id), id);
      assert.equal(ok.type, MessageType.ShutdownOk);
    }
    return this.exited;
  }

  kill(): void {
    if (this.running) this.child.kill("SIGKILL");
  }
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

function u64(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, v));
  return b;
}

function str(s: Buffer, declared = s.length): Buffer {
  const len = Buffer.alloc(2);
  len.writeUInt16LE(declared & 0xffff);
  return Buffer.concat([len, s]);
}

/** What a case sent and what the helper must answer. */
interface Sent {
  what: string;
  frame: Buffer;
  /** The request is malformed or invalid: the reply must be ERROR (with this errno name, when given). */
  mustFail: boolean | string;
  /** Reply type on success. */
  okType: number;
}

const USER_LIMIT = 0x7ffffffff000n;

/** The pids a hostile request may name: never an unrelated process on this machine. */
function pidFor(rng: Rng, scene: Scene): { pid: number; live: boolean } {
  switch (rng.int(9)) {
    case 0:
      return { pid: 0, live: false };
    case 1:
      return { pid: 1, live: false };
    case 2:
      return { pid: process.pid, live: false }; // the helper's parent: refused by policy
    case 3:
      return { pid: scene.helperPid, live: false };
    case 4:
      return { pid: rng.pick([NEVER_A_PID, 0x7fffffff, 0x80000000, 0xffffffff, scene.deadPid]), live: false };
    case 5:
      return { pid: scene.structs.pid, live: true };
    default:
      return { pid: scene.counter.pid, live: true };
  }
}

interface Scene {
  counter: Target;
  counterAddress: bigint;
  structs: Target;
  deadPid: number;
  helperPid: number;
}

/** An ARM with every field drawn from hostile values; `mustFail` when some field is out of range. */
function hostileArm(rng: Rng, id: number, scene: Scene): Sent {
  // A third are in range everywhere but for edge values: they reach PTRACE_SEIZE and the registers.
  const sane = rng.chance(0.3);
  const { pid, live } = sane ? { pid: rng.chance(0.8) ? scene.counter.pid : scene.structs.pid, live: true } : pidFor(rng, scene);
  const group = rng.chance(0.5) ? BigInt(1 + rng.int(24)) : rng.u64Edge();
  const chunkCount = sane || rng.chance(0.85) ? 1 + rng.int(4) : rng.pick([0, 5, 6, 255]);
  const listed = sane || rng.chance(0.9) ? Math.min(chunkCount, 6) : rng.int(7);
  const conditions = sane || rng.chance(0.8) ? rng.int(5) : rng.pick([5, 8, 255]);
  const condListed = sane || rng.chance(0.95) ? Math.min(conditions, 8) : rng.int(9);
  const tids = sane || rng.chance(0.8) ? rng.int(3) : rng.pick([16, 17, 255]);
  const tidListed = sane || rng.chance(0.95) ? Math.min(tids, 20) : rng.int(21);
  const stackDepth = sane || rng.chance(0.85) ? 0 : rng.pick([1, 16, 64, 65, 255]);
  const backoffMs = sane || rng.chance(0.7) ? rng.int(2000) : rng.u32Edge();
  let bad = !live || chunkCount < 1 || chunkCount > 4 || conditions > 4 || tids > 16 || stackDepth > 64 || backoffMs > 3_600_000;
  bad ||= listed !== chunkCount || condListed !== conditions || tidListed !== tids;
  // Backend 0 ptrace, 1 perf; flags bit 0 counts only (perf only), other bits unused; the interval counts only with bit 0.
  const backend = sane || rng.chance(0.9) ? rng.pick([0, 0, 1]) : rng.pick([2, 3, 255]);
  const countOnly = rng.chance(0.2);
  const flags = (countOnly ? 1 : 0) | (sane || rng.chance(0.9) ? 0 : rng.int(256) & ~1);
  const countIntervalMs = rng.chance(0.7) ? rng.pick([0, 10, 250, 1000]) : rng.chance(0.5) ? rng.pick([1, 9, 3_600_001]) : rng.u32Edge();
  bad ||= backend > 1 || (countOnly && backend === 0) || (backend === 1 && conditions > 0);
  bad ||= countOnly && countIntervalMs !== 0 && (countIntervalMs < 10 || countIntervalMs > 3_600_000);
  const parts: Buffer[] = [
    u32(pid),
    u64(group),
    u64(rng.u64Edge()),
    u32(rng.u32Edge()),
    u32(backoffMs),
    Buffer.from([chunkCount, conditions, tids, stackDepth, backend, flags]),
    sane ? Buffer.alloc(2) : rng.bytes(2),
    u32(countIntervalMs),
  ];
  const drs = new Set<number>();
  for (let i = 0; i < listed; i++) {
    const dr = sane ? i : rng.chance(0.9) ? rng.int(4) : rng.pick([4, 5, 7, 255]);
    const mode = sane ? rng.pick([1, 1, 3, 0]) : rng.chance(0.9) ? rng.pick([0, 1, 3]) : rng.pick([2, 4, 255]);
    const length = sane ? (mode === 0 ? 1 : rng.pick([1, 2, 4, 8])) : rng.chance(0.85) ? rng.pick([1, 2, 4, 8]) : rng.pick([0, 3, 5, 6, 7, 9, 16, 255]);
    const address = sane ? scene.counterAddress + BigInt(length * rng.int(3)) : rng.chance(0.4) ? scene.counterAddress + BigInt(rng.pick([0, 0, 1, 2, 4, 8, 16])) : rng.address();
    bad ||= dr > 3 || drs.has(dr) || ![0, 1, 3].includes(mode) || ![1, 2, 4, 8].includes(length);
    bad ||= (mode === 0 && length !== 1) || address % BigInt(Math.max(1, length)) !== 0n || address + BigInt(length) > USER_LIMIT;
    drs.add(dr);
    parts.push(Buffer.from([dr, mode, length, rng.int(256)]), u64(address));
  }
  for (let i = 0; i < condListed; i++) {
    const op = sane || rng.chance(0.9) ? rng.int(8) : rng.pick([8, 9, 255]);
    bad ||= op > 7;
    parts.push(Buffer.from([op]), rng.bytes(7), u64(rng.u64Edge()));
  }
  for (let i = 0; i < tidListed; i++) {
    const tid = sane ? rng.pick([scene.counter.pid, 1 + rng.int(1000)]) : rng.pick([scene.counter.pid, 0, 0xffffffff, 0x80000000, NEVER_A_PID, 1 + rng.int(1000)]);
    bad ||= tid === 0 || tid >= 0x80000000;
    parts.push(u32(tid));
  }
  const frame = encodeFrame(MessageType.Arm, id, Buffer.concat(parts));
  const how = backend === 0 ? "ptrace" : backend === 1 ? "perf" : `backend ${backend}`;
  return { what: `ARM pid ${pid} group ${group} ${how}${countOnly ? " count" : ""}`, frame, mustFail: bad, okType: MessageType.Armed };
}

function hostileResolve(rng: Rng, id: number, scene: Scene): Sent {
  const { pid, live } = pidFor(rng, scene);
  const names = [
    "fw_counter",
    "fw_conf.b",
    "fw_conf->b",
    "fw_conf.ptr->x",
    "fw_empty.ptr->x",
    "fw_arr[3].b",
    "fw_arr[4].b",
    "fw_arr[18446744073709551615].b",
    "fw_arr[99999999999999999999999]",
    "fw_grid[1][2][3]",
    "fw_grid[1]",
    "fw_table.slot[3].v",
    "fw_conf.in.name[7]",
    "fw_conf.",
    "fw_conf->",
    "fw_conf[",
    "fw_conf]",
    "main",
    "printf",
    "",
  ];
  let name = Buffer.from(rng.chance(0.5) ? rng.pick(names) : rng.string(1100), "utf8");
  if (name.length > 0xffff) name = name.subarray(0, 0xffff);
  const declared = rng.chance(0.9) ? name.length : rng.pick([name.length + 1, 0xffff, Math.max(0, name.length - 1)]);
  const tooLong = name.length >= 1024;
  const frame = encodeFrame(MessageType.Resolve, id, Buffer.concat([u32(pid), u64(rng.chance(0.8) ? BigInt(rng.int(64)) : rng.u64Edge()), str(name, declared)]));
  // A shorter declared length leaves bytes over, which RESOLVE ignores. Resolving
  // reads a process without attaching: pid 1 or this runner may well answer.
  const malformed = declared > name.length || tooLong || pid === 0 || pid >= 0x80000000;
  return { what: `RESOLVE pid ${pid}${live ? "" : " (not a target)"} '${name.toString("latin1").slice(0, 40)}'`, frame, mustFail: malformed ? "EINVAL" : false, okType: MessageType.Resolved };
}

/**
 * Groups apart from the ones ARM cases use (1..24 and the u64 edge values,
 * 0x7f and 0xff among them): a case disarms what it armed itself, and a case
 * in flight beside it must not do it first.
 */
function hostileDisarm(rng: Rng, id: number, scene: Scene): Sent {
  const { pid } = pidFor(rng, scene);
  return { what: `DISARM pid ${pid}`, frame: encodeDisarm(id, { pid, group: rng.chance(0.5) ? BigInt(1000 + rng.int(30)) : rng.u64() }), mustFail: false, okType: MessageType.Disarmed };
}

/** ARM's fixed part: pid, group, budget, rate, back-off, the counts, backend, flags and interval. */
const armFixedBytes = 40;

/** Whether an ARM payload is exactly as long as its counts say: 12 bytes per chunk, 16 per condition, 4 per tid. */
function armIsWhole(payload: Buffer): boolean {
  if (payload.length < armFixedBytes) return false;
  return payload.length === armFixedBytes + 12 * payload[28]! + 16 * payload[29]! + 4 * payload[30]!;
}

/** A request of a known type whose payload is garbage or cut short (with the pid kept safe). */
function garbledRequest(rng: Rng, id: number, scene: Scene): Sent {
  const type = rng.pick([MessageType.Resolve, MessageType.Arm, MessageType.Disarm]);
  const base = type === MessageType.Arm ? hostileArm(rng, id, scene) : type === MessageType.Resolve ? hostileResolve(rng, id, scene) : hostileDisarm(rng, id, scene);
  const payload = base.frame.subarray(FRAME_HEADER_BYTES);
  let next: Buffer;
  switch (rng.int(3)) {
    case 0:
      next = payload.subarray(0, rng.int(payload.length)); // truncated
      break;
    case 1:
      next = Buffer.concat([payload, rng.bytes(1 + rng.int(32))]); // trailing garbage
      break;
    default:
      next = Buffer.concat([payload.subarray(0, 4), rng.bytes(rng.int(80))]); // garbage after a safe pid
  }
  if (next.length >= 4) payload.copy(next, 0, 0, 4);
  // A truncated ARM or DISARM, or an ARM with bytes over, is malformed; others may parse. So may an
  // ARM whose garbled counts happen to declare exactly the bytes it has (a well-formed request then).
  const malformedArm = type === MessageType.Arm && !armIsWhole(next);
  const mustFail = next.length === payload.length ? false : malformedArm || (type === MessageType.Disarm && next.length < payload.length) ? "EINVAL" : false;
  return { what: `garbled ${base.what}`, frame: encodeFrame(type, id, next), mustFail, okType: base.okType };
}

function unknownType(rng: Rng, id: number): Sent {
  const known = new Set<number>([MessageType.Resolve, MessageType.Arm, MessageType.Disarm, MessageType.Shutdown]);
  let type = rng.chance(0.5) ? rng.pick(Object.values(MessageType)) : rng.int(0x10000);
  if (known.has(type)) type = 0x0104;
  return { what: `type 0x${type.toString(16)}`, frame: encodeFrame(type, id, rng.bytes(rng.size(512))), mustFail: "EINVAL", okType: -1 };
}

function generate(rng: Rng, id: number, scene: Scene): Sent {
  const r = rng.int(100);
  if (r < 15) return unknownType(rng, id);
  if (r < 45) return garbledRequest(rng, id, scene);
  if (r < 85) return hostileArm(rng, id, scene);
  if (r < 93) return hostileDisarm(rng, id, scene);
  return hostileResolve(rng, id, scene);
}

async function deadPid(): Promise<number> {
  const child = spawn("true");
  await new Promise((resolve) => child.once("exit", resolve));
  assert.equal(existsSync(`/proc/${child.pid}`), false);
  return child.pid!;
}

/** Replies seen, by name (ERROR by errno name): shows what the run reached. */
type Tally = Map<string, number>;

function count(tally: Tally, key: string): void {
  tally.set(key, (tally.get(key) ?? 0) + 1);
}

async function runCase(helper: FuzzedHelper, config: FuzzConfig, caseNo: number, scene: Scene, tally: Tally): Promise<void> {
  const rng = Rng.forCase(config.seed, caseNo);
  // Request ids: two per case, never 0 (events).
  const id = 2 * caseNo + 1;
  const sent = generate(rng, id, scene);
  const context = () => `${sent.what}: ${replayHint(config, caseNo)}`;
  // Sometimes the frame arrives in pieces: framing must not depend on write boundaries.
  const reply = helper.reply(id);
  if (rng.chance(0.1) && sent.frame.length > 1) {
    const cut = 1 + rng.int(sent.frame.length - 1);
    helper.write(sent.frame.subarray(0, cut));
    helper.write(sent.frame.subarray(cut));
  } else helper.write(sent.frame);
  const frame = await reply.catch((err: Error) => assert.fail(`${err.message}; ${context()}`));
  if (frame.type === MessageType.Error) {
    const e = decodeError(frame.payload);
    assert.ok(e.errnoName.length > 0 && e.message.length > 0, `an ERROR names its errno and says why; ${context()}`);
    count(tally, e.errnoName);
    if (typeof sent.mustFail === "string") assert.equal(e.errnoName, sent.mustFail, `${e.message}; ${context()}`);
    return;
  }
  assert.ok(!sent.mustFail, `a request that must fail was answered 0x${frame.type.toString(16)}; ${context()}`);
  assert.equal(frame.type, sent.okType, context());
  count(tally, Object.entries(MessageType).find(([, v]) => v === frame.type)?.[0] ?? String(frame.type));
  if (frame.type === MessageType.Armed) {
    // Whatever got armed is disarmed at once: the groups of a pid are few.
    const payload = sent.frame.subarray(FRAME_HEADER_BYTES);
    const disarmed = await helper.request(encodeDisarm(id + 1, { pid: payload.readUInt32LE(0), group: payload.readBigUInt64LE(4) }), id + 1);
    const why = disarmed.type === MessageType.Error ? ` (${decodeError(disarmed.payload).message})` : "";
    assert.equal(disarmed.type, MessageType.Disarmed, `the group just armed disarms${why}; ${context()}`);
  }
}

describe("fuzz - the helper's input protocol", { timeout: 300_000 }, () => {
  const config = fuzzConfig(DEFAULT_CASES);
  let counter: Target;
  let structs: Target;
  const helpers: FuzzedHelper[] = [];

  before(async () => {
    await execFileAsync("make", ["-s", "-C", path.join(repoRoot, "agent/native")]);
    await buildFixtures();
    counter = await startTarget("counter", ["--writes", "1000"]);
    structs = await startTarget("structs");
  });

  after(async () => {
    for (const h of helpers) h.kill();
    await counter?.kill();
    await structs?.kill();
  });

  function started(): FuzzedHelper {
    const h = new FuzzedHelper();
    helpers.push(h);
    return h;
  }

  test(`helper - answers every hostile request with one reply and stays up (${config.only === undefined ? `${config.cases} cases` : `case ${config.only}`}, seed ${config.seed})`, async (t) => {
    const helper = started();
    await helper.ready();
    const scene: Scene = { counter, counterAddress: BigInt(counter.lines[0]!.split(" ")[2]!), structs, deadPid: await deadPid(), helperPid: helper.pid };
    const numbers = caseNumbers(config);
    const startedMs = Date.now();
    const tally: Tally = new Map();
    let next = 0;
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (next < numbers.length) await runCase(helper, config, numbers[next++]!, scene, tally);
      }),
    );
    t.diagnostic(`fuzz-helper: ${numbers.length} cases, seed ${config.seed}, ${Date.now() - startedMs} ms; replies: ${[...tally].map(([k, n]) => `${k} ${n}`).join(", ")}`);
    assert.ok(helper.running, `the helper is alive after the run: ${helper.stderr.slice(-2000)}`);
    // Every group the fuzz armed was disarmed: no target stays traced.
    await waitFor("the targets untraced", async () => (await counter.tracerPid()) === 0 && (await structs.tracerPid()) === 0, 10_000);
    assert.deepEqual(await helper.shutdown(0x7ffffff0), { code: 0, signal: null });
    counter.send("go");
    await counter.waitForLine(/^done$/);
    assert.deepEqual(await counter.waitForExit(), { code: 0, signal: null });
    structs.send("x");
    assert.deepEqual(await structs.waitForExit(), { code: 0, signal: null });
  });

  test("helper - a frame length outside 12..1 MiB ends it with exit 1 after it disarmed, never a signal", async () => {
    const target = await startTarget("counter", ["--writes", "100"]);
    try {
      const address = BigInt(target.lines[0]!.split(" ")[2]!);
      for (const length of [0, 1, FRAME_HEADER_BYTES - 1, FRAME_MAX_BYTES + 1, 0x80000000, 0xffffffff]) {
        const helper = started();
        await helper.ready();
        // Armed first: a broken stream must not leave the target traced.
        // One write chunk on ptrace (backend 0, no flags, no interval).
        const arm = encodeFrame(MessageType.Arm, 1, Buffer.concat([u32(target.pid), u64(1n), u64(0n), u32(0), u32(0), Buffer.from([1, 0, 0, 0, 0, 0]), Buffer.alloc(2), u32(0), Buffer.from([0, 1, 8, 0]), u64(address)]));
        assert.equal((await helper.request(arm, 1)).type, MessageType.Armed);
        assert.equal(await target.tracerPid(), helper.pid);
        const header = Buffer.alloc(FRAME_HEADER_BYTES);
        header.writeUInt32LE(length >>> 0, 0);
        header.writeUInt16LE(MessageType.Disarm, 4);
        header.writeUInt32LE(2, 8);
        helper.write(header);
        assert.deepEqual(await helper.exited, { code: 1, signal: null }, `frame length ${length}: ${helper.stderr}`);
        const logs = helper.frames.filter((f) => f.type === MessageType.Log).map((f) => f.payload.subarray(3).toString());
        assert.ok(logs.includes(`protocol error: frame length ${length >>> 0}`), `frame length ${length}: the helper says why in a LOG frame (${JSON.stringify(logs)})`);
        assert.equal(await target.tracerPid(), 0, `frame length ${length}: target untraced`);
      }
      target.send("go");
      await target.waitForLine(/^done$/);
      assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
    } finally {
      await target.kill();
    }
  });

  test("helper - a frame cut short by the end of its input is dropped and the helper exits 0", async () => {
    for (const cut of [1, 5, FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + 3]) {
      const helper = started();
      await helper.ready();
      const frame = encodeFrame(MessageType.Resolve, 9, Buffer.concat([u32(process.pid), u64(0n), str(Buffer.from("fw_counter"))]));
      helper.write(frame.subarray(0, cut));
      helper.child.stdin.end();
      assert.deepEqual(await helper.exited, { code: 0, signal: null }, `cut at ${cut}: ${helper.stderr}`);
      assert.equal(helper.frames.filter((f) => f.requestId === 9).length, 0, "no reply to a request never received whole");
    }
  });
});
