import { test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { AgentSchema, Backend, ConditionOp, CountReportSchema, HitEventSchema, JobSchema, JobState, PerfValues, TargetState, TrapDelivery, ValueRedaction, WatchMode } from "../../proto/index.js";
import {
  formatAge,
  formatDuration,
  formatHitValue,
  formatJobBackend,
  formatNsPerTrap,
  formatValue,
  formatWatch,
  parseDuration,
  renderAgentsTable,
  renderCountJson,
  renderCountLine,
  renderHitJson,
  renderHitLine,
  renderJobDetail,
  renderJobsTable,
  renderTable,
} from "../../cli/output.js";
import { UsageError } from "../../cli/errors.js";
import { printAgents } from "../../cli/commands/agents-ls.js";

test("cli output - parses durations with ms, s, m, h and sums of them", () => {
  const table: Array<[string, number]> = [
    ["500ms", 500],
    ["30s", 30_000],
    ["10m", 600_000],
    ["1h", 3_600_000],
    ["1h30m", 5_400_000],
    ["0s", 0],
  ];
  for (const [text, ms] of table) assert.equal(parseDuration(text), ms, text);
});

test("cli output - refuses durations without a unit or with junk, naming the option", () => {
  for (const text of ["30", "", "1d", "s", "10 m", "-5s", "1.5s", "30sec"]) {
    assert.throws(() => parseDuration(text, "--duration"), (err: unknown) => {
      assert.ok(err instanceof UsageError, text);
      assert.equal(err.exitCode, 3);
      assert.match(err.message, /^--duration '.*' is not a duration/);
      return true;
    });
  }
});

test("cli output - formats durations in their shortest exact spelling", () => {
  const table: Array<[number, string]> = [
    [0, "0s"],
    [500, "500ms"],
    [1_500, "1.5s"],
    [30_000, "30s"],
    [600_000, "10m"],
    [5_400_000, "1h30m"],
    [3_661_000, "1h1m1s"],
  ];
  for (const [ms, text] of table) assert.equal(formatDuration(ms), text, String(ms));
});

test("cli output - shows values in hex and decimal and ages relative to now", () => {
  assert.equal(formatValue(42n), "0x2a (42)");
  assert.equal(formatValue(0xffffffffffffffffn), "0xffffffffffffffff (18446744073709551615)");
  assert.equal(formatAge(0n, 10_000), "-");
  assert.equal(formatAge(9_500n, 10_000), "now");
  assert.equal(formatAge(7_000n, 10_000), "3s ago");
  assert.equal(formatAge(0n + 1n, 3_600_001), "1h ago");
});

test("cli output - spells watches as asked: symbol size, offset, address", () => {
  const watch = (location: object, length: number, mode: WatchMode) => create(JobSchema, { spec: { watches: [{ location: location as never, length, mode }] } }).spec!.watches[0]!;
  assert.equal(formatWatch(watch({ case: "symbol", value: "counter" }, 0, WatchMode.WRITE)), "counter w");
  assert.equal(formatWatch(watch({ case: "symbol", value: "counter+0x8" }, 4, WatchMode.READ_WRITE)), "counter+0x8/4 rw");
  assert.equal(formatWatch(watch({ case: "address", value: 0x4010n }, 8, WatchMode.WRITE)), "0x4010/8 w");
  assert.equal(formatWatch(watch({ case: "address", value: 0x401136n }, 1, WatchMode.EXECUTE)), "0x401136/1 x");
});

test("cli output - aligns table columns two spaces apart without trailing blanks", () => {
  assert.equal(renderTable(["A", "LONGER"], [["xyz", "1"], ["q", ""]]), "A    LONGER\nxyz  1\nq\n");
});

const job = create(JobSchema, {
  id: "j-1",
  state: JobState.ARMED,
  spec: { watches: [{ location: { case: "symbol", value: "counter" }, length: 0, mode: WatchMode.WRITE }], target: { pid: 4242 }, maxHits: 10n, durationMs: 30_000n },
  targets: [
    {
      hostId: "h1",
      pid: 4242,
      state: TargetState.ARMED,
      threadsTotal: 3,
      threadsArmed: 3,
      slots: [{ dr: 0, chunk: { address: 0x4010n, length: 8, mode: WatchMode.WRITE } }],
      counts: { trapped: 5n, delivered: 4n, suppressed: 1n, dropped: 0n },
    },
    { hostId: "h2", pid: 4242, state: TargetState.FAILED, reason: "ESRCH: no such process" },
  ],
  createdUnixMs: 1_700_000_000_000n,
  deadlineUnixMs: 1_700_000_030_000n,
  counts: { trapped: 5n, delivered: 4n, suppressed: 1n, dropped: 0n },
});

test("cli output - jobs table shows lowercase states, targets with reasons, counts and times", () => {
  assert.equal(
    renderJobsTable([job]),
    [
      "ID   STATE  TARGETS                                                 WATCHES    T/D/S/DROP/F  CREATED                   ENDS",
      "j-1  armed  h1/4242 armed, h2/4242 failed (ESRCH: no such process)  counter w  5/4/1/0/0     2023-11-14T22:13:20.000Z  2023-11-14T22:13:50.000Z",
      "",
    ].join("\n"),
  );
  assert.equal(renderJobsTable([]), "no jobs\n");
});

test("cli output - job detail lists the spec, then each target's threads, registers and counts", () => {
  assert.equal(
    renderJobDetail(job),
    [
      "job        j-1",
      "state      armed",
      "watches    counter w",
      "pid        4242",
      "hosts      (the only agent)",
      "max hits   10",
      "duration   30s",
      "backend    perf (automatic), values read after the trap (a later store may have replaced them)",
      "placement  any, priority 0",
      "created    2023-11-14T22:13:20.000Z",
      "ends       2023-11-14T22:13:50.000Z",
      "counts     trapped 5, delivered 4, suppressed 1, dropped 0, filtered 0",
      "",
      "HOST  PID   STATE   THREADS  SLOTS           T/D/S/DROP/F  REASON",
      "h1    4242  armed   3/3      DR0 0x4010/8 w  5/4/1/0/0     -",
      "h2    4242  failed  0/0      -               0/0/0/0/0     ESRCH: no such process",
      "",
    ].join("\n"),
  );
});

test("cli output - agents table shows DR0-DR3 of each watched target, free or held", () => {
  const agent = create(AgentSchema, {
    info: { hostId: "h1", labels: { role: "db", embedded: "true" }, kernel: "6.1.0", backends: [Backend.PTRACE, Backend.PERF], perfValues: PerfValues.AFTER_TRAP },
    connected: true,
    lastSeenUnixMs: 7_000n,
    targets: [
      {
        pid: 4242,
        slots: [
          { dr: 1, jobId: "j-1", chunk: { address: 0x4010n, length: 8, mode: WatchMode.WRITE }, backend: Backend.PTRACE },
          { dr: 2, jobId: "" },
          { dr: 3, jobId: "j-2", chunk: { address: 0x4010n, length: 8, mode: WatchMode.WRITE }, backend: Backend.PERF },
        ],
      },
    ],
  });
  assert.equal(
    renderAgentsTable([agent], 10_000),
    [
      "HOST  LABELS                 CONNECTED  KERNEL  BACKENDS     TRAPS     POLICY  LAST SEEN",
      "h1    embedded=true,role=db  yes        6.1.0   ptrace,perf  untested  none    3s ago",
      "",
      "HOST  PID   DR0   DR1             DR2   DR3                  TRACED BY",
      "h1    4242  free  j-1 0x4010/8 w  free  j-2 0x4010/8 w perf  -",
      "",
    ].join("\n"),
  );
  assert.equal(renderAgentsTable([], 0), "no agents\n");
});

test("cli output - agents table shows each host's policy summary", () => {
  const agent = create(AgentSchema, { info: { hostId: "h1", kernel: "6.1.0", policy: "exe 2, users 1, values hash" }, connected: true, lastSeenUnixMs: 7_000n });
  assert.match(renderAgentsTable([agent], 10_000), /^h1\s+-\s+yes\s+6\.1\.0\s+-\s+untested\s+exe 2, users 1, values hash\s+3s ago$/m);
});

test("cli output - agents table says which backends each host offers, and why not perf", () => {
  const table: Array<[object, RegExp]> = [
    [{ backends: [Backend.PTRACE, Backend.PERF], perfValues: PerfValues.EXACT }, /\sptrace,perf \(values exact\)\s/],
    [{ backends: [Backend.PTRACE], perfNote: "perf_event_open: EACCES (perf_event_paranoid 3)" }, /\sptrace \(no perf: perf_event_open: EACCES \(perf_event_paranoid 3\)\)\s/],
  ];
  for (const [info, line] of table) {
    const agent = create(AgentSchema, { info: { hostId: "h1", kernel: "6.1.0", ...info }, connected: true, lastSeenUnixMs: 7_000n });
    assert.match(renderAgentsTable([agent], 10_000), line);
  }
});

const hypervisor = "DR0 armed, 0 of 8 probe writes trapped: this host does not deliver debug-register traps (hypervisor)";
const perfHypervisor = "perf breakpoint opened, 0 of 8 probe writes trapped: this host does not deliver debug-register traps (hypervisor)";

test("cli output - agents table says per host and backend whether watched writes trap, with the cost, and why not under the table", () => {
  const hosts = [
    create(AgentSchema, {
      info: {
        hostId: "h1",
        kernel: "6.1.0",
        backends: [Backend.PTRACE, Backend.PERF],
        perfValues: PerfValues.EXACT,
        trapChecks: [
          { backend: Backend.PTRACE, delivery: TrapDelivery.DELIVERED, writes: 8, traps: 8, nsPerTrap: 4100, detail: "8 of 8 probe writes trapped, 4.1 µs per trap" },
          { backend: Backend.PERF, delivery: TrapDelivery.DELIVERED, writes: 8, traps: 8, nsPerTrap: 1230, detail: "8 of 8 probe writes trapped, 1.2 µs per trap" },
        ],
      },
      connected: true,
      lastSeenUnixMs: 7_000n,
    }),
    create(AgentSchema, {
      info: {
        hostId: "vm-1",
        kernel: "6.8.0",
        backends: [Backend.PTRACE, Backend.PERF],
        perfValues: PerfValues.EXACT,
        trapChecks: [
          { backend: Backend.PTRACE, delivery: TrapDelivery.NOT_DELIVERED, writes: 8, traps: 0, detail: hypervisor },
          { backend: Backend.PERF, delivery: TrapDelivery.NOT_DELIVERED, writes: 8, traps: 0, detail: perfHypervisor },
        ],
      },
      connected: true,
      lastSeenUnixMs: 9_000n,
    }),
    create(AgentSchema, {
      info: {
        hostId: "vm-2",
        kernel: "6.8.0",
        backends: [Backend.PTRACE],
        perfNote: "perf_event_open: EACCES (perf_event_paranoid 3)",
        trapChecks: [
          { backend: Backend.PTRACE, delivery: TrapDelivery.NOT_DELIVERED, writes: 8, traps: 5, detail: "" },
          { backend: Backend.PERF, delivery: TrapDelivery.NOT_RUN, detail: "perf_event_open: EACCES (perf_event_paranoid 3)" },
        ],
      },
      connected: false,
      lastSeenUnixMs: 9_000n,
    }),
  ];
  assert.equal(
    renderAgentsTable(hosts, 10_000),
    [
      "HOST  LABELS  CONNECTED  KERNEL  BACKENDS                                                           TRAPS                                   POLICY  LAST SEEN",
      "h1    -       yes        6.1.0   ptrace,perf (values exact)                                         ptrace: 4.1 µs/trap, perf: 1.2 µs/trap  none    3s ago",
      "vm-1  -       yes        6.8.0   ptrace,perf (values exact)                                         ptrace: NO TRAPS, perf: NO TRAPS        none    1s ago",
      "vm-2  -       no         6.8.0   ptrace (no perf: perf_event_open: EACCES (perf_event_paranoid 3))  ptrace: NO TRAPS, perf: not tested      none    1s ago",
      "",
      `vm-1: no ptrace traps: ${hypervisor}; watches with ptrace are refused there`,
      `vm-1: no perf traps: ${perfHypervisor}; watches with perf are refused there`,
      "vm-2: no ptrace traps: 5 of 8 probe writes trapped; watches with ptrace are refused there",
      "",
      "no watched targets",
      "",
    ].join("\n"),
  );
  // Scripts get every check in the protobuf JSON of the listing.
  const json = JSON.parse(printAgents({ agents: hosts, nowMs: 10_000 }, "json")) as { agents: Array<{ info: { trapChecks: object[] } }> };
  assert.deepEqual(json.agents[1]!.info.trapChecks, [
    { backend: "BACKEND_PTRACE", delivery: "TRAP_DELIVERY_NOT_DELIVERED", writes: 8, detail: hypervisor },
    { backend: "BACKEND_PERF", delivery: "TRAP_DELIVERY_NOT_DELIVERED", writes: 8, detail: perfHypervisor },
  ]);
  assert.deepEqual(json.agents[0]!.info.trapChecks[0], { backend: "BACKEND_PTRACE", delivery: "TRAP_DELIVERY_DELIVERED", writes: 8, traps: 8, nsPerTrap: 4100, detail: "8 of 8 probe writes trapped, 4.1 µs per trap" });
});

test("cli output - the cost of one trap in the unit that reads best", () => {
  assert.deepEqual([850, 4100, 999_949, 1_230_000].map(formatNsPerTrap), ["850 ns", "4.1 µs", "999.9 µs", "1.2 ms"]);
});

test("cli output - a job names its backend, how it was chosen, and for perf whether values are exact", () => {
  const watches = [{ location: { case: "symbol", value: "counter" }, length: 0, mode: WatchMode.WRITE }];
  const spec = (more: object) => ({ watches, target: { pid: 1 }, ...more });
  const armed = (valuesExact: boolean) => ({ hostId: "h1", pid: 1, state: TargetState.ARMED, threadsTotal: 1, backend: Backend.PERF, valuesExact });
  const table: Array<[object, object[], string]> = [
    [spec({ backend: Backend.PTRACE }), [], "ptrace"],
    [spec({ conditions: [{ op: ConditionOp.CHANGED }] }), [], "ptrace (automatic: conditions (--if) need the value at the trap)"],
    [spec({ backend: Backend.PERF }), [armed(false)], "perf, values read after the trap (a later store may have replaced them)"],
    [spec({}), [armed(true), armed(true)], "perf (automatic), values exact (read in the kernel at the trap)"],
    [spec({}), [armed(true), armed(false)], "perf (automatic), values read after the trap (a later store may have replaced them)"],
    [spec({ countOnly: true, countIntervalMs: 250n }), [], "perf (automatic), counting every 250ms (no per-hit events)"],
  ];
  for (const [s, targets, text] of table) assert.equal(formatJobBackend(create(JobSchema, { spec: s as never, targets: targets as never })), text);
});

test("cli output - a count report is one greppable line: host, pid, hits of the interval, total, hits per tid", () => {
  const report = create(CountReportSchema, {
    jobId: "j-1",
    hostId: "host-a",
    pid: 4242,
    intervalMs: 1_000n,
    totals: { trapped: 51_300n, delivered: 51_230n, filtered: 70n },
    threads: [
      { tid: 4243, hits: 5000n },
      { tid: 4244, hits: 123n },
    ],
    sequence: 10n,
  });
  assert.equal(renderCountLine(report), "host-a 4242  +5123 hits (51230 total)  tids 4243:5000 4244:123\n");
  assert.equal(renderCountLine(create(CountReportSchema, { ...report, threads: [] })), "host-a 4242  +0 hits (51230 total)  tids -\n");
  const json = JSON.parse(renderCountJson(report)) as { totals: { delivered: string }; threads: Array<{ tid: number; hits: string }>; intervalMs: string };
  assert.deepEqual([json.totals.delivered, json.threads[1], json.intervalMs], ["51230", { tid: 4244, hits: "123" }, "1000"]);
});

const hit = create(HitEventSchema, {
  jobId: "j-1",
  hostId: "h1",
  pid: 4242,
  tid: 4243,
  address: 0x4010n,
  length: 8,
  mode: WatchMode.WRITE,
  slot: 0,
  ip: 0x401136n,
  oldValue: 41n,
  newValue: 42n,
  timeUnixNano: 1_700_000_000_123_456_789n,
  stack: [{ ip: 0x401136n, function: "bump", offset: 6n, module: "/bin/t" }],
  sequence: 18446744073709551615n,
});

test("cli output - one hit is one table line with time, host, pid, tid, address, old → new, ip, slot", () => {
  const line = renderHitLine(hit);
  assert.equal(line.split("\n").length, 2);
  assert.match(line, /^2023-11-14T22:13:20\.123Z\s+h1\s+4242\s+4243\s+0x4010\s+0x29 \(41\) → 0x2a \(42\)\s+0x401136 bump\+0x6\s+DR0\n$/);
});

test("cli output - one hit is one line of protobuf JSON with uint64 as strings", () => {
  const text = renderHitJson(hit);
  assert.equal(text.indexOf("\n"), text.length - 1);
  const json = JSON.parse(text) as Record<string, unknown>;
  assert.equal(json.jobId, "j-1");
  assert.equal(json.address, "16400");
  assert.equal(json.sequence, "18446744073709551615");
  assert.equal(json.mode, "WATCH_MODE_WRITE");
});

test("cli output - redacted values show as hash, masked or off, never as numbers", () => {
  const hashed = create(HitEventSchema, { ...hit, oldValue: 0x1a2b3c4d5e6f7081n, newValue: 0x00000000000000ffn, valueRedaction: ValueRedaction.HASHED });
  assert.match(renderHitLine(hashed), /\s0x4010\s+hash:1a2b3c4d… → hash:00000000…\s+0x401136/);
  assert.match(renderHitLine(create(HitEventSchema, { ...hit, oldValue: 0n, newValue: 0n, valueRedaction: ValueRedaction.MASKED })), /\s0x4010\s+masked → masked\s+0x401136/);
  assert.match(renderHitLine(create(HitEventSchema, { ...hit, oldValue: 0n, newValue: 0n, valueRedaction: ValueRedaction.OFF })), /\s0x4010\s+off → off\s+0x401136/);
  assert.equal(formatHitValue(42n, ValueRedaction.UNSPECIFIED), "0x2a (42)");
  assert.equal(JSON.parse(renderHitJson(hashed)).valueRedaction, "VALUE_REDACTION_HASHED");
});
