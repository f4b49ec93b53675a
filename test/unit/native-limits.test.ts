// The limits and condition operators of proto/limits.ts against what the
// native helper's headers define: one table on the TypeScript side, and this
// test fails the moment the C side says otherwise (a limit changed on one
// side only, an operator added, removed or moved in enum fw_cond_op).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { ConditionOp, conditionOperators, helperProtocolVersion, maxConditions, maxStackDepth, maxTids, slotsPerThread } from "../../proto/index.js";
import { repoRoot } from "../support/paths.js";

const nativeDir = path.join(repoRoot, "agent/native");
// Wherever the helper keeps them: every header is read.
const headers = readdirSync(nativeDir)
  .filter((f) => f.endsWith(".h"))
  .map((f) => readFileSync(path.join(nativeDir, f), "utf8"))
  .join("\n")
  .replace(/\/\*[\s\S]*?\*\//g, "");

function define(name: string): number {
  const found = [...headers.matchAll(new RegExp(`^#define\\s+${name}\\s+\\(?(\\d+)u?\\)?\\s*$`, "gm"))];
  assert.equal(found.length, 1, `${name} is defined once in agent/native/*.h`);
  return Number(found[0]![1]);
}

/** The enumerators of a C enum in order, with their values (implicit ones counted on). */
function enumerators(name: string): { name: string; value: number }[] {
  const body = new RegExp(`enum\\s+${name}\\s*\\{([^}]*)\\}`).exec(headers)?.[1];
  assert.ok(body !== undefined, `enum ${name} in agent/native/*.h`);
  let next = 0;
  return body
    .split(",")
    .map((e) => e.trim())
    .filter(Boolean)
    .map((e) => {
      const m = /^(\w+)(?:\s*=\s*(\d+))?$/.exec(e);
      assert.ok(m, `enum ${name}: '${e}' is NAME or NAME = NUMBER`);
      const value = m[2] === undefined ? next : Number(m[2]);
      next = value + 1;
      return { name: m[1]!, value };
    });
}

test("native limits - fw.h defines the limits proto/limits.ts gives every other party", () => {
  assert.deepEqual(
    {
      FW_SLOTS_PER_THREAD: define("FW_SLOTS_PER_THREAD"),
      FW_MAX_CONDITIONS: define("FW_MAX_CONDITIONS"),
      FW_MAX_TID_FILTER: define("FW_MAX_TID_FILTER"),
      FW_MAX_STACK_DEPTH: define("FW_MAX_STACK_DEPTH"),
      FW_PROTOCOL_VERSION: define("FW_PROTOCOL_VERSION"),
    },
    { FW_SLOTS_PER_THREAD: slotsPerThread, FW_MAX_CONDITIONS: maxConditions, FW_MAX_TID_FILTER: maxTids, FW_MAX_STACK_DEPTH: maxStackDepth, FW_PROTOCOL_VERSION: helperProtocolVersion },
  );
});

test("native limits - enum fw_cond_op lists the operators of proto/limits.ts in the same order, each coded by its place", () => {
  const native = enumerators("fw_cond_op").filter((e) => e.name !== "FW_COND_OP_COUNT");
  assert.deepEqual(
    native,
    conditionOperators.map((o, i) => ({ name: o.native, value: i })),
  );
  assert.equal(enumerators("fw_cond_op").find((e) => e.name === "FW_COND_OP_COUNT")?.value, conditionOperators.length, "FW_COND_OP_COUNT");
});

test("native limits - every protobuf condition operator has one entry, named as its C enumerator", () => {
  const protoOps = Object.values(ConditionOp).filter((v): v is ConditionOp => typeof v === "number" && v !== ConditionOp.UNSPECIFIED);
  assert.deepEqual([...conditionOperators.map((o) => o.op)].sort(), protoOps.sort());
  for (const o of conditionOperators) assert.equal(`FW_COND_${ConditionOp[o.op]}`, o.native);
});
