// Faults in a real fleet on one machine (hosts in namespaces of their own,
// see test/support/fleet.ts): an agent SIGKILLed, a host partitioned, the
// controller SIGKILLed and restarted, nats-server restarted under a hot
// stream, the leader of two controllers SIGKILLed. Each scenario checks that
// the targets were never harmed, that the job's status said the truth at
// every step it was asked, and that the counts add up; the time from each
// fault to `lost` and from each heal to `armed` again is printed, not asserted.
import { after, before, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { fromJson } from "@bufbuild/protobuf";
import { HitEventSchema, JobSchema, JobState, ListAgentsResponseSchema, TargetState, type Agent, type HitEvent, type Job, type Target as JobTarget } from "../../proto/index.js";
import { Fleet, type FleetHost, type JobFollower } from "../support/fleet.js";
import { readWord, type Target } from "../support/targets.js";
import { scaled, waitFor } from "../support/wait.js";

const hostIds = ["db-1", "db-2", "db-3"];
// Leases stretch with the machine (FLEETWATCH_TIME_SCALE): on a slow one a
// controller's restart or a busy moment must not pass for a silent host.
const leaseMs = scaled(2_000);
// The controllers' default: long enough to ride out a nats-server restart without a change of leader.
const electionLeaseMs = scaled(5_000);
// Jobs that must ride out a controller's absence keep their targets armed this long without a session.
const lostAfter = `${scaled(30_000)}ms`;
const helperComm = "fleetwatch-helper";
// Deadlines for conditions that wait on leases, reconnect backoff (at most 5 s) and a controller's start.
const faultMs = 30_000;

/** A job's state at one moment, as `jobs get` said it. */
interface Seen {
  /** When it reached the test. */
  atMs: number;
  /**
   * A look: when it was asked. The controller answered somewhere between
   * then and atMs, so states streamed meanwhile may be older or newer.
   */
  askedAtMs?: number;
  job: Job;
  /** Where it was seen: streamed to the job follower, or a look of its own (`jobs get`). */
  from?: "stream" | "look";
}

describe("multihost faults", () => {
  let fleet: Fleet;
  const figures: string[] = [];

  before(async () => {
    fleet = await Fleet.start({
      hosts: hostIds.map((id) => ({ id, labels: ["role=db"] })),
      leaseMs,
      electionLeaseMs,
      controllers: 2,
    });
  });

  after(async () => {
    if (figures.length > 0) console.log(`measured (lease ${leaseMs} ms, election lease ${electionLeaseMs} ms):\n  ${figures.join("\n  ")}`);
    await fleet?.stop();
    await fleet?.assertClean();
  });

  // ---- talking to the fleet ------------------------------------------------

  const cliJson = async (args: string[]): Promise<unknown> => {
    const result = await fleet.cli([...args, "-o", "json"]);
    if (result.code !== 0) throw new Error(`fleetwatch ${args.join(" ")} exited ${result.code}: ${result.stderr}`);
    return JSON.parse(result.stdout);
  };
  const getJob = async (id: string): Promise<Job> => fromJson(JobSchema, (await cliJson(["jobs", "get", id])) as never);
  const agents = async (): Promise<Agent[]> => fromJson(ListAgentsResponseSchema, (await cliJson(["agents", "ls"])) as never).agents;
  const events = async (id: string): Promise<HitEvent[]> => {
    const result = await fleet.cli(["events", id, "-o", "json"], { timeoutMs: 120_000 });
    assert.equal(result.code, 0, result.stderr);
    return result.stdout
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => fromJson(HitEventSchema, JSON.parse(line)));
  };
  const on = (job: Job, hostId: string): JobTarget => {
    const found = job.targets.filter((t) => t.hostId === hostId);
    assert.equal(found.length, 1, `job ${job.id} has one target on ${hostId}`);
    return found[0]!;
  };
  const stateOn = (job: Job, hostId: string): string => TargetState[on(job, hostId).state] ?? "?";

  /** Polls `jobs get` until `done` holds, recording every answer. Failed calls (no controller) are retried. */
  /**
   * Waits until the job, as the controller streams its states (one follower
   * per job), satisfies `done`; every state seen goes into history.
   */
  const poll = (id: string, history: Seen[], name: string, done: (job: Job) => boolean, timeoutMs = faultMs): Promise<Job> => {
    if (lookOnly) return look(id, history, name, done, timeoutMs);
    let follower = followers.get(id);
    if (!follower) followers.set(id, (follower = fleet.followJob(id)));
    const states = follower.states;
    return waitFor(name, () => {
      takeStates(id, history);
      const job = states.at(-1)?.job;
      return job && done(job) ? job : undefined;
    }, timeoutMs, 50);
  };
  /** The follower's states not yet in history, in the order they came. */
  const takeStates = (id: string, history: Seen[]): void => {
    const states = followers.get(id)?.states ?? [];
    for (const state of states.slice(historyLength.get(history) ?? 0)) history.push({ ...state, from: "stream" });
    historyLength.set(history, states.length);
  };
  const followers = new Map<string, JobFollower>();
  // Set for a change of leader: the last states the old leader streamed
  // were seen a few hits ahead of the counts the new one started from, so
  // there each look asks the leader of the moment, as the CLI does.
  let lookOnly = false;
  const historyLength = new WeakMap<Seen[], number>();

  /** As poll, but each look is a `jobs get` of its own: what a controller that just started (or took over) says. */
  const look = (id: string, history: Seen[], name: string, done: (job: Job) => boolean, timeoutMs = faultMs): Promise<Job> =>
    waitFor(name, async () => {
      // States streamed before the look was asked come before it.
      takeStates(id, history);
      const askedAtMs = Date.now();
      const job = await getJob(id);
      takeStates(id, history);
      history.push({ atMs: Date.now(), askedAtMs, job, from: "look" });
      return done(job) ? job : undefined;
    }, timeoutMs, 50);

  /** The states one host's target went through, consecutive repeats folded. */
  const path = (history: readonly Seen[], hostId: string): string[] =>
    history.map((s) => stateOn(s.job, hostId)).filter((state, i, all) => i === 0 || all[i - 1] !== state);

  /** Every answer: the job state is the roll-up of its targets' (DEGRADED exactly while some target is lost). */
  const assertRollUp = (history: readonly Seen[]): void => {
    for (const { job } of history) {
      const lost = job.targets.some((t) => t.state === TargetState.LOST);
      const allArmed = job.targets.every((t) => t.state === TargetState.ARMED);
      assert.equal(job.state, lost ? JobState.DEGRADED : allArmed ? JobState.ARMED : job.state, `job ${JobState[job.state]} with targets ${job.targets.map((t) => `${t.hostId}:${TargetState[t.state]}`).join(" ")}`);
      if (!lost && allArmed) assert.equal(job.state, JobState.ARMED);
    }
  };

  const delivered = (job: Job, hostId: string): bigint => on(job, hostId).counts?.delivered ?? 0n;

  /**
   * Every answer: no target's counters ever went back (an agent that
   * started again goes on from where they were). One figure is compared
   * with another only when it was seen after the other one: a look and the
   * states streamed while it was being answered are not ordered.
   */
  const assertCountsNeverGoBack = (history: readonly Seen[]): void => {
    const startMs = history[0]?.atMs ?? 0;
    const figures = new Map<string, Array<{ value: bigint; fromMs: number; toMs: number; seen: string }>>();
    for (const s of history) {
      for (const t of s.job.targets) {
        const c = t.counts!;
        // Where each figure was seen, should one go back: streamed or looked at, when, and the target then.
        const when = s.askedAtMs === undefined ? `at +${s.atMs - startMs} ms` : `asked at +${s.askedAtMs - startMs} ms, answered by +${s.atMs - startMs} ms`;
        const seen = `${s.from ?? "final"} ${when}, ${TargetState[t.state]}: ${t.reason}`;
        for (const [name, value] of Object.entries({ trapped: c.trapped, delivered: c.delivered, dropped: c.dropped })) {
          const k = `${t.hostId}/${t.pid} ${name}`;
          const list = figures.get(k) ?? [];
          list.push({ value, fromMs: s.askedAtMs ?? s.atMs, toMs: s.atMs, seen });
          figures.set(k, list);
        }
      }
    }
    for (const [k, list] of figures) {
      list.forEach((later, b) => {
        list.forEach((earlier, a) => {
          // Seen before the later one was asked for (in history order when within the same millisecond).
          const before = earlier.toMs < later.fromMs || (earlier.toMs === later.fromMs && a < b);
          if (before) assert.ok(later.value >= earlier.value, `${k} went back from ${earlier.value} (${earlier.seen}) to ${later.value} (${later.seen})`);
        });
      });
    }
  };

  /** A demo-counter (demo_counter += 1 every 200 ms until SIGTERM) on each host, gone when the test ends however it ends. */
  const startDemoCounters = async (context: TestContext): Promise<Map<string, Target>> => {
    const targets = new Map<string, Target>();
    context.after(async () => {
      for (const target of targets.values()) await target.kill();
    });
    for (const id of hostIds) targets.set(id, await fleet.host(id).startTarget("demo-counter"));
    return targets;
  };

  /** Cancels the job when the test ends, unless it ended already: the next scenario starts from no job. */
  const cancelAtEnd = (context: TestContext, id: string): void => {
    context.after(async () => {
      await fleet.cli(["jobs", "cancel", id]);
    });
  };

  /** demo_counter of a running demo-counter, read from its memory (no tracer needed). */
  const readCounter = (target: Target): Promise<bigint> => readWord(target.rootPid, Number(target.lines[0]!.split(" ")[2]!));

  /** The target runs on its own: its counter goes up while we watch. */
  const assertRunning = async (target: Target): Promise<void> => {
    const before = await readCounter(target);
    await waitFor(`${target.name} ${target.rootPid} keeps counting`, async () => (await readCounter(target)) > before, 5_000);
  };

  /** The live helper of a host; there is exactly one. */
  const helperOf = async (host: FleetHost): Promise<number> => {
    const helpers = await host.processesNamed(helperComm);
    assert.equal(helpers.length, 1, `${host.id} runs one helper: ${helpers.join(", ")}`);
    return helpers[0]!;
  };

  /** Each target is traced by its host's one helper and no one else. */
  const assertTracedByOwnHelper = async (targets: Map<string, Target>, hosts: readonly string[] = hostIds): Promise<void> => {
    for (const id of hosts) assert.equal(await targets.get(id)!.tracerPid(), await helperOf(fleet.host(id)), `${id}: its target is traced by its helper`);
  };

  /**
   * Samples the tracer of each target every few ms until stopped: which
   * tracers each had, so a target disarmed and armed again (even briefly)
   * shows as a 0 or a second tracer.
   */
  const watchTracers = (targets: Map<string, Target>, hosts: readonly string[]) => {
    const seen = new Map<string, Set<number>>(hosts.map((id) => [id, new Set<number>()]));
    let running = true;
    const loop = (async () => {
      while (running) {
        for (const id of hosts) seen.get(id)!.add(await targets.get(id)!.tracerPid());
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    })();
    return {
      async stop(): Promise<Map<string, Set<number>>> {
        running = false;
        await loop;
        return seen;
      },
    };
  };

  /** Submits the scenario's job: demo_counter in every demo-counter on role=db hosts. */
  const submitDemoJob = async (context: TestContext, extra: string[] = []): Promise<Job> => {
    const job = fromJson(JobSchema, (await cliJson(["watch", "--comm", "demo-counter", "--selector", "role=db", "--symbol", "demo_counter", "--stack", "0", "--backend", "ptrace", ...extra])) as never);
    cancelAtEnd(context, job.id);
    assert.equal(job.state, JobState.ARMED, job.reason);
    assert.deepEqual(job.targets.map((t) => [t.hostId, TargetState[t.state]]).sort(), hostIds.map((id) => [id, "ARMED"]));
    return job;
  };

  /** Hits delivered from every host (the job's own counts). */
  const waitForHitsEverywhere = (id: string, history: Seen[], above: Map<string, bigint> = new Map()): Promise<Job> =>
    poll(id, history, `hits delivered from every host of job ${id}`, (j) => hostIds.every((h) => delivered(j, h) > (above.get(h) ?? 0n)));

  const deliveredByHost = (job: Job, hosts: readonly string[] = hostIds): Map<string, bigint> => new Map(hosts.map((h) => [h, delivered(job, h)]));

  /**
   * Cancels the job; then every target is untraced with counts that add up
   * and are no lower than at any earlier look,
   * the stream holds each delivered hit once (per host, by sequence), and
   * every demo-counter exits 0 on SIGTERM.
   */
  const finish = async (id: string, targets: Map<string, Target>, history: Seen[]): Promise<Job> => {
    const final = fromJson(JobSchema, (await cliJson(["jobs", "cancel", id])) as never);
    assert.equal(final.state, JobState.CANCELLED, final.reason);
    history.push({ atMs: Date.now(), job: final });
    assertCountsNeverGoBack(history);
    for (const t of final.targets) {
      const c = t.counts!;
      assert.equal(c.trapped, c.delivered + c.suppressed + c.dropped + c.filtered, `${t.hostId}/${t.pid} (${t.reason}): trapped = delivered + suppressed + dropped + filtered`);
    }
    for (const [id, target] of targets) assert.equal(await target.tracerPid(), 0, `${id}: untraced after cancel`);
    const hits = await events(id);
    for (const hostId of hostIds) {
      const sequences = hits.filter((h) => h.hostId === hostId).map((h) => h.sequence);
      assert.equal(new Set(sequences).size, sequences.length, `${hostId}: no hit stored twice`);
      assert.equal(BigInt(sequences.length), delivered(final, hostId), `${hostId}: the stream holds every delivered hit`);
    }
    for (const [id, target] of targets) {
      process.kill(target.rootPid, "SIGTERM");
      assert.deepEqual(await target.waitForExit(), { code: 0, signal: null }, `${id}: ${target.name} exits 0`);
    }
    return final;
  };

  const seconds = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;

  // ---- the scenarios ---------------------------------------------------------

  test("an agent SIGKILLed mid-job: its targets run on untraced, the host is lost after the lease, the restarted agent re-arms them; other hosts never notice", async (context) => {
    const targets = await startDemoCounters(context);
    const job = await submitDemoJob(context);
    const history: Seen[] = [];
    await waitForHitsEverywhere(job.id, history);
    const victim = fleet.host("db-1");
    const others = hostIds.filter((id) => id !== victim.id);
    await assertTracedByOwnHelper(targets);
    const othersTracers = watchTracers(targets, others);
    try {
      await poll(job.id, history, "a few hits from db-1", (j) => delivered(j, "db-1") >= 5n);
      const killedAtMs = Date.now();
      await victim.killAgent("SIGKILL");
      // The helper saw its pipe close: it disarmed, detached and exited; the target runs on.
      await waitFor("db-1's target untraced", async () => (await targets.get("db-1")!.tracerPid()) === 0);
      await waitFor("db-1's helper gone", async () => (await victim.processesNamed(helperComm)).length === 0);
      await assertRunning(targets.get("db-1")!);

      const lost = await poll(job.id, history, "db-1's target lost", (j) => on(j, "db-1").state === TargetState.LOST);
      const lostAtMs = Date.now();
      assert.equal(lost.state, JobState.DEGRADED);
      const [, silentMs, allowedMs] = /silent for (\d+) ms \(the job allows (\d+) ms\)/.exec(on(lost, "db-1").reason) ?? [];
      assert.equal(Number(allowedMs), leaseMs, on(lost, "db-1").reason);
      assert.ok(Number(silentMs) > leaseMs, `lost only after the lease: ${on(lost, "db-1").reason}`);
      // Still lost while the agent is away; the other hosts' hits go on.
      const during = deliveredByHost(lost);
      await poll(job.id, history, "hits from the other hosts while db-1 is lost", (j) => others.every((h) => delivered(j, h) > during.get(h)!));

      const restartedAtMs = Date.now();
      await victim.startAgent();
      const back = await poll(job.id, history, "db-1's target armed again", (j) => on(j, "db-1").state === TargetState.ARMED && j.state === JobState.ARMED);
      const armedAtMs = Date.now();
      assert.match(on(back, "db-1").reason, /^(re-armed after the agent reconnected|armed)$/);
      // The new agent's first report goes on from the counts before the crash (checked with the whole history below).
      const countsAtLoss = on(lost, "db-1").counts!;
      await poll(job.id, history, "a report from db-1's new agent", (j) => on(j, "db-1").counts!.trapped !== countsAtLoss.trapped);
      await assertTracedByOwnHelper(targets);
      // Hits from db-1 again, from its new agent.
      const hitsAfter = await waitFor("hits from db-1's target after the restart", async () => {
        const found = (await events(job.id)).filter((h) => h.hostId === "db-1" && h.timeUnixNano > BigInt(armedAtMs) * 1_000_000n);
        return found.length > 0 ? found : undefined;
      }, faultMs, 200);
      assert.ok(hitsAfter.every((h) => h.pid === targets.get("db-1")!.pid));
      assert.deepEqual(path(history, "db-1"), ["ARMED", "LOST", "ARMED"]);
      for (const id of others) assert.deepEqual(path(history, id), ["ARMED"], `${id} stayed armed throughout`);
      assertRollUp(history);
      assertCountsNeverGoBack(history);
      figures.push(`agent SIGKILL: fault -> lost ${seconds(lostAtMs - killedAtMs)}; agent restart -> armed ${seconds(armedAtMs - restartedAtMs)}`);
    } finally {
      const tracers = await othersTracers.stop();
      for (const id of others) assert.equal([...tracers.get(id)!].filter((p) => p === 0).length, 0, `${id} was never untraced`);
      for (const id of others) assert.equal(tracers.get(id)!.size, 1, `${id} had one tracer throughout`);
      if (!victim.agent.running) await victim.startAgent();
    }
    await finish(job.id, targets, history);
  });

  test("a host partitioned for longer than the lease, then healed: lost, disarmed by its own agent, then re-armed once, by one helper, one holder per register, counts adding up", async (context) => {
    const targets = await startDemoCounters(context);
    const job = await submitDemoJob(context);
    const history: Seen[] = [];
    await waitForHitsEverywhere(job.id, history);
    const victim = fleet.host("db-2");
    const others = hostIds.filter((id) => id !== victim.id);
    const helperBefore = await helperOf(victim);
    let healed = false;
    try {
      const cutAtMs = Date.now();
      await victim.setLink("down");
      const lost = await poll(job.id, history, "db-2's target lost", (j) => on(j, "db-2").state === TargetState.LOST);
      const lostAtMs = Date.now();
      assert.equal(lost.state, JobState.DEGRADED);
      assert.match(on(lost, "db-2").reason, new RegExp(`silent for \\d+ ms \\(the job allows ${leaseMs} ms\\)`));
      // Nobody listening means nobody trapping: the cut-off agent disarms on its own, its helper stays.
      await waitFor("db-2's agent disarmed its target on its own", async () => (await targets.get("db-2")!.tracerPid()) === 0, faultMs);
      await victim.agent.waitForOutput(/disarmed by the agent until the controller re-arms it/);
      await assertRunning(targets.get("db-2")!);

      const healedAtMs = Date.now();
      await victim.setLink("up");
      healed = true;
      const back = await poll(job.id, history, "db-2's target armed again", (j) => on(j, "db-2").state === TargetState.ARMED && j.state === JobState.ARMED);
      const armedAtMs = Date.now();
      // The agent's own progress report may already have replaced the controller's words.
      assert.match(on(back, "db-2").reason, /^(re-armed after the agent reconnected|armed|agent reconnected; the target stayed armed)$/);
      // The same helper, now tracing again; no second one anywhere.
      assert.equal(await helperOf(victim), helperBefore);
      await assertTracedByOwnHelper(targets);
      // One holder per register on every host: each watched pid once, each DR once, one job on it.
      await waitFor("the slot maps list every target", async () => {
        const listing = await agents();
        return hostIds.every((h) => listing.find((a) => a.info?.hostId === h)?.targets.some((t) => t.pid === on(back, h).pid)) ? listing : undefined;
      }).then((listing) => {
        for (const a of listing) {
          assert.equal(a.connected, true, `${a.info?.hostId} connected`);
          const pids = a.targets.map((t) => t.pid);
          assert.equal(new Set(pids).size, pids.length, `${a.info?.hostId}: each pid listed once`);
          for (const t of a.targets) {
            const used = t.slots.filter((s) => s.jobIds.length > 0 || s.jobId !== "");
            assert.deepEqual(used.map((s) => s.jobIds), [[job.id]], `${a.info?.hostId} pid ${t.pid}: one register, held by this job alone`);
            assert.equal(new Set(t.slots.map((s) => s.dr)).size, t.slots.length, `${a.info?.hostId} pid ${t.pid}: each DR listed once`);
          }
        }
      });
      const atHeal = deliveredByHost(back);
      await waitForHitsEverywhere(job.id, history, atHeal);

      assert.deepEqual(path(history, "db-2"), ["ARMED", "LOST", "ARMED"]);
      for (const id of others) assert.deepEqual(path(history, id), ["ARMED"], `${id} stayed armed throughout`);
      assertRollUp(history);
      assertCountsNeverGoBack(history);
      figures.push(`partition: fault -> lost ${seconds(lostAtMs - cutAtMs)}; heal -> armed ${seconds(armedAtMs - healedAtMs)}`);
    } finally {
      if (!healed) await victim.setLink("up");
    }
    await finish(job.id, targets, history);
  });

  test("the controller SIGKILLed and restarted mid-job: the same job and targets, armed throughout on the hosts, hits keep flowing", async (context) => {
    const targets = await startDemoCounters(context);
    const job = await submitDemoJob(context, ["--lost-after", lostAfter]);
    const history: Seen[] = [];
    const before = await waitForHitsEverywhere(job.id, history);
    const jobsBefore = ((await cliJson(["jobs", "ls"])) as { jobs: Array<{ id: string }> }).jobs.map((j) => j.id).sort();
    await assertTracedByOwnHelper(targets);
    const registrations = new Map(hostIds.map((id) => [id, (fleet.host(id).agent.output.match(/registered with/g) ?? []).length]));
    const logFrom = new Map(hostIds.map((id) => [id, fleet.host(id).agent.output.length]));
    const tracers = watchTracers(targets, hostIds);
    let restarted = false;
    try {
      const killedAtMs = Date.now();
      await fleet.killController(0, "SIGKILL");
      const restartedAtMs = Date.now();
      await fleet.startController(0);
      restarted = true;
      await fleet.controller!.waitForOutput(/leading with epoch/);
      const leadingAtMs = Date.now();
      for (const id of hostIds) await waitFor(`${id}'s agent registered again`, () => (fleet.host(id).agent.output.match(/registered with/g) ?? []).length > registrations.get(id)!, faultMs);
      const reconciledAtMs = Date.now();
      const after = await look(job.id, history, "the job as stored, armed", (j) => j.state === JobState.ARMED);
      // Zero jobs lost: the same ids, the same targets.
      const jobsAfter = ((await cliJson(["jobs", "ls"])) as { jobs: Array<{ id: string }> }).jobs.map((j) => j.id).sort();
      assert.deepEqual(jobsAfter, jobsBefore);
      assert.deepEqual(after.targets.map((t) => `${t.hostId}/${t.pid}`).sort(), job.targets.map((t) => `${t.hostId}/${t.pid}`).sort());
      await waitForHitsEverywhere(job.id, history, deliveredByHost(before));
      for (const id of hostIds) assert.deepEqual(path(history, id), ["ARMED"], `${id} armed at every look`);
      for (const id of hostIds) assert.doesNotMatch(fleet.host(id).agent.output.slice(logFrom.get(id)), /disarming pid|disarmed by the agent/, `${id}: nothing was disarmed`);
      figures.push(`controller SIGKILL: restart -> leading ${seconds(leadingAtMs - restartedAtMs)} (down ${seconds(restartedAtMs - killedAtMs)}); restart -> every agent reconciled ${seconds(reconciledAtMs - restartedAtMs)}; never lost`);
    } finally {
      const seen = await tracers.stop();
      for (const id of hostIds) assert.deepEqual([...seen.get(id)!], [await helperOf(fleet.host(id))], `${id}: traced by its one helper throughout`);
      if (!restarted) await fleet.startController(0);
    }
    await finish(job.id, targets, history);
  });

  test("nats-server restarted during a hot stream on 2 hosts: per host, delivered + dropped = trapped, every delivered hit stored once", async (context) => {
    lookOnly = true;
    context.after(() => {
      lookOnly = false;
    });
    const writes = 40_000;
    const hot = hostIds.slice(0, 2);
    const writers = new Map<string, Target>();
    try {
      for (const id of hot) writers.set(id, await fleet.host(id).startTarget("counter", ["--writes", String(writes)]));
      // A nats-server that is slow to come back can cost the controller its leadership for a
      // moment; with lost-after the agents keep trapping through it, so every write is a trap.
      const job = fromJson(JobSchema, (await cliJson(["watch", "--comm", "counter", "--selector", "role=db", "--symbol", "fw_counter", "--stack", "0", "--backend", "ptrace", "--lost-after", lostAfter])) as never);
      cancelAtEnd(context, job.id);
      assert.equal(job.state, JobState.ARMED, job.reason);
      assert.deepEqual(job.targets.map((t) => t.hostId).sort(), hot);
      for (const w of writers.values()) w.send("go");
      const history: Seen[] = [];
      await poll(job.id, history, "hits flowing from both hosts", (j) => hot.every((h) => delivered(j, h) > 2_000n));
      const restartAtMs = Date.now();
      await fleet.restartNats("SIGTERM");
      const upAtMs = Date.now();
      const atRestart = deliveredByHost(history.at(-1)!.job, hot);
      await poll(job.id, history, "hits delivered again after the restart", (j) => hot.every((h) => delivered(j, h) > atRestart.get(h)! || on(j, h).state === TargetState.EXITED));
      const flowingAtMs = Date.now();
      for (const [id, w] of writers) {
        await w.waitForLine(/^done/, 120_000);
        assert.deepEqual(await w.waitForExit(), { code: 0, signal: null }, `${id}: the writer finished unharmed`);
      }
      const settled = await poll(job.id, history, "the job completed with every trap settled", (j) => {
        if (j.state === JobState.COMPLETED && j.targets.every((t) => t.counts!.trapped === BigInt(writes) && t.counts!.delivered + t.counts!.dropped === t.counts!.trapped)) return true;
        // Named in the timeout's message: where the job stood when it did not settle.
        throw new Error(`job ${JobState[j.state]}: ${j.targets.map((t) => `${t.hostId} ${TargetState[t.state]} (${t.reason}) trapped ${t.counts?.trapped} delivered ${t.counts?.delivered} dropped ${t.counts?.dropped}`).join("; ")}; the controller said: ${fleet.controller!.output.split("\n").filter((l) => /leading|standing by|session|lease|connected/.test(l)).slice(-12).join(" | ")}`);
      }, 60_000);
      const hits = await events(job.id);
      for (const id of hot) {
        const c = on(settled, id).counts!;
        assert.equal(c.suppressed + c.filtered, 0n, `${id}: nothing suppressed or filtered`);
        const sequences = hits.filter((h) => h.hostId === id).map((h) => h.sequence);
        assert.equal(new Set(sequences).size, sequences.length, `${id}: no hit stored twice`);
        assert.equal(BigInt(sequences.length), c.delivered, `${id}: every delivered hit is in the stream`);
        figures.push(`nats restart: ${id} trapped ${c.trapped}, delivered ${c.delivered}, dropped ${c.dropped}`);
      }
      assert.equal(hits.filter((h) => !hot.includes(h.hostId)).length, 0);
      figures.push(`nats restart: down ${seconds(upAtMs - restartAtMs)}; up -> hits flowing again ${seconds(flowingAtMs - upAtMs)}`);
    } finally {
      for (const w of writers.values()) await w.kill();
    }
  });

  test("two controllers, the leader SIGKILLed: the standby leads within its election lease, agents and the CLI follow, the job stays armed", async (context) => {
    lookOnly = true;
    context.after(() => {
      lookOnly = false;
    });
    const standby = await fleet.startController(1);
    await standby.waitForOutput(/standing by/);
    const targets = await startDemoCounters(context);
    const job = await submitDemoJob(context, ["--lost-after", lostAfter]);
    const history: Seen[] = [];
    const before = await waitForHitsEverywhere(job.id, history);
    const tracers = watchTracers(targets, hostIds);
    const newLeader = fleet.controllerAddressOf(1).replace(/\./g, "\\.");
    try {
      const killedAtMs = Date.now();
      await fleet.killController(0, "SIGKILL");
      await standby.waitForOutput(/leading with epoch/, faultMs);
      const leadingAtMs = Date.now();
      for (const id of hostIds) await fleet.host(id).agent.waitForOutput(new RegExp(`registered with ${newLeader} `), faultMs);
      const followedAtMs = Date.now();
      // The CLI, given both addresses, finds the new leader.
      const after = await look(job.id, history, "the job under the new leader", (j) => j.state === JobState.ARMED);
      assert.deepEqual(after.targets.map((t) => `${t.hostId}/${t.pid}`).sort(), job.targets.map((t) => `${t.hostId}/${t.pid}`).sort());
      await waitForHitsEverywhere(job.id, history, deliveredByHost(before));
      for (const id of hostIds) assert.deepEqual(path(history, id), ["ARMED"], `${id} armed at every look`);
      figures.push(`leader SIGKILL: fault -> standby leading ${seconds(leadingAtMs - killedAtMs)}; fault -> every agent with the new leader ${seconds(followedAtMs - killedAtMs)}; never lost`);
    } finally {
      const seen = await tracers.stop();
      for (const id of hostIds) assert.deepEqual([...seen.get(id)!], [await helperOf(fleet.host(id))], `${id}: traced by its one helper throughout`);
    }
    await finish(job.id, targets, history);
  });
});
