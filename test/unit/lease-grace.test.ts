import { test } from "node:test";
import assert from "node:assert/strict";
import { LeaseGrace, type GraceWatch } from "../../agent/lease-grace.js";

function grace() {
  const log: string[] = [];
  const suspended: string[] = [];
  const g = new LeaseGrace<GraceWatch>({
    hostId: "h1",
    log: (line) => log.push(line),
    suspend: async (watch, reason) => {
      suspended.push(`${watch.jobId}: ${reason}`);
    },
    onSuspended: () => {},
  });
  return { g, log, suspended };
}

const silence = "no session with a controller (c:1) for 2000 ms (the lease)";

test("lease grace - a lapse disarms the watches without lost-after and says so, with how many", async () => {
  const { g, log, suspended } = grace();
  await g.suspendAll([{ jobId: "a", pid: 1, lostAfterMs: 0, ended: false }, { jobId: "b", pid: 2, lostAfterMs: 0, ended: false }, { jobId: "c", pid: 3, lostAfterMs: 0, ended: true }], silence, 2000);
  assert.deepEqual(log, [`agent h1: ${silence}: disarmed by the agent until the controller re-arms it (2 watches)`]);
  assert.deepEqual(suspended, [`a: ${silence}: disarmed by the agent until the controller re-arms it`, `b: ${silence}: disarmed by the agent until the controller re-arms it`]);
});

test("lease grace - a watch within its job's lost-after is not said to be disarmed: it stays armed, and the log says that", async () => {
  const { g, log, suspended } = grace();
  await g.suspendAll([{ jobId: "a", pid: 1, lostAfterMs: 300_000, ended: false }], silence, 2000);
  g.cancel();
  assert.deepEqual(log, [`agent h1: ${silence}: 1 watch stays armed within its job's lost-after`]);
  assert.deepEqual(suspended, []);
  const both = grace();
  await both.g.suspendAll([{ jobId: "a", pid: 1, lostAfterMs: 300_000, ended: false }, { jobId: "b", pid: 2, lostAfterMs: 0, ended: false }], silence, 2000);
  both.g.cancel();
  assert.deepEqual(both.log, [`agent h1: ${silence}: disarmed by the agent until the controller re-arms it (1 watch); 1 watch stays armed within its job's lost-after`]);
  const none = grace();
  await none.g.suspendAll([], silence, 2000);
  assert.deepEqual(none.log, [`agent h1: ${silence}: no watch was armed`]);
});
