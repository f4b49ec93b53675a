// A controller SIGKILLed in the middle of a queue drain's batch and started
// again on the same store: every job settles, and the store, the
// controller's slot map and the agents agree register by register.
//
// Three agents (host-a..c), each alone in a PID and mount namespace of its
// own (our network) with four word-sweep targets, so that one job by comm
// selects every target once. A blocker holds all four registers of every
// target; 120 single-word jobs queue behind it; cancelling the blocker lets
// one drain place 48 of them at once, and the controller is killed in the
// middle of that batch, at one of two moments: as soon as the job that goes
// first is seen arming (WatchJob; the arms are on their way or not sent
// yet), or as soon as an agent logs that it carried out the first arm of
// the batch (the arms reached the agents, their answers are not recorded).
// Either way the batch is stored as arming and almost none of it armed.
//
// What the agents really have armed is read on their side, not from the
// controller: each target stores a marker into each of its 64 words, one
// store per word, and the hits the agents publish straight to NATS name,
// per trap, the debug register that fired (DR6, read by the helper at the
// trap), the word and the job. Beside that, each agent's own census of the
// registers and watches it holds (its /metrics), and each target's tracer
// (/proc/PID/status: the helper of its own host's agent).
import { after, before, describe, test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { connect, type ConsumerMessages, type NatsConnection } from "nats";
import { Backend, HitBatchSchema, JobSpecSchema, JobState, TargetState, WatchMode, eventStream, eventSubjects, type HitEvent, type Job } from "../../proto/index.js";
import type { ListPosition } from "../../controller/job-index.js";
import { JobStore } from "../../controller/job-store.js";
import { Cluster, type Daemon } from "../support/cluster.js";
import { Box } from "../support/fleet.js";
import { scrape } from "../support/metrics.js";
import { cliPath, helperPath } from "../support/paths.js";
import { buildFixtures, procStatusField, type Target } from "../support/targets.js";
import { scaled, waitFor } from "../support/wait.js";

const hostIds = ["host-a", "host-b", "host-c"];
const targetsPerHost = 4;
/** Jobs per target, each watching its own word: 10 x 12 targets = 120 queued jobs, 48 placed by the drain. */
const jobsPerTarget = 10;
const registersPerTarget = 4;
/** What word-sweep stores into fw_words[i] on "sweep". */
const sweepMark = 0x5eed000000000000n;
/** Long enough never to end a waiting job during the test, on a slow machine too. */
const queueTimeoutMs = scaled(10 * 60_000);

interface Host {
  id: string;
  box: Box;
  agent: Daemon;
  metricsUrl: string;
}

/** When the controller is killed: as soon as the batch's first job is seen arming, or an agent carried out its first arm. */
type Moment = "stored" | "armed";
const moments: Record<Moment, string> = { stored: "the drain's batch is seen stored", armed: "an agent carried out the batch's first arm" };

/** A debug register of a target, as `host/pid/DRn`. */
const registerKey = (hostId: string, pid: number, dr: number) => `${hostId}/${pid}/DR${dr}`;
const held = (t: { state: TargetState }) => t.state === TargetState.ARMED || t.state === TargetState.ARMING || t.state === TargetState.LOST;
const targetStates = (j: Job) => j.targets.map((t) => `${t.hostId}/${t.pid} ${TargetState[t.state]}${t.reason ? ` (${t.reason})` : ""}`).join(", ");

/** Every hit the agents published, from the start of the event stream and as they come; each once. */
class HitLog {
  readonly hits: HitEvent[] = [];
  private readonly seen = new Set<string>();
  private lastSequence = 0;
  private messages: ConsumerMessages | undefined;
  private reading: Promise<void> | undefined;

  async start(nc: NatsConnection): Promise<void> {
    // An ordered consumer on every job's subjects (one filter subject: nats-server 2.9).
    const consumer = await nc.jetstream().consumers.get(eventStream, { filterSubjects: eventSubjects });
    const messages = await consumer.consume();
    this.messages = messages;
    this.reading = (async () => {
      for await (const m of messages) {
        this.lastSequence = m.info.streamSequence;
        // A batch sent again after a NATS hiccup carries the same sequences.
        for (const hit of fromBinary(HitBatchSchema, m.data).hits) {
          const key = `${hit.jobId}/${hit.hostId}/${hit.sequence}`;
          if (this.seen.has(key)) continue;
          this.seen.add(key);
          this.hits.push(hit);
        }
      }
    })();
  }

  /** Waits until every message the stream holds now has been read. */
  async caughtUp(nc: NatsConnection): Promise<void> {
    const last = (await (await nc.jetstreamManager()).streams.info(eventStream)).state.last_seq;
    await waitFor(`the event stream read up to its message ${last}`, () => this.lastSequence >= last, 15_000);
  }

  async stop(): Promise<void> {
    await this.messages?.stop();
    await this.reading;
  }
}

describe("a controller restart in the middle of a batch", () => {
  let cluster: Cluster | undefined;
  const hosts: Host[] = [];
  const boxes: Box[] = [];
  let nc: NatsConnection | undefined;
  const hitLog = new HitLog();
  /** Every target started, killed at the end whatever happened. */
  const started: Target[] = [];

  before(async () => {
    await buildFixtures();
    cluster = await Cluster.start({ hosts: [] });
    for (const id of hostIds) {
      const box = await Box.start();
      boxes.push(box);
      const agent = await box.daemon(`agent ${id}`, [process.execPath, cliPath, "agent", "--controller", cluster.controllerAddress, "--nats", cluster.natsUrl, "--host-id", id, "--helper", helperPath, "--metrics-listen", "127.0.0.1:0"]);
      hosts.push({ id, box, agent, metricsUrl: (await agent.waitForOutput(/^metrics: (http:\/\/\S+)$/m))[1]! });
      await cluster.waitForAgent(id);
    }
    nc = await connect({ servers: cluster.natsUrl, name: "batch-restart test" });
    await hitLog.start(nc);
  });

  after(async () => {
    // Each step runs whatever the ones before did; agents first: they disarm and detach.
    const steps: Array<() => Promise<unknown>> = [
      () => hitLog.stop(),
      async () => nc?.close(),
      () => Promise.all(hosts.map((h) => h.agent.stop())),
      () => Promise.all(started.map((t) => t.kill())),
      () => Promise.all(boxes.map((b) => b.stop())),
      async () => cluster?.stop(),
    ];
    const errors: unknown[] = [];
    for (const step of steps) await step().catch((err: unknown) => errors.push(err));
    if (errors.length > 0) throw new AggregateError(errors, "teardown failed");
  });

  for (const moment of ["stored", "armed"] as const) {
    test(`120 queued jobs, the controller SIGKILLed as soon as ${moments[moment]}: every job settles, and store, slot map and agents agree register by register`, (context) => scenario(context, moment));
  }

  /** One round: fresh targets and jobs on the fleet, the kill at `moment`, and every check; nothing is left after it. */
  async function scenario(context: TestContext, moment: Moment): Promise<void> {
    const c = cluster!;
    const api = () => c.api();
    const all: Array<{ hostId: string; target: Target }> = [];
    for (const h of hosts) {
      for (let i = 0; i < targetsPerHost; i++) {
        const target = await h.box.startTarget("word-sweep");
        started.push(target);
        all.push({ hostId: h.id, target });
      }
    }
    const spec = (init: MessageInitShape<typeof JobSpecSchema>) => create(JobSpecSchema, { stackDepth: 0, backend: Backend.PTRACE, ...init });

    // The blocker: 8 bytes from fw_pad+1 are four chunks, every register of every target.
    const { job: blocker } = await api().submitJob({
      spec: spec({ watches: [{ location: { case: "symbol", value: "fw_pad+1" }, length: 8, mode: WatchMode.WRITE }], target: { comm: "word-sweep", allHosts: true }, priority: 5 }),
    });
    assert.equal(blocker?.state, JobState.ARMED, blocker && `${blocker.reason}: ${targetStates(blocker)}`);
    assert.equal(blocker.targets.length, all.length, targetStates(blocker));
    for (const t of blocker.targets) assert.deepEqual(t.slots.map((s) => s.dr), [0, 1, 2, 3], `the blocker holds every register of ${t.hostId}/${t.pid}`);

    // Job k of a target watches fw_words[k]. The first on host-a's first target goes first (priority 1)
    // and its word is written all along: hits flow while the controller is away.
    const spinning = all[0]!;
    const wordOf = new Map<string, number>();
    let spinJob = "";
    for (let k = 0; k < jobsPerTarget; k++) {
      for (const { hostId, target } of all) {
        const first = target === spinning.target && k === 0;
        const { job } = await api().submitJob({
          spec: spec({ watches: [{ location: { case: "symbol", value: `fw_words+${8 * k}` }, length: 8, mode: WatchMode.WRITE }], target: { pid: target.pid, hostIds: [hostId] }, queueTimeoutMs: BigInt(queueTimeoutMs), priority: first ? 1 : 0 }),
        });
        assert.equal(job?.state, JobState.PENDING, job && `${job.reason}: ${targetStates(job)}`);
        assert.match(job.reason, /^queued: /);
        wordOf.set(job.id, k);
        if (first) spinJob = job.id;
      }
    }
    const queued = [...wordOf.keys()];
    spinning.target.send(`spin 0 ${scaled(2)}`);
    await spinning.target.waitForLine(/^spinning 0$/);

    // The kill: the moment the job that goes first is seen arming (WatchJob; the drain stored its whole
    // batch before that), or an agent logs that it carried out the first arm of the batch.
    const marks = new Map(hosts.map((h) => [h.id, h.agent.output.length]));
    const queuedArms = (h: Host) => [...h.agent.output.slice(marks.get(h.id)).matchAll(/job (\S+) armed on pid/g)].filter((m) => wordOf.has(m[1]!)).length;
    let killedBy = "";
    let killedAtMs = 0;
    let armedAtKill = "";
    const kill = (by: string) => {
      if (killedBy !== "") return;
      c.controller!.kill("SIGKILL");
      killedAtMs = Date.now();
      killedBy = by;
      armedAtKill = hosts.map((x) => `${x.id} ${queuedArms(x)}`).join(", ");
    };
    const stopWatching: Array<() => void> = [];
    const seen: string[] = [];
    let following: Promise<void> = Promise.resolve();
    if (moment === "stored") {
      const follow = new AbortController();
      // The stream ends when the controller dies.
      following = (async () => {
        for await (const { job } of api().watchJob({ id: spinJob }, { signal: follow.signal, deadlineMs: scaled(60_000) })) {
          if (!job) continue;
          seen.push(targetStates(job));
          if (job.targets.some((t) => t.state === TargetState.ARMING || t.state === TargetState.ARMED)) return kill(`job ${spinJob} seen ${targetStates(job)}`);
        }
      })().catch(() => {});
      stopWatching.push(() => follow.abort());
      await waitFor("the first job's state streamed", () => seen.length > 0);
    } else {
      for (const h of hosts) {
        const onData = () => queuedArms(h) > 0 && kill(`${h.id}'s first arm of the batch`);
        h.agent.child.stderr!.on("data", onData);
        stopWatching.push(() => h.agent.child.stderr!.off("data", onData));
      }
    }
    // The answer may never come: the controller may be dead by then.
    const cancelling = api().cancelJob({ id: blocker.id }).catch(() => undefined);
    try {
      await waitFor(`the controller killed as soon as ${moments[moment]}`, () => killedBy !== "", 15_000).catch((err: unknown) =>
        assert.fail(`${(err as Error).message}; the first job's states: ${seen.join(" | ") || "none seen"}\n${agentTails()}`),
      );
    } finally {
      for (const stop of stopWatching) stop();
    }
    await Promise.all([following, cancelling]);
    await c.stopController("SIGKILL");

    // What the store held at the kill: the blocker cancelled, a batch placed, and not all of it recorded armed yet.
    const atKill = await storedJobs(nc!);
    assert.equal(atKill.get(blocker.id)?.state, JobState.CANCELLED, "the blocker's end was stored before the drain");
    const placed = queued.map((id) => atKill.get(id)!).filter((j) => j.targets.some(held));
    const arming = placed.filter((j) => j.targets.some((t) => t.state === TargetState.ARMING));
    context.diagnostic(`at the kill (${killedBy}): ${placed.length} queued jobs placed, ${arming.length} of them still arming in the store; batch arms the agents had carried out: ${armedAtKill}, and by the restart: ${hosts.map((h) => `${h.id} ${queuedArms(h)}`).join(", ")}`);
    assert.ok(arming.length > 0, "the batch was in flight at the kill: some of its targets not recorded armed yet");
    assert.equal(placed.length, all.length * registersPerTarget, "one drain placed a job on every register the blocker freed");

    const restartingAtMs = Date.now();
    await c.startController();
    for (const h of hosts) await c.waitForAgent(h.id, 30_000);

    // Every job settles: armed, or still waiting in the queue with its reason.
    const unsettled = (j: Job): string | undefined => {
      if (j.state === JobState.ARMED && j.targets.every((t) => t.state === TargetState.ARMED)) return undefined;
      if (j.state === JobState.PENDING && j.targets.every((t) => t.state === TargetState.PENDING) && /^queued: |waiting in the queue/.test(j.reason)) return undefined;
      return `${j.id} ${JobState[j.state]} (${j.reason}): ${targetStates(j)}`;
    };
    let last: string[] = [];
    const settled = await waitFor(
      "every job armed or queued with a reason",
      async () => {
        const { jobs } = await api().listJobs({ limit: 1000 });
        const mine = jobs.filter((j) => wordOf.has(j.id));
        last = mine.map(unsettled).filter((u): u is string => u !== undefined);
        return mine.length === queued.length && last.length === 0 ? mine : undefined;
      },
      30_000,
      100,
    ).catch((err: unknown) => assert.fail(`${(err as Error).message}; ${last.length} job(s) not settled: ${last.slice(0, 10).join("; ")}\n${agentTails()}`));

    // The store: which job holds each register. Never two jobs on one, and every register held.
    const stored = new Map<string, string>();
    for (const j of settled) {
      for (const t of j.targets.filter(held)) {
        for (const s of t.slots) {
          const key = registerKey(t.hostId, t.pid, s.dr);
          assert.equal(stored.get(key), undefined, `${key} held by jobs ${stored.get(key)} and ${j.id}`);
          stored.set(key, j.id);
        }
      }
    }
    assert.equal(stored.size, all.length * registersPerTarget, "every register of every target is held by one job");
    assert.equal(settled.filter((j) => j.state === JobState.ARMED).length, all.length * registersPerTarget, "one armed job per register");

    // The controller's slot map says the same.
    const slotMap = new Map<string, string>();
    for (const a of (await api().listAgents({})).agents) {
      for (const t of a.targets) for (const s of t.slots) if (s.jobIds.length > 0) slotMap.set(registerKey(a.info!.hostId, t.pid, s.dr), s.jobIds.join(","));
    }
    assert.deepEqual(sorted(slotMap), sorted(stored), "agents ls shows the registers the store holds");

    // Each agent's own census of the registers and watches it holds, and each target traced by its host's helper.
    for (const h of hosts) {
      const own = [...stored.keys()].filter((k) => k.startsWith(`${h.id}/`)).length;
      const census = await scrape(h.metricsUrl);
      assert.equal(census.get("fleetwatch_agent_debug_registers", { state: "ours" }), own, `${h.id}: registers it holds`);
      assert.equal(census.get("fleetwatch_agent_debug_registers", { state: "foreign" }), 0, `${h.id}: registers held outside fleetwatch`);
      assert.equal(census.get("fleetwatch_agent_targets_armed"), own, `${h.id}: watches it holds (one register each)`);
      for (const { target: t } of all.filter((x) => x.hostId === h.id)) {
        const tracer = await t.tracerPid();
        assert.equal(await procStatusField(tracer, "PPid"), h.agent.signalPid, `${h.id}/${t.pid} is traced by its agent's helper (tracer ${tracer})`);
      }
    }

    // Hits went on across the restart; then the writing stops.
    await waitFor("hits of the spinning word", () => hitLog.hits.filter((x) => x.jobId === spinJob).length >= 5, 15_000);
    spinning.target.send("rest");
    await spinning.target.waitForLine(/^rested \d+$/);
    const awayHits = hitLog.hits.filter((x) => x.jobId === spinJob && Number(x.timeUnixNano / 1_000_000n) > killedAtMs && Number(x.timeUnixNano / 1_000_000n) < restartingAtMs).length;
    context.diagnostic(`hits of the spinning word while no controller ran: ${awayHits}`);

    // The hardware's word: every target stores into each of its words once; each register that traps
    // says which job it belongs to. Exactly the stored registers trap, each once, for the stored job.
    for (const { target } of all) target.send("sweep");
    for (const { target } of all) await target.waitForLine(/^swept 64$/);
    // Each host numbers its own processes: a pid names a target only with its host.
    const wordsAt = new Map(all.map(({ hostId, target }) => [`${hostId}/${target.pid}`, BigInt(target.lines[0]!.split(" ")[2]!)]));
    const wordIndex = (x: HitEvent) => (x.address - wordsAt.get(`${x.hostId}/${x.pid}`)!) / 8n;
    const sweepHits = () => hitLog.hits.filter((x) => wordOf.has(x.jobId) && x.newValue >= sweepMark && x.newValue < sweepMark + 64n);
    const expected = [...stored].map(([key, id]) => `${key} ${id} fw_words[${wordOf.get(id)}]`).sort();
    const trapped = () => sweepHits().map((x) => `${registerKey(x.hostId, x.pid, x.slot)} ${x.jobId} fw_words[${wordIndex(x)}]`).sort();
    await waitFor(`a hit of every stored register (${expected.length})`, () => trapped().length >= expected.length, 15_000).catch((err: unknown) =>
      assert.fail(`${(err as Error).message}; stored but no hit: ${expected.filter((e) => !trapped().includes(e)).join("; ")}`),
    );
    for (const x of sweepHits()) assert.equal(x.newValue, sweepMark + wordIndex(x), "the hit's value is the marker of its own word");
    assert.deepEqual(trapped(), expected, "the registers that trapped are the ones the store holds, for the same jobs");

    // Every job ends with counts that add up, and the event stream holds exactly its delivered hits.
    for (const j of settled) await api().cancelJob({ id: j.id });
    await hitLog.caughtUp(nc!);
    const { jobs: ended } = await api().listJobs({ limit: 1000 });
    for (const j of ended.filter((x) => wordOf.has(x.id) || x.id === blocker.id)) {
      const n = j.counts!;
      assert.equal(n.trapped, n.delivered + n.suppressed + n.dropped + n.filtered, `job ${j.id}: trapped = delivered + suppressed + dropped + filtered`);
      const hits = hitLog.hits.filter((x) => x.jobId === j.id);
      assert.equal(BigInt(hits.length), n.delivered, `job ${j.id}: delivered hits in the stream`);
      assert.deepEqual(hits.map((x) => x.sequence), hits.map((_, i) => BigInt(i + 1)), `job ${j.id}: hit sequences without a gap`);
      if (j.id === spinJob) assert.ok(n.delivered > 5n, `the spinning word's job delivered ${n.delivered}`);
      else if (wordOf.has(j.id)) assert.equal(n.delivered, BigInt([...stored.values()].filter((id) => id === j.id).length), `job ${j.id}: the sweep's one hit if it held a register, else none`);
    }

    // Nothing is left: no register held, no watch, every target untraced and running.
    for (const h of hosts) {
      const census = await scrape(h.metricsUrl);
      assert.equal(census.get("fleetwatch_agent_debug_registers", { state: "ours" }), 0, `${h.id}: no register held after the cancels`);
      assert.equal(census.get("fleetwatch_agent_targets_armed"), 0, `${h.id}: no watch after the cancels`);
    }
    for (const a of (await api().listAgents({})).agents) {
      assert.deepEqual(a.targets.flatMap((t) => t.slots.filter((s) => s.jobIds.length > 0).map((s) => registerKey(a.info!.hostId, t.pid, s.dr))), [], `${a.info?.hostId}: no register in the slot map`);
    }
    for (const { hostId, target } of all) {
      await waitFor(`${hostId}/${target.pid} untraced`, async () => (await target.tracerPid()) === 0);
      target.send("quit");
      assert.deepEqual(await target.waitForExit(), { code: 0, signal: null }, `${hostId}/${target.pid} exits 0`);
    }
  }

  /** The last lines of every agent's log, for a failure message. */
  function agentTails(): string {
    return hosts.map((h) => `--- agent ${h.id}:\n${h.agent.output.split("\n").slice(-15).join("\n")}`).join("\n");
  }
});

/** The jobs bucket as stored (active and finished jobs), read while no controller runs. */
async function storedJobs(nc: NatsConnection): Promise<Map<string, Job>> {
  const store = await JobStore.open(nc.jetstream());
  await store.load();
  const jobs = new Map<string, Job>();
  let after: ListPosition | undefined;
  do {
    const page = await store.list({ limit: 1000, states: undefined, after });
    for (const job of page.jobs) jobs.set(job.id, (await store.full(job.id)) ?? job);
    after = page.next;
  } while (after);
  return jobs;
}

function sorted(m: Map<string, string>): Array<[string, string]> {
  return [...m].sort(([a], [b]) => (a < b ? -1 : 1));
}
