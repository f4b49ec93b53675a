import assert from "node:assert/strict";
import { test } from "node:test";
import { mappingName, mappingOf, parseMaps } from "../../agent/memory-map.js";

const maps = parseMaps(
  [
    "555555554000-555555555000 r--p 00000000 fd:01 1234                       /usr/bin/counter",
    "555555558000-555555559000 rw-p 00003000 fd:01 1234                       /usr/bin/counter",
    "555555559000-55555555a000 rw-p 00000000 00:00 0 ",
    "55555555c000-55555557d000 rw-p 00000000 00:00 0                          [heap]",
    "not a line",
    "",
  ].join("\n"),
);

test("memory map - lines are parsed with their paths; anonymous ones have none", () => {
  assert.equal(maps.length, 4);
  assert.deepEqual(maps[0], { start: 0x555555554000n, end: 0x555555555000n, perms: "r--p", path: "/usr/bin/counter" });
  assert.equal(maps[2]!.path, "");
  assert.equal(mappingName(maps[2]!), "[anonymous]");
  assert.equal(mappingName(maps[3]!), "[heap]");
});

test("memory map - a range inside one mapping, or running on into the next, is mapped", () => {
  assert.equal(mappingOf(maps, 0x555555558010n, 8)?.path, "/usr/bin/counter");
  assert.equal(mappingOf(maps, 0x555555558ffcn, 8)?.path, "/usr/bin/counter", "runs on into the adjacent anonymous mapping");
  assert.equal(mappingOf(maps, 0x55555555c000n, 1)?.path, "[heap]");
});

test("memory map - a range with any unmapped byte is not", () => {
  assert.equal(mappingOf(maps, 0x1000n, 8), undefined);
  assert.equal(mappingOf(maps, 0x555555554ffcn, 8), undefined, "runs past the end into a gap");
  assert.equal(mappingOf(maps, 0x55555555a000n, 1), undefined, "the first byte after a mapping");
  assert.equal(mappingOf(maps, 0x55555557cff8n, 16), undefined, "past the last mapping");
});
