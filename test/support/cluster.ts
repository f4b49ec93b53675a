// A real single-machine fleet for integration tests: nats-server on a free
// port, the controller and agents as `fleetwatch` processes, and a runner
// for CLI commands against them. Everything started here is stopped by stop().
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { startNatsServer, type RunningNatsServer } from "../../cli/nats-server.js";
import { natsAuthFile, natsSeedFile, writeNatsAuthConfig, writeNatsSeed } from "../../cli/nats-credentials.js";
import { ControllerService, createClient, type Identity, type ServiceClient } from "../../proto/index.js";
import { cliPath, helperPath } from "./paths.js";
import { scaled, waitFor } from "./wait.js";

/** A daemon started through the CLI. */
export class Daemon {
  output = "";
  /**
   * Where signals go when `child` is only a wrapper that does not pass them
   * on (nsenter, which forks the daemon into another PID namespace): the
   * daemon's pid in ours. Unset: the child itself.
   */
  signalPid: number | undefined;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    child.stdout?.setEncoding("utf8").on("data", (chunk: string) => (this.output += chunk));
    child.stderr?.setEncoding("utf8").on("data", (chunk: string) => (this.output += chunk));
    this.exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Sends a signal to the daemon (not to a wrapper around it); a process already gone is no error. */
  kill(signal: NodeJS.Signals): void {
    if (this.signalPid === undefined) {
      this.child.kill(signal);
      return;
    }
    try {
      process.kill(this.signalPid, signal);
    } catch {
      // already gone
    }
  }

  /** Waits for a line of its output to match. */
  waitForOutput(re: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
    return waitFor(`${this.name} prints ${re}`, () => {
      if (!this.running && !re.test(this.output)) throw new Error(`${this.name} exited: ${this.output.slice(-2000)}`);
      return re.exec(this.output) ?? undefined;
    }, timeoutMs);
  }

  /** Sends a signal and waits for the exit (SIGKILL after the grace period). */
  async stop(signal: NodeJS.Signals = "SIGTERM", graceMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.running) {
      this.kill(signal);
      const timer = setTimeout(() => this.kill("SIGKILL"), scaled(graceMs));
      const result = await this.exited;
      clearTimeout(timer);
      return result;
    }
    return this.exited;
  }
}

/** Daemons started one by one (outside a Cluster), stopped together, last started first. */
export class Daemons {
  readonly all: Daemon[] = [];

  /** `fleetwatch ARGS` as a daemon. */
  start(name: string, args: string[]): Daemon {
    const d = new Daemon(name, spawn(process.execPath, [cliPath, ...args], { stdio: ["ignore", "pipe", "pipe"] }));
    this.all.push(d);
    return d;
  }

  /** A controller on a free port of this NATS, once it listens. */
  async controller(name: string, natsUrl: string, lease: string, electionLease: string): Promise<{ daemon: Daemon; address: string }> {
    const d = this.start(name, ["controller", "--listen", "127.0.0.1:0", "--nats", natsUrl, "--lease", lease, "--election-lease", electionLease]);
    const [, address] = await d.waitForOutput(/listening on (\S+:\d+)/);
    return { daemon: d, address: address! };
  }

  async stop(): Promise<void> {
    // A stopped process cannot act on SIGTERM: let it run before stopping it.
    for (const d of this.all) if (d.running) d.kill("SIGCONT");
    for (const d of [...this.all].reverse()) await d.stop();
  }
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Collects the output of a started `fleetwatch` command; SIGKILLs it and fails after timeoutMs. */
export function collectCli(child: ChildProcess, args: readonly string[], timeoutMs = 60_000): Promise<CliResult> {
  timeoutMs = scaled(timeoutMs);
  let stdout = "";
  let stderr = "";
  child.stdout?.setEncoding("utf8").on("data", (c: string) => (stdout += c));
  child.stderr?.setEncoding("utf8").on("data", (c: string) => (stderr += c));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`fleetwatch ${args.join(" ")} did not finish within ${timeoutMs} ms; stdout: ${stdout.slice(-1000)} stderr: ${stderr.slice(-1000)}`));
    }, timeoutMs);
    // "close", not "exit": the process may have exited with output still in the pipes (a large
    // `events -o json` on a slow machine), and "close" comes once they are read to the end.
    child.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export interface ClusterOptions {
  /** Host ids of the agents to start; default one agent, "host-a". */
  hosts?: string[];
  /** Labels per host id, as `key=value`. */
  labels?: Record<string, string[]>;
  leaseMs?: number;
  /**
   * NATS with nkey authentication and the generated permissions: seeds for
   * the controller, user "operator" and these agents are written to
   * `credsDir`, and every party started here signs in with its own.
   * Unset: NATS without authentication.
   */
  natsAuth?: { agents: string[] };
  /** The controller and every agent serve /metrics, /healthz and /readyz on a free loopback port (`--metrics-listen 127.0.0.1:0`). */
  metrics?: boolean;
}

/** nats-server + controller + agents, all real. */
export class Cluster {
  controllerAddress = "";
  controller: Daemon | undefined;
  readonly agents = new Map<string, Daemon>();
  /** With `metrics`: the controller's http://host:port/metrics, as it printed it (new after each start). */
  controllerMetricsUrl = "";
  /** With `metrics`: each agent's http://host:port/metrics, as it printed it. */
  readonly agentMetricsUrls = new Map<string, string>();
  private client: ServiceClient<typeof ControllerService> | undefined;

  private constructor(
    public nats: RunningNatsServer,
    readonly dataDir: string,
    private readonly options: ClusterOptions,
  ) {}

  static async start(options: ClusterOptions = {}): Promise<Cluster> {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-test-"));
    const credsDir = path.join(dataDir, "creds");
    if (options.natsAuth) {
      const identities: Identity[] = [{ kind: "controller", name: "controller" }, { kind: "user", name: "operator" }, ...options.natsAuth.agents.map((name) => ({ kind: "agent" as const, name }))];
      for (const identity of identities) await writeNatsSeed(credsDir, identity);
      await writeNatsAuthConfig(credsDir);
    }
    const nats = await startNatsServer({ dataDir: path.join(dataDir, "nats"), ...(options.natsAuth ? { configFile: path.join(credsDir, natsAuthFile) } : {}) }).catch(async (err: unknown) => {
      await rm(dataDir, { recursive: true, force: true });
      throw err;
    });
    const cluster = new Cluster(nats, dataDir, options);
    try {
      await cluster.startController();
      for (const hostId of options.hosts ?? ["host-a"]) await cluster.startAgent(hostId, options.labels?.[hostId] ?? []);
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  get natsUrl(): string {
    return this.nats.url;
  }

  /** Where the nkey seeds and nats-auth.conf are (with natsAuth). */
  get credsDir(): string {
    return path.join(this.dataDir, "creds");
  }

  /** One party's seed file. */
  natsCreds(identity: Identity): string {
    return natsSeedFile(this.credsDir, identity);
  }

  /** `--nats-creds FILE` for a party when NATS is authenticated, else nothing. */
  private natsCredsArgs(identity: Identity): string[] {
    return this.options.natsAuth ? ["--nats-creds", this.natsCreds(identity)] : [];
  }

  /** A gRPC client of the running controller. */
  api(): ServiceClient<typeof ControllerService> {
    this.client ??= createClient(ControllerService, this.controllerAddress);
    return this.client;
  }

  /** Starts the controller on a free port, or again on the same one after stopController; `extraArgs` for this start only (e.g. --keep-finished). */
  async startController(extraArgs: string[] = []): Promise<void> {
    const args = [cliPath, "controller", "--listen", this.controllerAddress || "127.0.0.1:0", "--nats", this.natsUrl, ...this.natsCredsArgs({ kind: "controller", name: "controller" }), ...this.metricsArgs(), ...extraArgs];
    // A long leader lease: a test that pauses the controller (SIGSTOP) is about agent leases, not elections.
    if (this.options.leaseMs) args.push("--lease", `${this.options.leaseMs}ms`, "--election-lease", "30s");
    const daemon = new Daemon("controller", spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] }));
    this.controller = daemon;
    const [, address] = await daemon.waitForOutput(/listening on (\S+:\d+)/);
    if (this.options.metrics) this.controllerMetricsUrl = (await daemon.waitForOutput(/^metrics: (http:\/\/\S+)$/m))[1]!;
    this.client?.close();
    this.client = undefined;
    this.controllerAddress = address!;
  }

  /** `--metrics-listen` on a free loopback port, with `metrics`. */
  private metricsArgs(): string[] {
    return this.options.metrics ? ["--metrics-listen", "127.0.0.1:0"] : [];
  }

  async stopController(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    this.client?.close();
    this.client = undefined;
    await this.controller?.stop(signal);
  }

  /** Starts an agent (with `extraArgs`, e.g. --policy) and waits until the controller lists it as connected. */
  async startAgent(hostId: string, labels: string[] = [], extraArgs: string[] = []): Promise<Daemon> {
    const args = [cliPath, "agent", "--controller", this.controllerAddress, "--nats", this.natsUrl, "--host-id", hostId, "--helper", helperPath, ...this.natsCredsArgs({ kind: "agent", name: hostId }), ...this.metricsArgs(), ...extraArgs];
    for (const label of labels) args.push("--label", label);
    const daemon = new Daemon(`agent ${hostId}`, spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] }));
    this.agents.set(hostId, daemon);
    if (this.options.metrics) this.agentMetricsUrls.set(hostId, (await daemon.waitForOutput(/^metrics: (http:\/\/\S+)$/m))[1]!);
    await this.waitForAgent(hostId);
    return daemon;
  }

  /** Waits until the controller lists the agent as connected. */
  async waitForAgent(hostId: string, timeoutMs = 15_000): Promise<void> {
    await waitFor(`agent ${hostId} connected`, async () => {
      const agent = this.agents.get(hostId);
      if (agent && !agent.running) throw new Error(`agent ${hostId} exited: ${agent.output.slice(-2000)}`);
      const { agents } = await this.api().listAgents({});
      return agents.some((a) => a.info?.hostId === hostId && a.connected);
    }, timeoutMs, 50);
  }

  /** Runs `fleetwatch ARGS` against this cluster and collects its output. */
  cli(args: string[], options: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<CliResult> {
    return collectCli(this.spawnCli(args, options.env), args, options.timeoutMs);
  }

  /** Starts `fleetwatch ARGS` and returns the process. */
  spawnCli(args: string[], env: Record<string, string> = {}): ChildProcess {
    return spawn(process.execPath, [cliPath, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: {
        ...process.env,
        FLEETWATCH_CONTROLLER: this.controllerAddress,
        FLEETWATCH_NATS: this.natsUrl,
        ...(this.options.natsAuth ? { FLEETWATCH_NATS_CREDS: this.natsCreds({ kind: "user", name: "operator" }) } : {}),
        ...env,
      },
    });
  }

  /**
   * Stops nats-server and starts it again on the same port with the same
   * JetStream store (what an upgrade or a crash-restart does); `whileDown`
   * runs in between.
   */
  async restartNats(signal: NodeJS.Signals = "SIGTERM", whileDown: () => Promise<void> = async () => {}): Promise<void> {
    const port = this.nats.port;
    if (signal === "SIGTERM") await this.nats.stop();
    else {
      this.nats.process.kill(signal);
      await new Promise((resolve) => (this.nats.process.exitCode !== null || this.nats.process.signalCode !== null ? resolve(undefined) : this.nats.process.once("exit", resolve)));
    }
    try {
      await whileDown();
    } finally {
      this.nats = await startNatsServer({ dataDir: path.join(this.dataDir, "nats"), port, ...(this.options.natsAuth ? { configFile: path.join(this.credsDir, natsAuthFile) } : {}) });
    }
  }

  /** Stops agents (they disarm), the controller and nats-server; removes the data. */
  async stop(): Promise<void> {
    this.client?.close();
    await Promise.all([...this.agents.values()].map((a) => a.stop()));
    await this.controller?.stop();
    await this.nats.stop();
    await rm(this.dataDir, { recursive: true, force: true });
  }
}
