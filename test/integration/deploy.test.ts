// The deployment files, checked without a container engine: docker-compose
// validates its file; the compose services, the Dockerfile and the Kubernetes
// manifests are read as data and held to what the product needs (who may
// ptrace, who runs as whom, which addresses meet) and to least privilege.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { parse, parseAllDocuments } from "yaml";
import { commMatches, kernelComm, validateSelector } from "../../agent/process-match.js";
import { parseAgentArgs } from "../../cli/commands/agent.js";
import { isSubjectToken, startMetricsServer, type Readiness } from "../../proto/index.js";
import { arg, composePath, metricsListeners, readCompose, type ComposeFile, type ComposeService } from "../support/compose.js";
import { repoRoot } from "../support/paths.js";

const run = promisify(execFile);

function argsOf(list: readonly string[]): string[] {
  return list.flatMap((a) => a.split(/\s+/)).filter(Boolean);
}

test("deploy - docker-compose accepts the compose file, and every file it mounts from the repository is there", async () => {
  const { stderr } = await run("docker-compose", ["-f", composePath, "config", "-q"], { cwd: repoRoot });
  assert.equal(stderr.trim(), "");
  // The file as docker-compose resolves it: bind mounts with the host path made absolute.
  const resolved = parse((await run("docker-compose", ["-f", composePath, "config"], { cwd: repoRoot })).stdout) as ComposeFile;
  const mounted: string[] = [];
  for (const [name, service] of Object.entries(resolved.services)) {
    for (const volume of service.volumes ?? []) {
      if (!volume.startsWith("/")) continue;
      const source = volume.split(":")[0]!;
      assert.ok(source.startsWith(repoRoot + path.sep), `${name} mounts ${source}, inside the repository`);
      assert.ok((await stat(source)).isFile(), `${name} mounts ${source}: a file of the repository`);
      assert.ok(volume.endsWith(":ro"), `${name} mounts ${source} read-only`);
      mounted.push(path.relative(repoRoot, source));
    }
  }
  assert.deepEqual(mounted.sort(), [
    "deploy/grafana/fleetwatch.json",
    "deploy/grafana/provisioning/dashboards/fleetwatch.yml",
    "deploy/grafana/provisioning/datasources/prometheus.yml",
    "deploy/prometheus/prometheus.yml",
  ]);
});

test("deploy - compose: agents share their demo's PID namespace with CAP_SYS_PTRACE, CAP_PERFMON and CAP_BPF only; everything else unprivileged", async () => {
  const services = (await readCompose()).services;
  const controller = services.controller!;
  const listen = arg(controller.command!, "--listen")!;
  assert.equal(listen, "0.0.0.0:7070");
  assert.equal(arg(controller.command!, "--nats"), "nats://nats:4222");
  assert.ok(services.nats!.command!.includes("-js"), "NATS runs with JetStream");

  // Mutual TLS everywhere: the controller serves with its certificate, each agent and the CLI present theirs.
  assert.deepEqual([arg(controller.command!, "--ca"), arg(controller.command!, "--cert"), arg(controller.command!, "--key")], ["/certs/ca.crt", "/certs/controller.crt", "/certs/controller.key"]);
  const issued = services.certs!.command!.join(" ");
  for (const name of ["controller", "agent-a", "agent-b", "cli"]) assert.ok(services[name]!.volumes?.includes("certs:/certs:ro"), `${name} mounts the certificates read-only`);
  assert.deepEqual([services.cli!.environment!.FLEETWATCH_CA, services.cli!.environment!.FLEETWATCH_CERT], ["/certs/ca.crt", "/certs/user-admin.crt"]);
  assert.match(issued, /certs init --dir \/certs --agent demo-a --agent demo-b --user admin/);
  // NATS with credentials: the server loads the generated permissions, each party signs in with its own seed.
  assert.equal(arg(services.nats!.command!, "-c"), "/certs/nats-auth.conf");
  assert.ok(services.nats!.volumes?.includes("certs:/certs:ro"), "nats mounts the certificates read-only");
  assert.equal(arg(controller.command!, "--nats-creds"), "/certs/controller.nk");
  assert.equal(services.cli!.environment!.FLEETWATCH_NATS_CREDS, "/certs/user-admin.nk");

  const agents = Object.entries(services).filter(([, s]) => s.command?.includes("agent"));
  assert.equal(agents.length, 2);
  const hostIds = new Set<string>();
  for (const [name, agent] of agents) {
    const demo = agent.pid?.replace(/^service:/, "");
    assert.ok(demo && services[demo], `${name} shares the PID namespace of a service of this file (${agent.pid})`);
    assert.deepEqual(services[demo].entrypoint, ["/usr/local/bin/fleetwatch-demo-counter"]);
    assert.deepEqual(agent.cap_add, ["SYS_PTRACE", "PERFMON", "BPF"], `${name}: ptrace, perf events, BPF and nothing else`);
    assert.deepEqual(agent.cap_drop, ["ALL"]);
    assert.notEqual(agent.privileged, true);
    assert.equal(arg(agent.command!, "--controller"), `controller:${listen.split(":")[1]}`);
    assert.equal(arg(agent.command!, "--nats"), "nats://nats:4222");
    const hostId = arg(agent.command!, "--host-id")!;
    assert.ok(isSubjectToken(hostId), hostId);
    hostIds.add(hostId);
    assert.equal(arg(agent.command!, "--cert"), `/certs/agent-${hostId}.crt`, `${name} presents its own host's certificate`);
    assert.equal(arg(agent.command!, "--nats-creds"), `/certs/agent-${hostId}.nk`, `${name} signs in to NATS as its own host`);
    // The agent's own command line parser takes it.
    const flags = agent.command!.slice(agent.command!.indexOf("agent") + 1);
    const labels = flags.flatMap((f, i) => (f === "--label" ? [flags[i + 1]!] : []));
    assert.equal(parseAgentArgs({ hostId, label: labels }, { controller: "c", nats: "n" }).labels.role, "demo");
  }
  assert.equal(hostIds.size, 2, "host ids are unique");
  for (const name of ["controller", "demo-a", "demo-b", "cli"]) {
    const s = services[name]!;
    assert.equal(s.user, "10001:10001", `${name} runs as the unprivileged user`);
    assert.deepEqual(s.cap_drop, ["ALL"], name);
    assert.equal(s.cap_add, undefined, name);
  }
  assert.equal(services.cli!.environment!.FLEETWATCH_CONTROLLER, "controller:7070");
});

test("deploy - compose: the controller and each agent serve metrics and health on 0.0.0.0 in their container, unpublished, and are healthy while /readyz says ready", async () => {
  const compose = await readCompose();
  const listeners = metricsListeners(compose);
  const daemons = Object.entries(compose.services).filter(([, s]) => s.command?.includes("controller") || s.command?.includes("agent"));
  assert.deepEqual([...listeners.keys()].sort(), daemons.map(([name]) => name).sort(), "every daemon serves metrics");
  assert.deepEqual([...listeners.keys()].sort(), ["agent-a", "agent-b", "controller"]);
  for (const [name, listen] of listeners) {
    const service = compose.services[name]!;
    // Reachable from the compose network (Prometheus), not from the host.
    assert.equal(listen.host, "0.0.0.0", name);
    assert.equal(listen.port, listen.daemon === "controller" ? 9464 : 9465, name);
    for (const published of service.ports ?? []) assert.notEqual(Number(published.split(":").at(-1)), listen.port, `${name} does not publish its metrics port`);
    // The image's node asks /readyz on loopback (the image has no curl).
    const check = service.healthcheck?.test ?? [];
    assert.deepEqual(check.slice(0, 3), ["CMD", "node", "-e"], name);
    assert.deepEqual(/http:\/\/127\.0\.0\.1:(\d+)\/readyz/.exec(check[3] ?? "")?.[1], String(listen.port), `${name}'s healthcheck asks its own listener`);
  }
  // Agents start once the controller is ready.
  for (const name of ["agent-a", "agent-b"]) assert.deepEqual((compose.services[name]!.depends_on as Record<string, { condition: string }>).controller, { condition: "service_healthy" }, name);
});

test("deploy - compose: the healthcheck script exits 0 while the daemon is ready, 1 while it is not or nothing listens", async () => {
  const compose = await readCompose();
  let readiness: Readiness = { ready: true };
  const server = await startMetricsServer({ listen: { host: "127.0.0.1", port: 0 }, source: { contentType: "text/plain", metrics: async () => "" }, ready: () => readiness });
  const exitCode = (script: string) =>
    run(process.execPath, ["-e", script], { timeout: 10_000 }).then(
      () => 0,
      (err: { code?: number | string }) => err.code,
    );
  let stopped = false;
  try {
    for (const name of ["controller", "agent-a"]) {
      // The service's own script, pointed at this listener instead of the container's.
      const script = compose.services[name]!.healthcheck!.test[3]!.replace(/127\.0\.0\.1:\d+/, server.address);
      assert.notEqual(script, compose.services[name]!.healthcheck!.test[3], name);
      readiness = { ready: true };
      assert.equal(await exitCode(script), 0, `${name}: ready`);
      readiness = { ready: false, reason: "the store (NATS JetStream) does not answer" };
      assert.equal(await exitCode(script), 1, `${name}: not ready`);
    }
    const script = compose.services.controller!.healthcheck!.test[3]!.replace(/127\.0\.0\.1:\d+/, server.address);
    await server.stop();
    stopped = true;
    assert.equal(await exitCode(script), 1, "nothing listening");
  } finally {
    if (!stopped) await server.stop();
  }
});

test("deploy - the image builds with the quick start's setup script and puts the helper where the agent looks", async () => {
  const dockerfile = await readFile(path.join(repoRoot, "Dockerfile"), "utf8");
  const demo = await readFile(path.join(repoRoot, "scripts", "demo.sh"), "utf8");
  assert.match(demo, /^\s*scripts\/setup\.sh$/m, "the quick start runs scripts/setup.sh");
  assert.match(dockerfile, /^RUN scripts\/setup\.sh/m, "the build stage runs the same script");
  assert.match(dockerfile, /COPY --from=build \/src\/agent\/native\/build\/fleetwatch-helper \.\/agent\/native\/build\/fleetwatch-helper/);
  assert.match(dockerfile, /^WORKDIR \/opt\/fleetwatch$/m);
  assert.match(dockerfile, /^USER 10001:10001$/m);
  assert.match(dockerfile, /ENTRYPOINT \["node", "\/opt\/fleetwatch\/dist\/cli\/main\.js"\]/);
  // The documented watch (compose file and README) selects the demo
  // programs by the name the kernel gives the installed binary.
  const compose = await readFile(path.join(repoRoot, "docker-compose.yml"), "utf8");
  const readme = await readFile(path.join(repoRoot, "README.md"), "utf8");
  const installed = /^COPY --from=build \/src\/demo-counter (\S+)$/m.exec(dockerfile)?.[1];
  assert.ok(installed, "the image installs the demo program");
  const services = (parse(compose, { merge: true }) as { services: Record<string, ComposeService> }).services;
  for (const name of ["demo-a", "demo-b"]) assert.deepEqual(services[name]!.entrypoint, [installed], `${name} runs the installed demo program`);
  for (const [where, text] of [["docker-compose.yml", compose], ["README.md", readme]] as const) {
    const comm = /compose run --rm cli watch --comm (\S+) /.exec(text)?.[1];
    assert.ok(comm, `${where} shows the watch of the demo programs`);
    assert.ok(commMatches(validateSelector({ comm }), kernelComm(path.basename(installed))), `${where}: --comm ${comm} matches ${installed}`);
  }
});

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  // Manifests are checked field by field below.
  spec?: any;
  roleRef?: { name: string };
  subjects?: Array<{ name: string; namespace: string }>;
  rules?: Array<{ resources: string[]; verbs: string[] }>;
}

async function manifests(): Promise<K8sObject[]> {
  const dir = path.join(repoRoot, "deploy", "k8s");
  const files = (await readdir(dir)).filter((f) => f.endsWith(".yaml")).sort();
  const objects: K8sObject[] = [];
  for (const file of files) {
    for (const doc of parseAllDocuments(await readFile(path.join(dir, file), "utf8"))) {
      assert.deepEqual(doc.errors, [], file);
      objects.push(doc.toJS() as K8sObject);
    }
  }
  return objects;
}

test("deploy - k8s: every object is well formed and in the fleetwatch namespace", async () => {
  const objects = await manifests();
  const kinds = objects.map((o) => o.kind).sort();
  assert.deepEqual(kinds, ["ClusterRole", "ClusterRoleBinding", "DaemonSet", "Namespace", "Service", "Service", "ServiceAccount", "StatefulSet", "StatefulSet"]);
  for (const o of objects) {
    assert.ok(o.apiVersion && o.metadata?.name, JSON.stringify(o).slice(0, 200));
    if (!["Namespace", "ClusterRole", "ClusterRoleBinding"].includes(o.kind)) assert.equal(o.metadata.namespace, "fleetwatch", `${o.kind} ${o.metadata.name}`);
    const selector = o.spec?.selector?.matchLabels;
    if (selector) assert.deepEqual(o.spec.template.metadata.labels, selector, `${o.kind} ${o.metadata.name}: the pod template carries its selector's labels`);
  }
  // Services select pods that exist and point at named ports those pods declare.
  for (const svc of objects.filter((o) => o.kind === "Service")) {
    const target = objects.find((o) => o.spec?.template?.metadata?.labels?.["app.kubernetes.io/name"] === svc.spec.selector["app.kubernetes.io/name"]);
    assert.ok(target, `service ${svc.metadata.name} selects a workload`);
    const ports = target.spec.template.spec.containers.flatMap((c: { ports?: Array<{ name: string }> }) => c.ports ?? []).map((p: { name: string }) => p.name);
    for (const p of svc.spec.ports) assert.ok(ports.includes(p.targetPort), `${svc.metadata.name}: port ${p.targetPort}`);
  }
});

test("deploy - k8s: the agent sees its node's processes with CAP_SYS_PTRACE, CAP_PERFMON and CAP_BPF only, named after its node, with the node's labels", async () => {
  const objects = await manifests();
  const ds = objects.find((o) => o.kind === "DaemonSet")!;
  const pod = ds.spec.template.spec;
  assert.equal(pod.hostPID, true);
  const agent = pod.containers.find((c: { name: string }) => c.name === "agent");
  assert.deepEqual(agent.securityContext.capabilities, { drop: ["ALL"], add: ["SYS_PTRACE", "PERFMON", "BPF"] });
  assert.notEqual(agent.securityContext.privileged, true);
  assert.equal(agent.securityContext.allowPrivilegeEscalation, false);
  assert.deepEqual(agent.env.find((e: { name: string }) => e.name === "NODE_NAME").valueFrom, { fieldRef: { fieldPath: "spec.nodeName" } });
  const script = argsOf(agent.args).join(" ");
  // Every controller by its stable name: the agent follows the leader itself.
  assert.equal(/--controller (\S+)/.exec(script)?.[1], controllerAddresses(objects).join(","));
  assert.match(script, /--nats nats:\/\/nats\.fleetwatch:4222/);
  // The host id the agent's shell line makes of a typical node name is a valid one.
  const hostIdExpr = /host="\$\((.*?)\)"/.exec(agent.args[0])![1]!;
  assert.match(script, /--host-id "\$host"/);
  // Its own node's certificate, from the Secret mounted at /tls.
  assert.match(script, /--ca \/tls\/ca\.crt --cert "\/tls\/agent-\$host\.crt" --key "\/tls\/agent-\$host\.key"/);
  const tlsMount = agent.volumeMounts.find((m: { name: string }) => m.name === "tls");
  assert.deepEqual([tlsMount.mountPath, tlsMount.readOnly], ["/tls", true]);
  assert.equal(pod.volumes.find((v: { name: string }) => v.name === "tls").secret.secretName, "fleetwatch-agent-tls");
  const { stdout } = await run("sh", ["-c", hostIdExpr], { env: { ...process.env, NODE_NAME: "ip-10-0-0-1.eu-west-1.compute.internal" } });
  assert.equal(stdout.trim(), "ip-10-0-0-1-eu-west-1-compute-internal");
  assert.ok(isSubjectToken(stdout.trim()));
  // Node labels: the init container writes them where the agent reads them, with a service account allowed to.
  const labelFile = /--label-file (\S+)/.exec(script)![1]!;
  const init = pod.initContainers[0];
  assert.ok(init.args[0].includes(`> ${labelFile.replace(agent.volumeMounts[0].mountPath, init.volumeMounts[0].mountPath)}`), init.args[0]);
  assert.equal(agent.volumeMounts[0].name, init.volumeMounts[0].name);
  const sa = objects.find((o) => o.kind === "ServiceAccount")!;
  assert.equal(pod.serviceAccountName, sa.metadata.name);
  const binding = objects.find((o) => o.kind === "ClusterRoleBinding")!;
  assert.deepEqual(binding.subjects, [{ kind: "ServiceAccount", name: sa.metadata.name, namespace: "fleetwatch" }]);
  const role = objects.find((o) => o.kind === "ClusterRole" && o.metadata.name === binding.roleRef!.name)!;
  assert.deepEqual(role.rules, [{ apiGroups: [""], resources: ["nodes"], verbs: ["get"] }]);

  // The agent reads such a file as its labels (kubectl's go-template output).
  const dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-labels-"));
  try {
    const file = path.join(dir, "node");
    await writeFile(file, "kubernetes.io/hostname=ip-10-0-0-1\ntopology.kubernetes.io/zone=eu-west-1a\n\nrole=db\n");
    const parsed = parseAgentArgs({ hostId: "n1", labelFile: file, label: ["role=cache"] }, { controller: "c", nats: "n" });
    assert.deepEqual(parsed.labels, { "kubernetes.io/hostname": "ip-10-0-0-1", "topology.kubernetes.io/zone": "eu-west-1a", role: "cache" });
    assert.throws(() => parseAgentArgs({ hostId: "n1", labelFile: path.join(dir, "missing") }, { controller: "c", nats: "n" }), /--label-file .*missing: no such file/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/** The controllers' stable addresses: pod NAME-i of the StatefulSet under its headless Service, on the gRPC port. */
function controllerAddresses(objects: readonly K8sObject[]): string[] {
  const set = objects.find((o) => o.kind === "StatefulSet" && o.metadata.name === "fleetwatch-controller")!;
  const svc = objects.find((o) => o.kind === "Service" && o.metadata.name === set.spec.serviceName)!;
  const port = svc.spec.ports.find((p: { name: string }) => p.name === "grpc").port;
  return Array.from({ length: set.spec.replicas }, (_, i) => `${set.metadata.name}-${i}.${svc.metadata.name}.${set.metadata.namespace}:${port}`);
}

test("deploy - k8s: two controllers run unprivileged under stable names a headless Service publishes, ready or not", async () => {
  const objects = await manifests();
  const set = objects.find((o) => o.kind === "StatefulSet" && o.metadata.name === "fleetwatch-controller")!;
  assert.equal(set.spec.replicas, 2);
  assert.equal(set.spec.podManagementPolicy, "Parallel");
  // No load balancing: a standby answers UNAVAILABLE, so clients are given every controller and follow the leader.
  const svc = objects.find((o) => o.kind === "Service" && o.metadata.name === set.spec.serviceName)!;
  assert.equal(svc.spec.clusterIP, "None");
  assert.equal(svc.spec.publishNotReadyAddresses, true);
  assert.deepEqual(controllerAddresses(objects), ["fleetwatch-controller-0.fleetwatch-controller.fleetwatch:7070", "fleetwatch-controller-1.fleetwatch-controller.fleetwatch:7070"]);
  const pod = set.spec.template.spec;
  assert.equal(pod.securityContext.runAsNonRoot, true);
  assert.notEqual(pod.securityContext.runAsUser, 0);
  const c = pod.containers[0];
  assert.deepEqual(c.securityContext.capabilities, { drop: ["ALL"] });
  assert.equal(c.securityContext.allowPrivilegeEscalation, false);
  assert.equal(arg(c.args, "--listen"), `0.0.0.0:${c.ports.find((p: { name: string }) => p.name === "grpc").containerPort}`);
  assert.equal(arg(c.args, "--nats"), "nats://nats.fleetwatch:4222");
  // Its Secret is its own: no user certificate (probes need none).
  assert.doesNotMatch(JSON.stringify(pod), /user-/);
  const nats = objects.find((o) => o.kind === "StatefulSet" && o.metadata.name === "nats")!;
  assert.ok(nats.spec.template.spec.containers[0].args.includes("-js"));
});

test("deploy - k8s: controllers and agents are probed and scraped over HTTP on the port their --metrics-listen names", async () => {
  const objects = await manifests();
  const workloads = [
    { kind: "StatefulSet", name: "fleetwatch-controller", container: "controller", port: 9464 },
    { kind: "DaemonSet", name: "fleetwatch-agent", container: "agent", port: 9465 },
  ];
  for (const w of workloads) {
    const o = objects.find((x) => x.kind === w.kind && x.metadata.name === w.name)!;
    const c = o.spec.template.spec.containers.find((x: { name: string }) => x.name === w.container);
    // The controller's arguments are a list; the agent's are a shell line.
    const listen = arg(argsOf(c.args), "--metrics-listen");
    assert.equal(listen, `0.0.0.0:${w.port}`, `${w.name}: reachable by the kubelet and Prometheus at the pod's IP`);
    const port = c.ports.find((p: { name: string }) => p.name === "metrics");
    assert.equal(port?.containerPort, w.port, `${w.name} declares its metrics port`);
    for (const [probe, path] of [["startupProbe", "/healthz"], ["livenessProbe", "/healthz"], ["readinessProbe", "/readyz"]] as const) {
      assert.deepEqual(c[probe]?.httpGet, { path, port: "metrics" }, `${w.name} ${probe}`);
      assert.equal(c[probe].exec, undefined, `${w.name} ${probe} runs no command`);
    }
    // A check that takes its full 2 s still answers within the probe's timeout.
    assert.ok(c.readinessProbe.timeoutSeconds > 2, w.name);
    assert.deepEqual(o.spec.template.metadata.annotations, { "prometheus.io/scrape": "true", "prometheus.io/port": String(w.port), "prometheus.io/path": "/metrics" }, w.name);
  }
});
