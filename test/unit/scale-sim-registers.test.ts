import { test } from "node:test";
import assert from "node:assert/strict";
import { SimRegisters } from "../../bench/sim-registers.js";

test("sim registers - a ptrace arm leaves its registers reserved after the disarm", () => {
  const r = new SimRegisters();
  assert.equal(r.arm("j1", [0, 2], "ptrace"), undefined);
  assert.equal(r.reservedMask, 0b101);
  assert.equal(r.disarm("j1"), undefined);
  assert.equal(r.used, 0);
  assert.equal(r.reservedMask, 0b101);
});

test("sim registers - a perf arm leaves nothing reserved", () => {
  const r = new SimRegisters();
  assert.equal(r.arm("j1", [0, 1, 2, 3], "perf"), undefined);
  assert.equal(r.reservedMask, 0);
  assert.equal(r.disarm("j1"), undefined);
  assert.equal(r.reservedMask, 0);
  assert.equal(r.arm("j2", [0, 1, 2, 3], "perf"), undefined);
  assert.deepEqual(r.counts, { arms: 2, disarms: 1, refused: {}, peakUsed: 4 });
});

test("sim registers - a perf arm on a register ptrace reserved is ENOSPC, a ptrace arm reuses it", () => {
  const r = new SimRegisters();
  r.arm("j1", [1], "ptrace");
  r.disarm("j1");
  assert.deepEqual(r.arm("j2", [1], "perf"), { errnoName: "ENOSPC", message: "DR1 is reserved by an earlier ptrace watch" });
  assert.equal(r.used, 0);
  assert.equal(r.arm("j3", [0], "perf"), undefined);
  assert.equal(r.arm("j4", [1], "ptrace"), undefined);
  assert.deepEqual(r.counts.refused, { ENOSPC: 1 });
});

test("sim registers - a register held by another job is EBUSY whatever the backend, and nothing is taken", () => {
  const r = new SimRegisters();
  r.arm("j1", [2], "perf");
  assert.deepEqual(r.arm("j2", [1, 2], "ptrace"), { errnoName: "EBUSY", message: "DR2 is in use by job j1" });
  assert.deepEqual(r.arm("j3", [2], "perf"), { errnoName: "EBUSY", message: "DR2 is in use by job j1" });
  assert.equal(r.used, 1);
  assert.equal(r.reservedMask, 0);
  assert.deepEqual(r.counts.refused, { EBUSY: 2 });
});
