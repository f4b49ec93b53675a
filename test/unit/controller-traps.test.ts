// The controller's refusal of hosts whose helper saw no traps: the pure check
// by table, then the controller itself (an in-memory job store, scripted
// agents on real sessions) on submit, on the queue after a helper restarted,
// and on re-arming after a reconnect.
import { test } from "node:test";
import assert from "node:assert/strict";
import { clone, create } from "@bufbuild/protobuf";
import { status } from "@grpc/grpc-js";
import { Controller, checkHostBackend } from "../../controller/controller.js";
import { PreconditionError, statusFor } from "../../controller/errors.js";
import type { JobStore } from "../../controller/job-store.js";
import { NotLeaderError } from "../../controller/leader-election.js";
import {
  AgentInfoSchema,
  ArmedTargetSchema,
  AsyncQueue,
  Backend,
  ConditionOp,
  JobSchema,
  JobSpecSchema,
  JobState,
  SessionRequestSchema,
  TargetState,
  TrapDelivery,
  WatchMode,
  isFinalJobState,
  type AgentInfo,
  type Arm,
  type ArmedTarget,
  type Job,
  type JobSpec,
  type SessionRequest,
  type TrapCheck,
} from "../../proto/index.js";
import { holdsFor, waitFor } from "../support/wait.js";

const hypervisor = "DR0 armed, 0 of 8 probe writes trapped: this host does not deliver debug-register traps (hypervisor)";
const perfHypervisor = "perf breakpoint opened, 0 of 8 probe writes trapped: this host does not deliver debug-register traps (hypervisor)";
const delivered = (backend: Backend, nsPerTrap = 4100): Partial<TrapCheck> => ({ backend, delivery: TrapDelivery.DELIVERED, writes: 8, traps: 8, nsPerTrap, detail: `8 of 8 probe writes trapped, ${(nsPerTrap / 1000).toFixed(1)} µs per trap` });
const noTraps = (backend: Backend, detail = backend === Backend.PERF ? perfHypervisor : hypervisor): Partial<TrapCheck> => ({ backend, delivery: TrapDelivery.NOT_DELIVERED, writes: 8, traps: 0, detail });
const notRun = (backend: Backend, detail: string): Partial<TrapCheck> => ({ backend, delivery: TrapDelivery.NOT_RUN, detail });

function info(hostId: string, trapChecks: Partial<TrapCheck>[], more: Partial<AgentInfo> = {}): AgentInfo {
  return create(AgentInfoSchema, { hostId, backends: [Backend.PTRACE, Backend.PERF], slotsPerThread: 4, trapChecks, ...more } as never);
}

const write8 = (address = 0x1000n) => ({ location: { case: "address" as const, value: address }, length: 8, mode: WatchMode.WRITE });
function spec(fields: object = {}, watches: object[] = [write8()]): JobSpec {
  return create(JobSpecSchema, { watches, target: { pid: 4242 }, ...fields } as never);
}

/** The refusal's text, or "" when the host may arm the job. */
function refusal(host: AgentInfo, job: JobSpec): string {
  try {
    checkHostBackend(host, job);
    return "";
  } catch (err) {
    assert.ok(err instanceof PreconditionError, `a PreconditionError, not ${String(err)}`);
    assert.equal(statusFor(err).code, status.FAILED_PRECONDITION);
    return err.message;
  }
}

test("controller traps - a host is refused for a backend whose self-test did not deliver, with host, backend and what the probe saw", () => {
  const ptrace = spec({ backend: Backend.PTRACE });
  const perf = spec({ backend: Backend.PERF });
  const table: Array<[string, AgentInfo, JobSpec, string]> = [
    ["delivered: placed", info("h1", [delivered(Backend.PTRACE), delivered(Backend.PERF)]), ptrace, ""],
    ["delivered perf: placed", info("h1", [delivered(Backend.PTRACE), delivered(Backend.PERF)]), perf, ""],
    ["not delivered", info("vm-1", [noTraps(Backend.PTRACE), noTraps(Backend.PERF)]), ptrace, `host vm-1: ptrace watch traps are not delivered: ${hypervisor}; no hit could be seen there`],
    ["not delivered, perf", info("vm-1", [noTraps(Backend.PTRACE), noTraps(Backend.PERF)]), perf, `host vm-1: perf watch traps are not delivered: ${perfHypervisor}; no hit could be seen there`],
    [
      "not run",
      info("vm-1", [notRun(Backend.PTRACE, "ptrace(PTRACE_TRACEME): EPERM (a seccomp filter forbids tracing)"), delivered(Backend.PERF)]),
      ptrace,
      "host vm-1: ptrace watch traps could not be tested: ptrace(PTRACE_TRACEME): EPERM (a seccomp filter forbids tracing); a watch there might never see a hit; perf traps are delivered there: use --backend perf",
    ],
    [
      "partial: some writes trapped",
      info("vm-2", [{ ...noTraps(Backend.PTRACE, "DR0 armed, 5 of 8 probe writes trapped: traps are lost on this host"), traps: 5 }, noTraps(Backend.PERF)]),
      ptrace,
      "host vm-2: ptrace watch traps are not delivered: DR0 armed, 5 of 8 probe writes trapped: traps are lost on this host; no hit could be seen there",
    ],
    ["partial, no words from the helper: the numbers", info("vm-2", [{ ...noTraps(Backend.PTRACE, ""), traps: 3 }]), ptrace, "host vm-2: ptrace watch traps are not delivered: 3 of 8 probe writes trapped; no hit could be seen there"],
    ["not tested (an older agent): as before", info("old", []), ptrace, ""],
    ["UNSPECIFIED checks: as before", info("old", [{ backend: Backend.PTRACE, delivery: TrapDelivery.UNSPECIFIED }, { backend: Backend.PERF }]), perf, ""],
    ["no check for the job's backend: as before", info("h1", [noTraps(Backend.PTRACE)]), perf, ""],
    [
      "perf unavailable is said as before, not as untested traps",
      info("h1", [delivered(Backend.PTRACE), notRun(Backend.PERF, "perf_event_open: EACCES (perf_event_paranoid 3)")], { backends: [Backend.PTRACE], perfNote: "perf_event_open: EACCES (perf_event_paranoid 3)" }),
      perf,
      "perf events are unavailable on host h1: perf_event_open: EACCES (perf_event_paranoid 3); use --backend ptrace",
    ],
  ];
  for (const [name, host, job, want] of table) assert.equal(refusal(host, job), want, name);
});

test("controller traps - the refusal names the other backend when it traps there and the job allows it", () => {
  const perfOnly = info("vm-3", [delivered(Backend.PTRACE), noTraps(Backend.PERF)]);
  const ptraceOnly = info("vm-4", [noTraps(Backend.PTRACE), delivered(Backend.PERF)]);
  const changed = [{ op: ConditionOp.CHANGED }];
  const table: Array<[string, AgentInfo, JobSpec, string]> = [
    ["automatic (perf) where only ptrace traps", perfOnly, spec(), `host vm-3: perf watch traps are not delivered: ${perfHypervisor}; no hit could be seen there; ptrace traps are delivered there: use --backend ptrace (perf was the automatic choice)`],
    ["explicit perf where only ptrace traps", perfOnly, spec({ backend: Backend.PERF }), `host vm-3: perf watch traps are not delivered: ${perfHypervisor}; no hit could be seen there; ptrace traps are delivered there: use --backend ptrace`],
    ["counting needs perf: no other backend to name", perfOnly, spec({ countOnly: true }), `host vm-3: perf watch traps are not delivered: ${perfHypervisor}; no hit could be seen there`],
    ["automatic (ptrace, a condition) where only perf traps: perf has no conditions", ptraceOnly, spec({ conditions: changed }), `host vm-4: ptrace watch traps are not delivered: ${hypervisor}; no hit could be seen there`],
    ["explicit ptrace where only perf traps", ptraceOnly, spec({ backend: Backend.PTRACE }), `host vm-4: ptrace watch traps are not delivered: ${hypervisor}; no hit could be seen there; perf traps are delivered there: use --backend perf`],
    ["automatic (perf) where perf traps: placed", ptraceOnly, spec(), ""],
    ["automatic (ptrace, a read watch) where ptrace traps: placed", perfOnly, spec({}, [{ ...write8(), mode: WatchMode.READ }]), ""],
  ];
  for (const [name, host, job, want] of table) assert.equal(refusal(host, job), want, name);
});

/** Jobs in memory with the JobStore's contract: copies in, frozen-free copies out, changes serialized. */
class MemoryJobStore {
  private readonly jobs = new Map<string, Job>();
  async load(): Promise<Job[]> {
    return [];
  }
  get size(): number {
    return this.jobs.size;
  }
  get(id: string): Job | undefined {
    return this.jobs.get(id);
  }
  has(id: string): boolean {
    return this.jobs.has(id);
  }
  async full(id: string): Promise<Job | undefined> {
    return this.jobs.get(id);
  }
  async summary(id: string): Promise<Job | undefined> {
    return this.jobs.get(id);
  }
  active(): Job[] {
    return [...this.jobs.values()].filter((j) => !isFinalJobState(j.state));
  }
  countFinished(): number {
    return [...this.jobs.values()].filter((j) => isFinalJobState(j.state)).length;
  }
  async create(job: Job): Promise<Job> {
    if (this.jobs.has(job.id)) throw new Error(`job ${job.id} exists`);
    this.jobs.set(job.id, clone(JobSchema, job));
    return this.jobs.get(job.id)!;
  }
  /** Jobs staged and not written yet (see JobStore.stage). */
  private readonly staged = new Set<string>();
  /** Fails the next first write of a staged job (as a deposed leader's, or NATS away). */
  failFirstWrite: Error | undefined;
  /** First writes of staged jobs so far. */
  firstWrites = 0;
  async stage(job: Job): Promise<Job> {
    const stored = await this.create(job);
    this.staged.add(job.id);
    return stored;
  }
  isStaged(id: string): boolean {
    return this.staged.has(id);
  }
  async mutate(id: string, change: (job: Job) => void): Promise<Job> {
    const current = this.jobs.get(id);
    if (!current) throw new Error(`job ${id} is not in the store`);
    if (this.staged.delete(id)) {
      this.firstWrites++;
      const failure = this.failFirstWrite;
      this.failFirstWrite = undefined;
      if (failure) {
        this.jobs.delete(id);
        throw failure;
      }
    }
    const job = clone(JobSchema, current);
    change(job);
    this.jobs.set(id, job);
    return job;
  }
}

/** Every address it is asked about is mapped (a watch by address is checked before placing); a symbol is at 0x5000, plus its offset. */
function lookup(r: { symbol: string; offset: bigint; address: bigint; length: number }) {
  return r.symbol === "" ? { address: r.address, size: BigInt(r.length), module: "[heap]" } : { address: 0x5000n + r.offset, size: 8n, module: "/bin/target" };
}

/** An agent on a real session with the controller: it finds the pids it is given, finds every address mapped and arms whatever it is asked. */
class ScriptedAgent {
  readonly arms: Arm[] = [];
  readonly disarms: Array<{ jobId: string; pid: number }> = [];
  /** Disarms are answered once this resolves. */
  disarmsAnswered: Promise<void> = Promise.resolve();
  /** Resolve commands received. */
  resolves = 0;
  /** Answer the lookups a Discover carries (as agents since batch sessions do); else only Resolve is answered. */
  resolvesInDiscovery = false;
  private requests: AsyncQueue<SessionRequest> | undefined;
  private ended: Promise<void> | undefined;
  private readonly stop = new AbortController();

  constructor(
    private readonly controller: Controller,
    public info: AgentInfo,
    private readonly pids: readonly number[],
  ) {}

  /** Registers (again), listing what it holds as armed; resolves once the controller answered. */
  async connect(armed: ArmedTarget[] = []): Promise<void> {
    const requests = new AsyncQueue<SessionRequest>();
    this.requests = requests;
    requests.push(create(SessionRequestSchema, { msg: { case: "register", value: { info: this.info, armed } } }));
    let registered!: () => void;
    const ready = new Promise<void>((resolve) => (registered = resolve));
    this.ended = (async () => {
      for await (const message of this.controller.session(requests, this.stop.signal)) {
        const m = message.msg;
        if (m.case === "registered") registered();
        else if (m.case === "discover") {
          const lookups = this.resolvesInDiscovery ? m.value.resolve : [];
          const processes = this.pids.map((pid) => ({ pid, comm: "target", exe: "/bin/target", resolved: lookups.map((r) => lookup(r)) }));
          requests.push(create(SessionRequestSchema, { msg: { case: "discoverResult", value: { requestId: m.value.requestId, processes } } }));
        } else if (m.case === "resolve") {
          this.resolves++;
          requests.push(create(SessionRequestSchema, { msg: { case: "resolveResult", value: { requestId: m.value.requestId, ...lookup(m.value) } } }));
        } else if (m.case === "arm") {
          this.arms.push(m.value);
          const value = { requestId: m.value.requestId, jobId: m.value.jobId, pid: m.value.pid, threadsTotal: 1, threadsArmed: 1, backend: m.value.backend, valuesExact: true };
          requests.push(create(SessionRequestSchema, { msg: { case: "armResult", value } }));
        } else if (m.case === "disarm") {
          const { requestId, jobId, pid } = m.value;
          this.disarms.push({ jobId, pid });
          void this.disarmsAnswered.then(() => requests.push(create(SessionRequestSchema, { msg: { case: "disarmResult", value: { requestId, jobId, pid, counts: {} } } })));
        }
      }
    })();
    await ready;
  }

  /** What a restarted helper found, told on the live session. */
  update(info: AgentInfo): void {
    this.info = info;
    this.requests!.push(create(SessionRequestSchema, { msg: { case: "infoUpdate", value: info } }));
  }

  /** Ends the session; resolves once the controller has let it go. */
  async disconnect(): Promise<void> {
    this.requests?.close();
    await this.ended;
  }
}

async function withController(work: (controller: Controller, store: MemoryJobStore, log: string[]) => Promise<void>): Promise<void> {
  const store = new MemoryJobStore();
  const log: string[] = [];
  const controller = new Controller(store as unknown as JobStore, { heartbeatMs: 20_000, leaseMs: 60_000, requestTimeoutMs: 5_000, epoch: 1n, log: (line) => log.push(line) });
  await controller.start();
  try {
    await work(controller, store, log);
  } finally {
    controller.stop();
  }
}

test("controller traps - a job whose only host delivers no traps is refused FAILED_PRECONDITION and nothing is armed", async () => {
  await withController(async (controller, store) => {
    const vm = new ScriptedAgent(controller, info("vm-1", [noTraps(Backend.PTRACE), noTraps(Backend.PERF)]), [4242]);
    await vm.connect();
    for (const backend of [Backend.PTRACE, Backend.PERF, Backend.UNSPECIFIED]) {
      await assert.rejects(controller.submit(spec({ backend, target: { hostIds: ["vm-1"], pid: 4242 } })), (err: unknown) => {
        assert.ok(err instanceof PreconditionError);
        assert.equal(statusFor(err).code, status.FAILED_PRECONDITION);
        const name = backend === Backend.PTRACE ? "ptrace" : "perf";
        assert.equal(err.message, `host vm-1: ${name} watch traps are not delivered: ${name === "ptrace" ? hypervisor : perfHypervisor}; no hit could be seen there`);
        return true;
      });
    }
    assert.equal(vm.arms.length, 0, "nothing armed");
    assert.equal(store.size, 0, "no job stored");
    await vm.disconnect();
  });
});

test("controller traps - beside a host that traps, the job proceeds and the trapless host's target is failed with the reason", async () => {
  await withController(async (controller) => {
    const ok = new ScriptedAgent(controller, info("h-ok", [delivered(Backend.PTRACE), delivered(Backend.PERF, 1200)]), [4242]);
    const vm = new ScriptedAgent(controller, info("vm-1", [noTraps(Backend.PTRACE), noTraps(Backend.PERF)]), [4242]);
    await ok.connect();
    await vm.connect();
    const job = await controller.submit(spec({ backend: Backend.PTRACE, target: { hostIds: ["h-ok", "vm-1"], pid: 4242 } }));
    assert.equal(job.state, JobState.DEGRADED);
    const byHost = new Map(job.targets.map((t) => [t.hostId, t]));
    assert.equal(byHost.get("h-ok")?.state, TargetState.ARMED);
    assert.equal(byHost.get("vm-1")?.state, TargetState.FAILED);
    assert.equal(byHost.get("vm-1")?.reason, `host vm-1: ptrace watch traps are not delivered: ${hypervisor}; no hit could be seen there`);
    assert.deepEqual([ok.arms.length, vm.arms.length], [1, 0]);
    await controller.cancel(job.id);
    await ok.disconnect();
    await vm.disconnect();
  });
});

test("controller traps - an agent of an older version (no self-test) is placed and armed as before", async () => {
  await withController(async (controller) => {
    const old = new ScriptedAgent(controller, info("old", []), [4242]);
    await old.connect();
    const job = await controller.submit(spec({ target: { hostIds: ["old"], pid: 4242 } }));
    assert.equal(job.state, JobState.ARMED);
    assert.deepEqual(old.arms.map((a) => a.backend), [Backend.PERF]);
    await controller.cancel(job.id);
    await old.disconnect();
  });
});

test("controller traps - a queued target fails, never armed, when its host's restarted helper finds no traps", async () => {
  await withController(async (controller, store) => {
    const host = new ScriptedAgent(controller, info("h1", [delivered(Backend.PTRACE), delivered(Backend.PERF)]), [4242]);
    await host.connect();
    // One register held; the second job needs all four, so it waits in the queue.
    const first = await controller.submit(spec({ backend: Backend.PTRACE, target: { hostIds: ["h1"], pid: 4242 } }));
    const four = [0x2000n, 0x2008n, 0x2010n, 0x2018n].map(write8);
    const queued = await controller.submit(spec({ backend: Backend.PTRACE, target: { hostIds: ["h1"], pid: 4242 }, queueTimeoutMs: 60_000n }, four));
    assert.equal(queued.state, JobState.PENDING);
    assert.equal(host.arms.length, 1);
    host.update(info("h1", [noTraps(Backend.PTRACE), noTraps(Backend.PERF)]));
    const failed = await waitFor("the queued target failed", () => {
      const j = store.get(queued.id);
      return j?.state === JobState.FAILED && j;
    });
    assert.equal(failed.targets[0]?.reason, `host h1: ptrace watch traps are not delivered: ${hypervisor}; no hit could be seen there`);
    // Registers freed now do not arm it.
    await controller.cancel(first.id);
    await controller.submit(spec({ backend: Backend.PTRACE, target: { hostIds: ["h1"], pid: 4242 } })).then(
      () => assert.fail("a new job is refused too"),
      (err: unknown) => assert.ok(err instanceof PreconditionError),
    );
    assert.deepEqual(host.arms.map((a) => a.jobId), [first.id], "only the first job was ever armed");
    await host.disconnect();
  });
});

test("controller traps - a target is not re-armed on a host that registers again without traps", async () => {
  await withController(async (controller, store) => {
    const host = new ScriptedAgent(controller, info("h1", [delivered(Backend.PTRACE), delivered(Backend.PERF)]), [4242]);
    await host.connect();
    const job = await controller.submit(spec({ backend: Backend.PTRACE, target: { hostIds: ["h1"], pid: 4242 } }));
    assert.equal(job.state, JobState.ARMED);
    await host.disconnect();
    // Back with a new helper that does not trap, holding nothing: the controller would re-arm the target.
    host.info = info("h1", [noTraps(Backend.PTRACE), noTraps(Backend.PERF)]);
    await host.connect([]);
    const failed = await waitFor("the target failed", () => {
      const j = store.get(job.id);
      return j?.targets[0]?.state === TargetState.FAILED && j;
    });
    assert.equal(failed.targets[0]?.reason, `re-arm after reconnect failed: host h1: ptrace watch traps are not delivered: ${hypervisor}; no hit could be seen there`);
    assert.equal(host.arms.length, 1, "armed once, before the helper changed");
    await host.disconnect();
  });
});

test("controller - a host that resolves while discovering gets no Resolve per process; one that does not still gets them", async () => {
  await withController(async (controller) => {
    const watches = [{ location: { case: "symbol" as const, value: "work_mem+8" }, length: 8, mode: WatchMode.WRITE }, write8(0x3000n)];
    const fresh = new ScriptedAgent(controller, info("fresh", [delivered(Backend.PTRACE), delivered(Backend.PERF)]), [101, 102]);
    fresh.resolvesInDiscovery = true;
    const old = new ScriptedAgent(controller, info("old", [delivered(Backend.PTRACE), delivered(Backend.PERF)]), [201, 202]);
    await fresh.connect();
    await old.connect();
    const job = await controller.submit(spec({ target: { allHosts: true, comm: "target" } }, watches));
    assert.equal(job.state, JobState.ARMED);
    assert.equal(fresh.resolves, 0, "the discovery answered every lookup");
    assert.equal(old.resolves, 4, "two lookups in each of two processes");
    for (const t of job.targets) assert.deepEqual(t.chunks.map((c) => c.address).sort(), [0x3000n, 0x5008n], `${t.hostId}/${t.pid}`);
    await controller.cancel(job.id);
    await fresh.disconnect();
    await old.disconnect();
  });
});

test("controller - a submitted job is first written with its arm outcome; when that write fails, its arms are disarmed and its registers freed", async () => {
  await withController(async (controller, store) => {
    const host = new ScriptedAgent(controller, info("h1", [delivered(Backend.PTRACE), delivered(Backend.PERF)]), [4242]);
    await host.connect();
    // All four registers of the one process.
    const fourWatches = [write8(0x1000n), write8(0x2000n), write8(0x3000n), write8(0x4000n)];
    const fullJob = () => spec({ backend: Backend.PERF, target: { hostIds: ["h1"], pid: 4242 } }, fourWatches);
    const job = await controller.submit(fullJob());
    assert.equal(job.state, JobState.ARMED);
    assert.equal(store.firstWrites, 1, "staged, then written once with the arm's outcome");
    assert.equal(store.get(job.id)?.state, JobState.ARMED);
    await controller.cancel(job.id);

    store.failFirstWrite = new NotLeaderError("not writing: this controller's leader term ended", undefined);
    await assert.rejects(controller.submit(fullJob()), NotLeaderError);
    const unstored = host.arms.at(-1)!.jobId;
    assert.notEqual(unstored, job.id, "its arm was sent before the write");
    assert.equal(store.has(unstored), false, "never stored");
    await waitFor("the unstored job's watch disarmed", () => host.disarms.some((d) => d.jobId === unstored && d.pid === 4242));

    const again = await controller.submit(fullJob());
    assert.equal(again.state, JobState.ARMED, "its four registers were free again");
    await controller.cancel(again.id);
    await host.disconnect();
  });
});

test("controller - registers an agent lists as armed for no active job are placed on only once it has disarmed them", async () => {
  await withController(async (controller) => {
    const host = new ScriptedAgent(controller, info("h1", [delivered(Backend.PTRACE), delivered(Backend.PERF)]), [4242]);
    let answerDisarms!: () => void;
    host.disarmsAnswered = new Promise<void>((resolve) => (answerDisarms = resolve));
    // A job whose controller stopped between its arms and its first write: every register of pid 4242.
    const slots = [0, 1, 2, 3].map((dr) => ({ dr, chunk: { address: 0x9000n + 8n * BigInt(dr), length: 8, mode: WatchMode.WRITE } }));
    await host.connect([create(ArmedTargetSchema, { jobId: "unknown1", pid: 4242, slots })]);
    await waitFor("the orphan's disarm sent", () => host.disarms.some((d) => d.jobId === "unknown1"));
    const job = () => spec({ backend: Backend.PERF, target: { hostIds: ["h1"], pid: 4242 } });
    await assert.rejects(controller.submit(job()), (err: unknown) => {
      assert.match(String(err), /has 0 free debug register\(s\) of 4 and the job needs 1; held by .*unknown1/);
      return true;
    });
    assert.equal(host.arms.length, 0, "nothing armed on registers the agent still holds");
    answerDisarms();
    const armed = await waitFor("placed once the orphan is disarmed", async () => {
      const j = await controller.submit(job()).catch(() => undefined);
      return j?.state === JobState.ARMED && j;
    });
    await controller.cancel(armed.id);
    await host.disconnect();
  });
});

test("controller - a queued target whose agent is away is not placed (an arm could only fail and requeue it), and is placed once the agent registers", async () => {
  await withController(async (controller, store, log) => {
    const host = new ScriptedAgent(controller, info("h1", [delivered(Backend.PTRACE), delivered(Backend.PERF)]), [4242]);
    await host.connect();
    // Four registers held; the second job needs one, so it waits in the queue.
    const four = [0x2000n, 0x2008n, 0x2010n, 0x2018n].map(write8);
    const first = await controller.submit(spec({ backend: Backend.PERF, target: { hostIds: ["h1"], pid: 4242 } }, four));
    const queued = await controller.submit(spec({ backend: Backend.PERF, target: { hostIds: ["h1"], pid: 4242 }, queueTimeoutMs: 60_000n }));
    assert.equal(queued.state, JobState.PENDING);
    await host.disconnect();
    // The agent is away: freeing its registers offers them to the queue, which must not arm there.
    await controller.cancel(first.id);
    await waitFor("the first job cancelled", () => store.get(first.id)?.state === JobState.CANCELLED);
    const tries = () => log.filter((l) => l.includes(`job ${queued.id}: arming h1/4242 failed`)).length;
    // A loop would try again at once, many times a second.
    await holdsFor(`no arm of ${queued.id} tried on the away host`, () => tries() === 0, 300);
    assert.equal(store.get(queued.id)?.state, JobState.PENDING);
    // Back: its registration offers the queue registers there.
    await host.connect();
    await waitFor("the queued job armed once its agent registered", () => store.get(queued.id)?.state === JobState.ARMED);
    assert.deepEqual(host.arms.map((a) => a.jobId), [first.id, queued.id]);
    await controller.cancel(queued.id);
    await host.disconnect();
  });
});
