import { test } from "node:test";
import assert from "node:assert/strict";
import { EpochGuard } from "../../proto/index.js";

// Each row: epochs offered in order, what accept() answers, the highest remembered after.
const rows: { name: string; start?: bigint; offered: bigint[]; accepted: boolean[]; highest: bigint | undefined }[] = [
  { name: "nothing offered", offered: [], accepted: [], highest: undefined },
  { name: "the first epoch is accepted", offered: [3n], accepted: [true], highest: 3n },
  { name: "the same leader's many commands", offered: [1n, 1n, 1n], accepted: [true, true, true], highest: 1n },
  { name: "a new leader, then the old one again", offered: [1n, 2n, 1n, 2n], accepted: [true, true, false, true], highest: 2n },
  { name: "epochs may jump ahead", offered: [1n, 5n, 4n, 6n], accepted: [true, true, false, true], highest: 6n },
  { name: "epoch 0 (unfenced) only until an elected epoch is seen", offered: [0n, 1n, 0n], accepted: [true, true, false], highest: 1n },
  { name: "a remembered epoch refuses older ones from the start", start: 7n, offered: [6n, 7n, 8n], accepted: [false, true, true], highest: 8n },
  { name: "uint64-sized epochs compare exactly", start: 18446744073709551614n, offered: [18446744073709551613n, 18446744073709551615n], accepted: [false, true], highest: 18446744073709551615n },
];

for (const row of rows) {
  test(`epoch-guard - ${row.name}`, () => {
    const guard = new EpochGuard(row.start);
    assert.deepEqual(row.offered.map((epoch) => guard.accept(epoch)), row.accepted);
    assert.equal(guard.highest, row.highest);
  });
}

test("epoch-guard - a refused epoch does not lower what is remembered", () => {
  const guard = new EpochGuard();
  assert.equal(guard.accept(4n), true);
  assert.equal(guard.accept(2n), false);
  assert.equal(guard.accept(3n), false);
  assert.equal(guard.highest, 4n);
});
