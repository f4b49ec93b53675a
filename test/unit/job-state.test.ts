import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { finish, isTargetActive, isTargetLive, isTargetWaiting, rollUp } from "../../controller/job-state.js";
import { JobSchema, JobState, TargetSchema, TargetState, countTargetStates, submittedTargetStates, type Job } from "../../proto/index.js";

const S = TargetState;

function job(states: TargetState[], reason = ""): Job {
  return create(JobSchema, {
    id: "j",
    reason,
    targets: states.map((state, i) => create(TargetSchema, { hostId: `h${i}`, pid: 100 + i, state, counts: { trapped: 2n, delivered: 1n, filtered: 1n } })),
  });
}

test("job-state - which targets hold registers, wait for them, or are live", () => {
  const table: Array<[TargetState, boolean, boolean]> = [
    [S.PENDING, false, true],
    [S.PREEMPTED, false, true],
    [S.ARMING, true, false],
    [S.ARMED, true, false],
    [S.LOST, true, false],
    [S.EXITED, false, false],
    [S.FAILED, false, false],
    [S.COMPLETED, false, false],
    [S.CANCELLED, false, false],
  ];
  for (const [state, active, waiting] of table) {
    const t = create(TargetSchema, { state });
    assert.equal(isTargetActive(t), active, `${S[state]} active`);
    assert.equal(isTargetWaiting(t), waiting, `${S[state]} waiting`);
    assert.equal(isTargetLive(t), active || waiting, `${S[state]} live`);
  }
});

test("job-state - roll-up of target states onto the job", () => {
  const table: Array<[TargetState[], JobState, string]> = [
    [[S.ARMED, S.ARMED], JobState.ARMED, ""],
    [[S.ARMED, S.ARMING], JobState.ARMED, ""],
    [[S.ARMING, S.ARMING], JobState.PENDING, "arming"],
    [[S.PENDING, S.PENDING], JobState.PENDING, "waiting in the queue for debug registers"],
    [[S.ARMED, S.PREEMPTED], JobState.DEGRADED, "h1/101 preempted"],
    [[S.ARMED, S.PENDING, S.FAILED], JobState.DEGRADED, "h1/101 pending, h2/102 failed"],
    [[S.LOST, S.PENDING], JobState.DEGRADED, "h0/100 lost, h1/101 pending"],
    [[S.FAILED, S.FAILED], JobState.FAILED, ""],
    [[S.EXITED, S.FAILED], JobState.COMPLETED, ""],
  ];
  for (const [states, want, reason] of table) {
    const j = job(states);
    rollUp(j, 1_000);
    assert.equal(j.state, want, `${states.map((s) => S[s]).join(",")}: ${JobState[j.state]}`);
    assert.equal(j.reason, reason, states.map((s) => S[s]).join(","));
    assert.equal(j.counts?.trapped, BigInt(2 * states.length));
  }
});

test("job-state - a queued job keeps the queue's reason; a final job does not change", () => {
  const queued = job([S.PENDING], "queued: 0/1 targets have 1 free debug register: 1 full (job a)");
  rollUp(queued);
  assert.equal(queued.reason, "queued: 0/1 targets have 1 free debug register: 1 full (job a)");
  const done = job([S.ARMED, S.PREEMPTED]);
  finish(done, JobState.CANCELLED, "cancelled by user", 5);
  assert.deepEqual(done.targets.map((t) => t.state), [S.CANCELLED, S.CANCELLED], "waiting targets end with the job too");
  done.targets[0]!.state = S.ARMED;
  rollUp(done);
  assert.equal(done.state, JobState.CANCELLED);
  assert.equal(done.endedUnixMs, 5n);
});

test("job-state - a job with no target yet waits pending while its queue deadline stands; with none it is over", () => {
  const waiting = job([], "waiting for a process matching comm 'db' to start on h1 (queue timeout 1m)");
  waiting.queueDeadlineUnixMs = 60_000n;
  rollUp(waiting, 1_000);
  assert.deepEqual([waiting.state, waiting.reason], [JobState.PENDING, "waiting for a process matching comm 'db' to start on h1 (queue timeout 1m)"]);
  const none = job([]);
  rollUp(none, 1_000);
  assert.equal(none.state, JobState.COMPLETED);
});

test("job-state - a submit's answer without targets counts them by state, in state order, none for states no target is in", () => {
  const j = job([S.ARMED, S.FAILED, S.ARMED, S.PENDING, S.ARMED]);
  const counts = countTargetStates(j.targets);
  assert.deepEqual(counts.map((c) => [c.state, c.targets]), [[S.PENDING, 1], [S.ARMED, 3], [S.FAILED, 1]]);
  assert.deepEqual(countTargetStates([]), []);
  // From a controller that answered with every target, the client counts them itself.
  assert.deepEqual(submittedTargetStates({ job: j, targetStates: [] }), counts);
  assert.deepEqual(submittedTargetStates({ job: { targets: [] }, targetStates: counts }), counts);
  assert.deepEqual(submittedTargetStates({ targetStates: [] }), []);
});
