// A real fleet on one machine: hosts in network, PID and mount namespaces of
// their own, each with its agent, and one job that selects hosts by label.
// Every target is armed on the right host with the pid that host sees, hits
// come from every selected host under its own id, a host that does not match
// gets nothing, and cancelling leaves every target untraced and healthy.
import { test } from "node:test";
import assert from "node:assert/strict";
import { fromJson } from "@bufbuild/protobuf";
import { HitEventSchema, JobSchema, JobState, ListAgentsResponseSchema, TargetState, type Agent, type HitEvent, type Job } from "../../proto/index.js";
import { Fleet } from "../support/fleet.js";
import { startTarget, type Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

const dbHosts = ["db-1", "db-2", "db-3"];
const targetsPerHost = 2;

test("multihost - a job selecting role=db arms 2 targets on each of 3 hosts, hits come from all with their host ids, the web host gets nothing", async (context) => {
  const fleet = await Fleet.start({
    hosts: [...dbHosts.map((id) => ({ id, labels: ["role=db"] })), { id: "web-1", labels: ["role=web"] }],
  });
  // Same program, same comm, outside every host: no agent may see it.
  let outsider: Target | undefined;
  // Runs whether the test passed or not, and fails it if anything is left.
  context.after(async () => {
    await outsider?.kill();
    await fleet.stop();
    await fleet.assertClean();
  });
  const byHost = new Map<string, Target[]>();
  for (const id of [...dbHosts, "web-1"]) {
    const targets: Target[] = [];
    for (let i = 0; i < targetsPerHost; i++) targets.push(await fleet.host(id).startTarget("demo-counter"));
    byHost.set(id, targets);
  }
  outsider = await startTarget("demo-counter");
  const key = (hostId: string, pid: number): string => `${hostId}/${pid}`;
  const events = async (jobId: string): Promise<HitEvent[]> => {
    const result = await fleet.cli(["events", jobId, "-o", "json"]);
    assert.equal(result.code, 0, result.stderr);
    return result.stdout
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => fromJson(HitEventSchema, JSON.parse(line)));
  };
  const agents = async (): Promise<Agent[]> => {
    const result = await fleet.cli(["agents", "ls", "-o", "json"]);
    assert.equal(result.code, 0, result.stderr);
    return fromJson(ListAgentsResponseSchema, JSON.parse(result.stdout)).agents;
  };
  const expected = dbHosts.flatMap((id) => byHost.get(id)!.map((t) => key(id, t.pid))).sort();
  const dbTargets = dbHosts.flatMap((id) => byHost.get(id)!);
  const untouched = [...byHost.get("web-1")!, outsider];
  // Each host numbers its own processes: what its agent reports is not our pid.
  for (const target of [...dbTargets, ...byHost.get("web-1")!]) assert.notEqual(target.pid, target.rootPid);

  const submitted = await fleet.cli(["watch", "--comm", "demo-counter", "--selector", "role=db", "--symbol", "demo_counter", "--stack", "0", "--backend", "ptrace", "-o", "json"]);
  assert.equal(submitted.code, 0, submitted.stderr);
  const armed = fromJson(JobSchema, JSON.parse(submitted.stdout));
  assert.equal(armed.state, JobState.ARMED, `${armed.reason}: ${armed.targets.filter((t) => t.reason).map((t) => `${key(t.hostId, t.pid)} ${t.reason}`).join("; ")}`);
  assert.deepEqual(armed.targets.map((t) => key(t.hostId, t.pid)).sort(), expected);
  assert.deepEqual(armed.targets.map((t) => t.state), Array(expected.length).fill(TargetState.ARMED));
  for (const target of dbTargets) assert.notEqual(await target.tracerPid(), 0, `${target.name} ${target.rootPid} is traced`);
  for (const target of untouched) assert.equal(await target.tracerPid(), 0, `${target.name} ${target.rootPid} is not traced`);

  // The web host was never asked to watch anything.
  assert.deepEqual((await agents()).find((a) => a.info?.hostId === "web-1")?.targets, []);

  const hits = await waitFor("hits from every armed target", async () => {
    const replayed = await events(armed.id);
    const from = new Set(replayed.map((h) => key(h.hostId, h.pid)));
    return expected.every((k) => from.has(k)) ? replayed : undefined;
  }, 30_000, 200);
  assert.equal(hits.filter((h) => h.hostId === "web-1").length, 0);
  const unexpected = hits.filter((h) => h.jobId !== armed.id || !expected.includes(key(h.hostId, h.pid)));
  assert.deepEqual(unexpected, [], "every hit names the job and an armed (host, pid)");
  for (const h of hits) assert.equal(h.newValue, h.oldValue + 1n, "demo_counter goes up by one per write");

  const cancelled = await fleet.cli(["jobs", "cancel", armed.id, "-o", "json"]);
  assert.equal(cancelled.code, 0, cancelled.stderr);
  const final: Job = fromJson(JobSchema, JSON.parse(cancelled.stdout));
  assert.equal(final.state, JobState.CANCELLED);
  for (const target of dbTargets) assert.equal(await target.tracerPid(), 0, `${target.name} ${target.rootPid} is untraced after cancel`);
  // The counts are final now: the replay holds exactly the delivered hits of each target, none lost to another's.
  const replayed = new Map<string, number>();
  for (const h of await events(armed.id)) replayed.set(key(h.hostId, h.pid), (replayed.get(key(h.hostId, h.pid)) ?? 0) + 1);
  const delivered = final.targets.map((t) => [key(t.hostId, t.pid), Number(t.counts?.delivered ?? 0n)] as const).sort();
  assert.deepEqual([...replayed].sort(), delivered);

  const listing = await agents();
  assert.deepEqual(listing.map((a) => [a.info?.hostId, a.connected]).sort(), [...dbHosts, "web-1"].map((id) => [id, true]));
  for (const a of listing) {
    const inUse = a.targets.flatMap((t) => t.slots.filter((slot) => slot.jobId !== "" || slot.jobIds.length > 0).map((slot) => `pid ${t.pid} DR${slot.dr}`));
    assert.deepEqual(inUse, [], `${a.info?.hostId}: no register is in use after cancel`);
  }

  for (const target of [...dbTargets, ...untouched]) {
    process.kill(target.rootPid, "SIGTERM");
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null }, `${target.name} ${target.rootPid} exits 0`);
  }
});
