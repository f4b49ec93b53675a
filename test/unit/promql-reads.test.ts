import { test } from "node:test";
import assert from "node:assert/strict";
import { PromqlReadError, exposedSeries, readPromql } from "../support/promql.js";

test("promql reads - metric names without functions, label matchers, grouping clauses, numbers, durations or variables", () => {
  const table: Array<[string, string[], string[]]> = [
    ["up", ["up"], []],
    ["sum(fleetwatch_agent_targets_armed)", ["fleetwatch_agent_targets_armed"], ["sum"]],
    ['sum by (state) (fleetwatch_agent_debug_registers{state="ours"})', ["fleetwatch_agent_debug_registers"], ["sum"]],
    ["sum without (instance) (rate(a_total[5m])) / ignoring (code) b_count", ["a_total", "b_count"], ["sum", "rate"]],
    ["histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket[$__rate_interval])))", ["x_seconds_bucket"], ["histogram_quantile", "sum", "rate"]],
    ["max(a) by (instance)", ["a"], ["max"]],
    ["a and on (instance, job) b == 1", ["a", "b"], []],
    ["a * on (instance) group_left (state) b", ["a", "b"], []],
    ["a * on (instance) group_left b", ["a", "b"], []],
    ["max_over_time(a[1h30m:1m]) offset 5m > bool 1e3", ["a"], ["max_over_time"]],
    ['count(a{code!="OK", le=~"0\\\\.5|+Inf"}) - 2 * -0.5 + 0x1f', ["a"], ["count"]],
    ["a:recorded:rate5m + Inf + NaN", ["a:recorded:rate5m"], []],
    ['label_replace(a, "host", "$1", "instance", "(.*):.*")', ["a"], ["label_replace"]],
  ];
  for (const [expr, metrics, functions] of table) {
    const reads = readPromql(expr);
    assert.deepEqual(reads.metrics, metrics, expr);
    assert.deepEqual(reads.functions, functions, expr);
  }
});

test("promql reads - each selector's matchers and the labels grouping clauses name", () => {
  const reads = readPromql('sum by (state, backend) (a{outcome="dropped",state!~"free|ours"}) and on (instance) group_right (job) b{x=\'y\'}');
  assert.deepEqual(reads.selectors, [
    { metric: "a", matchers: [{ label: "outcome", op: "=", value: "dropped" }, { label: "state", op: "!~", value: "free|ours" }] },
    { metric: "b", matchers: [{ label: "x", op: "=", value: "y" }] },
  ]);
  assert.deepEqual(reads.groupingLabels, ["state", "backend", "instance", "job"]);
});

test("promql reads - refuses what it cannot place: unbalanced brackets, a nameless selector, a malformed matcher, stray characters", () => {
  for (const expr of ["sum(a", "rate(a[5m)", "a}", '{__name__="a"}', "a{state}", 'a{state="x" "y"}', "a # b", "a ? b"]) {
    assert.throws(() => readPromql(expr), PromqlReadError, expr);
  }
});

test("promql reads - the series each metric type exposes", () => {
  assert.deepEqual(exposedSeries("s", "histogram"), ["s_bucket", "s_sum", "s_count"]);
  assert.deepEqual(exposedSeries("q", "summary"), ["q", "q_sum", "q_count"]);
  assert.deepEqual(exposedSeries("c_total", "counter"), ["c_total"]);
  assert.deepEqual(exposedSeries("g", "gauge"), ["g"]);
});
