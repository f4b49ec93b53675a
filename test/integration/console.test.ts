// The web console end to end, in a real browser: Debian's Chromium driven by
// playwright-core against `fleetwatch console` started through the CLI, with
// a real nats-server, controller and agent. Without traps: the fleet and jobs
// pages, bad input (400, 404, 405, 403, no path out of the static folder),
// and a controller that goes away and comes back. With traps (the host's
// own self-test decides): a ptrace job on test/fixtures/two-writers.c seen
// holding DR0 on the fleet page, its hits arriving live on its page, and its
// writers: exactly the two writer functions, summing to what it delivered.
// Screenshots of each page go to test-output/console/.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { Backend, TrapDelivery } from "../../proto/index.js";
import { Cluster, Daemon } from "../support/cluster.js";
import { probe } from "../support/http-probe.js";
import { repoRoot } from "../support/paths.js";
import { buildFixtures, startTarget, type Target } from "../support/targets.js";
import { scaled } from "../support/wait.js";

/** Debian's Chromium (scripts/setup.sh --test installs it); never a browser playwright downloads. */
const chromiumPath = process.env.FLEETWATCH_CHROMIUM ?? "/usr/bin/chromium";
/** Where the screenshots go (gitignored). */
const outputDir = path.join(repoRoot, "test-output/console");
// Writes of each writer thread of the fixture.
const alphaWrites = 400;
const betaWrites = 250;

describe("console in a browser", () => {
  let cluster: Cluster;
  let consoleDaemon: Daemon;
  let url: string;
  let port: number;
  let browser: Browser;
  let page: Page;
  const targets: Target[] = [];

  before(async () => {
    assert.ok(existsSync(chromiumPath), `no Chromium at ${chromiumPath}: scripts/setup.sh --test installs Debian's (apt-get install chromium), or set FLEETWATCH_CHROMIUM`);
    await mkdir(outputDir, { recursive: true });
    await buildFixtures();
    cluster = await Cluster.start();
    consoleDaemon = new Daemon("console", cluster.spawnCli(["console", "--listen", "127.0.0.1:0"]));
    const [, printed] = await consoleDaemon.waitForOutput(/^console: (http:\/\/127\.0\.0\.1:\d+\/)$/m);
    url = printed!;
    port = Number(new URL(url).port);
    browser = await chromium.launch({ executablePath: chromiumPath, timeout: scaled(60_000) });
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.setDefaultTimeout(scaled(15_000));
  });

  after(async () => {
    // Every step runs even when one before it fails; the first failure is reported.
    const failures: unknown[] = [];
    const step = async (run: () => Promise<unknown> | undefined) => {
      try {
        await run();
      } catch (err) {
        failures.push(err);
      }
    };
    await step(() => browser?.close());
    await step(() => consoleDaemon?.stop("SIGINT"));
    for (const target of targets) await step(() => target.kill());
    await step(() => cluster?.stop());
    if (failures.length > 0) throw failures[0];
  });

  /** Waits until `selector`'s text (trimmed) satisfies `accept`; returns it. */
  async function textOf(selector: string, accept: (text: string) => boolean, what: string, timeoutMs = 15_000): Promise<string> {
    const deadline = Date.now() + scaled(timeoutMs);
    let last: string | null = null;
    for (;;) {
      last = await page.locator(selector).first().textContent({ timeout: scaled(timeoutMs) }).catch(() => null);
      if (last !== null && accept(last.trim())) return last.trim();
      if (Date.now() > deadline) throw new Error(`timed out after ${scaled(timeoutMs)} ms waiting for ${what} (${selector}); last text: ${JSON.stringify(last)}`);
      await page.waitForTimeout(50);
    }
  }

  test("the fleet page shows the agent's host, connected, with its backends and trap self-test", async () => {
    await page.goto(url);
    await page.locator('article.host[data-host="host-a"]').waitFor();
    await textOf('article.host[data-host="host-a"] h3 .pill', (t) => t === "connected", "host-a connected");
    const summary = await page.locator('article.host[data-host="host-a"] dl').textContent();
    assert.match(summary ?? "", /backends\s*ptrace/);
    assert.match(summary ?? "", /traps\s*ptrace: /);
    assert.equal(await page.locator("#banner").isHidden(), true, "no banner while the controller answers");
    assert.equal(await page.locator("nav a[aria-current=page]").textContent(), "Fleet");
    await page.screenshot({ path: path.join(outputDir, "fleet.png"), fullPage: true });
  });

  test("an unknown job is a 404 page saying so; what is not a job id is a 400", async () => {
    const response = await page.goto(`${url}jobs/no-such-job`);
    assert.equal(response?.status(), 404);
    assert.equal(await page.locator("#error-message").textContent(), "no job no-such-job");
    await page.screenshot({ path: path.join(outputDir, "404.png"), fullPage: true });
    const bad = await page.goto(`${url}jobs/not.a.job`);
    assert.equal(bad?.status(), 400);
    assert.match((await page.locator("#error-message").textContent()) ?? "", /'not\.a\.job' is not a job id/);
  });

  test("read-only and own-host only: other methods 405, a foreign Host 403, nothing outside the static folder", async () => {
    for (const method of ["POST", "PUT", "DELETE"]) {
      const response = await probe(port, "/jobs", { method });
      assert.equal(response.status, 405, method);
      assert.equal(response.headers.allow, "GET, HEAD");
    }
    assert.equal((await probe(port, "/", { host: `rebound.example:${port}` })).status, 403);
    for (const traversal of ["/static/../package.json", "/static/..%2f..%2fpackage.json", "/static/%2e%2e/%2e%2e/package.json"]) {
      const response = await probe(port, traversal);
      assert.equal(response.status, 404, traversal);
      assert.doesNotMatch(response.body, /"name": "fleetwatch"/);
    }
    // What a browser is refused: a page of the console fetched as another site's name.
    const evil = await page.request.get(`${url}jobs`, { headers: { Host: `rebound.example:${port}` } });
    assert.equal(evil.status(), 403);
  });

  test("a controller that goes away is on the banner, and the page recovers by itself when it is back", async () => {
    await page.goto(url);
    await page.locator('article.host[data-host="host-a"]').waitFor();
    await cluster.stopController();
    await textOf("#banner", (t) => /controller unavailable: .*reconnecting/.test(t), "the banner", 30_000);
    assert.equal(await page.locator("#banner").isVisible(), true);
    await page.screenshot({ path: path.join(outputDir, "controller-unavailable.png"), fullPage: true });
    await cluster.startController();
    await cluster.waitForAgent("host-a", 30_000);
    await page.locator("#banner").waitFor({ state: "hidden", timeout: scaled(30_000) });
    await textOf('article.host[data-host="host-a"] h3 .pill', (t) => t === "connected", "host-a connected again", 30_000);
  });

  test("a job live: DR0 held by it on the fleet page, its hits arriving on its page, and its two writers summing to what it delivered", async (t) => {
    const { agents } = await cluster.api().listAgents({});
    const ptrace = agents.find((a) => a.info?.hostId === "host-a")?.info?.trapChecks.find((c) => c.backend === Backend.PTRACE);
    if (ptrace?.delivery !== TrapDelivery.DELIVERED) {
      t.skip(`host-a's helper self-test says ptrace traps are not delivered here (${ptrace?.detail || "no check"}): a watched write would never reach the page; scripts/test.sh runs this part where traps are delivered`);
      return;
    }
    const target = await startTarget("two-writers", ["--alpha", String(alphaWrites), "--beta", String(betaWrites)]);
    targets.push(target);
    // Submitted through the CLI without --follow: it returns once armed and the job keeps running.
    const submitted = await cluster.cli(["watch", "--pid", String(target.pid), "--symbol", "fw_counter", "--backend", "ptrace", "--stack", "8", "--duration", "10m", "-o", "json"]);
    assert.equal(submitted.code, 0, submitted.stderr);
    const jobId = (JSON.parse(submitted.stdout) as { id: string }).id;

    await page.goto(url);
    const dr0 = `tr[data-host="host-a"][data-pid="${target.pid}"] td[data-dr="0"]`;
    await textOf(dr0, (text) => text.includes(jobId), `DR0 of pid ${target.pid} held by job ${jobId}`);
    assert.equal(await page.locator(`${dr0} a.job-id`).textContent(), jobId);
    assert.equal(await page.locator(`tr[data-pid="${target.pid}"] td[data-dr="1"]`).textContent(), "free");
    await page.screenshot({ path: path.join(outputDir, "fleet.png"), fullPage: true });

    await page.goto(`${url}jobs`);
    await textOf(`tr[data-job-id="${jobId}"] .state`, (s) => s === "armed", `job ${jobId} armed on the jobs page`);
    assert.equal(await page.locator(`tr[data-job-id="${jobId}"] td[data-count="delivered"]`).textContent(), "0");
    await page.screenshot({ path: path.join(outputDir, "jobs.png"), fullPage: true });

    // The page is open and following before the first write.
    await page.goto(`${url}jobs/${jobId}`);
    await textOf("#job-state", (s) => s === "armed", "the job armed on its page");
    await page.locator("table.hits").waitFor();
    assert.equal(await page.locator("#hit-count").textContent(), "0");
    target.send("go");
    const total = alphaWrites + betaWrites;
    await textOf("#hit-count", (n) => n === String(total), `${total} hits counted on the page`, 60_000);
    assert.match(await target.waitForLine(/^done/), /done/);
    assert.equal(await page.locator("table.hits tbody tr").count(), 200, "the latest 200 hits listed");
    assert.equal(await page.locator("table.hits tbody tr").first().getAttribute("data-n"), String(total), "newest first");
    const delivered = await textOf('#job-summary [data-count="delivered"]', (n) => n === String(total), "the job's delivered count", 30_000);

    await textOf("#coverage", (text) => text.startsWith(`${total} hits in 2 groups by stack`), "the writers of every hit", 30_000);
    const writers = await page.locator("table.writers tbody tr").evaluateAll((rows) =>
      rows.map((row) => [row.querySelector("td.key strong")?.textContent ?? "", Number(row.querySelector("td.hits")?.textContent)] as [string, number]),
    );
    assert.deepEqual(writers, [
      ["fw_write_alpha", alphaWrites],
      ["fw_write_beta", betaWrites],
    ]);
    assert.equal(writers.reduce((sum, [, hits]) => sum + hits, 0), Number(delivered), "the writers sum to the job's delivered");
    const title = `writers of job ${jobId} (armed): ${total} hits`;
    await textOf("#flame svg", (text) => text.includes(title) && text.includes("fw_write_alpha") && text.includes("fw_write_beta"), "the flame graph of every hit", 30_000);
    await page.screenshot({ path: path.join(outputDir, "job.png"), fullPage: true });
  });

  test("Ctrl-C stops the console: exit 0, its port closed", async () => {
    await page.goto("about:blank");
    const exit = await consoleDaemon.stop("SIGINT");
    assert.deepEqual(exit, { code: 0, signal: null }, consoleDaemon.output);
    const refused = await new Promise<string>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.destroy();
        resolve("connected");
      });
      socket.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    });
    assert.equal(refused, "ECONNREFUSED");
  });
});
