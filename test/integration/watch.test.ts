// End to end: the CLI submits, the controller places, the agent arms through
// the helper in a real C target, hits flow through JetStream back to the CLI.
// Tests of exact values, shared and reserved registers and tracing ask for
// ptrace; the default (perf) has its own: exact counts, no tracing, counting.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { Backend, PerfValues, TargetState } from "../../proto/index.js";
import { clusterSuite } from "../support/cluster-suite.js";
import type { Target } from "../support/targets.js";
import { waitFor } from "../support/wait.js";

interface HitJson {
  jobId: string;
  hostId: string;
  pid: number;
  tid: number;
  address: string;
  slot?: number;
  newValue: string;
  oldValue?: string;
  sequence: string;
  valueExact?: boolean;
}

function parseHits(stdout: string): HitJson[] {
  return stdout
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line) => JSON.parse(line) as HitJson);
}

describe("watch end to end", () => {
  const suite = clusterSuite();

  async function counter(threads: number, writes: number): Promise<Target> {
    // Several writers take a lock around each write, so each trap reads its own thread's value.
    const target = await suite.target("counter", ["--threads", String(threads), "--writes", String(writes), ...(threads > 1 ? ["--locked"] : [])]);
    await target.waitForLine(/^ready /);
    return target;
  }

  /** Waits until the controller says a job on this pid is armed; returns its id. */
  async function armedJobOn(pid: number): Promise<string> {
    return waitFor(`a job armed on pid ${pid}`, async () => {
      const { jobs } = await suite.cluster.api().listJobs({});
      return jobs.find((j) => j.targets.some((t) => t.pid === pid && t.state === 2))?.id;
    });
  }

  /** Follows N hits of fw_counter (`backend`: the --backend flags, none for the default). */
  async function followHits(target: Target, threads: number, writes: number, backend: string[] = ["--backend", "ptrace"]): Promise<HitJson[]> {
    const total = threads * writes;
    const watch = suite.cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--max-hits", String(total), ...backend, "--follow", "-o", "json"], { timeoutMs: 120_000 });
    await armedJobOn(target.pid);
    target.send("go");
    const result = await watch;
    assert.equal(result.code, 0, result.stderr);
    assert.match(await target.waitForLine(/^done/), /done/);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
    return parseHits(result.stdout);
  }

  test("reports exactly N hits with the values one thread wrote, in order", async () => {
    const writes = 10_000;
    const target = await counter(1, writes);
    const hits = await followHits(target, 1, writes);
    assert.equal(hits.length, writes);
    assert.deepEqual(new Set(hits.map((h) => h.tid)).size, 1);
    assert.notEqual(hits[0]!.tid, target.pid, "the writer is the worker thread, not the main one");
    hits.forEach((hit, i) => {
      const expected = (1n << 32n) | BigInt(i + 1);
      assert.equal(BigInt(hit.newValue), expected, `hit ${i} new value`);
      assert.equal(BigInt(hit.oldValue ?? "0"), i === 0 ? 0n : expected - 1n, `hit ${i} old value`);
      assert.equal(hit.pid, target.pid);
      assert.equal(hit.hostId, "host-a");
      assert.equal(BigInt(hit.sequence), BigInt(i + 1));
    });

    // The same hits replay from JetStream after the job ended.
    const replay = await suite.cluster.cli(["events", hits[0]!.jobId, "-o", "json"]);
    assert.equal(replay.code, 0, replay.stderr);
    const replayed = parseHits(replay.stdout);
    assert.equal(replayed.length, writes);
    assert.deepEqual(replayed.map((h) => h.newValue), hits.map((h) => h.newValue));
    const job = (await suite.cluster.api().getJob({ id: hits[0]!.jobId })).job!;
    assert.equal(job.state, 3, `job state ${job.state}: ${job.reason}`);
    assert.deepEqual(
      [job.counts?.trapped, job.counts?.delivered, job.counts?.suppressed, job.counts?.dropped],
      [BigInt(writes), BigInt(writes), 0n, 0n],
    );
  });

  test("reports every write of four threads with the right tids, in order per thread", async () => {
    const writes = 2_500;
    const target = await counter(4, writes);
    const hits = await followHits(target, 4, writes);
    assert.equal(hits.length, 4 * writes);
    const byTid = new Map<number, bigint[]>();
    for (const hit of hits) byTid.set(hit.tid, [...(byTid.get(hit.tid) ?? []), BigInt(hit.newValue)]);
    assert.equal(byTid.size, 4, "four writer threads");
    assert.ok(!byTid.has(target.pid), "the main thread only waits");
    const threadIds = new Set<bigint>();
    for (const values of byTid.values()) {
      assert.equal(values.length, writes);
      const thread = values[0]! >> 32n;
      threadIds.add(thread);
      values.forEach((v, i) => assert.equal(v, (thread << 32n) | BigInt(i + 1)));
    }
    assert.deepEqual([...threadIds].sort(), [1n, 2n, 3n, 4n]);
  });

  test("two watches use two registers; a job that needs more is refused naming the holders; cancel detaches", async () => {
    const target = await counter(1, 100);
    const pid = String(target.pid);
    const first = await suite.cluster.cli(["watch", "--pid", pid, "--symbol", "fw_counter", "--backend", "ptrace", "-o", "json"]);
    assert.equal(first.code, 0, first.stderr);
    const jobA = (JSON.parse(first.stdout) as { id: string }).id;
    const second = await suite.cluster.cli(["watch", "--pid", pid, "--symbol", "fw_other", "--backend", "ptrace", "-o", "json"]);
    assert.equal(second.code, 0, second.stderr);
    const jobB = (JSON.parse(second.stdout) as { id: string }).id;

    const { agents } = await suite.cluster.api().listAgents({});
    const slots = agents.find((a) => a.info?.hostId === "host-a")?.targets.find((t) => t.pid === target.pid)?.slots ?? [];
    assert.deepEqual(slots.map((s) => s.jobId), [jobA, jobB, "", ""]);
    assert.equal(await target.tracerPid() !== 0, true, "traced while armed");

    // fw_bytes+1, 8 bytes: 1 + 2 + 4 + 1 = four chunks, two registers left.
    const third = await suite.cluster.cli(["watch", "--pid", pid, "--symbol", "fw_bytes+1", "--length", "8", "--backend", "ptrace"]);
    assert.equal(third.code, 2, third.stderr);
    assert.match(third.stderr, /has 2 free debug register\(s\) of 4 and the job needs 4/);
    assert.match(third.stderr, new RegExp(`DR0 ${jobA} .*DR1 ${jobB}`));

    for (const id of [jobA, jobB]) {
      const cancelled = await suite.cluster.cli(["jobs", "cancel", id, "-o", "json"]);
      assert.equal(cancelled.code, 0, cancelled.stderr);
      assert.equal((JSON.parse(cancelled.stdout) as { state: string }).state, "JOB_STATE_CANCELLED");
    }
    assert.equal(await target.tracerPid(), 0);
    // Free now, but the kernel keeps DR0 and DR1 reserved in this process until
    // its threads exit: the ledger knows, and reuses them first. Processes
    // watched by earlier tests have exited and are forgotten.
    await waitFor("only this target's reservations are listed", async () => {
      const { agents } = await suite.cluster.api().listAgents({});
      const listed = agents.find((a) => a.info?.hostId === "host-a")?.targets ?? [];
      return listed.length === 1 && listed[0]!.pid === target.pid;
    });
    const { agents: listedAfter } = await suite.cluster.api().listAgents({});
    const reserved = listedAfter.find((a) => a.info?.hostId === "host-a")!.targets[0]!.slots;
    assert.deepEqual(reserved.map((s) => [s.jobId, s.reserved]), [["", true], ["", true], ["", false], ["", false]]);
    target.send("go");
    await target.waitForLine(/^done/);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });

  test("bad input gets a clear error and the right exit code, and the target runs on untouched", async () => {
    const target = await counter(1, 10);
    const pid = String(target.pid);
    const cases: Array<[string[], number, RegExp]> = [
      [["watch", "--pid", "999999", "--symbol", "fw_counter"], 2, /no such process|pid 999999/i],
      [["watch", "--pid", pid, "--symbol", "no_such_symbol"], 2, /symbol 'no_such_symbol' not found/],
      [["watch", "--pid", pid, "--address", "0x1000", "--length", "3"], 3, /length 3 is not 1, 2, 4 or 8/],
      [["watch", "--pid", pid, "--address", "0x1000", "--length", "2", "--mode", "x"], 3, /execute watches take length 1/],
      [["watch", "--pid", pid, "--address", "0xffffffff81000000"], 3, /not a user-space address/],
      [["watch", "--pid", pid, "--address", "0x1003", "--address", "0x2001"], 3, /need 8 debug registers per target but a thread has 4: 0x1003\/1 w #0, .*0x2008\/1 w #1/],
      [["watch", "--pid", pid, "--symbol", "fw_counter", "--host", "nowhere"], 2, /no agent 'nowhere' has ever connected/],
      [["watch", "--pid", pid, "--symbol", "fw_counter", "--mode", "q"], 3, /mode 'q' is not one of w, rw, r, x/],
      [["watch", "--pid", pid, "--address", "0x1000"], 2, new RegExp(`address 0x1000\\.\\.0x1007 is not mapped in pid ${pid}: .*--allow-unmapped`)],
      [["watch", "--pid", pid, "--address", "0x1003", "--length", "8"], 2, new RegExp(`address 0x1003\\.\\.0x100a is not mapped in pid ${pid}`)],
      [["watch", "--pid", pid, "--symbol", "fw_counter", "--allow-unmapped"], 3, /--allow-unmapped is for --address watches/],
    ];
    for (const [args, code, message] of cases) {
      const result = await suite.cluster.cli(args);
      assert.equal(result.code, code, `${args.join(" ")}: ${result.stderr}`);
      assert.match(result.stderr, message, args.join(" "));
    }
    assert.equal(await target.tracerPid(), 0);
    target.send("go");
    await target.waitForLine(/^done/);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });

  test("an address mapped in the target is armed; with --allow-unmapped an unmapped one is too, and the job says so", async () => {
    const target = await counter(1, 10);
    const address = target.lines[0]!.split(" ")[2]!;
    const mapped = await suite.cluster.cli(["watch", "--pid", String(target.pid), "--address", address, "--max-hits", "10", "-o", "json"]);
    assert.equal(mapped.code, 0, mapped.stderr);
    const mappedId = (JSON.parse(mapped.stdout) as { id: string }).id;
    target.send("go");
    await target.waitForLine(/^done/);
    await waitFor("every write of the mapped address a hit", async () => (await suite.cluster.api().getJob({ id: mappedId })).job?.counts?.delivered === 10n, 20_000);

    const later = await counter(1, 10);
    const allowed = await suite.cluster.cli(["watch", "--pid", String(later.pid), "--address", "0x1000", "--allow-unmapped", "-o", "json"]);
    assert.equal(allowed.code, 0, allowed.stderr);
    const allowedId = (JSON.parse(allowed.stdout) as { id: string }).id;
    const detail = await suite.cluster.cli(["jobs", "get", allowedId]);
    assert.equal(detail.code, 0, detail.stderr);
    assert.match(detail.stdout, /^watches +0x1000\/8 w \(armed even where an address is not mapped: --allow-unmapped\)$/m);
    assert.match(detail.stdout, /^state +armed/m);
    assert.equal((await suite.cluster.cli(["jobs", "cancel", allowedId])).code, 0);
    later.send("go");
    assert.deepEqual(await later.waitForExit(), { code: 0, signal: null });
  });

  test("a process traced by someone else is refused for ptrace naming the tracer, and watched with perf beside it", async () => {
    const N = 10;
    const target = await counter(1, N);
    const strace = await suite.target("strace", ["-p", String(target.pid), "-o", "/dev/null"], { path: "strace" });
    await waitFor("strace attached", async () => (await target.tracerPid()) === strace.pid);
    const refused = await suite.cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--backend", "ptrace"]);
    assert.equal(refused.code, 2, refused.stderr);
    assert.match(refused.stderr, new RegExp(`already traced by pid ${strace.pid} \\(strace\\)`));
    // perf breakpoints neither attach nor stop: strace keeps the process, the job gets every write.
    const watched = await suite.cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--max-hits", String(N), "-o", "json"]);
    assert.equal(watched.code, 0, watched.stderr);
    const jobId = (JSON.parse(watched.stdout) as { id: string }).id;
    assert.equal(await target.tracerPid(), strace.pid, "strace still traces it");
    target.send("go");
    await target.waitForLine(/^done/);
    await waitFor("every write a hit", async () => (await suite.cluster.api().getJob({ id: jobId })).job?.counts?.delivered === BigInt(N), 20_000);
    await strace.kill();
    await waitFor("strace detached", async () => (await target.tracerPid()) === 0);
    target.send("go");
    await target.waitForLine(/^done/);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });

  test("a field reached through a pointer is watched by its DWARF path, with a symbolized stack", async () => {
    const target = await suite.target("config", ["--writes", "3"]);
    const [, , address] = (await target.waitForLine(/^ready /)).split(" ");
    const watch = suite.cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_cfg.limits->max", "--max-hits", "3", "--stack", "8", "--backend", "ptrace", "--follow", "-o", "json"]);
    await armedJobOn(target.pid);
    target.send("go");
    const result = await watch;
    assert.equal(result.code, 0, result.stderr);
    const hits = parseHits(result.stdout) as Array<HitJson & { stack?: Array<{ function?: string }> }>;
    assert.deepEqual(hits.map((h) => BigInt(h.newValue)), [1001n, 1002n, 1003n]);
    assert.deepEqual(hits.map((h) => BigInt(h.address)), [BigInt(address!), BigInt(address!), BigInt(address!)]);
    for (const hit of hits) {
      const names = (hit.stack ?? []).map((f) => f.function ?? "");
      assert.deepEqual(names.slice(0, 3), ["set_limit", "apply_config", "main"], `stack: ${names.join(" < ")}`);
    }
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
  });

  test("the default backend is perf: exactly N hits of four threads, the target never traced, values as exact as the host says", async () => {
    const writes = 2_500;
    const target = await counter(4, writes);
    const total = 4 * writes;
    const watch = suite.cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--max-hits", String(total), "--stack", "0", "--follow", "-o", "json"], { timeoutMs: 120_000 });
    const id = await armedJobOn(target.pid);
    // Exact where the host's kernel reads the value at the trap, else read when the sample is drained.
    const { agents } = await suite.cluster.api().listAgents({});
    const exact = agents.find((a) => a.info?.hostId === "host-a")?.info?.perfValues === PerfValues.EXACT;
    const armed = (await suite.cluster.api().getJob({ id })).job!;
    assert.deepEqual(armed.targets.map((t) => [t.backend, t.valuesExact, t.state]), [[Backend.PERF, exact, TargetState.ARMED]]);
    assert.equal(await target.tracerPid(), 0, "perf never attaches");
    target.send("go");
    const result = await watch;
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
    const hits = parseHits(result.stdout);
    assert.equal(hits.length, total);
    assert.deepEqual(hits.map((h) => BigInt(h.sequence)), hits.map((_, i) => BigInt(i + 1)), "sequences 1..N");
    const perTid = new Map<number, number>();
    for (const h of hits) perTid.set(h.tid, (perTid.get(h.tid) ?? 0) + 1);
    assert.deepEqual([...perTid.values()], [writes, writes, writes, writes], "every write of every thread, once");
    assert.ok(hits.every((h) => (h.valueExact ?? false) === exact), `every hit's value_exact is ${exact}`);
    const job = (await suite.cluster.api().getJob({ id })).job!;
    assert.deepEqual([job.counts?.trapped, job.counts?.delivered, job.counts?.suppressed, job.counts?.dropped, job.counts?.filtered], [BigInt(total), BigInt(total), 0n, 0n, 0n]);
    const detail = await suite.cluster.cli(["jobs", "get", id]);
    assert.match(detail.stdout, exact ? /^backend +perf \(automatic\), values exact \(read in the kernel at the trap\)$/m : /^backend +perf \(automatic\), values read after the trap/m);
  });

  test("a counting watch prints each target's counts per interval, with per-thread hits, and a summary of the final totals", async () => {
    const writes = 2_500;
    const target = await counter(4, writes);
    const watch = suite.cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--count", "--count-interval", "100ms", "--duration", "1m", "--follow"], { timeoutMs: 120_000 });
    const id = await armedJobOn(target.pid);
    assert.equal(await target.tracerPid(), 0, "counting never attaches");
    target.send("go");
    assert.deepEqual(await target.waitForExit(), { code: 0, signal: null });
    const result = await watch;
    assert.equal(result.code, 0, result.stderr);
    const job = (await suite.cluster.api().getJob({ id })).job!;
    const c = job.counts!;
    assert.equal(c.trapped, BigInt(4 * writes), "every write trapped");
    assert.equal(c.trapped, c.delivered + c.suppressed + c.dropped + c.filtered, "the counts add up");
    const lines = result.stdout.split("\n").filter((l) => l.startsWith(`host-a ${target.pid} `));
    assert.ok(lines.length >= 1, result.stdout);
    let sum = 0n;
    const perTid = new Map<number, bigint>();
    let lastTotal = 0n;
    for (const line of lines) {
      const m = /^host-a \d+  \+(\d+) hits \((\d+) total\)  tids (.*)$/.exec(line);
      assert.ok(m, `a count line: ${line}`);
      sum += BigInt(m[1]!);
      lastTotal = BigInt(m[2]!);
      if (m[3] === "-") continue;
      for (const pair of m[3]!.split(" ")) {
        const [tid, hits] = pair.split(":");
        perTid.set(Number(tid), (perTid.get(Number(tid)) ?? 0n) + BigInt(hits!));
      }
    }
    assert.equal(lastTotal, c.delivered, "the last line's total is the final count");
    assert.equal(sum, c.delivered, "the intervals add up to the total");
    assert.equal(perTid.size, 4, "four writer threads");
    assert.ok(!perTid.has(target.pid), "the main thread only waits");
    // The target's exit ends the job before its duration.
    assert.match(result.stdout, new RegExp(`^job ${id} completed \\(process exited[^)]*\\): \\d+ count reports printed; counted ${c.delivered} hits on 1 target; trapped ${c.trapped}, `, "m"));
    // The same reports replay from JetStream.
    const replay = await suite.cluster.cli(["events", id]);
    assert.equal(replay.code, 0, replay.stderr);
    assert.deepEqual(replay.stdout.split("\n").filter((l) => l.startsWith("host-a ")), lines);
  });

  test("a restarted controller keeps the job list: a finished job with its counts, an armed one still armed", async () => {
    // Jobs of its own, whatever ran before: one completed, one armed.
    const finished = await counter(1, 100);
    assert.equal((await followHits(finished, 1, 100)).length, 100);
    const finishedId = (await suite.cluster.api().listJobs({})).jobs.find((j) => j.targets.some((t) => t.pid === finished.pid))!.id;
    const waiting = await counter(1, 100);
    const submitted = await suite.cluster.cli(["watch", "--pid", String(waiting.pid), "--symbol", "fw_counter", "--backend", "ptrace"]);
    assert.equal(submitted.code, 0, submitted.stderr);
    const armedId = await armedJobOn(waiting.pid);

    const list = async () => {
      const result = await suite.cluster.cli(["jobs", "ls", "-o", "json"]);
      assert.equal(result.code, 0, result.stderr);
      return (JSON.parse(result.stdout) as { jobs?: Array<{ id: string; state: string; counts?: { delivered?: string } }> }).jobs ?? [];
    };
    const before = await list();
    const ids = before.map((j) => j.id).sort();
    assert.ok(ids.includes(finishedId) && ids.includes(armedId), `jobs before restart: ${ids.join(", ")}`);
    await suite.cluster.stopController("SIGKILL");
    await suite.cluster.startController();
    const after = await list();
    assert.deepEqual(after.map((j) => j.id).sort(), ids);
    const finishedAfter = after.find((j) => j.id === finishedId)!;
    assert.deepEqual([finishedAfter.state, finishedAfter.counts?.delivered], ["JOB_STATE_COMPLETED", "100"]);
    assert.equal(await armedJobOn(waiting.pid), armedId, "the armed job is armed again after the restart");
    assert.notEqual(await waiting.tracerPid(), 0, "still traced by the helper");
    const cancelled = await suite.cluster.cli(["jobs", "cancel", armedId]);
    assert.equal(cancelled.code, 0, cancelled.stderr);
    assert.equal(await waiting.tracerPid(), 0);
  });
});
