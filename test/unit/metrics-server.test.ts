import { after, test } from "node:test";
import assert from "node:assert/strict";
import { Counter, Registry } from "prom-client";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { MetricsListenError, formatHostPort, metricsListenWarning, parseMetricsListen, startMetricsServer, type Readiness, type RunningMetricsServer } from "../../proto/index.js";
import { parseMetricsFlag } from "../../cli/metrics-flag.js";
import { UsageError } from "../../cli/errors.js";

test("metrics-server - a bare port is loopback; a host is kept; port 0 picks one", () => {
  const table: Array<[string, string, number]> = [
    ["9464", "127.0.0.1", 9464],
    [":9464", "127.0.0.1", 9464],
    ["0", "127.0.0.1", 0],
    ["127.0.0.1:0", "127.0.0.1", 0],
    ["localhost:9464", "localhost", 9464],
    ["0.0.0.0:9464", "0.0.0.0", 9464],
    ["[::1]:9465", "::1", 9465],
    ["[::]:9465", "::", 9465],
  ];
  for (const [text, host, port] of table) assert.deepEqual(parseMetricsListen(text), { host, port }, text);
});

test("metrics-server - refuses what is not PORT or HOST:PORT, naming the flag", () => {
  for (const text of ["", "x", "65536", "127.0.0.1", "127.0.0.1:", "::1:9464", "host:9464:1", "-1", "1.2.3.4:99999"]) {
    assert.throws(() => parseMetricsListen(text), (err: unknown) => err instanceof MetricsListenError && err.message.startsWith(`--metrics-listen '${text}' is not PORT or HOST:PORT`), text);
  }
  assert.throws(() => parseMetricsFlag("nope", "--agent-metrics-listen"), (err: unknown) => err instanceof UsageError && err.exitCode === 3 && /^--agent-metrics-listen 'nope'/.test(err.message));
});

test("metrics-server - warns only when the address is not loopback", () => {
  for (const text of ["9464", "127.0.0.1:9464", "127.1.2.3:1", "localhost:9464", "[::1]:9464"]) assert.equal(metricsListenWarning(parseMetricsListen(text)), undefined, text);
  for (const text of ["0.0.0.0:9464", "10.0.0.5:9464", "[::]:9464", "metrics.example:9464"]) {
    assert.match(metricsListenWarning(parseMetricsListen(text)) ?? "", /^warning: metrics and health on \S+ are served without authentication/, text);
  }
  assert.equal(formatHostPort("::1", 80), "[::1]:80");
  assert.equal(formatHostPort("127.0.0.1", 80), "127.0.0.1:80");
});

const servers: RunningMetricsServer[] = [];
after(async () => {
  for (const s of servers) await s.stop();
});

async function serve(ready: () => Readiness | Promise<Readiness>, readyTimeoutMs?: number) {
  const registry = new Registry();
  const counter = new Counter({ name: "t_things_total", help: "things", registers: [registry] });
  const server = await startMetricsServer({ listen: parseMetricsListen("0"), source: registry, ready, ...(readyTimeoutMs ? { readyTimeoutMs } : {}) });
  servers.push(server);
  return { server, counter, base: server.url.replace(/\/metrics$/, "") };
}

test("metrics-server - serves /metrics in the text format, /healthz, and /readyz as the daemon says", async () => {
  let readiness: Readiness = { ready: false, reason: "no session with a controller (127.0.0.1:7070)" };
  const { server, counter, base } = await serve(() => readiness);
  assert.match(server.address, /^127\.0\.0\.1:\d+$/);
  assert.equal(server.url, `http://${server.address}/metrics`);
  counter.inc(3);
  const scrape = await fetch(server.url);
  assert.equal(scrape.status, 200);
  assert.equal(scrape.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8");
  const families = parsePrometheusTextFormat(await scrape.text());
  assert.deepEqual(families.find((f) => f.name === "t_things_total")?.metrics, [{ value: "3" }]);

  const health = await fetch(`${base}/healthz`);
  assert.deepEqual([health.status, await health.text()], [200, "ok\n"]);
  const notReady = await fetch(`${base}/readyz`);
  assert.deepEqual([notReady.status, await notReady.text()], [503, "not ready: no session with a controller (127.0.0.1:7070)\n"]);
  readiness = { ready: true };
  const ready = await fetch(`${base}/readyz`);
  assert.deepEqual([ready.status, await ready.text()], [200, "ready\n"]);

  const missing = await fetch(`${base}/nothing`);
  assert.deepEqual([missing.status, await missing.text()], [404, "not found: /metrics, /healthz, /readyz\n"]);
  const post = await fetch(server.url, { method: "POST", body: "x" });
  assert.deepEqual([post.status, post.headers.get("allow"), await post.text()], [405, "GET, HEAD", "only GET and HEAD\n"]);
});

test("metrics-server - a readiness check that throws or hangs is 503 with why, within its deadline", async () => {
  const throwing = await serve(() => {
    throw new Error("store gone");
  });
  const thrown = await fetch(`${throwing.base}/readyz`);
  assert.deepEqual([thrown.status, await thrown.text()], [503, "not ready: store gone\n"]);
  const hanging = await serve(() => new Promise<Readiness>(() => {}), 100);
  const startedMs = Date.now();
  const hung = await fetch(`${hanging.base}/readyz`);
  assert.deepEqual([hung.status, await hung.text()], [503, "not ready: the readiness check took longer than 100 ms\n"]);
  assert.ok(Date.now() - startedMs < 5_000, "answered at the deadline");
});

test("metrics-server - an address in use is refused at start, and stop frees the port with scrapers still connected", async () => {
  const { server } = await serve(() => ({ ready: true }));
  const port = Number(server.address.split(":")[1]);
  await assert.rejects(startMetricsServer({ listen: { host: "127.0.0.1", port }, source: new Registry(), ready: () => ({ ready: true }) }), (err: unknown) => err instanceof MetricsListenError && err.message === `cannot serve metrics on 127.0.0.1:${port}: the address is in use (EADDRINUSE)`);
  // A keep-alive connection stays open after this scrape; stop must not wait for it.
  await (await fetch(server.url)).text();
  await server.stop();
  servers.splice(servers.indexOf(server), 1);
  const again = await startMetricsServer({ listen: { host: "127.0.0.1", port }, source: new Registry(), ready: () => ({ ready: true }) });
  await again.stop();
});
