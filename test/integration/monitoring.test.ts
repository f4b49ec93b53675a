// The monitoring files held to what the daemons really export and to what
// the compose file really runs: the Grafana dashboard's structure and every
// metric, label and function its queries use (against the controller's and
// the agent's metrics registries, built here from their own code), the
// Prometheus scrape config against the compose services' --metrics-listen,
// and Grafana's provisioning against both. No daemon or container runs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import path from "node:path";
import type { Registry } from "prom-client";
import { parse } from "yaml";
import { AgentMetrics } from "../../agent/metrics.js";
import { ControllerMetrics } from "../../controller/metrics.js";
import { bindMounts, metricsListeners, readCompose } from "../support/compose.js";
import { repoRoot } from "../support/paths.js";
import { exposedSeries, promqlFunctions, readPromql } from "../support/promql.js";

const dashboardPath = path.join(repoRoot, "deploy/grafana/fleetwatch.json");

/** A series the daemons export: its label names, and the values seen of each. */
type Exported = Map<string, Map<string, Set<string>>>;

// Labels Prometheus adds to every series it scrapes.
const targetLabels = ["instance", "job"];

/**
 * The series a controller and an agent export, from their own metrics
 * classes: names by metric type (a histogram's _bucket, _sum and _count),
 * labels from one collection in which each labelled family has a sample
 * (the views and hooks below give them one).
 */
async function exportedSeries(): Promise<{ controller: Exported; agent: Exported }> {
  const controller = new ControllerMetrics({ term: () => ({ activeJobs: () => [], finishedJobs: () => 0, connectedAgents: () => 1, queuedJobs: () => 0 }), leading: () => true, epoch: () => 1n });
  controller.submitted("OK", 0.01);
  controller.audited("cancel", "PERMISSION_DENIED");
  const delivered = { delivery: "delivered" as const, writes: 8, traps: 8, nsPerTrap: 4_000, detail: "" };
  const agent = new AgentMetrics({
    registers: () => [{ ours: 1, reserved: 0, foreign: 0 }],
    armedTargets: () => 1,
    hits: () => ({ trapped: 1, delivered: 1, suppressed: 0, dropped: 0, filtered: 0 }),
    pendingBytes: () => 0,
    traps: () => [{ backend: "ptrace", ...delivered }, { backend: "perf", ...delivered }],
    sessionLive: () => true,
  });
  agent.publishSettled({ ok: true, hits: 1, waitedMs: 1 });
  const collect = async (registry: Registry): Promise<Exported> => {
    const series: Exported = new Map();
    for (const family of await registry.getMetricsAsJSON()) {
      for (const name of exposedSeries(family.name, String(family.type))) series.set(name, new Map());
      for (const sample of family.values as Array<{ metricName?: string; labels: Record<string, string | number> }>) {
        const labels = series.get(sample.metricName ?? family.name);
        assert.ok(labels, `${family.name}: sample ${sample.metricName} is one of the series its type exposes`);
        for (const [label, value] of Object.entries(sample.labels)) {
          if (!labels.has(label)) labels.set(label, new Set());
          labels.get(label)!.add(String(value));
        }
      }
    }
    return series;
  };
  return { controller: await collect(controller.registry), agent: await collect(agent.registry) };
}

interface Target {
  refId?: string;
  expr?: string;
  legendFormat?: string;
  datasource?: { type?: string; uid?: string };
}

interface Panel {
  id?: number;
  type?: string;
  title?: string;
  gridPos?: { h: number; w: number; x: number; y: number };
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}

interface Dashboard {
  uid?: string;
  title?: string;
  schemaVersion?: number;
  panels?: Panel[];
  templating?: { list?: Array<{ name: string; type: string; query?: string }> };
  __inputs?: unknown[];
}

async function readDashboard(): Promise<Dashboard> {
  return JSON.parse(await readFile(dashboardPath, "utf8")) as Dashboard;
}

/** Every panel, those inside collapsed rows too. */
function allPanels(d: Dashboard): Panel[] {
  return (d.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]);
}

test("monitoring - the dashboard is a Grafana 9+ model: unique panel ids, every panel placed, every query an expr on the templated Prometheus data source", async () => {
  const d = await readDashboard();
  assert.equal(d.uid, "fleetwatch");
  assert.ok(d.title);
  // Grafana 9.0 writes schema 36 and migrates anything older on load.
  assert.ok(d.schemaVersion !== undefined && d.schemaVersion >= 36, `schemaVersion ${d.schemaVersion}`);
  // The data source is a variable: importing asks for none, provisioning picks the default.
  const variable = d.templating?.list?.find((v) => v.type === "datasource");
  assert.deepEqual([variable?.name, variable?.query], ["datasource", "prometheus"]);
  assert.equal(d.__inputs, undefined, "no import-time inputs: provisioning would leave them unresolved");
  const source = { type: "prometheus", uid: `\${${variable!.name}}` };

  const panels = allPanels(d);
  const ids = panels.map((p) => p.id);
  assert.ok(ids.every((id) => Number.isInteger(id) && id! > 0), `panel ids ${ids.join(",")}`);
  assert.equal(new Set(ids).size, ids.length, "panel ids are unique");
  const queried = panels.filter((p) => p.type !== "row");
  assert.ok(queried.length >= 20, `${queried.length} panels`);
  const cells = new Set<string>();
  for (const p of panels) {
    const g = p.gridPos;
    assert.ok(g && [g.h, g.w, g.x, g.y].every(Number.isInteger) && g.h > 0 && g.w > 0 && g.x >= 0 && g.x + g.w <= 24 && g.y >= 0, `${p.title}: gridPos ${JSON.stringify(g)}`);
    // No two panels overlap on the 24-column grid.
    for (let y = g.y; y < g.y + g.h; y++) {
      for (let x = g.x; x < g.x + g.w; x++) {
        assert.ok(!cells.has(`${x},${y}`), `${p.title} overlaps another panel at ${x},${y}`);
        cells.add(`${x},${y}`);
      }
    }
    if (p.type === "row") {
      assert.equal(p.targets, undefined, `row ${p.title} queries nothing`);
      continue;
    }
    assert.ok(p.title, `panel ${p.id} has a title`);
    assert.deepEqual(p.datasource, source, `${p.title}: the panel's data source`);
    assert.ok(p.targets && p.targets.length > 0, `${p.title} has queries`);
    const refIds = p.targets.map((t) => t.refId);
    assert.equal(new Set(refIds).size, refIds.length, `${p.title}: refIds are unique`);
    for (const t of p.targets) {
      assert.equal(typeof t.expr, "string", `${p.title} ${t.refId}: an expr`);
      assert.ok(t.expr!.trim(), `${p.title} ${t.refId}: a non-empty expr`);
      assert.deepEqual(t.datasource, source, `${p.title} ${t.refId}: the query's data source`);
    }
  }
});

test("monitoring - every metric, function and label the dashboard queries is one the controller or the agent exports", async () => {
  const { controller, agent } = await exportedSeries();
  const exported: Exported = new Map([...controller, ...agent]);
  // The registries are the daemons' own: the names this dashboard is about are among them.
  for (const name of ["fleetwatch_controller_jobs", "fleetwatch_controller_submit_seconds_bucket", "fleetwatch_agent_hits_total", "fleetwatch_agent_trap_cost_seconds"]) assert.ok(exported.has(name), name);
  assert.ok(!exported.has("fleetwatch_controller_submit_seconds"), "a histogram's own name is no series");

  const used = new Set<string>();
  for (const p of allPanels(await readDashboard())) {
    for (const t of p.targets ?? []) {
      const where = `${p.title} ${t.refId}: ${t.expr}`;
      const reads = readPromql(t.expr!);
      assert.ok(reads.metrics.length > 0, `${where} reads a metric`);
      for (const f of reads.functions) assert.ok(promqlFunctions.has(f), `${where}: ${f} is a PromQL function`);
      const labelsOf = (metric: string) => new Set([...targetLabels, ...exported.get(metric)!.keys()]);
      for (const metric of reads.metrics) {
        assert.ok(exported.has(metric), `${where}: ${metric} is not exported by the controller or the agent`);
        used.add(metric);
      }
      for (const { metric, matchers } of reads.selectors) {
        for (const m of matchers) {
          assert.ok(labelsOf(metric).has(m.label), `${where}: ${metric} has no label ${m.label}`);
          const values = exported.get(metric)!.get(m.label);
          if (values && (m.op === "=" || m.op === "!=")) assert.ok(values.has(m.value), `${where}: ${metric}{${m.label}} is never "${m.value}" (${[...values].join(", ")})`);
        }
      }
      // Grouping and legend labels exist on a series the query reads.
      const readable = new Set(reads.metrics.flatMap((metric) => [...labelsOf(metric)]));
      for (const label of reads.groupingLabels) assert.ok(readable.has(label), `${where}: no series it reads has label ${label}`);
      for (const [, label] of (t.legendFormat ?? "").matchAll(/\{\{\s*(\w+)\s*\}\}/g)) assert.ok(readable.has(label!), `${where}: legend label ${label} is on no series it reads`);
    }
  }
  // What the dashboard is for: each of these is shown.
  for (const name of [
    "fleetwatch_agent_debug_registers",
    "fleetwatch_controller_jobs",
    "fleetwatch_controller_queue_jobs",
    "fleetwatch_controller_pending_oldest_seconds",
    "fleetwatch_agent_hits_total",
    "fleetwatch_agent_trap_cost_seconds",
    "fleetwatch_controller_agents_connected",
    "fleetwatch_controller_leader",
    "fleetwatch_controller_epoch",
    "fleetwatch_controller_submit_seconds_bucket",
    "fleetwatch_controller_job_armed_seconds_bucket",
  ]) {
    assert.ok(used.has(name), `the dashboard shows ${name}`);
  }
});

interface ScrapeConfig {
  global?: { scrape_interval?: string };
  scrape_configs: Array<{ job_name: string; metrics_path?: string; scheme?: string; static_configs?: Array<{ targets: string[] }> }>;
}

test("monitoring - compose: Prometheus scrapes every daemon service on the port its --metrics-listen names, from the config file it mounts read-only", async () => {
  const compose = await readCompose();
  const prometheus = compose.services.prometheus!;
  assert.match(prometheus.image ?? "", /^prom\/prometheus:v\d+\.\d+\.\d+$/, "the official image, pinned");
  const configFile = /^--config\.file=(.+)$/.exec(prometheus.command?.find((a) => a.startsWith("--config.file=")) ?? "")?.[1];
  const mount = bindMounts(prometheus).find((m) => m.target === configFile);
  assert.ok(mount, `the compose file mounts the config at ${configFile}`);
  assert.equal(mount.readOnly, true);
  assert.equal(path.relative(repoRoot, mount.source), "deploy/prometheus/prometheus.yml");
  assert.deepEqual(prometheus.ports, ["127.0.0.1:9090:9090"], "the UI on the host's loopback only");
  assert.deepEqual([prometheus.cap_drop, prometheus.security_opt, prometheus.read_only], [["ALL"], ["no-new-privileges:true"], true]);

  const config = parse(await readFile(mount.source, "utf8")) as ScrapeConfig;
  const scraped = new Map<string, string>();
  for (const job of config.scrape_configs) {
    // /metrics over plain HTTP: the defaults.
    assert.equal(job.metrics_path ?? "/metrics", "/metrics", job.job_name);
    assert.equal(job.scheme ?? "http", "http", job.job_name);
    for (const target of (job.static_configs ?? []).flatMap((s) => s.targets)) {
      assert.ok(!scraped.has(target), `${target} is scraped once`);
      scraped.set(target, job.job_name);
    }
  }
  const listeners = metricsListeners(compose);
  assert.deepEqual([...scraped.keys()].sort(), [...listeners].map(([name, l]) => `${name}:${l.port}`).sort(), "each daemon service on its metrics port, nothing else");
  for (const [target, job] of scraped) {
    const daemon = listeners.get(target.split(":")[0]!)!.daemon;
    assert.equal(job, `fleetwatch-${daemon}`, `${target} is in the ${daemon}s' job`);
    // Reachable over the compose network, not only on the daemon container's loopback.
    assert.equal(listeners.get(target.split(":")[0]!)!.host, "0.0.0.0", target);
  }
});

test("monitoring - compose: Grafana is provisioned with that Prometheus as its default data source and this dashboard", async () => {
  const compose = await readCompose();
  const grafana = compose.services.grafana!;
  assert.match(grafana.image ?? "", /^grafana\/grafana:\d+\.\d+\.\d+$/, "the official image, pinned");
  assert.deepEqual(grafana.ports, ["127.0.0.1:3000:3000"], "the UI on the host's loopback only");
  assert.deepEqual([grafana.cap_drop, grafana.security_opt], [["ALL"], ["no-new-privileges:true"]]);
  const mounts = bindMounts(grafana);
  assert.ok(mounts.every((m) => m.readOnly), "every provisioned file is mounted read-only");
  const mounted = (relative: string) => mounts.find((m) => path.relative(repoRoot, m.source) === relative);

  const datasources = mounted("deploy/grafana/provisioning/datasources/prometheus.yml");
  assert.ok(datasources, "the data source file is mounted");
  assert.ok(datasources.target.startsWith("/etc/grafana/provisioning/datasources/"), "the data source is provisioned");
  const { datasources: [source] = [] } = parse(await readFile(datasources.source, "utf8")) as { datasources?: Array<{ type: string; url: string; isDefault?: boolean; access?: string }> };
  assert.deepEqual([source?.type, source?.isDefault, source?.access], ["prometheus", true, "proxy"]);
  const listen = compose.services.prometheus!.ports![0]!.split(":").at(-1);
  assert.equal(source!.url, `http://prometheus:${listen}`, "the compose file's Prometheus, over the compose network");

  const providers = mounted("deploy/grafana/provisioning/dashboards/fleetwatch.yml");
  assert.ok(providers, "the dashboard provider file is mounted");
  assert.ok(providers.target.startsWith("/etc/grafana/provisioning/dashboards/"), "the dashboard provider is provisioned");
  const { providers: [provider] = [] } = parse(await readFile(providers.source, "utf8")) as { providers?: Array<{ type: string; options: { path: string } }> };
  assert.equal(provider?.type, "file");
  const dashboard = mounted("deploy/grafana/fleetwatch.json");
  assert.equal(dashboard && path.dirname(dashboard.target), provider!.options.path, "the provider loads the mounted dashboard");
  assert.equal(grafana.environment?.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH, dashboard!.target, "the dashboard is the home page");
});
