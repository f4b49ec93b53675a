// The numbers and operators every party checks, in one place: the CLI and the
// controller (watch-spec), the agent and its helper protocol, and the native
// helper, whose agent/native/fw.h and enum fw_cond_op must say the same
// (test/unit/native-limits.test.ts reads the C headers and compares).
import { ConditionOp } from "./gen/fleetwatch/v1/watch_pb.js";

/** Debug-address registers per thread (DR0-DR3). C: FW_SLOTS_PER_THREAD. */
export const slotsPerThread = 4;

/** Conditions per job (a read watch uses one). C: FW_MAX_CONDITIONS. */
export const maxConditions = 4;

/** Threads in a thread filter. C: FW_MAX_TID_FILTER. */
export const maxTids = 16;

/** Symbolized stack frames per hit. C: FW_MAX_STACK_DEPTH. */
export const maxStackDepth = 64;

/** The helper protocol's version; HELLO carries it. C: FW_PROTOCOL_VERSION. */
export const helperProtocolVersion = 4;

/**
 * Every condition operator: how it is written (on the command line and in
 * the helper protocol), its protobuf value, and its C enumerator. The
 * position is the operator's code on the helper's wire.
 */
export const conditionOperators = [
  { text: "==", op: ConditionOp.EQ, native: "FW_COND_EQ" },
  { text: "!=", op: ConditionOp.NE, native: "FW_COND_NE" },
  { text: "<", op: ConditionOp.LT, native: "FW_COND_LT" },
  { text: ">", op: ConditionOp.GT, native: "FW_COND_GT" },
  { text: "<=", op: ConditionOp.LE, native: "FW_COND_LE" },
  { text: ">=", op: ConditionOp.GE, native: "FW_COND_GE" },
  { text: "changed", op: ConditionOp.CHANGED, native: "FW_COND_CHANGED" },
  { text: "unchanged", op: ConditionOp.UNCHANGED, native: "FW_COND_UNCHANGED" },
] as const;

/** How an operator is written: a comparison of the new value, or "changed" / "unchanged" against the old one. */
export type ConditionOperatorText = (typeof conditionOperators)[number]["text"];

/** The operators that compare the new value with a constant. */
export type CompareOperatorText = Exclude<ConditionOperatorText, "changed" | "unchanged">;

/** The operator of a protobuf ConditionOp, or undefined for one not known. */
export function conditionOperatorOf(op: ConditionOp): (typeof conditionOperators)[number] | undefined {
  return conditionOperators.find((o) => o.op === op);
}
