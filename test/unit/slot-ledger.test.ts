import { test } from "node:test";
import assert from "node:assert/strict";
import { SlotLedger } from "../../controller/slot-ledger.js";
import { SlotsExhaustedError } from "../../controller/errors.js";
import { WatchMode, splitRange } from "../../proto/index.js";

const chunks = (address: bigint, length: number) => splitRange(address, length, WatchMode.WRITE);

test("slot-ledger - gives each chunk the lowest free register", () => {
  const ledger = new SlotLedger();
  assert.deepEqual(ledger.reserve("h1", 10, "a", chunks(0x1000n, 8)).map((s) => s.dr), [0]);
  assert.deepEqual(ledger.reserve("h1", 10, "b", chunks(0x2004n, 8)).map((s) => s.dr), [1, 2]);
  assert.equal(ledger.freeCount("h1", 10), 1);
  assert.equal(ledger.freeCount("h1", 11), 4);
  assert.equal(ledger.freeCount("h2", 10), 4);
});

test("slot-ledger - refuses a fifth chunk on one pid and names the holders", () => {
  const ledger = new SlotLedger();
  ledger.reserve("h1", 10, "a", chunks(0x1000n, 8));
  ledger.reserve("h1", 10, "b", chunks(0x2004n, 8));
  ledger.reserve("h1", 10, "c", chunks(0x3000n, 4));
  assert.throws(
    () => ledger.reserve("h1", 10, "d", chunks(0x4000n, 1)),
    (err: unknown) => {
      assert.ok(err instanceof SlotsExhaustedError);
      assert.deepEqual(err.holders, ["a", "b", "c"]);
      assert.match(err.message, /has 0 free debug register\(s\) of 4 and the job needs 1; held by DR0 a 0x1000\/8 w #0; DR1 b 0x2004\/4 w #0; DR2 b 0x2008\/4 w #0; DR3 c 0x3000\/4 w #0/);
      return true;
    },
  );
  assert.equal(ledger.freeCount("h1", 10), 0);
});

test("slot-ledger - places all of a job's chunks or none", () => {
  const ledger = new SlotLedger();
  ledger.reserve("h1", 10, "a", chunks(0x1000n, 8));
  ledger.reserve("h1", 10, "b", chunks(0x2000n, 8));
  assert.throws(() => ledger.reserve("h1", 10, "c", chunks(0x3001n, 4)), SlotsExhaustedError);
  assert.equal(ledger.freeCount("h1", 10), 2);
});

test("slot-ledger - release returns the job's registers and forgets empty targets", () => {
  const ledger = new SlotLedger();
  ledger.reserve("h1", 10, "a", chunks(0x1000n, 8));
  ledger.reserve("h1", 10, "b", chunks(0x2000n, 8));
  ledger.release("h1", 10, "a");
  assert.deepEqual(ledger.slotsOf("h1", 10).map((h) => h?.jobId), [undefined, "b", undefined, undefined]);
  ledger.release("h1", 10, "b");
  assert.deepEqual(ledger.entries(), []);
});

test("slot-ledger - restore rebuilds holdings and refuses a register claimed twice", () => {
  const ledger = new SlotLedger();
  const first = new SlotLedger().reserve("h1", 10, "a", chunks(0x1000n, 8));
  ledger.restore("h1", 10, "a", first);
  assert.equal(ledger.freeCount("h1", 10), 3);
  assert.throws(() => ledger.restore("h1", 10, "b", first), /claimed by both a and b/);
});

test("slot-ledger - reuses registers the kernel still reserves for us before fresh ones", () => {
  const ledger = new SlotLedger();
  ledger.noteReserved("h1", 10, 0b1010);
  assert.deepEqual(ledger.reserve("h1", 10, "a", chunks(0x1000n, 1)).map((s) => s.dr), [1]);
  assert.deepEqual(ledger.reserve("h1", 10, "b", chunks(0x2004n, 8)).map((s) => s.dr), [3, 0]);
  assert.deepEqual(ledger.reserve("h2", 10, "c", chunks(0x1000n, 1)).map((s) => s.dr), [0], "reservations are per process");
  ledger.release("h1", 10, "a");
  ledger.release("h1", 10, "b");
  const listed = ledger.entries().map((e) => [e.hostId, e.pid, e.reservedMask, e.slots.map((h) => h?.jobId ?? "")]);
  assert.deepEqual(listed.sort(), [["h1", 10, 0b1010, ["", "", "", ""]], ["h2", 10, 0, ["c", "", "", ""]]]);
  ledger.forgetReserved("h1", 10);
  assert.deepEqual(ledger.entries().map((e) => e.hostId), ["h2"]);
});
