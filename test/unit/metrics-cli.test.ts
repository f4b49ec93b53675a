import { test } from "node:test";
import assert from "node:assert/strict";
import { parseAgentArgs } from "../../cli/commands/agent.js";
import { parseControllerArgs } from "../../cli/commands/controller.js";
import { parseUpArgs, printUpMetrics, printUpReady } from "../../cli/commands/up.js";
import { UsageError } from "../../cli/errors.js";
import { printMetricsReady, warnIfExposed } from "../../cli/metrics-flag.js";

const controllerOpts = { listen: "127.0.0.1:7070", lease: "15s", electionLease: "5s" };
const globals = { controller: "127.0.0.1:7070", nats: "nats://127.0.0.1:4222" };

test("metrics cli - --metrics-listen on controller and agent: off unless given, a bare port is loopback", () => {
  assert.equal(parseControllerArgs(controllerOpts, "nats://n").metricsListen, undefined);
  assert.deepEqual(parseControllerArgs({ ...controllerOpts, metricsListen: "9464" }, "nats://n").metricsListen, { host: "127.0.0.1", port: 9464 });
  assert.equal(parseAgentArgs({ hostId: "h1" }, globals).metricsListen, undefined);
  assert.deepEqual(parseAgentArgs({ hostId: "h1", metricsListen: "0.0.0.0:0" }, globals).metricsListen, { host: "0.0.0.0", port: 0 });
  assert.throws(() => parseAgentArgs({ hostId: "h1", metricsListen: "port" }, globals), (err: unknown) => err instanceof UsageError && /^--metrics-listen 'port' is not PORT or HOST:PORT/.test(err.message));
});

test("metrics cli - up serves both daemons' metrics, each flag its own", () => {
  const request = parseUpArgs({ dataDir: "d", listen: "127.0.0.1:7070", natsPort: "4222", metricsListen: "127.0.0.1:9464", agentMetricsListen: "9465" }, "/", "h");
  assert.deepEqual([request.metricsListen, request.agentMetricsListen], [{ host: "127.0.0.1", port: 9464 }, { host: "127.0.0.1", port: 9465 }]);
  assert.throws(() => parseUpArgs({ dataDir: "d", listen: "127.0.0.1:7070", natsPort: "4222", agentMetricsListen: "x" }, "/", "h"), /^UsageError: --agent-metrics-listen 'x'/);
});

test("metrics cli - the lines printed: after up's ready line (scripts wait for that one), and a daemon's own", () => {
  const ready = printUpReady("127.0.0.1:7070", "nats://127.0.0.1:4222", "h1");
  const metrics = printUpMetrics("http://127.0.0.1:9464/metrics", "http://127.0.0.1:9465/metrics");
  assert.equal(metrics, "fleetwatch up: metrics http://127.0.0.1:9464/metrics (controller), http://127.0.0.1:9465/metrics (agent)\n");
  assert.match(ready, /^fleetwatch up: controller 127\.0\.0\.1:7070, nats nats:\/\/127\.0\.0\.1:4222, host h1\n$/, "the ready line is unchanged");
  assert.equal(printUpMetrics(undefined, "http://127.0.0.1:9465/metrics"), "fleetwatch up: metrics http://127.0.0.1:9465/metrics (agent)\n");
  assert.equal(printUpMetrics(undefined, undefined), undefined);
  assert.equal(printMetricsReady("http://[::1]:9464/metrics"), "metrics: http://[::1]:9464/metrics\n");
  const lines: string[] = [];
  warnIfExposed({ host: "127.0.0.1", port: 9464 }, (l) => lines.push(l));
  warnIfExposed({ host: "0.0.0.0", port: 9464 }, (l) => lines.push(l));
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /^warning: metrics and health on 0\.0\.0\.0:9464 are served without authentication/);
});
