// `fleetwatch report` over jobs whose hits are already in the event stream:
// a real nats-server and controller, the job records in the store and their
// hits published as agents publish them. Nothing is armed, so these run on
// any host, traps or not.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { CountReportSchema, HitEventSchema, type HitEvent } from "../../proto/index.js";
import { Cluster } from "../support/cluster.js";
import { storeJob, storedJob } from "../support/stored-job.js";

/** `count` hits from fn (called by loop, called by main) on host/pid, sequences from `firstSeq`. */
function writes(count: number, init: { host: string; pid: number; tid: number; fn: string; loop: string; firstSeq: number; skip?: Set<number> }): HitEvent[] {
  const hits: HitEvent[] = [];
  for (let i = 0; i < count; i++) {
    const seq = init.firstSeq + i;
    if (init.skip?.has(seq)) continue;
    hits.push(
      create(HitEventSchema, {
        hostId: init.host,
        pid: init.pid,
        tid: init.tid,
        address: 0x404040n,
        length: 8,
        ip: 0x401136n,
        oldValue: BigInt(i),
        newValue: BigInt(i + 1),
        timeUnixNano: BigInt(Date.now() - 30_000 + i) * 1_000_000n,
        sequence: BigInt(seq),
        stack: [
          { ip: 0x401136n, function: init.fn, offset: 6n, module: "/opt/app/bin/app" },
          { ip: 0x401200n, function: init.loop, offset: 0x1an, module: "/opt/app/bin/app" },
          { ip: 0x401300n, function: "main", offset: 0x40n, module: "/opt/app/bin/app" },
        ],
      }),
    );
  }
  return hits;
}

describe("report over stored hits", () => {
  let cluster: Cluster;

  before(async () => {
    cluster = await Cluster.start({ hosts: [] });
    await cluster.stopController();
    // Two writers on two hosts: alpha 120 hits on h1 (pid 100) and 30 on h2 (pid 200); beta 50 on h1 (pid 101).
    const stored = (jobId: string) => [
      ...writes(120, { host: "h1", pid: 100, tid: 100, fn: "write_alpha", loop: "alpha_loop", firstSeq: 1 }).map((h) => ({ ...h, jobId })),
      ...writes(50, { host: "h1", pid: 101, tid: 102, fn: "write_beta", loop: "beta_loop", firstSeq: 121 }).map((h) => ({ ...h, jobId })),
      ...writes(30, { host: "h2", pid: 200, tid: 200, fn: "write_alpha", loop: "alpha_loop", firstSeq: 1 }).map((h) => ({ ...h, jobId })),
    ];
    const targets = [
      { hostId: "h1", pid: 100 },
      { hostId: "h1", pid: 101 },
      { hostId: "h2", pid: 200 },
    ];
    await storeJob(cluster.natsUrl, storedJob("r-whole", { counts: { delivered: 200n }, targets }), stored("r-whole"));
    // Sequences 10 and 11 of h1 never reached the stream; the job dropped one hit.
    const gappy = stored("r-gappy").filter((h) => !(h.hostId === "h1" && (h.sequence === 10n || h.sequence === 11n)));
    await storeJob(cluster.natsUrl, storedJob("r-gappy", { counts: { delivered: 199n, dropped: 1n, trapped: 200n }, targets }), gappy);
    const reports = [
      create(CountReportSchema, { jobId: "r-count", hostId: "h1", pid: 100, sequence: 1n, timeUnixNano: 2_000_000_000n, intervalMs: 1000n, totals: { delivered: 600n, trapped: 600n }, threads: [{ tid: 100, hits: 400n }, { tid: 103, hits: 200n }] }),
      create(CountReportSchema, { jobId: "r-count", hostId: "h1", pid: 100, sequence: 2n, timeUnixNano: 3_000_000_000n, intervalMs: 1000n, totals: { delivered: 1000n, trapped: 1000n }, threads: [{ tid: 100, hits: 400n }] }),
      create(CountReportSchema, { jobId: "r-count", hostId: "h2", pid: 200, sequence: 1n, timeUnixNano: 2_000_000_000n, intervalMs: 1000n, totals: { delivered: 100n, trapped: 100n }, threads: [{ tid: 200, hits: 100n }] }),
    ];
    await storeJob(cluster.natsUrl, storedJob("r-count", { countOnly: true, counts: { delivered: 1100n }, targets: [targets[0]!, targets[2]!] }), [], reports);
    await cluster.startController();
  });

  after(async () => {
    await cluster?.stop();
  });

  const report = async (args: string[]) => {
    const result = await cluster.cli(["report", ...args]);
    assert.equal(result.code, 0, `report ${args.join(" ")}: ${result.stderr}`);
    return result.stdout;
  };

  test("report - a table of the two writers by stack, with the job's counters and every delivered hit accounted for", async () => {
    const out = await report(["r-whole"]);
    assert.match(out, /^job r-whole \(completed, 3 targets\): trapped 200  delivered 200  dropped 0  suppressed 0  filtered 0$/m);
    assert.match(out, /^report: 200 hits in 2 groups by stack; every delivered hit \(200\) is in the report$/m);
    assert.match(out, /^150\s+75\.0%\s+2\s+2\s.*main;alpha_loop;write_alpha\s/m);
    assert.match(out, /^50\s+25\.0%\s+1\s+1\s.*main;beta_loop;write_beta\s/m);
  });

  test("report - JSON by host and frame: exact counts per group that add up to delivered", async () => {
    const json = JSON.parse(await report(["r-whole", "--by", "host,frame", "-o", "json"])) as { hits: string; jobCounts: { delivered: string }; coverage: { complete: boolean }; groups: Array<{ key: Record<string, string>; hits: number; processes: string[] }> };
    assert.equal(json.coverage.complete, true);
    assert.deepEqual(
      json.groups.map((g) => [g.key.host, g.key.frame, g.hits, g.processes]),
      [
        ["h1", "write_alpha+0x6", 120, ["h1/100"]],
        ["h1", "write_beta+0x6", 50, ["h1/101"]],
        ["h2", "write_alpha+0x6", 30, ["h2/200"]],
      ],
    );
    assert.equal(String(json.groups.reduce((sum, g) => sum + g.hits, 0)), json.jobCounts.delivered);
  });

  test("report - folded stacks and an SVG flame graph of the same hits", async () => {
    assert.equal(await report(["r-whole", "--format", "folded"]), "main;alpha_loop;write_alpha 150\nmain;beta_loop;write_beta 50\n");
    const svg = await report(["r-whole", "--format", "svg"]);
    assert.match(svg, /^<\?xml[^]*<svg [^]*<\/svg>\n$/);
    assert.match(svg, /<title>write_alpha \(150 hits, 75\.00%\)<\/title>/);
    assert.match(svg, /<title>write_beta \(50 hits, 25\.00%\)<\/title>/);
  });

  test("report - --top 1 shows the heaviest writer and says how many more there are", async () => {
    const out = await report(["r-whole", "--by", "process", "--top", "1"]);
    assert.match(out, /^120\s+60\.0%.*h1\/100\s/m);
    assert.match(out, /^\(2 more groups with fewer hits: --top 0 shows all\)$/m);
  });

  test("report - a stream that lost messages: the report says how many sequence numbers never arrived beyond the dropped hits", async () => {
    const out = await report(["r-gappy"]);
    assert.match(out, /^report: 198 hits in 2 groups by stack; 1 delivered hit no longer in the stream \(expired by its limits, or lost\); the stream lost messages: 1 sequence number never arrived beyond the job's 1 dropped$/m);
    const json = JSON.parse(await report(["r-gappy", "-o", "json"])) as { coverage: { complete: boolean; lostFromStream: string }; sequences: Array<{ hostId: string; missing: string }> };
    assert.equal(json.coverage.complete, false);
    assert.equal(json.coverage.lostFromStream, "1");
    assert.deepEqual(json.sequences.map((s) => [s.hostId, s.missing]), [["h1", "2"], ["h2", "0"]]);
  });

  test("report - a counting job: totals and rates per host, process and thread instead of stacks", async () => {
    const out = await report(["r-count"]);
    assert.match(out, /^report: counting job, every delivered hit \(1100\) is in the report$/m);
    assert.match(out, /^1000\s+500\.0\s+h1$/m);
    assert.match(out, /^800\s+400\.0\s+h1\/100\/100$/m);
    assert.match(out, /^100\s+100\.0\s+h2\/200\/200$/m);
  });

  test("report - an unknown job and bad options are clear errors with their exit codes", async () => {
    const unknown = await cluster.cli(["report", "no-such-job"]);
    assert.equal(unknown.code, 2, unknown.stderr);
    assert.match(unknown.stderr, /no-such-job/);
    const badBy = await cluster.cli(["report", "r-whole", "--by", "colour"]);
    assert.equal(badBy.code, 3);
    assert.match(badBy.stderr, /--by: 'colour' is not one of stack, frame, ip, tid, process, host, value/);
    const badFollow = await cluster.cli(["report", "r-whole", "--format", "svg", "--follow"]);
    assert.equal(badFollow.code, 3);
    assert.match(badFollow.stderr, /leave out --follow/);
  });

  test("report - --follow on an ended job prints the report and ends once every delivered hit is in", async () => {
    const out = await report(["r-whole", "--follow"]);
    assert.match(out, /^--- \d{4}-/m);
    assert.match(out, /^report: 200 hits in 2 groups by stack; every delivered hit \(200\) is in the report$/m);
  });
});
