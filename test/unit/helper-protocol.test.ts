// Frame encoding and decoding of the helper protocol, without a helper.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  ARM_FIXED_BYTES,
  FRAME_HEADER_BYTES,
  FRAME_MAX_BYTES,
  FrameDecoder,
  HIT_FIXED_BYTES,
  HelperProtocolError,
  MessageType,
  decodeArmRequest,
  decodeArmed,
  decodeDisarmRequest,
  decodeDisarmed,
  decodeError,
  decodeEvent,
  decodeHello,
  decodeHitRecord,
  expandHit,
  decodeResolveRequest,
  decodeResolved,
  encodeArm,
  encodeArmed,
  encodeCounts,
  encodeDisarm,
  encodeDisarmed,
  encodeError,
  encodeFrame,
  encodeGroupBackoff,
  encodeGroupDone,
  encodeGroupResumed,
  encodeHello,
  encodeHitRecord,
  encodeHits,
  encodeLog,
  encodeResolve,
  encodeResolved,
  encodeShutdown,
  encodeSymbols,
  encodeTargetExec,
  encodeTargetExited,
  encodeTargetFork,
  encodeThreads,
  helloProtocolVersion,
} from "../../agent/helper-protocol.js";
import type { ArmRequest, Frame, HelloPayload, HelperHitRecord } from "../../agent/helper-protocol.js";

function onlyFrame(bytes: Buffer): Frame {
  const frames = new FrameDecoder().push(bytes);
  assert.equal(frames.length, 1);
  return frames[0] as Frame;
}

const hit: HelperHitRecord = {
  group: 0x0102030405060708n,
  pid: 4242,
  tid: 4243,
  ip: 0x55555555a1b2n,
  address: 0x7ffd_1234_5678n,
  oldValue: 0xffff_ffff_ffff_ffffn,
  newValue: (1n << 32n) | 7n,
  timeNs: 1_732_600_000_123_456_789n,
  dr: 3,
  length: 8,
  mode: "rw",
  valueExact: true,
  ips: [],
};

const armBase: Omit<ArmRequest, "chunks"> = {
  pid: 1,
  group: 1n,
  maxHits: 0n,
  maxHitsPerSecond: 0,
  backoffMs: 0,
  conditions: [],
  tids: [],
  stackDepth: 0,
  backend: "ptrace",
  countOnly: false,
  countIntervalMs: 0,
};

describe("helper protocol", () => {
  test("frame header - length, type, flags 0 and request id, little-endian", () => {
    const bytes = encodeFrame(0x0102, 0x01020304, Buffer.from([0xaa, 0xbb]));
    assert.deepEqual([...bytes], [14, 0, 0, 0, 0x02, 0x01, 0, 0, 0x04, 0x03, 0x02, 0x01, 0xaa, 0xbb]);
  });

  test("requests - RESOLVE, ARM, DISARM and SHUTDOWN round trip", () => {
    const resolve = onlyFrame(encodeResolve(7, { pid: 1234, offset: 16n, name: "wörk_mem" }));
    assert.equal(resolve.type, MessageType.Resolve);
    assert.equal(resolve.requestId, 7);
    assert.deepEqual(decodeResolveRequest(resolve.payload), { pid: 1234, offset: 16n, name: "wörk_mem" });

    const arm: ArmRequest = {
      pid: 99,
      group: (1n << 64n) - 1n,
      maxHits: 100n,
      maxHitsPerSecond: 1000,
      backoffMs: 250,
      chunks: [
        { dr: 0, mode: "w", length: 8, address: 0x601000n },
        { dr: 2, mode: "x", length: 1, address: 0x401003n },
        { dr: 3, mode: "rw", length: 2, address: 0x601006n },
      ],
      conditions: [{ op: ">=", value: 10n }, { op: "<", value: (1n << 64n) - 1n }, { op: "changed" }, { op: "unchanged" }],
      tids: [4242, 4243],
      stackDepth: 16,
      backend: "ptrace",
      countOnly: false,
      countIntervalMs: 0,
    };
    const armFrame = onlyFrame(encodeArm(8, arm));
    assert.equal(armFrame.type, MessageType.Arm);
    assert.equal(armFrame.payload.length, ARM_FIXED_BYTES + 3 * 12 + 4 * 16 + 2 * 4);
    assert.deepEqual(decodeArmRequest(armFrame.payload), arm);
    const p = armFrame.payload;
    assert.deepEqual([p.readUInt32LE(20), p.readUInt32LE(24)], [1000, 250], "rate and backoff");
    assert.deepEqual([p[28], p[29], p[30], p[31]], [3, 4, 2, 16], "chunk, condition and tid counts, stack depth");
    assert.deepEqual([p[32], p[33], p.readUInt16LE(34), p.readUInt32LE(36)], [0, 0, 0, 0], "backend 0 = ptrace, no flags, pad, interval");
    // Mode travels as the DR7 RW encoding.
    assert.deepEqual([p[41], p[53], p[65]], [1, 0, 3]);
    // Conditions: u8 op, 7 pad, u64 value; "changed"/"unchanged" carry 0.
    assert.deepEqual([p[76], p[92], p[108], p[124]], [5, 2, 6, 7]);
    assert.equal(p.readBigUInt64LE(84), 10n);
    assert.equal(p.readBigUInt64LE(116), 0n);
    assert.deepEqual([p.readUInt32LE(140), p.readUInt32LE(144)], [4242, 4243]);

    const count: ArmRequest = { ...armBase, pid: 7, group: 3n, chunks: [{ dr: 1, mode: "w", length: 4, address: 0x601004n }], tids: [9], backend: "perf", countOnly: true, countIntervalMs: 250 };
    const countFrame = onlyFrame(encodeArm(11, count));
    const c = countFrame.payload;
    assert.equal(c.length, ARM_FIXED_BYTES + 12 + 4);
    assert.deepEqual([c[32], c[33], c.readUInt32LE(36)], [1, 1, 250], "backend 1 = perf, flags bit 0 = count only, interval");
    assert.deepEqual(decodeArmRequest(c), count);
    const badBackend = Buffer.from(c);
    badBackend[32] = 2;
    assert.throws(() => decodeArmRequest(badBackend), /unknown backend 2/);

    const disarm = onlyFrame(encodeDisarm(9, { pid: 99, group: 5n }));
    assert.deepEqual(decodeDisarmRequest(disarm.payload), { pid: 99, group: 5n });

    const shutdown = onlyFrame(encodeShutdown(10));
    assert.deepEqual([shutdown.type, shutdown.requestId, shutdown.payload.length], [MessageType.Shutdown, 10, 0]);
  });

  test("replies - HELLO, RESOLVED, ARMED, DISARMED and ERROR round trip", () => {
    const hello: HelloPayload = {
      protocolVersion: 4,
      slotsPerThread: 4,
      backends: ["ptrace", "perf"],
      perfValues: "after-trap",
      helperVersion: "0.3.0",
      perfNote: "values are read after the trap",
      traps: [
        { backend: "ptrace", delivery: "not-delivered", writes: 8, traps: 3, nsPerTrap: 0, detail: "DR0 armed, 3 of 8 probe writes trapped: traps are delivered unreliably" },
        { backend: "perf", delivery: "delivered", writes: 8, traps: 8, nsPerTrap: 1234, detail: "8 of 8 probe writes trapped, 1.2 µs per trap" },
      ],
    };
    const helloFrame = onlyFrame(encodeHello(hello));
    assert.deepEqual([helloFrame.payload.readUInt32LE(8), helloFrame.payload[12]], [0b11, 1], "backends mask, perf_values");
    assert.equal(helloProtocolVersion(helloFrame.payload), 4);
    assert.deepEqual(decodeHello(helloFrame.payload), hello);
    // A delivery code nobody knows is refused, not read as "delivered".
    const badDelivery = Buffer.from(helloFrame.payload);
    const record = (detail: string): number => 4 + 12 + 2 + Buffer.byteLength(detail);
    const ptraceDelivery = badDelivery.length - record(hello.traps[1]!.detail) - record(hello.traps[0]!.detail);
    badDelivery[ptraceDelivery] = 7;
    assert.throws(() => decodeHello(badDelivery), /unknown trap delivery 7 for ptrace in HELLO/);
    const noPerf: HelloPayload = { ...hello, backends: ["ptrace"], perfValues: "unavailable", perfNote: "perf_event_open: EACCES (perf_event_paranoid 3)" };
    assert.deepEqual(decodeHello(onlyFrame(encodeHello(noPerf)).payload), noPerf);
    const sym = { address: 0x5555_5555_8010n, size: 8n, module: "/usr/bin/postgres", symbol: "work_mem" };
    assert.deepEqual(decodeResolved(onlyFrame(encodeResolved(3, sym)).payload), sym);
    const armed = { threadsTotal: 12, threadsArmed: 12, drMask: 0b1010, reservedMask: 0b1011 };
    const armedFrame = onlyFrame(encodeArmed(4, armed));
    assert.equal(armedFrame.payload.length, 12);
    assert.equal(armedFrame.payload[9], 0b1011, "reserved_mask after dr_mask");
    assert.deepEqual(decodeArmed(armedFrame.payload), armed);
    const disarmed = { trapped: 118n, delivered: 100n, suppressed: 5n, filtered: 10n, lost: 3n, reservedMask: 0b0001 };
    const disarmedFrame = onlyFrame(encodeDisarmed(5, disarmed));
    assert.equal(disarmedFrame.payload.length, 48);
    assert.equal(disarmedFrame.payload.readBigUInt64LE(24), 10n, "filtered after suppressed");
    assert.equal(disarmedFrame.payload.readBigUInt64LE(32), 3n, "lost after filtered");
    assert.equal(disarmedFrame.payload[40], 0b0001, "reserved_mask after the counts");
    assert.deepEqual(decodeDisarmed(disarmedFrame.payload), disarmed);
    const err = { errno: 1, errnoName: "EPERM", message: "PTRACE_SEIZE pid 4242: already traced by pid 77 (strace)" };
    const errFrame = onlyFrame(encodeError(6, err));
    assert.equal(errFrame.requestId, 6);
    assert.deepEqual(decodeError(errFrame.payload), err);
  });

  test("hit record - 64 fixed bytes at the documented offsets, then frame count and ips", () => {
    const rec = encodeHitRecord(hit);
    assert.equal(rec.length, HIT_FIXED_BYTES + 1);
    assert.equal(rec.readBigUInt64LE(0), hit.group);
    assert.equal(rec.readUInt32LE(8), 4242);
    assert.equal(rec.readUInt32LE(12), 4243);
    assert.equal(rec.readBigUInt64LE(40), hit.newValue);
    assert.deepEqual([rec[56], rec[57], rec[58]], [3, 8, 3]);
    assert.deepEqual([...rec.subarray(59)], [1, 0, 0, 0, 0, 0], "flags (bit 0 value_exact), 4 pad, frame count");
    assert.deepEqual(decodeHitRecord(rec), { hit, end: 65 });
    const afterTrap = { ...hit, valueExact: false };
    assert.equal(encodeHitRecord(afterTrap)[59], 0);
    assert.deepEqual(decodeHitRecord(encodeHitRecord(afterTrap)).hit, afterTrap);

    const withStack = { ...hit, ips: [0x401000n, 0x401234n, 0x7f00_0000_1000n] };
    const rec3 = encodeHitRecord(withStack);
    assert.equal(rec3.length, 65 + 3 * 8);
    assert.equal(rec3[64], 3);
    assert.equal(rec3.readBigUInt64LE(65 + 8), 0x401234n);
    assert.deepEqual(decodeHitRecord(Buffer.concat([Buffer.alloc(7), rec3]), 7), { hit: withStack, end: 7 + 89 });
  });

  test("hit records - variable length records in one HITS frame", () => {
    const a = { ...hit, ips: [1n, 2n] };
    const b = { ...hit, tid: 9, ips: [] };
    const c = { ...hit, tid: 10, ips: [3n] };
    const frame = onlyFrame(encodeHits([a, b, c]));
    assert.equal(frame.payload.length, 8 + (65 + 16) + 65 + (65 + 8));
    assert.deepEqual(decodeEvent(frame), { kind: "hits", hits: [a, b, c] });
  });

  test("stacks - expandHit names each ip from the SYMBOLS definitions, refuses an undefined one", () => {
    const defs = [
      { ip: 0x401010n, offset: 0x10n, function: "level_c", module: "/bin/t" },
      { ip: 0x401050n, offset: 0x8n, function: "level_b", module: "/bin/t" },
      { ip: 0x7f0000001000n, offset: 0n, function: "", module: "" },
    ];
    const symFrame = onlyFrame(encodeSymbols(4242, defs));
    const symbols = decodeEvent(symFrame);
    assert.deepEqual(symbols, { kind: "symbols", pid: 4242, symbols: defs });
    const table = new Map(defs.map((d) => [d.ip, d]));
    const record = { ...hit, ips: [0x401010n, 0x401050n, 0x7f0000001000n, 0n] };
    const { ips: _ips, ...fields } = record;
    assert.deepEqual(expandHit(record, table), {
      ...fields,
      stack: [
        { ip: 0x401010n, function: "level_c", offset: 0x10n, module: "/bin/t" },
        { ip: 0x401050n, function: "level_b", offset: 0x8n, module: "/bin/t" },
        { ip: 0x7f0000001000n, function: "", offset: 0n, module: "" },
        { ip: 0n, function: "", offset: 0n, module: "" },
      ],
    });
    assert.deepEqual(expandHit({ ...hit, ips: [] }, undefined).stack, []);
    assert.throws(() => expandHit({ ...hit, ips: [0x999n] }, table), /uses ip 0x999 before a SYMBOLS definition/);
  });

  test("hit record - a hand-built record parses", () => {
    const rec = Buffer.alloc(64);
    rec.writeBigUInt64LE(9n, 0);
    rec.writeUInt32LE(100, 8);
    rec.writeUInt32LE(101, 12);
    rec.writeBigUInt64LE(0x401234n, 16);
    rec.writeBigUInt64LE(0x601040n, 24);
    rec.writeBigUInt64LE(1n, 32);
    rec.writeBigUInt64LE(2n, 40);
    rec.writeBigUInt64LE(3n, 48);
    rec.writeUInt8(1, 56);
    rec.writeUInt8(4, 57);
    rec.writeUInt8(1, 58);
    assert.deepEqual(decodeHitRecord(Buffer.concat([rec, Buffer.from([0])])).hit, {
      group: 9n,
      pid: 100,
      tid: 101,
      ip: 0x401234n,
      address: 0x601040n,
      oldValue: 1n,
      newValue: 2n,
      timeNs: 3n,
      dr: 1,
      length: 4,
      mode: "w",
      valueExact: false,
      ips: [],
    });
  });

  test("events - HITS, GROUP_DONE, GROUP_BACKOFF, GROUP_RESUMED, TARGET_*, THREADS and LOG decode", () => {
    const second = { ...hit, tid: 4244, newValue: 8n, mode: "w" as const };
    assert.deepEqual(decodeEvent(onlyFrame(encodeHits([hit, second]))), { kind: "hits", hits: [hit, second] });
    const counts = { trapped: 107n, delivered: 100n, suppressed: 2n, filtered: 3n, lost: 2n };
    const doneFrame = onlyFrame(encodeGroupDone(4242, 7n, "budget", counts));
    assert.equal(doneFrame.payload.length, 56);
    assert.equal(doneFrame.payload.readBigUInt64LE(48), 2n, "lost last");
    assert.deepEqual(decodeEvent(doneFrame), {
      kind: "group-done",
      pid: 4242,
      group: 7n,
      reason: "budget",
      counts,
    });
    assert.deepEqual(decodeEvent(onlyFrame(encodeGroupBackoff(4242, 7n, 1_732_600_000_500_000_000n, 12n))), {
      kind: "group-backoff",
      pid: 4242,
      group: 7n,
      untilNs: 1_732_600_000_500_000_000n,
      suppressedSoFar: 12n,
    });
    assert.deepEqual(decodeEvent(onlyFrame(encodeGroupResumed(4242, 7n))), { kind: "group-resumed", pid: 4242, group: 7n });
    assert.deepEqual(decodeEvent(onlyFrame(encodeTargetFork(4242, 4300))), { kind: "target-fork", pid: 4242, childPid: 4300 });
    assert.deepEqual(decodeEvent(onlyFrame(encodeThreads(4242, 12, 11))), {
      kind: "threads",
      pid: 4242,
      threadsTotal: 12,
      threadsArmed: 11,
    });
    for (const [how, code, wire] of [["exited", 3, 0], ["killed", 9, 1], ["gone", 0, 2]] as const) {
      const frame = onlyFrame(encodeTargetExited(4242, how, code));
      assert.equal(frame.payload[4], wire, how);
      assert.deepEqual(decodeEvent(frame), { kind: "target-exited", pid: 4242, how, code });
    }
    const unknownExit = onlyFrame(encodeTargetExited(4242, "gone", 0));
    unknownExit.payload[4] = 3;
    assert.throws(() => decodeEvent(unknownExit), /unknown TARGET_EXITED killed 3/);
    assert.deepEqual(decodeEvent(onlyFrame(encodeTargetExec(4242))), { kind: "target-exec", pid: 4242 });
    assert.deepEqual(decodeEvent(onlyFrame(encodeLog("warning", "pid 1: slow"))), {
      kind: "log",
      level: "warning",
      message: "pid 1: slow",
    });
    assert.equal(decodeEvent(onlyFrame(encodeShutdown(1))), undefined);
  });

  test("events - COUNTS carries a counting group's totals and each thread's hits of the interval", () => {
    const counts = { trapped: 5200n, delivered: 5123n, suppressed: 0n, filtered: 70n, lost: 7n };
    const threads = [
      { tid: 4243, hits: 5000n },
      { tid: 4244, hits: 123n },
    ];
    const frame = onlyFrame(encodeCounts(4242, 9n, 1_732_600_000_000_000_000n, counts, threads));
    assert.equal(frame.type, MessageType.Counts);
    assert.equal(frame.payload.length, 64 + 2 * 16);
    const p = frame.payload;
    assert.deepEqual([p.readUInt32LE(0), p.readUInt32LE(4), p.readBigUInt64LE(8)], [4242, 2, 9n], "pid, thread count, group");
    assert.deepEqual([p.readBigUInt64LE(24), p.readBigUInt64LE(56)], [5200n, 7n], "trapped first, lost last");
    assert.deepEqual([p.readUInt32LE(64), p.readBigUInt64LE(72), p.readUInt32LE(80)], [4243, 5000n, 4244]);
    assert.deepEqual(decodeEvent(frame), { kind: "counts", pid: 4242, group: 9n, timeNs: 1_732_600_000_000_000_000n, counts, threads });
    assert.deepEqual(decodeEvent(onlyFrame(encodeCounts(1, 1n, 1n, counts, []))), { kind: "counts", pid: 1, group: 1n, timeNs: 1n, counts, threads: [] });
    // A thread count the payload does not hold is refused, not read past.
    const lying = Buffer.from(p);
    lying.writeUInt32LE(1_000_000, 4);
    assert.throws(() => decodeEvent({ ...frame, payload: lying }), /COUNTS of 1000000 threads has a payload of 96 bytes/);
  });

  test("decoder - a frame split across chunks at every byte boundary", () => {
    const bytes = Buffer.concat([encodeHits([hit, hit]), encodeTargetExec(5), encodeShutdown(3)]);
    for (let cut = 1; cut < bytes.length; cut++) {
      const d = new FrameDecoder();
      const first = d.push(bytes.subarray(0, cut));
      const rest = d.push(bytes.subarray(cut));
      const frames = [...first, ...rest];
      assert.deepEqual(
        frames.map((f) => f.type),
        [MessageType.Hits, MessageType.TargetExec, MessageType.Shutdown],
        `cut at ${cut}`,
      );
      assert.equal(d.bufferedBytes, 0);
    }
  });

  test("decoder - byte by byte, keeps the partial frame", () => {
    const bytes = encodeResolve(1, { pid: 1, offset: 0n, name: "x" });
    const d = new FrameDecoder();
    for (let i = 0; i < bytes.length - 1; i++) assert.deepEqual(d.push(bytes.subarray(i, i + 1)), []);
    assert.equal(d.bufferedBytes, bytes.length - 1);
    const frames = d.push(bytes.subarray(bytes.length - 1));
    assert.equal(frames.length, 1);
    assert.deepEqual(decodeResolveRequest((frames[0] as Frame).payload), { pid: 1, offset: 0n, name: "x" });
  });

  test("decoder - refuses a length below the header or above 1 MiB", () => {
    const small = Buffer.alloc(FRAME_HEADER_BYTES);
    small.writeUInt32LE(11, 0);
    assert.throws(() => new FrameDecoder().push(small), HelperProtocolError);
    const big = Buffer.alloc(FRAME_HEADER_BYTES);
    big.writeUInt32LE(FRAME_MAX_BYTES + 1, 0);
    assert.throws(() => new FrameDecoder().push(big), /outside 12\.\.1048576/);
  });

  test("decoders - a truncated payload is a protocol error, not garbage", () => {
    const armed = onlyFrame(encodeArmed(1, { threadsTotal: 1, threadsArmed: 1, drMask: 1, reservedMask: 1 }));
    assert.throws(() => decodeArmed(armed.payload.subarray(0, 5)), HelperProtocolError);
    const hits = onlyFrame(encodeHits([hit]));
    assert.throws(
      () => decodeEvent({ ...hits, payload: hits.payload.subarray(0, hits.payload.length - 1) }),
      /hit record at 8 runs past 72 bytes/,
    );
  });

  test("encoders - values that do not fit are refused before anything is sent", () => {
    assert.throws(() => encodeArm(1, { ...armBase, group: -1n, chunks: [] }), RangeError);
    assert.throws(() => encodeArm(1, { ...armBase, chunks: [{ dr: 300, mode: "w", length: 8, address: 0n }] }), RangeError);
    const five = Array.from({ length: 5 }, () => ({ op: "changed" as const }));
    assert.throws(() => encodeArm(1, { ...armBase, chunks: [], conditions: five }), /5 conditions \(at most 4\)/);
    assert.throws(() => encodeArm(1, { ...armBase, chunks: [], tids: Array.from({ length: 17 }, (_, i) => i + 1) }), /17 tids/);
    assert.throws(() => encodeArm(1, { ...armBase, chunks: [], stackDepth: 65 }), /65 frames/);
    assert.throws(() => encodeArm(1, { ...armBase, chunks: [], maxHitsPerSecond: 2 ** 32 }), RangeError);
  });
});
