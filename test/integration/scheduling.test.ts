// The scheduler over real agents and targets: a job that does not fit waits
// in the queue with its reason and is placed when registers free up, or
// fails at its queue timeout; a higher priority preempts a lower one, which
// is told and placed again later with its counters intact; identical chunks
// share one register; placement all is a gang and sample:N takes N targets.
import { after, afterEach, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Backend, JobState, TargetState, type Job } from "../../proto/index.js";
import { Cluster } from "../support/cluster.js";
import { buildFixtures, fixturePath, startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";
import { oneRegisterPerAccess } from "../support/emulation.js";

describe("scheduling", () => {
  let cluster: Cluster;
  let dir: string;
  const targets: Target[] = [];

  before(async () => {
    await buildFixtures();
    dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-scheduling-"));
    cluster = await Cluster.start({ hosts: ["host-a"] });
  });

  afterEach(async () => {
    // Every job ends with its test: a target left armed would be another test's full register.
    const { jobs } = await cluster.api().listJobs({});
    for (const j of jobs) if (j.state !== JobState.COMPLETED && j.state !== JobState.CANCELLED && j.state !== JobState.FAILED) await cluster.api().cancelJob({ id: j.id });
    for (const t of targets.splice(0)) await t.kill();
  });

  after(async () => {
    await cluster?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  const job = async (id: string): Promise<Job> => (await cluster.api().getJob({ id })).job!;

  /** A counter that writes fw_counter `writes` times after "go". */
  async function counter(writes: number, program?: string): Promise<Target> {
    const target = await startTarget("counter", ["--writes", String(writes)], program ? { path: program } : {});
    targets.push(target);
    await target.waitForLine(/^ready /);
    return target;
  }

  /** Submits through the CLI and returns the job as printed (JSON); ptrace unless asked: identical chunks of two jobs share a register only there. */
  async function submit(args: string[], backend: "ptrace" | "perf" = "ptrace"): Promise<Job & { id: string }> {
    const result = await cluster.cli(["watch", ...args, "--stack", "0", "--backend", backend, "-o", "json"]);
    assert.equal(result.code, 0, result.stderr);
    const printed = JSON.parse(result.stdout) as { id: string };
    return { ...(await job(printed.id)), id: printed.id };
  }

  /** fw_bytes+1 for 8 bytes splits into 1 + 2 + 4 + 1: all four registers of a thread. */
  const fillAll = (pid: number) => ["--pid", String(pid), "--symbol", "fw_bytes+1", "--length", "8"];

  async function finishTarget(target: Target): Promise<void> {
    target.send("go");
    await target.waitForLine(/^done/);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  }

  test("a job that does not fit waits with its reason, is placed when registers free up, or fails at its queue timeout", async () => {
    const target = await counter(10);
    const full = await submit(fillAll(target.pid));
    assert.equal(full.state, JobState.ARMED);

    const refused = await cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--backend", "ptrace"]);
    assert.equal(refused.code, 2, "without a queue timeout a job that does not fit is refused");
    assert.match(refused.stderr, new RegExp(`has 0 free debug register\\(s\\) of 4 and the job needs 1; held by DR0 ${full.id} .*--queue-timeout`));

    const queued = await submit(["--pid", String(target.pid), "--symbol", "fw_counter", "--queue-timeout", "5m"]);
    assert.equal(queued.state, JobState.PENDING);
    assert.match(queued.reason, new RegExp(`^queued: 0/1 targets have 1 free debug register: 1 full \\(job ${full.id}\\)`));
    assert.equal(queued.targets[0]!.state, TargetState.PENDING);
    assert.match(queued.targets[0]!.reason, /has 0 free debug register\(s\) of 4 and the job needs 1/);

    // Four other chunks: identical ones would share the registers of the first job.
    const late = await submit(["--pid", String(target.pid), "--symbol", "fw_bytes+9", "--length", "8", "--queue-timeout", "4s"]);
    assert.equal(late.state, JobState.PENDING);

    await cluster.api().cancelJob({ id: full.id });
    const placed = await waitFor("the queued job is armed once the registers are free", async () => {
      const j = await job(queued.id);
      return j.state === JobState.ARMED ? j : undefined;
    });
    assert.equal(placed.targets[0]!.slots.length, 1);
    // The second waiter needs all four: one is taken now, so it times out.
    const timedOut = await waitFor("the job that cannot fit fails at its queue timeout", async () => {
      const j = await job(late.id);
      return j.state === JobState.FAILED ? j : undefined;
    });
    assert.match(timedOut.reason, /^not placed within the queue timeout \(4s\): /);
    assert.equal(timedOut.targets[0]!.state, TargetState.FAILED);

    target.send("go");
    await target.waitForLine(/^done/);
    await waitFor("the queued job saw every write", async () => (await job(queued.id)).counts?.delivered === 10n);
    await cluster.api().cancelJob({ id: queued.id });
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });

  test("a higher priority preempts a lower one, which is told, requeued and placed again; a waiting target ends with its process", async () => {
    const target = await counter(5);
    const low = await submit(fillAll(target.pid));
    assert.equal(low.state, JobState.ARMED);

    const equal = await cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--priority", "0", "--backend", "ptrace"]);
    assert.equal(equal.code, 2, "equal priority never preempts");

    const high = await submit(["--pid", String(target.pid), "--symbol", "fw_counter", "--priority", "10"]);
    assert.equal(high.state, JobState.ARMED);
    const victim = await waitFor("the low job is preempted", async () => {
      const j = await job(low.id);
      return j.targets[0]?.state === TargetState.PREEMPTED ? j : undefined;
    });
    assert.equal(victim.state, JobState.PENDING);
    assert.match(victim.reason, new RegExp(`preempted by job ${high.id}`));
    assert.match(victim.targets[0]!.reason, new RegExp(`preempted by job ${high.id} \\(priority 10 over 0\\).*waiting to be placed again`));
    assert.equal(victim.targets[0]!.preemptions, 1);
    assert.equal(victim.targets[0]!.slots.length, 0);
    const { agents } = await cluster.api().listAgents({});
    const slots = agents[0]!.targets.find((t) => t.pid === target.pid)!.slots;
    assert.deepEqual(slots.map((s) => s.jobIds), [[high.id], [], [], []], "only the high job holds a register");

    // The high job leaves: the low one gets its four registers back.
    await cluster.api().cancelJob({ id: high.id });
    const back = await waitFor("the low job is placed again", async () => {
      const j = await job(low.id);
      return j.state === JobState.ARMED ? j : undefined;
    });
    assert.equal(back.targets[0]!.slots.length, 4);
    assert.equal(back.targets[0]!.preemptions, 1);

    // Preempted again, then the process ends while the low job waits: its target ends too.
    const again = await submit(["--pid", String(target.pid), "--symbol", "fw_counter", "--priority", "10", "--max-hits", "5"]);
    await waitFor("preempted a second time", async () => (await job(low.id)).targets[0]?.preemptions === 2);
    target.send("go");
    await target.waitForLine(/^done/);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
    const done = await waitFor("the high job has every hit", async () => {
      const j = await job(again.id);
      return j.state === JobState.COMPLETED ? j : undefined;
    });
    assert.equal(done.counts?.delivered, 5n);
    const ended = await waitFor("the waiting target ends with its process", async () => {
      const j = await job(low.id);
      return j.state === JobState.COMPLETED ? j : undefined;
    });
    assert.equal(ended.targets[0]!.state, TargetState.EXITED);
    assert.match(ended.targets[0]!.reason, /exited/);
  });

  test("jobs watching the identical chunk share one register, each with its own exact counts", async () => {
    const target = await counter(20);
    const first = await submit(["--pid", String(target.pid), "--symbol", "fw_counter", "--max-hits", "20"]);
    const second = await submit(["--pid", String(target.pid), "--symbol", "fw_counter", "--if", "value > 0x10000000a"]);
    assert.equal(first.state, JobState.ARMED);
    assert.equal(second.state, JobState.ARMED);
    const { agents } = await cluster.api().listAgents({});
    const slots = agents[0]!.targets.find((t) => t.pid === target.pid)!.slots;
    assert.deepEqual(slots.map((s) => s.jobIds), [[first.id, second.id], [], [], []], "one register, two references");
    const listed = await cluster.cli(["agents", "ls"]);
    assert.match(listed.stdout, new RegExp(`${first.id},${second.id} 0x[0-9a-f]+/8 w`));

    target.send("go");
    await target.waitForLine(/^done/);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
    const a = await waitFor("the first job has all 20 hits", async () => {
      const j = await job(first.id);
      return j.state === JobState.COMPLETED ? j : undefined;
    });
    assert.equal(a.counts?.delivered, 20n);
    const b = await waitFor("the second job ends with the process", async () => {
      const j = await job(second.id);
      return j.state === JobState.COMPLETED ? j : undefined;
    });
    // Writes 1..20 of thread 1 are (1 << 32) | i: those above 0x10000000a are i = 11..20.
    assert.deepEqual([b.counts?.trapped, b.counts?.delivered, b.counts?.filtered], [20n, 10n, 10n]);
  });

  test("perf jobs watching the identical chunk take a register each; a counting one counts every write beside a hit job", { skip: oneRegisterPerAccess }, async () => {
    const target = await counter(20);
    const hits = await submit(["--pid", String(target.pid), "--symbol", "fw_counter", "--max-hits", "20"], "perf");
    const counting = await submit(["--pid", String(target.pid), "--symbol", "fw_counter", "--count"], "perf");
    assert.equal(hits.state, JobState.ARMED, hits.reason);
    assert.equal(counting.state, JobState.ARMED, counting.reason);
    const { agents } = await cluster.api().listAgents({});
    const slots = agents[0]!.targets.find((t) => t.pid === target.pid)!.slots;
    assert.deepEqual(slots.map((s) => [s.jobIds, s.backend]), [[[hits.id], Backend.PERF], [[counting.id], Backend.PERF], [[], Backend.UNSPECIFIED], [[], Backend.UNSPECIFIED]], "two registers, one each");
    const listed = await cluster.cli(["agents", "ls"]);
    assert.match(listed.stdout, new RegExp(`${hits.id} 0x[0-9a-f]+/8 w perf\\s+${counting.id} 0x[0-9a-f]+/8 w perf`));

    target.send("go");
    await target.waitForLine(/^done/);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
    for (const id of [hits.id, counting.id]) {
      const j = await waitFor(`job ${id} ends with its budget or the process`, async () => {
        const x = await job(id);
        return x.state === JobState.COMPLETED ? x : undefined;
      });
      assert.deepEqual([j.counts?.trapped, j.counts?.delivered], [20n, 20n], `job ${id}`);
    }
  });

  test("placement all is a gang: nothing is armed until every target fits; sample:N takes N", async () => {
    const program = path.join(dir, `fwsch${process.pid % 100000}`);
    await copyFile(fixturePath("counter"), program);
    const comm = path.basename(program);
    const [one, two, three] = [await counter(3, program), await counter(3, program), await counter(3, program)];
    const blocker = await submit(fillAll(two.pid));

    const refused = await cluster.cli(["watch", "--comm", comm, "--symbol", "fw_counter", "--placement", "all", "--backend", "ptrace"]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, /2\/3 targets have 1 free debug register: 1 full .*placement all needs all 3/);
    assert.equal(await one.tracerPid(), 0, "a gang that cannot be complete arms nothing");

    const gang = await submit(["--comm", comm, "--symbol", "fw_counter", "--placement", "all", "--queue-timeout", "5m"]);
    assert.equal(gang.state, JobState.PENDING);
    assert.ok(gang.targets.every((t) => t.state === TargetState.PENDING));
    assert.equal(await one.tracerPid(), 0);
    await cluster.api().cancelJob({ id: blocker.id });
    await waitFor("the whole gang is armed", async () => {
      const j = await job(gang.id);
      return j.state === JobState.ARMED && j.targets.length === 3 && j.targets.every((t) => t.state === TargetState.ARMED);
    });
    await cluster.api().cancelJob({ id: gang.id });

    const sample = await submit(["--comm", comm, "--symbol", "fw_counter", "--placement", "sample:2"]);
    assert.equal(sample.state, JobState.ARMED);
    assert.equal(sample.targets.length, 2);
    assert.deepEqual(sample.targets.map((t) => t.pid).sort((a, b) => a - b), [one.pid, two.pid].sort((a, b) => a - b), "the first two by host, then pid");
    assert.equal(await three.tracerPid(), 0);
    await cluster.api().cancelJob({ id: sample.id });

    const bad = await cluster.cli(["watch", "--comm", comm, "--symbol", "fw_counter", "--placement", "some"]);
    assert.equal(bad.code, 3);
    assert.match(bad.stderr, /placement 'some' is not all, any, sample:N or sample:N:LABEL/);
    for (const t of [one, two, three]) await finishTarget(t);
  });

  test("lost-after shorter than the controller's lease is refused; a bad priority too", async () => {
    const target = await counter(1);
    const short = await cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--lost-after", "100ms"]);
    assert.equal(short.code, 3, short.stderr);
    assert.match(short.stderr, /--lost-after 100ms is shorter than the controller's session lease/);
    const priority = await cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--priority", "high"]);
    assert.equal(priority.code, 3);
    assert.match(priority.stderr, /--priority 'high' is not a whole number from -1000 to 1000/);
    assert.equal(await target.tracerPid(), 0);
    await finishTarget(target);
  });
});

describe("scheduling: a lost sample target is replaced on another host", () => {
  let cluster: Cluster;
  let target: Target | undefined;

  before(async () => {
    await buildFixtures();
    cluster = await Cluster.start({ hosts: ["host-a", "host-b"], leaseMs: 1_000 });
  });

  after(async () => {
    await target?.kill();
    await cluster?.stop();
  });

  test("sample:1 with --replace-lost: the host's agent dies, the target is given up there and watched from the other host", async () => {
    target = await startTarget("demo-counter");
    // Both agents see this machine's processes: the sample takes the first host, host-a.
    const submitted = await cluster.cli(["watch", "--pid", String(target.pid), "--all-hosts", "--placement", "sample:1", "--replace-lost", "--symbol", "demo_counter", "--stack", "0", "--backend", "ptrace", "-o", "json"]);
    assert.equal(submitted.code, 0, submitted.stderr);
    const id = (JSON.parse(submitted.stdout) as { id: string }).id;
    const job = async () => (await cluster.api().getJob({ id })).job!;
    assert.deepEqual((await job()).targets.map((t) => [t.hostId, t.state]), [["host-a", TargetState.ARMED]]);

    // The agent dies; its helper lets the target go (stdin closed); the host is lost after the lease.
    await cluster.agents.get("host-a")!.stop("SIGKILL");
    const moved = await waitFor("the target is watched from host-b", async () => {
      const j = await job();
      return j.targets.some((t) => t.hostId === "host-b" && t.state === TargetState.ARMED) ? j : undefined;
    }, 30_000);
    const given = moved.targets.find((t) => t.hostId === "host-a")!;
    assert.equal(given.state, TargetState.CANCELLED);
    assert.match(given.reason, /given up and replaced on another host/);
    assert.equal(moved.state, JobState.ARMED, moved.reason);
    const before = moved.counts?.delivered ?? 0n;
    await waitFor("hits from the new host", async () => ((await job()).counts?.delivered ?? 0n) > before);

    // host-a comes back: the sample is full, nothing is armed there.
    await cluster.startAgent("host-a");
    const { agents } = await cluster.api().listAgents({});
    assert.equal(agents.find((a) => a.info?.hostId === "host-a")?.targets.some((t) => t.slots.some((s) => s.jobIds.includes(id))), false);
    assert.equal((await cluster.api().cancelJob({ id })).job!.state, JobState.CANCELLED);
    assert.equal(await target.tracerPid(), 0);
    target.child.kill("SIGTERM");
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });

  test("--replace-lost without a sample is bad input", async () => {
    const result = await cluster.cli(["watch", "--pid", "1", "--all-hosts", "--replace-lost", "--symbol", "x"]);
    assert.equal(result.code, 3);
    assert.match(result.stderr, /--replace-lost needs --placement sample:N/);
  });
});
