import { test } from "node:test";
import assert from "node:assert/strict";
import { finishedGrowth, median, percentile, slope, stackFigures, stepRatios } from "../../bench/scale-figures.js";
import { ratio } from "../../bench/scale-format.js";
import { renderGoals, renderGrowth, renderReport } from "../../bench/scale-report.js";
import type { FinishedRunResult, FleetModeResult, ScaleReport, StackReport } from "../../bench/scale-results.js";
import type { SimBackend } from "../../bench/sim-registers.js";

const proc = (rssMiB: number, peakRssMiB = rssMiB) => ({ rssMiB, peakRssMiB, cpuSeconds: 1 });

/** A fleet-wide way with one round per entry of `seconds`, every target armed. */
function fleetMode(mode: string, seconds: number[], expectedTargets: number, armed = expectedTargets): FleetModeResult {
  return {
    mode,
    label: mode,
    jobsPerRound: 1,
    expectedTargets,
    rounds: seconds.map((allAckedSeconds) => ({ allAckedSeconds, submitSeconds: [allAckedSeconds], cancelSeconds: allAckedSeconds / 4, armedTargets: armed, slotsAfterSubmit: armed, slotsAfterCancel: 0 })),
    warmup: undefined,
    failures: [],
    reregisterWaits: [],
  };
}

function finishedRun(rss: number[], every: number): FinishedRunResult {
  return {
    jobs: every * (rss.length - 1),
    concurrency: 64,
    sampleEvery: every,
    finishedBefore: 20_005,
    seconds: 100,
    finished: every * (rss.length - 1),
    failed: {},
    failedSample: undefined,
    samples: rss.map((mib, i) => ({ finished: i * every, atSeconds: i * 10, controller: proc(mib, mib + 1), nats: proc(40) })),
    slotsAfter: 0,
    stoppedAt: undefined,
  };
}

/** One size and backend: a selector round of `fleetSeconds`, a placement run of `rate` jobs/s, a queue of `queueRate`, a peak of `peak` MiB. */
function stackOf(agents: number, backend: SimBackend, figures: { fleetSeconds: number; rate: number; p99Ms: number; queueRate: number; peak: number; finished?: FinishedRunResult }): StackReport {
  return {
    name: `${agents}-agents-${backend}`,
    agents,
    processes: 4,
    backend,
    controllerPid: 100,
    outputDirs: [],
    seconds: 60,
    connect: { seconds: agents / 1000, channels: agents / 100, agentsPerChannel: 100 },
    fleet: [fleetMode("selector", [figures.fleetSeconds], agents * 4)],
    placement: {
      jobs: 10_000,
      concurrency: 64,
      seconds: 10_000 / figures.rate,
      succeeded: 10_000,
      latenciesMs: [figures.p99Ms / 2, figures.p99Ms],
      failed: {},
      failedSample: undefined,
      cancelled: 10_000,
      cancelSeconds: 5,
      cancelFailed: 0,
      slotsAfterSubmit: 10_000,
      slotsAfterCancel: 0,
      controllerCpuSeconds: 10,
    },
    queue: { jobs: 10_000, submitSeconds: 8, queued: 10_000, drainSeconds: 10_000 / figures.queueRate, placed: 10_000, controllerCpuSeconds: 4, slotsAfterCancel: 0, failedSample: undefined },
    finished: figures.finished,
    core: undefined,
    coreError: undefined,
    stats: [{ phase: "end", atMs: 0, controller: proc(figures.peak - 10, figures.peak), nats: proc(40), bench: proc(200) }],
    benchCpuSecondsAtStart: 0,
    totals: undefined,
    controllerEvents: [],
    controllerEventCount: 0,
    leaseExpiries: 0,
    stoppedAt: undefined,
  };
}

test("scale figures - nearest-rank percentiles and the median; NaN for no samples", () => {
  const values = Array.from({ length: 200 }, (_, i) => 200 - i);
  assert.equal(percentile(values, 0.5), 100);
  assert.equal(percentile(values, 0.99), 198);
  assert.equal(percentile([3, 1, 2], 0.99), 3);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.ok(Number.isNaN(percentile([], 0.5)));
  assert.ok(Number.isNaN(median([])));
});

test("scale figures - each step's ratio is the next value over this one; a missing or zero value gives NaN", () => {
  assert.deepEqual(stepRatios([1000, 3000, 10000]), [3, 10000 / 3000]);
  assert.deepEqual(stepRatios([2]), []);
  const gaps = stepRatios([0, 5, Number.NaN, 10]);
  assert.equal(gaps.length, 3);
  assert.ok(gaps.every(Number.isNaN));
  assert.equal(ratio(2.94), "×2.9");
  assert.equal(ratio(0.5), "×0.50");
  assert.equal(ratio(Number.NaN), "-");
});

test("scale figures - least-squares slope of a line and of noise around it; NaN with one x", () => {
  assert.equal(slope([{ x: 0, y: 100 }, { x: 10_000, y: 112 }, { x: 20_000, y: 124 }]), 12 / 10_000);
  assert.equal(slope([{ x: 0, y: 1 }, { x: 1, y: 3 }, { x: 2, y: 2 }, { x: 3, y: 4 }]), 0.8);
  assert.ok(Number.isNaN(slope([{ x: 5, y: 1 }, { x: 5, y: 2 }])));
  assert.ok(Number.isNaN(slope([{ x: 5, y: 1 }])));
});

test("scale figures - finished jobs: RSS and VmHWM slopes in MiB per 10,000 jobs, first and last RSS", () => {
  const growth = finishedGrowth(finishedRun([300, 310, 320, 330, 340, 350, 360, 370, 380, 390, 400], 10_000));
  assert.deepEqual(growth, { per: 10_000, rssSlopeMiB: 10, peakSlopeMiB: 10, firstRssMiB: 300, lastRssMiB: 400 });
  // Flat with GC noise: the slope is about zero, not the last jump.
  const flat = finishedGrowth(finishedRun([300, 290, 300, 290, 300], 1_000));
  assert.equal(flat.rssSlopeMiB, 0);
});

test("scale figures - one stack's headline figures, named with their units", () => {
  const figures = stackFigures(stackOf(1000, "perf", { fleetSeconds: 0.8, rate: 800, p99Ms: 140, queueRate: 2000, peak: 700 }));
  assert.deepEqual(
    figures.map((f) => [f.name, Number(f.value.toFixed(3))]),
    [
      ["all agents registered s", 1],
      ["fleet-wide job p50 s, selector", 0.8],
      ["fleet-wide job p99 s, selector", 0.8],
      ["fleet-wide job cancel p50 s, selector", 0.2],
      ["placement jobs/s", 800],
      ["placement SubmitJob p50 ms", 70],
      ["placement SubmitJob p99 ms", 140],
      ["placement cancel s", 5],
      ["placement controller CPU ms per job", 1],
      ["queue placements/s", 2000],
      ["controller peak RSS MiB", 700],
    ],
  );
});

test("scale report - growth: each figure at each size with the ratio of each step beside the agents' ratio", () => {
  const stacks = [
    stackOf(3000, "perf", { fleetSeconds: 2.4, rate: 600, p99Ms: 200, queueRate: 1500, peak: 900 }),
    stackOf(1000, "perf", { fleetSeconds: 0.8, rate: 800, p99Ms: 140, queueRate: 2000, peak: 600 }),
    stackOf(1000, "ptrace", { fleetSeconds: 9, rate: 1, p99Ms: 1, queueRate: 1, peak: 1 }),
  ];
  const lines = renderGrowth(stacks, "perf").split("\n");
  assert.equal(lines[0], "== growth with the fleet, perf: each figure at each size, then the ratio of each step (3,000/1,000 agents = ×3.0)");
  assert.equal(lines[1], "figure                                 1,000  3,000  steps");
  assert.equal(lines[2], "all agents registered s                1.000  3.000  ×3.0");
  assert.equal(lines[4], "fleet-wide job p99 s, selector         0.800  2.400  ×3.0");
  assert.equal(lines[6], "placement jobs/s                       800    600    ×0.75");
  assert.equal(lines[8], "placement SubmitJob p99 ms             140    200    ×1.4");
  assert.equal(lines[11], "queue placements/s                     2,000  1,500  ×0.75");
  assert.equal(lines[12], "controller peak RSS MiB                600    900    ×1.5");
  assert.equal(lines.length, 14);
});

test("scale report - goals: issue 18's beside every size and backend, issue 4's at 1,000 agents only, no verdicts", () => {
  const report: ScaleReport = {
    header: ["bench"],
    sizes: [1000, 10000],
    backends: ["ptrace", "perf"],
    stacks: [
      stackOf(1000, "ptrace", { fleetSeconds: 0.9, rate: 843, p99Ms: 140, queueRate: 2038, peak: 707 }),
      stackOf(1000, "perf", { fleetSeconds: 0.7, rate: 900, p99Ms: 96, queueRate: 2500, peak: 600 }),
      stackOf(10000, "perf", { fleetSeconds: 8.1, rate: 150, p99Ms: 1072, queueRate: 965, peak: 2138, finished: finishedRun([1500, 1510, 1520], 10_000) }),
    ],
    stoppedAt: undefined,
  };
  report.stacks[2]!.fleet[0]!.rounds[0]!.armedTargets = 39_990;
  const text = renderGoals(report);
  assert.equal(
    text,
    [
      "== goals (issue 18, for 10,000 agents × 4 processes) beside this run's figures at each size and backend; no pass/fail",
      "goal                                                                            run                   this run",
      "one fleet-wide job, every target armed: p99 < 2 s                               1,000 agents, ptrace  selector p99 0.900 s (every target armed)",
      "                                                                                1,000 agents, perf    selector p99 0.700 s (every target armed)",
      "                                                                                10,000 agents, perf   selector p99 8.100 s (39,990/40,000 armed in the worst round)",
      "queued single-target jobs placed and armed: >= 10,000/s                         1,000 agents, ptrace  2,038 placements/s (10,000 of 10,000 queued jobs placed)",
      "                                                                                1,000 agents, perf    2,500 placements/s (10,000 of 10,000 queued jobs placed)",
      "                                                                                10,000 agents, perf   965 placements/s (10,000 of 10,000 queued jobs placed)",
      "10,000 single-target SubmitJob, 64 in flight: >= 3,000 jobs/s, p99 < 100 ms     1,000 agents, ptrace  843 jobs/s, p50 70 ms, p99 140 ms",
      "                                                                                1,000 agents, perf    900 jobs/s, p50 48 ms, p99 96 ms",
      "                                                                                10,000 agents, perf   150 jobs/s, p50 536 ms, p99 1072 ms",
      "controller peak RSS < 512 MiB                                                   1,000 agents, ptrace  707 MiB (VmHWM)",
      "                                                                                1,000 agents, perf    600 MiB (VmHWM)",
      "                                                                                10,000 agents, perf   2,138 MiB (VmHWM)",
      "controller RSS flat as finished jobs accumulate (100,000 behind 10,000 agents)  10,000 agents, perf   +10.0 MiB per 10,000 finished jobs (1,500 → 1,520 MiB over 20,000 jobs)",
      "issue 4: 1,000 agents, fleet-wide job p99 < 1 s                                 1,000 agents, ptrace  selector p99 0.900 s (every target armed)",
      "                                                                                1,000 agents, perf    selector p99 0.700 s (every target armed)",
    ].join("\n"),
  );
  assert.doesNotMatch(text.split("\n").slice(1).join("\n"), /pass|fail|✓|✗/i);
});

test("scale report - one size prints no growth table; several print one per backend", () => {
  const one: ScaleReport = { header: ["bench"], sizes: [1000], backends: ["ptrace", "perf"], stacks: [stackOf(1000, "ptrace", { fleetSeconds: 1, rate: 1, p99Ms: 1, queueRate: 1, peak: 1 }), stackOf(1000, "perf", { fleetSeconds: 1, rate: 1, p99Ms: 1, queueRate: 1, peak: 1 })], stoppedAt: undefined };
  assert.doesNotMatch(renderReport(one), /== growth/);
  const two: ScaleReport = { ...one, sizes: [1000, 3000], stacks: [...one.stacks, stackOf(3000, "ptrace", { fleetSeconds: 3, rate: 1, p99Ms: 1, queueRate: 1, peak: 1 })] };
  const text = renderReport(two);
  assert.match(text, /== growth with the fleet, ptrace/);
  assert.doesNotMatch(text, /== growth with the fleet, perf/);
  assert.match(text, /######## 3,000 agents × 4 processes, every job on the ptrace backend \(3000-agents-ptrace, controller pid 100; 60\.0 s\)/);
});

test("scale report - the finished run: one row per sample and the slope per 10,000 jobs", () => {
  const stack = stackOf(10000, "perf", { fleetSeconds: 8, rate: 150, p99Ms: 1000, queueRate: 965, peak: 1600, finished: finishedRun([1500, 1512, 1524], 10_000) });
  const text = renderReport({ header: ["bench"], sizes: [10000], backends: ["perf"], stacks: [stack], stoppedAt: undefined });
  const section = text.slice(text.indexOf("== finished jobs"), text.indexOf("== processes"));
  assert.equal(
    section.trimEnd(),
    [
      "== finished jobs, perf: 20,000 single-target jobs submitted and cancelled, 64 in flight, behind 10,000 agents (20,005 jobs ended on this controller in the phases before)",
      "  20,000 finished in 100.0 s = 200 jobs/s; failed: none; registers held at the end: 0",
      "finished  s      controller RSS MiB  peak MiB  nats RSS MiB",
      "0         0.000  1,500               1,501     40",
      "10,000    10.0   1,512               1,513     40",
      "20,000    20.0   1,524               1,525     40",
      "  controller RSS +12.0 MiB per 10,000 finished jobs (least-squares slope over the 3 samples; VmHWM +12.0), 1,500 → 1,524 MiB   (goal: flat)",
    ].join("\n"),
  );
});
