// Where a target's counters go on from when an agent that started again arms it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { resumeCounts, resumeCountingTotals } from "../../agent/stored-hits.js";
import { HitCountsSchema, type HitCounts } from "../../proto/index.js";

const counts = (c: Partial<Record<"trapped" | "delivered" | "suppressed" | "dropped" | "filtered", bigint>>): HitCounts => create(HitCountsSchema, c);
const plain = (c: HitCounts) => ({ trapped: c.trapped, delivered: c.delivered, suppressed: c.suppressed, dropped: c.dropped, filtered: c.filtered });

test("a target never armed before starts from zero", () => {
  assert.deepEqual(plain(resumeCounts(undefined, 0n)), plain(counts({})));
});

test("settled counts that match the stream go on unchanged", () => {
  const last = counts({ trapped: 30n, delivered: 25n, suppressed: 2n, dropped: 1n, filtered: 2n });
  assert.deepEqual(plain(resumeCounts(last, 25n)), plain(last));
});

test("hits still on their way at the last report and stored since count as delivered", () => {
  assert.deepEqual(plain(resumeCounts(counts({ trapped: 30n, delivered: 20n }), 30n)), plain(counts({ trapped: 30n, delivered: 30n })));
});

test("hits the last report knew as trapped but nobody stored were lost with the agent: dropped", () => {
  assert.deepEqual(plain(resumeCounts(counts({ trapped: 30n, delivered: 20n, filtered: 3n }), 24n)), plain(counts({ trapped: 30n, delivered: 24n, dropped: 3n, filtered: 3n })));
});

test("hits trapped and stored after the last report are counted from the stream", () => {
  assert.deepEqual(plain(resumeCounts(counts({ trapped: 10n, delivered: 10n }), 14n)), plain(counts({ trapped: 14n, delivered: 14n })));
});

test("counters never go back, whatever the stream holds", () => {
  const last = counts({ trapped: 12n, delivered: 10n, dropped: 2n });
  const next = resumeCounts(last, 4n);
  for (const name of ["trapped", "delivered", "suppressed", "dropped", "filtered"] as const) assert.ok(next[name] >= last[name], name);
  assert.equal(next.trapped, next.delivered + next.suppressed + next.dropped + next.filtered);
});

test("a counting target goes on from the later of the controller's counts and the last stored report", () => {
  const heard = counts({ trapped: 100n, delivered: 90n, dropped: 4n, filtered: 6n });
  const reported = counts({ trapped: 150n, delivered: 138n, dropped: 5n, filtered: 7n });
  const table: Array<[string, HitCounts | undefined, HitCounts | undefined, HitCounts]> = [
    ["never armed", undefined, undefined, counts({})],
    ["only the controller's", heard, undefined, heard],
    ["only a report (the controller heard nothing yet)", undefined, reported, reported],
    ["a report after the last count heard", heard, reported, reported],
    ["counts heard after the last report stored", reported, heard, reported],
  ];
  for (const [name, last, stored, expected] of table) {
    const next = resumeCountingTotals(last, stored);
    assert.deepEqual(plain(next), plain(expected), name);
    assert.equal(next.trapped, next.delivered + next.suppressed + next.dropped + next.filtered, name);
  }
});
