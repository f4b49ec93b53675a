import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { AgentSchema, Backend, CountReportSchema, HitEventSchema, JobSchema, JobState, SlotUseSchema, TargetState, WatchMode } from "../../proto/index.js";
import { countReportRow, fleetView, hitRow, jobView, registerView } from "../../cli/console/views.js";

const chunk = { address: 0x4010n, length: 8, mode: WatchMode.WRITE };

test("console views - a register is free, reserved, foreign, one job's or shared by several", () => {
  assert.deepEqual(registerView(0, undefined), { dr: 0, holder: "free", jobIds: [], shared: false, chunk: "", backend: "" });
  assert.equal(registerView(1, create(SlotUseSchema, { dr: 1, reserved: true })).holder, "reserved");
  assert.equal(registerView(2, create(SlotUseSchema, { dr: 2, foreign: true })).holder, "foreign");
  assert.deepEqual(registerView(0, create(SlotUseSchema, { dr: 0, jobId: "a", jobIds: ["a"], chunk, backend: Backend.PERF })), { dr: 0, holder: "jobs", jobIds: ["a"], shared: false, chunk: "0x4010/8 w", backend: "perf" });
  assert.deepEqual(registerView(3, create(SlotUseSchema, { dr: 3, jobId: "a", jobIds: ["a", "b"], chunk, backend: Backend.PTRACE })), { dr: 3, holder: "jobs", jobIds: ["a", "b"], shared: true, chunk: "0x4010/8 w", backend: "ptrace" });
  assert.deepEqual(registerView(0, create(SlotUseSchema, { dr: 0, jobId: "old", chunk, backend: Backend.PTRACE })).jobIds, ["old"], "an agent that fills only job_id");
});

test("console views - the fleet: each host with its four registers per process, and only pending jobs in the queue", () => {
  const agent = create(AgentSchema, {
    info: { hostId: "host-a", hostname: "a.example", kernel: "6.12", labels: { zone: "b", role: "db" }, backends: [Backend.PTRACE], perfNote: "perf_event_paranoid is 3" },
    connected: true,
    lastSeenUnixMs: 10_000n,
    targets: [{ pid: 42, slots: [{ dr: 1, jobId: "j1", jobIds: ["j1"], chunk, backend: Backend.PTRACE }], tracedByPid: 7, tracedByComm: "gdb" }],
  });
  const jobs = [
    create(JobSchema, { id: "j1", state: JobState.ARMED }),
    create(JobSchema, { id: "j2", state: JobState.PENDING, reason: "queued: 0/1 targets have a free debug register", queueDeadlineUnixMs: 1_700_000_000_000n }),
  ];
  const view = fleetView([agent], jobs, 15_000);
  assert.equal(view.hosts.length, 1);
  const host = view.hosts[0]!;
  assert.equal(host.hostId, "host-a");
  assert.equal(host.labels, "role=db,zone=b");
  assert.equal(host.backends, "ptrace (no perf: perf_event_paranoid is 3)");
  assert.equal(host.lastSeen, "5s ago");
  assert.deepEqual(host.processes.map((p) => [p.pid, p.tracedBy, p.registers.map((r) => r.holder)]), [[42, "7 (gdb)", ["free", "jobs", "free", "free"]]]);
  assert.deepEqual(host.processes[0]!.registers[1]!.jobIds, ["j1"]);
  assert.deepEqual(view.pending.map((j) => [j.id, j.reason, j.queueDeadline]), [["j2", "queued: 0/1 targets have a free debug register", "2023-11-14T22:13:20.000Z"]]);
});

test("console views - a job with its targets and counters as strings", () => {
  const job = create(JobSchema, {
    id: "j1",
    state: JobState.ARMED,
    spec: { watches: [{ location: { case: "symbol", value: "fw_counter" }, mode: WatchMode.WRITE }], backend: Backend.PTRACE },
    counts: { trapped: 12n, delivered: 10n, suppressed: 2n },
    targets: [{ hostId: "host-a", pid: 42, state: TargetState.ARMED, threadsArmed: 2, threadsTotal: 2, slots: [{ dr: 0, chunk }], backend: Backend.PTRACE, counts: { trapped: 12n, delivered: 10n } }],
  });
  const view = jobView(job);
  assert.equal(view.state, "armed");
  assert.equal(view.final, false);
  assert.equal(view.watches, "fw_counter w");
  assert.deepEqual(view.counts, { trapped: "12", delivered: "10", suppressed: "2", dropped: "0", filtered: "0" });
  assert.deepEqual(view.targets.map((t) => [t.host, t.pid, t.state, t.threads, t.slots, t.backend]), [["host-a", 42, "armed", "2/2", "DR0 0x4010/8 w", "ptrace"]]);
  assert.equal(view.moreTargets, 0);
  const wide = create(JobSchema, { id: "j2", targets: Array.from({ length: 12 }, (_, i) => ({ hostId: `h${i}`, pid: 100 + i })) });
  const listed = jobView(wide, 10);
  assert.deepEqual([listed.targets.length, listed.moreTargets, listed.targets.at(-1)?.host], [10, 2, "h9"], "a listing shows the first ten and how many more");
  assert.equal(jobView(wide).targets.length, 12, "a job's own page shows them all");
});

test("console views - a hit and a count report as rows of the live list", () => {
  const hit = create(HitEventSchema, { hostId: "host-a", pid: 42, tid: 43, address: 0x4010n, oldValue: 1n, newValue: 2n, ip: 0x401136n, slot: 0, sequence: 7n, timeUnixNano: 1_700_000_000_123_000_000n, stack: [{ ip: 0x401136n, function: "bump", offset: 6n }] });
  assert.deepEqual(hitRow(3, hit), { n: 3, time: "2023-11-14T22:13:20.123Z", host: "host-a", pid: 42, tid: 43, address: "0x4010", change: "0x1 (1) → 0x2 (2)", ip: "0x401136 bump+0x6", slot: "DR0", sequence: "7" });
  const report = create(CountReportSchema, { hostId: "host-a", pid: 42, timeUnixNano: 1_700_000_000_000_000_000n, totals: { delivered: 30n }, threads: [{ tid: 43, hits: 5n }, { tid: 44, hits: 7n }] });
  assert.deepEqual(countReportRow(1, report), { n: 1, time: "2023-11-14T22:13:20.000Z", host: "host-a", pid: 42, hits: "12", total: "30", tids: "43:5 44:7" });
});
