// Frame encoding and decoding of the helper protocol, without a helper.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  FRAME_HEADER_BYTES,
  FRAME_MAX_BYTES,
  FrameDecoder,
  HIT_RECORD_BYTES,
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
  decodeResolveRequest,
  decodeResolved,
  encodeArm,
  encodeArmed,
  encodeDisarm,
  encodeDisarmed,
  encodeError,
  encodeFrame,
  encodeGroupDone,
  encodeHello,
  encodeHitRecord,
  encodeHits,
  encodeLog,
  encodeResolve,
  encodeResolved,
  encodeShutdown,
  encodeTargetExec,
  encodeTargetExited,
} from "../../agent/helper-protocol.js";
import type { Frame, HelperHit } from "../../agent/helper-protocol.js";

function onlyFrame(bytes: Buffer): Frame {
  const frames = new FrameDecoder().push(bytes);
  assert.equal(frames.length, 1);
  return frames[0] as Frame;
}

const hit: HelperHit = {
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

    const arm = {
      pid: 99,
      group: (1n << 64n) - 1n,
      maxHits: 100n,
      chunks: [
        { dr: 0, mode: "w" as const, length: 8, address: 0x601000n },
        { dr: 2, mode: "x" as const, length: 1, address: 0x401003n },
        { dr: 3, mode: "rw" as const, length: 2, address: 0x601006n },
      ],
    };
    const armFrame = onlyFrame(encodeArm(8, arm));
    assert.equal(armFrame.type, MessageType.Arm);
    assert.equal(armFrame.payload.length, 24 + 3 * 12);
    assert.deepEqual(decodeArmRequest(armFrame.payload), arm);
    // Mode travels as the DR7 RW encoding.
    assert.deepEqual([armFrame.payload[25], armFrame.payload[37], armFrame.payload[49]], [1, 0, 3]);

    const disarm = onlyFrame(encodeDisarm(9, { pid: 99, group: 5n }));
    assert.deepEqual(decodeDisarmRequest(disarm.payload), { pid: 99, group: 5n });

    const shutdown = onlyFrame(encodeShutdown(10));
    assert.deepEqual([shutdown.type, shutdown.requestId, shutdown.payload.length], [MessageType.Shutdown, 10, 0]);
  });

  test("replies - HELLO, RESOLVED, ARMED, DISARMED and ERROR round trip", () => {
    const hello = { protocolVersion: 1, slotsPerThread: 4, helperVersion: "0.1.0" };
    assert.deepEqual(decodeHello(onlyFrame(encodeHello(hello)).payload), hello);
    const sym = { address: 0x5555_5555_8010n, size: 8n, module: "/usr/bin/postgres", symbol: "work_mem" };
    assert.deepEqual(decodeResolved(onlyFrame(encodeResolved(3, sym)).payload), sym);
    const armed = { threadsTotal: 12, threadsArmed: 12, drMask: 0b1010 };
    assert.deepEqual(decodeArmed(onlyFrame(encodeArmed(4, armed)).payload), armed);
    const counts = { trapped: 105n, delivered: 100n, suppressed: 5n };
    assert.deepEqual(decodeDisarmed(onlyFrame(encodeDisarmed(5, counts)).payload), counts);
    const err = { errno: 1, errnoName: "EPERM", message: "PTRACE_SEIZE pid 4242: already traced by pid 77 (strace)" };
    const errFrame = onlyFrame(encodeError(6, err));
    assert.equal(errFrame.requestId, 6);
    assert.deepEqual(decodeError(errFrame.payload), err);
  });

  test("hit record - 64 bytes at the documented offsets", () => {
    const rec = encodeHitRecord(hit);
    assert.equal(rec.length, HIT_RECORD_BYTES);
    assert.equal(rec.readBigUInt64LE(0), hit.group);
    assert.equal(rec.readUInt32LE(8), 4242);
    assert.equal(rec.readUInt32LE(12), 4243);
    assert.equal(rec.readBigUInt64LE(40), hit.newValue);
    assert.deepEqual([rec[56], rec[57], rec[58]], [3, 8, 3]);
    assert.deepEqual([...rec.subarray(59)], [0, 0, 0, 0, 0]);
    assert.deepEqual(decodeHitRecord(rec), hit);
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
    assert.deepEqual(decodeHitRecord(rec), {
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
    });
  });

  test("events - HITS, GROUP_DONE, TARGET_EXITED, TARGET_EXEC and LOG decode", () => {
    const second = { ...hit, tid: 4244, newValue: 8n, mode: "w" as const };
    assert.deepEqual(decodeEvent(onlyFrame(encodeHits([hit, second]))), { kind: "hits", hits: [hit, second] });
    const counts = { trapped: 102n, delivered: 100n, suppressed: 2n };
    assert.deepEqual(decodeEvent(onlyFrame(encodeGroupDone(4242, 7n, "budget", counts))), {
      kind: "group-done",
      pid: 4242,
      group: 7n,
      reason: "budget",
      counts,
    });
    assert.deepEqual(decodeEvent(onlyFrame(encodeTargetExited(4242, true, 9))), {
      kind: "target-exited",
      pid: 4242,
      killed: true,
      code: 9,
    });
    assert.deepEqual(decodeEvent(onlyFrame(encodeTargetExec(4242))), { kind: "target-exec", pid: 4242 });
    assert.deepEqual(decodeEvent(onlyFrame(encodeLog("warning", "pid 1: slow"))), {
      kind: "log",
      level: "warning",
      message: "pid 1: slow",
    });
    assert.equal(decodeEvent(onlyFrame(encodeShutdown(1))), undefined);
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
    const armed = onlyFrame(encodeArmed(1, { threadsTotal: 1, threadsArmed: 1, drMask: 1 }));
    assert.throws(() => decodeArmed(armed.payload.subarray(0, 5)), HelperProtocolError);
    const hits = onlyFrame(encodeHits([hit]));
    assert.throws(
      () => decodeEvent({ ...hits, payload: hits.payload.subarray(0, hits.payload.length - 1) }),
      /needs 72 bytes, got 71/,
    );
  });

  test("encoders - values that do not fit are refused before anything is sent", () => {
    assert.throws(() => encodeArm(1, { pid: 1, group: -1n, maxHits: 0n, chunks: [] }), RangeError);
    assert.throws(
      () => encodeArm(1, { pid: 1, group: 1n, maxHits: 0n, chunks: [{ dr: 300, mode: "w", length: 8, address: 0n }] }),
      RangeError,
    );
  });
});
