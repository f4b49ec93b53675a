import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { ChunkSchema, WatchMode, splitRange, type Chunk } from "../../proto/index.js";
import { InvalidRequestError } from "../../controller/errors.js";
import { applyDecision, applyPlacement, place, releaseJob, releaseJobs } from "../../controller/placement.js";
import type { Candidate, HeldSlot, PlacementBackend, PlacementDecision, PlacementJob, PlacementMode, SlotHolder, TargetSnapshot } from "../../controller/placement-types.js";

// ---- builders: short names keep the tables readable ----------------------

const w = (address: number, length = 8, watchIndex = 0): Chunk => create(ChunkSchema, { address: BigInt(address), length, mode: WatchMode.WRITE, watchIndex });
const rw = (address: number, length = 8): Chunk => create(ChunkSchema, { address: BigInt(address), length, mode: WatchMode.READ_WRITE });

/** A holder: job id, priority, creation time. */
const h = (jobId: string, priority = 0, createdUnixMs = 0): SlotHolder => ({ jobId, priority, createdUnixMs });
const held = (chunk: Chunk, ...holders: SlotHolder[]): HeldSlot => ({ chunk, holders });

const job = (id: string, priority = 0, placement: PlacementMode = { kind: "any" }, createdUnixMs = 1_000, backend: PlacementBackend = "ptrace"): PlacementJob => ({ id, priority, createdUnixMs, placement, backend });

const target = (hostId: string, pid: number, chunks: Chunk[], more: Partial<Omit<Candidate, "hostId" | "pid" | "chunks">> = {}): Candidate => ({
  hostId,
  pid,
  chunks,
  slots: [null, null, null, null],
  reservedMask: 0,
  foreignMask: 0,
  ...more,
});

/** `host/pid DRs`, e.g. `h1/10 0,1*` (* = shared), for compact assertions. */
const summary = (d: PlacementDecision): string[] => d.placed.map((p) => `${p.hostId}/${p.pid} ${p.assignments.map((a) => `${a.dr}${a.shared ? "*" : ""}`).join(",")}`);
const refs = (t: TargetSnapshot): string[] => t.slots.map((s) => (s ? s.holders.map((x) => x.jobId).join("+") : "-"));

// ---- sharing and registers -------------------------------------------------

test("placement - two jobs watching the same chunk share one register with two references", () => {
  let t: Candidate = target("h1", 10, [w(0x1000)]);
  const a = job("a");
  const first = place(a, [t]);
  assert.deepEqual(summary(first), ["h1/10 0"]);
  t = { ...applyPlacement(t, a, first.placed[0]!), chunks: [w(0x1000, 8, 3)] };

  const b = job("b");
  const second = place(b, [t]);
  assert.equal(second.outcome, "placed");
  assert.deepEqual(summary(second), ["h1/10 0*"]);
  assert.equal(second.placed[0]!.assignments[0]!.chunk.watchIndex, 3, "the job's own chunk, with its own watch index");
  t = { ...applyPlacement(t, b, second.placed[0]!), chunks: [] };
  assert.deepEqual(refs(t), ["a+b", "-", "-", "-"]);
  assert.equal(t.slots[0]!.holders.length, 2);
});

test("placement - shares only identical address, length and mode", () => {
  const slots = [held(w(0x1000), h("o", 9)), held(rw(0x2000), h("o", 9)), held(w(0x3000, 4), h("o", 9)), null];
  const cases: Array<[string, Chunk[], string[] | "pending"]> = [
    ["same chunk", [w(0x1000)], ["h1/10 0*"]],
    ["same address, other mode", [rw(0x1000)], ["h1/10 3"]],
    ["same address, other length", [w(0x3000, 8)], ["h1/10 3"]],
    ["one shared, one new", [w(0x1000), rw(0x2000), w(0x4000)], ["h1/10 0*,1*,3"]],
    ["two new with one free", [w(0x4000), w(0x5000)], "pending"],
    ["a job's own duplicate chunks use one register", [w(0x4000, 8, 0), w(0x4000, 8, 1)], ["h1/10 3,3*"]],
    ["a duplicate of a shared chunk", [w(0x1000, 8, 0), w(0x1000, 8, 1)], ["h1/10 0*,0*"]],
  ];
  for (const [name, chunks, expected] of cases) {
    const d = place(job("x"), [target("h1", 10, chunks, { slots })]);
    if (expected === "pending") assert.equal(d.outcome, "pending", name);
    else assert.deepEqual(summary(d), expected, name);
  }
});

test("placement - perf jobs never share a register between jobs; within a job a repeated chunk still takes one", () => {
  const ptraceHeld = held(w(0x1000), h("p"));
  const perfHeld: HeldSlot = { chunk: w(0x2000), holders: [h("q")], exclusive: true };
  const slots = [ptraceHeld, perfHeld, null, null];
  const perf = (id: string) => job(id, 0, { kind: "any" }, 1_000, "perf");
  const cases: Array<[string, PlacementJob, Chunk[], string[] | "pending"]> = [
    ["ptrace joins an identical ptrace chunk", job("x"), [w(0x1000)], ["h1/10 0*"]],
    ["ptrace does not join a perf job's identical chunk", job("x"), [w(0x2000)], ["h1/10 2"]],
    ["perf does not join a ptrace job's identical chunk", perf("x"), [w(0x1000)], ["h1/10 2"]],
    ["perf does not join another perf job's identical chunk", perf("x"), [w(0x2000)], ["h1/10 2"]],
    ["perf with a repeated chunk of its own takes one register", perf("x"), [w(0x4000, 8, 0), w(0x4000, 8, 1)], ["h1/10 2,2*"]],
    ["perf with three chunks and two free registers waits", perf("x"), [w(0x1000), w(0x2000), w(0x3000)], "pending"],
  ];
  for (const [name, j, chunks, expected] of cases) {
    const d = place(j, [target("h1", 10, chunks, { slots })]);
    if (expected === "pending") assert.equal(d.outcome, "pending", name);
    else assert.deepEqual(summary(d), expected, name);
  }
  // Applied, a perf job's register is its own: an identical chunk of any later job takes another.
  let t: Candidate = target("h1", 10, [w(0x1000)]);
  const a = perf("a");
  t = { ...applyPlacement(t, a, place(a, [t]).placed[0]!), chunks: [w(0x1000)] };
  assert.equal(t.slots[0]!.exclusive, true);
  for (const j of [perf("b"), job("c")]) assert.deepEqual(summary(place(j, [t])), ["h1/10 1"], j.id);
  assert.throws(() => applyPlacement(t, job("c"), { hostId: "h1", pid: 10, evicts: [], assignments: [{ dr: 0, chunk: w(0x1000), shared: true }] }), /perf registers are never shared/);
  assert.deepEqual(releaseJob(t, "a").cleared, [0], "its register frees when the perf job leaves");
});

test("placement - prefers free reserved registers, then the lowest index, never a foreign one", () => {
  const cases: Array<[string, Partial<Candidate>, number, number[]]> = [
    ["lowest free", {}, 2, [0, 1]],
    ["reserved first", { reservedMask: 0b1000 }, 2, [3, 0]],
    ["two reserved, in index order", { reservedMask: 0b1010 }, 3, [1, 3, 0]],
    ["reserved but held is skipped", { reservedMask: 0b0001, slots: [held(w(0x9000), h("o")), null, null, null] }, 1, [1]],
    ["a register with no holder left is free", { slots: [held(w(0x9000)), null, null, null] }, 1, [0]],
    ["foreign skipped", { foreignMask: 0b0011 }, 2, [2, 3]],
    ["foreign beats reserved", { foreignMask: 0b0100, reservedMask: 0b0100 }, 1, [0]],
  ];
  for (const [name, more, count, expected] of cases) {
    const chunks = Array.from({ length: count }, (_, i) => w(0x1000 + 8 * i));
    const d = place(job("x"), [target("h1", 10, chunks, more)]);
    assert.deepEqual(d.placed[0]?.assignments.map((a) => a.dr), expected, name);
  }
});

test("placement - a perf job never takes a register that earlier ptrace watches reserved in the kernel", () => {
  const perf = job("x", 0, { kind: "any" }, 1_000, "perf");
  const cases: Array<[string, Partial<Candidate>, number, number[] | "reserved"]> = [
    ["skips the reserved one", { reservedMask: 0b0001 }, 2, [1, 2]],
    ["three reserved leave one", { reservedMask: 0b0111 }, 1, [3]],
    ["two reserved, three chunks: blocked by the reservation", { reservedMask: 0b0011 }, 3, "reserved"],
  ];
  for (const [name, more, count, expected] of cases) {
    const chunks = Array.from({ length: count }, (_, i) => w(0x1000 + 8 * i));
    const d = place(perf, [target("h1", 10, chunks, more)]);
    if (expected === "reserved") {
      assert.equal(d.outcome, "pending", name);
      assert.deepEqual(d.shortfall?.counts, { full: 0, foreign: 0, reserved: 1, traced: 0, tooMany: 0 }, name);
      assert.match(d.shortfall?.reason ?? "", /1 blocked by registers earlier ptrace watches reserved/, name);
    } else assert.deepEqual(d.placed[0]?.assignments.map((a) => a.dr), expected, name);
  }
  // A ptrace job still prefers them.
  assert.deepEqual(place(job("y"), [target("h1", 10, [w(0x1000)], { reservedMask: 0b0001 })]).placed[0]?.assignments.map((a) => a.dr), [0]);
});

test("placement - refuses a fifth chunk on one pid and places a job's chunks on a target all or none", () => {
  const slots = [held(w(0x100), h("a")), held(w(0x200), h("a")), held(w(0x300), h("b")), null];
  const one = place(job("c"), [target("h1", 10, [w(0x1000)], { slots })]);
  assert.deepEqual(summary(one), ["h1/10 3"]);
  const two = place(job("c"), [target("h1", 10, [w(0x1000), w(0x2000)], { slots })]);
  assert.equal(two.outcome, "pending");
  assert.deepEqual(two.placed, []);
  assert.equal(two.shortfall?.reason, "0/1 targets have 2 free debug registers: 1 full (jobs a, b)");
  const five = place(job("c"), [target("h1", 10, splitRange(0x1001n, 16, WatchMode.WRITE))]);
  assert.equal(five.shortfall?.reason, "0/1 targets have 5 free debug registers: 1 need more than 4 debug registers");
  assert.deepEqual(five.shortfall?.counts, { full: 0, foreign: 0, reserved: 0, traced: 0, tooMany: 1 });
});

// ---- placement modes -------------------------------------------------------

/** h1/10 and h1/11 free, h2/20 full of an equal-priority job, h3/30 free. */
const fleet = (): Candidate[] => [
  target("h1", 10, [w(0x1000)]),
  target("h1", 11, [w(0x1000)]),
  target("h2", 20, [w(0x1000)], { slots: [held(w(1)), held(w(2)), held(w(3)), held(w(4))].map((s) => ({ ...s, holders: [h("z", 5)] })) }),
  target("h3", 30, [w(0x1000)]),
];

test("placement - all is a gang, any takes what fits, sample takes N", () => {
  const cases: Array<[PlacementMode, PlacementDecision["outcome"], string[], string | undefined]> = [
    [{ kind: "all" }, "pending", [], "3/4 targets have 1 free debug register: 1 full (job z); placement all needs all 4"],
    [{ kind: "any" }, "partial", ["h1/10 0", "h1/11 0", "h3/30 0"], "3/4 targets have 1 free debug register: 1 full (job z)"],
    [{ kind: "sample", count: 2 }, "placed", ["h1/10 0", "h3/30 0"], undefined],
    [{ kind: "sample", count: 3 }, "placed", ["h1/10 0", "h1/11 0", "h3/30 0"], undefined],
    [{ kind: "sample", count: 5 }, "partial", ["h1/10 0", "h1/11 0", "h3/30 0"], "3/4 targets have 1 free debug register: 1 full (job z); placed 3 of sample:5"],
  ];
  for (const [mode, outcome, placed, reason] of cases) {
    const d = place(job("j", 5, mode), fleet());
    assert.equal(d.outcome, outcome, mode.kind);
    assert.deepEqual(summary(d), placed, mode.kind);
    assert.equal(d.shortfall?.reason, reason, mode.kind);
    assert.deepEqual(d.preempted, []);
  }
  const gang = place(job("j", 5, { kind: "all" }), fleet().filter((t) => t.hostId !== "h2"));
  assert.equal(gang.outcome, "placed");
  assert.deepEqual(summary(gang), ["h1/10 0", "h1/11 0", "h3/30 0"]);
  const stuck = place(job("j", 5, { kind: "all" }), fleet()).shortfall;
  assert.deepEqual([stuck?.fits, stuck?.needed, stuck?.counts], [3, 4, { full: 1, foreign: 0, reserved: 0, traced: 0, tooMany: 0 }]);
});

test("placement - sample spreads round-robin over hosts sorted by id, then pid, and is deterministic", () => {
  const candidates = [target("h3", 31, [w(8)]), target("h1", 12, [w(8)]), target("h2", 20, [w(8)]), target("h1", 10, [w(8)]), target("h3", 30, [w(8)]), target("h1", 11, [w(8)])];
  const cases: Array<[number, string[]]> = [
    [1, ["h1/10"]],
    [3, ["h1/10", "h2/20", "h3/30"]],
    [4, ["h1/10", "h1/11", "h2/20", "h3/30"]],
    [5, ["h1/10", "h1/11", "h2/20", "h3/30", "h3/31"]],
  ];
  for (const [count, expected] of cases) {
    const d = place(job("s", 0, { kind: "sample", count }), candidates);
    assert.deepEqual(d.placed.map((p) => `${p.hostId}/${p.pid}`), expected, `sample:${count}`);
    assert.deepEqual(place(job("s", 0, { kind: "sample", count }), [...candidates].reverse()), d, "input order does not matter");
  }
});

test("placement - sample skips targets that do not fit and spreads by a label when asked", () => {
  const full = { slots: [0, 1, 2, 3].map((i) => held(w(0x100 * (i + 1)), h("z", 9))) };
  const zone = (z: string) => ({ hostLabels: { zone: z } });
  const candidates = [
    target("h1", 10, [w(8)], { ...full, ...zone("a") }),
    target("h1", 11, [w(8)], zone("a")),
    target("h2", 20, [w(8)], zone("a")),
    target("h3", 30, [w(8)], zone("b")),
    target("h4", 40, [w(8)], {}),
  ];
  const byHost = place(job("s", 0, { kind: "sample", count: 2 }), candidates);
  assert.deepEqual(byHost.placed.map((p) => `${p.hostId}/${p.pid}`), ["h1/11", "h2/20"]);
  const byZone = place(job("s", 0, { kind: "sample", count: 3, spreadLabel: "zone" }), candidates);
  assert.deepEqual(byZone.placed.map((p) => `${p.hostId}/${p.pid}`), ["h1/11", "h3/30", "h4/40"], "one per zone (no label is its own group)");
});

test("placement - sample counts targets it already holds and adds the rest on other hosts", () => {
  const mine = { slots: [held(w(8), h("s")), null, null, null] };
  const candidates = [target("h1", 10, [w(8)], mine), target("h1", 11, [w(8)]), target("h2", 20, [w(8)]), target("h3", 30, [w(8)])];
  const d = place(job("s", 0, { kind: "sample", count: 2 }), candidates);
  assert.equal(d.outcome, "placed");
  assert.deepEqual(d.kept, [{ hostId: "h1", pid: 10 }]);
  assert.deepEqual(d.placed.map((p) => `${p.hostId}/${p.pid}`), ["h2/20"]);
  const enough = place(job("s", 0, { kind: "sample", count: 1 }), candidates);
  assert.deepEqual([enough.outcome, enough.placed.length], ["placed", 0]);
  const all = place(job("s", 0, { kind: "all" }), candidates);
  assert.deepEqual(summary(all), ["h1/11 0", "h2/20 0", "h3/30 0"], "a kept target counts toward the gang");
});

test("placement - sample prefers targets that fit without preemption, then preempts", () => {
  const low = { slots: [0, 1, 2, 3].map((i) => held(w(0x100 * (i + 1)), h("low", 1))) };
  const candidates = [target("h1", 10, [w(8)], low), target("h2", 20, [w(8)], low), target("h2", 21, [w(8)])];
  const one = place(job("s", 5, { kind: "sample", count: 1 }), candidates);
  assert.deepEqual([summary(one), one.preempted], [["h2/21 0"], []]);
  const two = place(job("s", 5, { kind: "sample", count: 2 }), candidates);
  assert.deepEqual(summary(two), ["h1/10 0", "h2/21 0"], "the preempting pick goes to the host the job is not on yet");
  assert.deepEqual(two.preempted, [{ hostId: "h1", pid: 10, jobId: "low" }]);
});

// ---- preemption ------------------------------------------------------------

test("placement - preempts only strictly lower priority; equal priority waits", () => {
  const slots = (priority: number) => [0, 1, 2, 3].map((i) => held(w(0x100 * (i + 1)), h("old", priority)));
  const cases: Array<[number, PlacementDecision["outcome"], string[]]> = [
    [4, "placed", ["old"]],
    [5, "pending", []],
    [6, "pending", []],
  ];
  for (const [priority, outcome, victims] of cases) {
    const d = place(job("new", 5), [target("h1", 10, [w(8)], { slots: slots(priority) })]);
    assert.equal(d.outcome, outcome, `holder priority ${priority}`);
    assert.deepEqual(d.preempted.map((e) => e.jobId), victims, `holder priority ${priority}`);
    if (outcome === "pending") assert.equal(d.shortfall?.reason, "0/1 targets have 1 free debug register: 1 full (job old)");
  }
});

test("placement - chooses the fewest victims, then the lowest priority, then the newest", () => {
  const cases: Array<[string, Array<HeldSlot | null>, number, string[], number[]]> = [
    ["one job with two registers beats two jobs", [held(w(0x100), h("a", 1)), held(w(0x200), h("b", 2)), held(w(0x300), h("b", 2)), held(w(0x400), h("c", 1))], 2, ["b"], [1, 2]],
    ["lowest priority first", [held(w(0x100), h("a", 3)), held(w(0x200), h("b", 1)), held(w(0x300), h("c", 2)), held(w(0x400), h("d", 9))], 1, ["b"], [1]],
    ["newest first at equal priority", [held(w(0x100), h("a", 1, 100)), held(w(0x200), h("b", 1, 300)), held(w(0x300), h("c", 1, 200)), held(w(0x400), h("d", 9))], 1, ["b"], [1]],
    ["spare the highest victim priority", [held(w(0x100), h("a", 1)), held(w(0x200), h("b", 4)), held(w(0x300), h("c", 2)), held(w(0x400), h("d", 3))], 2, ["a", "c"], [0, 2]],
    ["only lower priorities are candidates", [held(w(0x100), h("a", 5)), held(w(0x200), h("b", 4)), held(w(0x300), h("c", 6)), null], 2, ["b"], [1, 3]],
    ["a victim leaves every register it holds", [held(w(0x100), h("a", 1)), held(w(0x200), h("a", 1)), held(w(0x300), h("c", 9)), held(w(0x400), h("d", 9))], 1, ["a"], [0]],
  ];
  for (const [name, slots, chunkCount, victims, drs] of cases) {
    const chunks = Array.from({ length: chunkCount }, (_, i) => w(0x8000 + 8 * i));
    const d = place(job("new", 5), [target("h1", 10, chunks, { slots })]);
    assert.equal(d.outcome, "placed", name);
    assert.deepEqual(d.placed[0]!.evicts, victims, name);
    assert.deepEqual(d.preempted, victims.map((jobId) => ({ hostId: "h1", pid: 10, jobId })), name);
    assert.deepEqual(d.placed[0]!.assignments.map((a) => a.dr), drs, name);
  }
});

test("placement - a shared register is freed only when every holder is evicted", () => {
  const cases: Array<[string, SlotHolder[], string[] | "pending"]> = [
    ["both holders lower: both go", [h("a", 1), h("b", 2)], ["a", "b"]],
    ["one holder equal: the register stays", [h("a", 1), h("b", 5)], "pending"],
  ];
  for (const [name, holders, victims] of cases) {
    const slots = [held(w(0x100), ...holders), held(w(0x200), h("x", 9)), held(w(0x300), h("x", 9)), held(w(0x400), h("x", 9))];
    const d = place(job("new", 5), [target("h1", 10, [w(8)], { slots })]);
    if (victims === "pending") {
      assert.equal(d.outcome, "pending", name);
      assert.equal(d.shortfall?.reason, "0/1 targets have 1 free debug register: 1 full (jobs a, b, x)", name);
    } else {
      assert.deepEqual(d.placed[0]!.evicts, victims, name);
      assert.deepEqual(d.placed[0]!.assignments.map((a) => a.dr), [0], name);
    }
  }
  const cheaper = [held(w(0x100), h("a", 1), h("b", 1)), held(w(0x200), h("c", 1)), held(w(0x300), h("x", 9)), held(w(0x400), h("x", 9))];
  assert.deepEqual(place(job("new", 5), [target("h1", 10, [w(8)], { slots: cheaper })]).placed[0]!.evicts, ["c"], "one victim frees a register; a shared one needs two");
});

test("placement - joins a lower-priority job's register instead of evicting it", () => {
  const slots = [held(w(0x100), h("low", 1)), held(w(0x200), h("low", 1)), held(w(0x300), h("x", 9)), held(w(0x400), h("x", 9))];
  const d = place(job("new", 5), [target("h1", 10, [w(0x100), w(0x8000)], { slots })]);
  assert.deepEqual(summary(d), ["h1/10 0*,1"]);
  assert.deepEqual(d.placed[0]!.evicts, ["low"]);
  const after = applyPlacement(target("h1", 10, [], { slots }), job("new", 5), d.placed[0]!);
  assert.deepEqual(refs(after), ["new", "new", "x", "x"], "the evicted job leaves the shared register, which stays armed for the new one");
});

test("placement - an all gang that cannot complete evicts nobody and says what preemption would free", () => {
  const low = { slots: [0, 1, 2, 3].map((i) => held(w(0x100 * (i + 1)), h("low", 1))) };
  const high = { slots: [0, 1, 2, 3].map((i) => held(w(0x100 * (i + 1)), h("high", 9))) };
  const candidates = [target("h1", 10, [w(8)], low), target("h2", 20, [w(8)]), target("h3", 30, [w(8)], high)];
  const d = place(job("g", 5, { kind: "all" }), candidates);
  assert.equal(d.outcome, "pending");
  assert.deepEqual([d.placed, d.preempted], [[], []]);
  assert.equal(d.shortfall?.reason, "2/3 targets have 1 free debug register (1 after preempting lower-priority job low): 1 full (job high); placement all needs all 3");
  const ok = place(job("g", 5, { kind: "all" }), candidates.slice(0, 2));
  assert.deepEqual([ok.outcome, summary(ok), ok.preempted], ["placed", ["h1/10 0", "h2/20 0"], [{ hostId: "h1", pid: 10, jobId: "low" }]]);
});

// ---- unusable targets and reasons ----------------------------------------

test("placement - foreign registers and other tracers make targets unusable, with reasons", () => {
  const cases: Array<[string, Partial<Candidate>, number, string]> = [
    ["foreign registers block", { foreignMask: 0b1110 }, 2, "0/1 targets have 2 free debug registers: 1 blocked by debug registers in use outside fleetwatch (perf or another debugger)"],
    ["foreign never preempted", { foreignMask: 0b1111 }, 1, "0/1 targets have 1 free debug register: 1 blocked by debug registers in use outside fleetwatch (perf or another debugger)"],
    ["traced by gdb", { tracedBy: { pid: 77, comm: "gdb" } }, 1, "0/1 targets have 1 free debug register: 1 traced by pid 77 (gdb)"],
  ];
  for (const [name, more, count, reason] of cases) {
    const chunks = Array.from({ length: count }, (_, i) => w(0x1000 + 8 * i));
    const d = place(job("x", 100), [target("h1", 10, chunks, more)]);
    assert.deepEqual([d.outcome, d.shortfall?.reason], ["pending", reason], name);
  }
  // A perf job does not attach: another tracer does not stand in its way.
  const besideGdb = place(job("p", 0, { kind: "any" }, 1_000, "perf"), [target("h1", 10, [w(0x1000)], { tracedBy: { pid: 77, comm: "gdb" } })]);
  assert.deepEqual(summary(besideGdb), ["h1/10 0"], "perf beside another tracer");
  const sameChunkInForeign = place(job("x"), [target("h1", 10, [w(0x100)], { foreignMask: 0b0001, slots: [held(w(0x100), h("a")), null, null, null] })]);
  assert.deepEqual(summary(sameChunkInForeign), ["h1/10 1"], "a register in foreignMask is not shared either");
});

test("placement - pending reason counts every cause like a scheduler", () => {
  const full = (ids: string[]) => ({ slots: [0, 1, 2, 3].map((i) => held(w(0x100 * (i + 1)), h(ids[i % ids.length]!, 9))) });
  const twelve = [
    ...Array.from({ length: 9 }, (_, i) => target(`h${String(i).padStart(2, "0")}`, 100, [w(8), w(16)], full(i % 2 ? ["a"] : ["b", "a"]))),
    ...Array.from({ length: 3 }, (_, i) => target("h99", 200 + i, [w(8), w(16)], { tracedBy: { pid: 77, comm: "gdb" } })),
  ];
  const d = place(job("j", 1), twelve);
  assert.equal(d.shortfall?.reason, "0/12 targets have 2 free debug registers: 9 full (jobs a, b), 3 traced by pid 77 (gdb)");
  assert.deepEqual([d.shortfall?.fits, d.shortfall?.needed, d.shortfall?.counts], [0, 12, { full: 9, foreign: 0, reserved: 0, traced: 3, tooMany: 0 }]);

  const mixed = [
    target("h1", 1, [w(8), w(16)], { slots: [held(w(8), h("a")), null, null, null] }),
    target("h1", 2, [w(8), w(16)], { slots: [held(w(1), h("a", 9), h("b", 9)), held(w(2), h("c", 9), h("d", 9)), held(w(3), h("e", 9), h("f", 9)), held(w(4), h("g", 9))] }),
    target("h1", 3, [w(8), w(16)], { foreignMask: 0b0111 }),
    target("h2", 4, [w(8), w(16)], { tracedBy: { pid: 5, comm: "strace" } }),
    target("h2", 5, [w(8), w(16)], { tracedBy: { pid: 6, comm: "gdb" } }),
    target("h2", 6, [w(8), w(16)], { tracedBy: { pid: 6, comm: "gdb" } }),
    target("h2", 7, [w(8), w(16)], { tracedBy: { pid: 7, comm: "rr" } }),
    target("h2", 8, [w(8), w(16)], { tracedBy: { pid: 8, comm: "perf" } }),
    target("h2", 9, [w(8), w(16)], { tracedBy: { pid: 9, comm: "lldb" } }),
  ];
  assert.equal(
    place(job("j", 1), mixed).shortfall?.reason,
    "1/9 targets have 1-2 free debug registers: 1 full (jobs a, b, c, d, e and 2 more), 1 blocked by debug registers in use outside fleetwatch (perf or another debugger), " +
      "2 traced by pid 6 (gdb), 1 traced by pid 5 (strace), 1 traced by pid 7 (rr), 2 traced by 2 other tracers",
  );
});

test("placement - no candidates is pending, and a bad sample size is refused", () => {
  for (const mode of [{ kind: "all" }, { kind: "any" }, { kind: "sample", count: 2 }] as PlacementMode[]) {
    const d = place(job("j", 0, mode), []);
    assert.deepEqual([d.outcome, d.shortfall?.reason, d.shortfall?.fits, d.shortfall?.needed], ["pending", "no candidate targets", 0, mode.kind === "sample" ? 2 : 0], mode.kind);
  }
  for (const count of [0, -1, 1.5, Number.NaN]) {
    assert.throws(() => place(job("j", 0, { kind: "sample", count }), [target("h1", 1, [w(8)])]), InvalidRequestError, `sample:${count}`);
  }
});

test("placement - a job already on a target keeps it and is not placed twice", () => {
  const slots = [held(w(8), h("j")), null, null, null];
  const d = place(job("j"), [target("h1", 10, [w(8)], { slots }), target("h1", 11, [w(8)])]);
  assert.deepEqual([d.outcome, d.kept, summary(d)], ["placed", [{ hostId: "h1", pid: 10 }], ["h1/11 0"]]);
  const gangStuck = place(job("j", 0, { kind: "all" }), [target("h1", 10, [w(8)], { slots }), target("h1", 11, [w(8)], { tracedBy: { pid: 3, comm: "gdb" } })]);
  assert.deepEqual([gangStuck.outcome, gangStuck.shortfall?.reason], ["pending", "1/2 targets have 1 free debug register (1 already placed): 1 traced by pid 3 (gdb); placement all needs all 2"]);
});

// ---- ledger helpers ----------------------------------------------------------

test("placement - releaseJob drops one reference and clears a register only when its last holder leaves", () => {
  const t = target("h1", 10, [], { slots: [held(w(8), h("a"), h("b")), held(w(16), h("a")), null, held(w(32), h("c"))] });
  const cases: Array<[string[], number[], string[]]> = [
    [["a"], [1], ["b", "-", "-", "c"]],
    [["b"], [], ["a", "a", "-", "c"]],
    [["a", "b"], [0, 1], ["-", "-", "-", "c"]],
    [["nobody"], [], ["a+b", "a", "-", "c"]],
  ];
  for (const [jobs, cleared, after] of cases) {
    const released = jobs.length === 1 ? releaseJob(t, jobs[0]!) : releaseJobs(t, jobs);
    assert.deepEqual([released.cleared, refs(released.target)], [cleared, after], jobs.join(","));
  }
  assert.deepEqual(refs(t), ["a+b", "a", "-", "c"], "the input is not changed");
});

test("placement - applying a decision updates the snapshot and refuses a stale one", () => {
  const snapshot = new Map<string, Candidate>([
    ["h1/10", target("h1", 10, [w(8)], { slots: [held(w(0x100), h("low", 1)), held(w(0x200), h("low", 1)), held(w(0x300), h("x", 9)), held(w(0x400), h("x", 9))] })],
    ["h2/20", target("h2", 20, [w(8)])],
  ]);
  const j = job("j", 5);
  const d = place(j, [...snapshot.values()]);
  const after = applyDecision((ref) => snapshot.get(`${ref.hostId}/${ref.pid}`), j, d);
  assert.deepEqual(after.map(refs), [["j", "-", "x", "x"], ["j", "-", "-", "-"]]);
  assert.deepEqual(after[0]!.slots[0]!.holders, [{ jobId: "j", priority: 5, createdUnixMs: 1_000 }]);

  const moved = target("h2", 20, [], { slots: [held(w(0x999), h("other")), null, null, null] });
  assert.throws(() => applyPlacement(moved, j, d.placed[1]!), /stale placement: DR0 of pid 20 on h2 watches another chunk \(held by other\)/);
  assert.throws(() => applyDecision(() => undefined, j, d), /stale placement: no snapshot of pid 10 on h1/);
});

test("placement - a perf job's refusal counts reserved registers as not free, and says why", async () => {
  const { SlotLedger } = await import("../../controller/slot-ledger.js");
  const { whyNot } = await import("../../controller/job-placement.js");
  const { Backend, JobSchema, TargetSchema, TargetState } = await import("../../proto/index.js");
  const ledger = new SlotLedger();
  ledger.noteReserved("h1", 10, 0b1111);
  const chunk = w(0x1000);
  const spec = { watches: [{ location: { case: "symbol" as const, value: "work_mem" }, length: 8, mode: WatchMode.WRITE }], backend: Backend.PERF };
  const perfJob = create(JobSchema, { id: "p", spec, targets: [{ hostId: "h1", pid: 10, state: TargetState.PENDING, chunks: [chunk] }] });
  const why = whyNot(ledger, perfJob, perfJob.targets[0]!);
  assert.equal(why, "pid 10 on h1 has 0 free debug register(s) of 4 and the job needs 1; 4 more are reserved by earlier ptrace watches until the process's threads exit (--backend ptrace reuses them)");
  const ptraceJob = create(JobSchema, { id: "q", spec: { ...spec, backend: Backend.PTRACE }, targets: [create(TargetSchema, { hostId: "h1", pid: 10, state: TargetState.PENDING, chunks: [chunk] })] });
  assert.equal(whyNot(ledger, ptraceJob, ptraceJob.targets[0]!), "pid 10 on h1 has 4 free debug register(s) of 4 and the job needs 1");
});
