// A real distribution binary: watch work_mem in a PostgreSQL backend built
// without frame pointers or debug info, change it with SET, and expect the
// hit's value and the configuration-setting path in its symbolized stack.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { Cluster } from "../support/cluster.js";
import { Postgres, postgresBinDir, type PsqlSession } from "../support/postgres.js";
import { waitFor } from "../support/wait.js";

interface HitJson {
  pid: number;
  newValue: string;
  oldValue?: string;
  stack?: Array<{ function?: string; module?: string }>;
}

describe("postgres", async () => {
  const binDir = await postgresBinDir();
  let pg: Postgres;
  let cluster: Cluster;
  let session: PsqlSession;

  before(async () => {
    if (!binDir) return;
    pg = await Postgres.start(binDir);
    cluster = await Cluster.start();
    session = await pg.connect();
  });

  after(async () => {
    await cluster?.stop();
    await pg?.stop();
  });

  test("SET work_mem in a backend is one hit with the new value and set_config_option on the stack", { skip: binDir ? false : "no PostgreSQL server installed (scripts/setup.sh --test installs it)" }, async () => {
    const backend = Number(await session.query("select pg_backend_pid();"));
    assert.ok(backend > 0, `backend pid ${backend}`);
    assert.equal(await session.query("show work_mem;"), "4MB");

    const watch = cluster.cli(["watch", "--pid", String(backend), "--symbol", "work_mem", "--max-hits", "1", "--backend", "ptrace", "--follow", "-o", "json"], { timeoutMs: 60_000 });
    // A watch that ends (or a target that fails) before it is armed says why, not just that it timed out.
    // Arming opens the symbols of a large binary and its libraries for stacks: allow it as long as the CLI.
    let seen = "no job yet";
    const armed = waitFor("work_mem watch armed", async () => {
      const jobs = (await cluster.api().listJobs({})).jobs;
      seen = jobs.map((j) => `${j.id} ${j.state} (${j.reason}): ${j.targets.map((t) => `${t.pid} ${t.state} ${t.reason}`).join("; ")}`).join(" | ") || seen;
      return jobs.some((j) => j.targets.some((t) => t.pid === backend && t.state === 2));
    }, 30_000).catch((err: Error) => assert.fail(`${err.message}; jobs: ${seen}`));
    const ended = await Promise.race([armed.then(() => undefined), watch]);
    if (ended) assert.fail(`the watch ended before it was armed (exit ${ended.code}): ${ended.stderr}; jobs: ${seen}`);
    await session.query("SET work_mem = '8MB';");
    const result = await watch;
    assert.equal(result.code, 0, result.stderr);
    const hits = result.stdout.trim().split("\n").map((l) => JSON.parse(l) as HitJson);
    assert.equal(hits.length, 1);
    const hit = hits[0]!;
    assert.equal(hit.pid, backend);
    assert.equal(BigInt(hit.newValue), 8192n, "work_mem is in kB");
    assert.equal(BigInt(hit.oldValue ?? "0"), 4096n);
    const names = (hit.stack ?? []).map((f) => f.function ?? "");
    assert.ok(names.some((n) => /^set_config_option/.test(n)), `stack: ${names.join(" < ")}`);
    assert.ok(names.some((n) => n === "PostgresMain"), `stack reaches PostgresMain: ${names.join(" < ")}`);
    assert.ok((hit.stack ?? []).every((f) => !f.module || f.module.startsWith("/")), "modules are paths");

    // The backend is untouched: detached and still answering.
    assert.equal(await session.query("show work_mem;"), "8MB");
    assert.match(await readFile(`/proc/${backend}/status`, "utf8"), /^TracerPid:\s+0$/m);
  });
});
