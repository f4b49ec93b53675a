import { test } from "node:test";
import assert from "node:assert/strict";
import { SlotLedger, assignmentsOf, foreignHoldMs } from "../../controller/slot-ledger.js";
import { SlotsExhaustedError } from "../../controller/errors.js";
import { place } from "../../controller/placement.js";
import type { PlacementBackend, PlacementJob } from "../../controller/placement-types.js";
import { WatchMode, splitRange, type Chunk } from "../../proto/index.js";

const chunks = (address: bigint, length: number) => splitRange(address, length, WatchMode.WRITE);
const job = (id: string, priority = 0, backend: PlacementBackend = "ptrace"): PlacementJob => ({ id, priority, createdUnixMs: 0, placement: { kind: "any" }, backend });

/** Places one job on one target through the placement core and applies it, as the controller does. */
function reserve(ledger: SlotLedger, hostId: string, pid: number, j: PlacementJob, cs: Chunk[]): number[] {
  const decision = place(j, [{ ...ledger.snapshot(hostId, pid), chunks: cs }]);
  if (decision.placed.length === 0) throw new Error(decision.shortfall?.reason ?? "not placed");
  return ledger.apply(j, decision.placed[0]!).map((s) => s.dr);
}

const holders = (ledger: SlotLedger, hostId: string, pid: number) => ledger.snapshot(hostId, pid).slots.map((s) => s?.holders.map((h) => h.jobId).join(",") ?? "");

test("slot-ledger - gives each chunk the lowest free register, per process", () => {
  const ledger = new SlotLedger();
  assert.deepEqual(reserve(ledger, "h1", 10, job("a"), chunks(0x1000n, 8)), [0]);
  assert.deepEqual(reserve(ledger, "h1", 10, job("b"), chunks(0x2004n, 8)), [1, 2]);
  assert.equal(ledger.freeCount("h1", 10), 1);
  assert.equal(ledger.freeCount("h1", 11), 4);
  assert.equal(ledger.freeCount("h2", 10), 4);
});

test("slot-ledger - an identical chunk shares its register; it frees when the last holder leaves", () => {
  const ledger = new SlotLedger();
  reserve(ledger, "h1", 10, job("a"), chunks(0x1000n, 8));
  assert.deepEqual(reserve(ledger, "h1", 10, job("b"), chunks(0x1000n, 8)), [0]);
  assert.deepEqual(holders(ledger, "h1", 10), ["a,b", "", "", ""]);
  assert.equal(ledger.freeCount("h1", 10), 3);
  assert.deepEqual(ledger.release("h1", 10, "a"), [], "b still holds DR0");
  assert.deepEqual(holders(ledger, "h1", 10), ["b", "", "", ""]);
  assert.deepEqual(ledger.release("h1", 10, "b"), [0]);
  assert.deepEqual(ledger.entries(), [], "an empty target is forgotten");
});

test("slot-ledger - describe names every register's holders and chunk, and foreign registers", () => {
  const ledger = new SlotLedger();
  reserve(ledger, "h1", 10, job("a"), chunks(0x1000n, 8));
  reserve(ledger, "h1", 10, job("b"), chunks(0x2004n, 8));
  ledger.noteForeign("h1", 10, 0b1000);
  const described = ledger.describe("h1", 10);
  assert.equal(described.text, "DR0 a 0x1000/8 w #0; DR1 b 0x2004/4 w #0; DR2 b 0x2008/4 w #0; DR3 outside fleetwatch");
  assert.deepEqual(described.holders, ["a", "b"]);
  assert.equal(ledger.freeCount("h1", 10), 0);
});

test("slot-ledger - foreign registers are kept out for a while, then tried again", () => {
  let now = 1_000;
  const ledger = new SlotLedger(() => now);
  ledger.noteForeign("h1", 10, 0b0011);
  assert.equal(ledger.snapshot("h1", 10).foreignMask, 0b0011);
  assert.deepEqual(reserve(ledger, "h1", 10, job("a"), chunks(0x1000n, 8)), [2]);
  now += foreignHoldMs;
  assert.equal(ledger.snapshot("h1", 10).foreignMask, 0);
  assert.deepEqual(reserve(ledger, "h1", 10, job("b"), chunks(0x2000n, 8)), [0]);
});

test("slot-ledger - restore rebuilds holdings, shares identical chunks, refuses a register claimed with another chunk", () => {
  const first = new SlotLedger();
  const slots = assignmentsOf(chunks(0x1000n, 8).map((chunk) => ({ dr: 0, chunk })));
  first.restore("h1", 10, job("a"), slots);
  assert.equal(first.freeCount("h1", 10), 3);
  first.restore("h1", 10, job("b"), slots);
  assert.deepEqual(holders(first, "h1", 10), ["a,b", "", "", ""]);
  const other = assignmentsOf(chunks(0x2000n, 8).map((chunk) => ({ dr: 0, chunk })));
  assert.throws(() => first.restore("h1", 10, job("c"), other), (err: unknown) => err instanceof SlotsExhaustedError && /DR0 of pid 10 on h1 is claimed by a, b .* and by c/.test(err.message));
});

test("slot-ledger - perf jobs take a register each for identical chunks, and restore refuses sharing one", () => {
  const ledger = new SlotLedger();
  assert.deepEqual(reserve(ledger, "h1", 10, job("a", 0, "perf"), chunks(0x1000n, 8)), [0]);
  assert.deepEqual(reserve(ledger, "h1", 10, job("b", 0, "perf"), chunks(0x1000n, 8)), [1]);
  assert.deepEqual(reserve(ledger, "h1", 10, job("c"), chunks(0x1000n, 8)), [2], "a ptrace job does not share a perf register");
  assert.deepEqual(reserve(ledger, "h1", 10, job("d"), chunks(0x1000n, 8)), [2], "ptrace jobs share among themselves");
  assert.deepEqual(holders(ledger, "h1", 10), ["a", "b", "c,d", ""]);
  assert.equal(ledger.freeCount("h1", 10), 1);
  assert.deepEqual(ledger.release("h1", 10, "a"), [0]);

  const restored = new SlotLedger();
  const [slot] = assignmentsOf([{ dr: 0, chunk: chunks(0x1000n, 8)[0]! }]);
  restored.restore("h1", 10, job("a", 0, "perf"), [slot!]);
  assert.throws(() => restored.restore("h1", 10, job("b", 0, "perf"), [slot!]), SlotsExhaustedError);
  assert.throws(() => restored.restore("h1", 10, job("c"), [slot!]), SlotsExhaustedError);
});

test("slot-ledger - reuses registers the kernel still reserves for us before fresh ones", () => {
  const ledger = new SlotLedger();
  ledger.noteReserved("h1", 10, 0b1010);
  assert.deepEqual(reserve(ledger, "h1", 10, job("a"), chunks(0x1000n, 1)), [1]);
  assert.deepEqual(reserve(ledger, "h1", 10, job("b"), chunks(0x2004n, 8)), [3, 0]);
  assert.deepEqual(reserve(ledger, "h2", 10, job("c"), chunks(0x1000n, 1)), [0], "reservations are per process");
  ledger.release("h1", 10, "a");
  ledger.release("h1", 10, "b");
  const listed = ledger.entries().map((e) => [e.hostId, e.pid, e.reservedMask, e.slots.map((s) => s?.holders[0]?.jobId ?? "")]);
  assert.deepEqual(listed.sort(), [["h1", 10, 0b1010, ["", "", "", ""]], ["h2", 10, 0, ["c", "", "", ""]]]);
  ledger.forgetProcess("h1", 10);
  assert.deepEqual(ledger.entries().map((e) => e.hostId), ["h2"]);
});

test("slot-ledger - a tracer is remembered until it is gone or the process is", () => {
  const ledger = new SlotLedger();
  ledger.noteTracer("h1", 10, { pid: 77, comm: "gdb" });
  assert.deepEqual(ledger.snapshot("h1", 10).tracedBy, { pid: 77, comm: "gdb" });
  const decision = place(job("a"), [{ ...ledger.snapshot("h1", 10), chunks: chunks(0x1000n, 8) }]);
  assert.equal(decision.outcome, "pending");
  assert.match(decision.shortfall!.reason, /1 traced by pid 77 \(gdb\)/);
  ledger.noteTracer("h1", 10, undefined);
  assert.deepEqual(ledger.entries(), []);
});

test("slot-ledger - put restores a snapshot taken before a decision", () => {
  const ledger = new SlotLedger();
  reserve(ledger, "h1", 10, job("a"), chunks(0x1000n, 8));
  const before = ledger.snapshot("h1", 10);
  reserve(ledger, "h1", 10, job("b"), chunks(0x2000n, 8));
  ledger.put(before);
  assert.deepEqual(holders(ledger, "h1", 10), ["a", "", "", ""]);
});
