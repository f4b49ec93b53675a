// `fleetwatch report` over a real job: a multi-threaded C program whose two
// threads write one global from two different functions, watched through
// the whole stack (CLI, controller, agent, helper, JetStream). The report
// must name both writers with exact counts that add up to the job's
// delivered hits, in every format, and `--follow` must keep up with a
// running job.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { JobState } from "../../proto/index.js";
import type { CliResult } from "../support/cluster.js";
import { clusterSuite } from "../support/cluster-suite.js";
import { waitFor } from "../support/wait.js";

// Each perf sample carries 8 KiB of stack, and a CPU's buffer holds ~500 of
// them: all the writes fit in one buffer with room to spare, so none is
// dropped however late the helper drains (the budget counts delivered hits).
const alphaWrites = 150;
const betaWrites = 100;
const total = alphaWrites + betaWrites;

interface ReportJson {
  hits: string;
  state: string;
  jobCounts: { delivered: string; trapped: string };
  coverage: { complete: boolean; note: string };
  groups: Array<{ key: Record<string, string>; hits: number; share: number; transitions: Array<{ old: string; new: string }> }>;
}

describe("report over a watched program with two writers", () => {
  const suite = clusterSuite();

  /** Starts two-writers, watches fw_counter with `backend` until every write is delivered; returns the job id and a `report --follow` started before the writes. */
  async function watchedRun(backend: string): Promise<{ jobId: string; follow: Promise<CliResult> }> {
    const cluster = suite.cluster;
    const target = await suite.target("two-writers", ["--alpha", String(alphaWrites), "--beta", String(betaWrites)]);
    await target.waitForLine(/^ready /);
    const submitted = await cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--backend", backend, "--stack", "8", "--max-hits", String(total), "-o", "json"]);
    assert.equal(submitted.code, 0, submitted.stderr);
    const job = JSON.parse(submitted.stdout) as { id: string; state: string };
    assert.equal(job.state, "JOB_STATE_ARMED", submitted.stdout);
    const follow = cluster.cli(["report", job.id, "--follow", "-o", "json"], { timeoutMs: 120_000 });
    target.send("go");
    await target.waitForLine(/^done$/, 60_000);
    let seen = "";
    await waitFor(
      `job ${job.id} completed after its ${total} hits`,
      async () => {
        const j = (await cluster.api().getJob({ id: job.id })).job;
        seen = `${JobState[j?.state ?? 0]}, delivered ${j?.counts?.delivered}, dropped ${j?.counts?.dropped}, trapped ${j?.counts?.trapped}`;
        return j?.state === JobState.COMPLETED;
      },
      60_000,
    ).catch((err: unknown) => {
      throw new Error(`${err instanceof Error ? err.message : String(err)}; the job was ${seen}`);
    });
    return { jobId: job.id, follow };
  }

  const report = async (args: string[]): Promise<string> => {
    const result = await suite.cluster.cli(["report", ...args]);
    assert.equal(result.code, 0, `report ${args.join(" ")}: ${result.stderr}`);
    return result.stdout;
  };

  for (const backend of ["ptrace", "perf"]) {
    test(`report - ${backend}: both writers with exact counts that add up to delivered, in table, json, folded and svg`, async () => {
      const { jobId, follow } = await watchedRun(backend);
      const job = (await suite.cluster.api().getJob({ id: jobId })).job!;
      assert.equal(job.counts?.delivered, BigInt(total), `job ${jobId}: ${job.reason}`);

      const json = JSON.parse(await report([jobId, "-o", "json"])) as ReportJson;
      assert.equal(json.coverage.complete, true, json.coverage.note);
      assert.equal(json.hits, String(total));
      const byTop = new Map(json.groups.map((g) => [g.key.stack!.split(";").at(-1), g.hits]));
      assert.deepEqual(Object.fromEntries(byTop), { fw_write_alpha: alphaWrites, fw_write_beta: betaWrites }, JSON.stringify(json.groups.map((g) => [g.key, g.hits])));
      // Each writer's stack goes through its own loop.
      for (const g of json.groups) assert.match(g.key.stack!, /fw_(alpha|beta)_loop;fw_write_\1$/);

      const table = await report([jobId, "--by", "frame"]);
      assert.match(table, new RegExp(`^report: ${total} hits in 2 groups by frame; every delivered hit \\(${total}\\) is in the report$`, "m"), table);
      assert.match(table, new RegExp(`^${alphaWrites}\\s+60\\.0%\\s+1\\s+1\\s.*fw_write_alpha\\+0x[0-9a-f]+\\s`, "m"), table);
      assert.match(table, new RegExp(`^${betaWrites}\\s+40\\.0%\\s+1\\s+1\\s.*fw_write_beta\\+0x[0-9a-f]+\\s`, "m"), table);

      const folded = (await report([jobId, "--format", "folded"])).trimEnd().split("\n");
      assert.equal(folded.length, 2, folded.join("\n"));
      assert.match(folded[0]!, new RegExp(`fw_alpha_loop;fw_write_alpha ${alphaWrites}$`));
      assert.match(folded[1]!, new RegExp(`fw_beta_loop;fw_write_beta ${betaWrites}$`));

      const svg = await report([jobId, "--format", "svg"]);
      assert.match(svg, new RegExp(`<title>fw_write_alpha \\(${alphaWrites} hits, 60\\.00%\\)</title>`));
      assert.match(svg, new RegExp(`<title>fw_write_beta \\(${betaWrites} hits, 40\\.00%\\)</title>`));

      // The follower started before the first write: it saw the job through and ended by itself with the same counts.
      const followed = await follow;
      assert.equal(followed.code, 0, followed.stderr);
      const last = JSON.parse(followed.stdout.trimEnd().split("\n").at(-1)!) as ReportJson;
      assert.equal(last.state, "completed");
      assert.equal(last.coverage.complete, true, last.coverage.note);
      assert.deepEqual(last.groups.map((g) => g.hits).sort(), [betaWrites, alphaWrites].sort());
    });
  }
});
