import { test } from "node:test";
import assert from "node:assert/strict";
import { finishedJobsAt, nodeArgsForStack, parseBackends, parseScaleOptions, parseSizes, stackName } from "../../bench/scale-options.js";

test("scale options - fleet sizes are sorted smallest first, each once; one number is one size", () => {
  assert.deepEqual(parseSizes("10000,1000,3000,1000", "--agents"), [1000, 3000, 10000]);
  assert.deepEqual(parseSizes("200", "--agents"), [200]);
  assert.throws(() => parseSizes("1000,0", "--agents"), { message: "--agents '0' is not a positive integer" });
  assert.throws(() => parseSizes("1,000", "--agents"), { message: "--agents '000' is not a positive integer" });
  assert.throws(() => parseSizes("1000,", "--agents"), { message: "--agents '' is not a positive integer" });
});

test("scale options - backends run ptrace first, then perf, whatever the order given", () => {
  assert.deepEqual(parseBackends("perf,ptrace"), ["ptrace", "perf"]);
  assert.deepEqual(parseBackends("perf"), ["perf"]);
  assert.throws(() => parseBackends(""), { message: "--backend: name at least one of ptrace, perf" });
  assert.throws(() => parseBackends("ptrace,hw"), { message: "--backend: unknown 'hw' (one of ptrace, perf)" });
});

test("scale options - defaults: 1,000 agents, both backends, every phase, 10 finished jobs per agent", () => {
  const o = parseScaleOptions([]);
  assert.ok(o);
  assert.deepEqual(o.agents, [1000]);
  assert.deepEqual(o.backends, ["ptrace", "perf"]);
  assert.equal(o.skip.size, 0);
  assert.equal(o.finished, undefined);
  assert.equal(finishedJobsAt(o, 10_000), 100_000);
  assert.equal(finishedJobsAt(o, 600), 6_000);
  const given = parseScaleOptions(["--agents", "1000,3000", "--finished", "20000", "--skip", "queue,finished", "--backend", "perf"]);
  assert.ok(given);
  assert.deepEqual(given.agents, [1000, 3000]);
  assert.equal(finishedJobsAt(given, 3000), 20_000);
  assert.deepEqual([...given.skip], ["queue", "finished"]);
  assert.deepEqual(given.backends, ["perf"]);
  assert.throws(() => parseScaleOptions(["--skip", "fleet,cleanup"]), { message: "--skip: unknown 'cleanup' (one of fleet, placement, queue, finished, core)" });
  assert.equal(parseScaleOptions(["--help"]), undefined);
});

test("scale options - each controller writes its profiles into a subdirectory named after its size and backend", () => {
  const name = stackName(3000, "perf");
  assert.equal(name, "3000-agents-perf");
  assert.deepEqual(nodeArgsForStack(["--cpu-prof", "--cpu-prof-dir=/tmp/prof", "--max-old-space-size=4096"], name), {
    args: ["--cpu-prof", "--cpu-prof-dir=/tmp/prof/3000-agents-perf", "--max-old-space-size=4096"],
    outputDirs: ["/tmp/prof/3000-agents-perf"],
  });
  assert.deepEqual(nodeArgsForStack(["--heap-prof", "--heap-prof-dir", "prof", "--diagnostic-dir=diag"], name), {
    args: ["--heap-prof", "--heap-prof-dir=prof/3000-agents-perf", "--diagnostic-dir=diag/3000-agents-perf"],
    outputDirs: ["prof/3000-agents-perf", "diag/3000-agents-perf"],
  });
  assert.deepEqual(nodeArgsForStack(["--cpu-prof"], name), { args: ["--cpu-prof"], outputDirs: [] });
  // A trailing option without its directory is passed on for node to refuse.
  assert.deepEqual(nodeArgsForStack(["--cpu-prof-dir"], name), { args: ["--cpu-prof-dir"], outputDirs: [] });
});
