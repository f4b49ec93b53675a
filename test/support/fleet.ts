// A fleet of hosts on one machine for integration tests. Every host is a
// network namespace on a bridge plus a PID and mount namespace with its own
// /proc, so its agent sees only that host's processes; nats-server and the
// controller run in an "infra" namespace that owns the bridge. Addresses
// exist only inside namespaces made here; stop() removes all of it and
// assertClean() proves that nothing is left. Every gRPC link is mutual TLS
// and every NATS connection signs in with its party's nkey under the
// generated permissions, as in production: a CA, certificates and nkey
// seeds for the controller, each agent and a user are issued at start.
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { access, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { caCertFile, certificateBaseName, createAuthority, issueCertificate, writeIssued } from "../../cli/certificates.js";
import { natsAuthFile, natsSeedFile, writeNatsAuthConfig, writeNatsSeed } from "../../cli/nats-credentials.js";
import { fromJsonString } from "@bufbuild/protobuf";
import { JobSchema, type Identity, type Job } from "../../proto/index.js";
import { collectCli, Daemon, type CliResult } from "./cluster.js";
import { cliPath, helperPath, jobFollowerPath } from "./paths.js";
import { buildFixtures, childPids, procState, startTarget, type StartOptions, type Target } from "./targets.js";
import { waitFor } from "./wait.js";

const execFileAsync = promisify(execFile);

/** One host of the fleet. */
export interface FleetHostOptions {
  /** The agent's --host-id. */
  id: string;
  /** The agent's labels, `key=value`. */
  labels?: string[];
}

export interface FleetOptions {
  hosts: FleetHostOptions[];
  /** The controller's agent session lease (`--lease`); its default when unset. */
  leaseMs?: number;
  /** How long a standby waits for a silent leader (`--election-lease`); its default when unset. */
  electionLeaseMs?: number;
  /**
   * How many controller addresses agents and the CLI are given (default 1).
   * Only the first controller starts with the fleet; startController(i)
   * starts the others, e.g. a standby for a failover.
   */
  controllers?: number;
  /** Users to issue certificates for besides `operator` (every user is an admin unless accessPolicy says otherwise). */
  users?: string[];
  /** The controllers' access policy (`--access-policy`), as the file's JSON. */
  accessPolicy?: unknown;
}

// A private /24 that exists only on the fleet's bridge: the infra namespace
// is .1, host i is .(10 + i). The root namespace has no route into it.
const subnet = "10.91.0";
const firstHostOctet = 10;
// The infra namespace is the fleet's alone, so fixed ports cannot collide
// with anything, and nothing outside has to be asked for a free one.
const natsPort = 4222;
/** Controller i listens on this port + i. */
const controllerPort = 7070;

// How long a process gets between SIGTERM and SIGKILL at teardown; an agent
// uses it to disarm and detach.
const stopGraceMs = 15_000;
// How long nats-server, the controller or an agent may take to say it is ready.
const daemonReadyMs = 20_000;

async function ip(...args: string[]): Promise<void> {
  await execFileAsync("ip", args);
}

/** Whether a path exists. */
async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

/**
 * A network namespace with a PID and mount namespace (own /proc) inside,
 * whose pid 1 is an idler that ends — and with it every process in the PID
 * namespace — when told "exit" or when our end of its stdin closes, so even
 * a test runner that dies leaves no process behind. Without a network
 * namespace the box shares ours: its processes see only each other, and
 * reach (and are reached on) our loopback.
 */
export class Box {
  private constructor(
    readonly netns: string | undefined,
    readonly init: Target,
    /** `pid:[inode]`, as /proc/PID/ns/pid of its processes reads. */
    readonly pidNamespace: string,
  ) {}

  static async start(netns?: string): Promise<Box> {
    const init = await startTarget("idler", [], {
      wrapper: [...(netns === undefined ? [] : ["ip", "netns", "exec", netns]), "unshare", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child", "--"],
      inPidNamespace: true,
    });
    try {
      return new Box(netns, init, await readlink(`/proc/${init.rootPid}/ns/pid`));
    } catch (err) {
      await init.kill();
      throw err;
    }
  }

  /** ARGV run inside this box's namespaces (nsenter forks it into the PID namespace). */
  enter(argv: readonly string[]): string[] {
    return ["nsenter", "--target", String(this.init.rootPid), "--pid", "--mount", "--net", "--", ...argv];
  }

  /** Starts a daemon inside; signals reach the daemon, not nsenter. */
  async daemon(name: string, argv: readonly string[]): Promise<Daemon> {
    const [command, ...args] = this.enter(argv);
    const daemon = new Daemon(name, spawn(command!, args, { stdio: ["ignore", "pipe", "pipe"] }));
    const wrapperPid = daemon.child.pid;
    if (wrapperPid === undefined) throw new Error(`${name}: nsenter did not start: ${daemon.output}`);
    daemon.signalPid = await waitFor(`${name} forked by nsenter`, async () => {
      if (!daemon.running) throw new Error(`${name} exited: ${daemon.output.slice(-2000)}`);
      return (await childPids(wrapperPid))[0];
    });
    return daemon;
  }

  /** A fixture started inside; its `pid` is the one seen in this box. */
  startTarget(name: string, args: string[] = [], options: Omit<StartOptions, "wrapper" | "inPidNamespace"> = {}): Promise<Target> {
    return startTarget(name, args, { ...options, wrapper: this.enter([]), inPidNamespace: true });
  }

  /** Root-namespace pids of every process in its PID namespace. */
  async processes(): Promise<number[]> {
    return pidsWhere(async (pid) => (await readlink(`/proc/${pid}/ns/pid`)) === this.pidNamespace);
  }

  /**
   * Ends pid 1 (the kernel then kills whatever is still inside) and waits
   * for it; SIGKILL if it does not go.
   */
  async stop(): Promise<void> {
    this.init.send("exit");
    await this.init.waitForExit(stopGraceMs).catch(() => this.init.kill());
  }
}

/** Pids of the processes in our /proc for which `test` holds; processes that vanish meanwhile are skipped. */
async function pidsWhere(test: (pid: number) => Promise<boolean>): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (await test(pid).catch(() => false)) found.push(pid);
  }
  return found;
}

/** A host of a running fleet: its namespaces and its agent. */
export class FleetHost {
  private current: Daemon | undefined;
  private incarnations = 0;

  constructor(
    readonly id: string,
    readonly labels: readonly string[],
    /** Its address on the fleet's bridge. */
    readonly address: string,
    readonly box: Box,
    private readonly agentArgv: readonly string[],
    /** The bridge's end of its veth pair, in the infra namespace. */
    private readonly link: { netns: string; name: string },
    private readonly started: Target[],
  ) {}

  /** Its agent as last started. */
  get agent(): Daemon {
    if (!this.current) throw new Error(`host ${this.id}: no agent started`);
    return this.current;
  }

  /** Whether an agent was ever started (a fleet that failed to start may have none). */
  get hasAgent(): boolean {
    return this.current !== undefined;
  }

  /**
   * Starts its agent (again, after killAgent) with the same command line and
   * waits until it says it registered with a controller.
   */
  async startAgent(): Promise<Daemon> {
    if (this.current?.running) throw new Error(`host ${this.id}: its agent is still running`);
    this.incarnations += 1;
    const agent = await this.box.daemon(`agent ${this.id}${this.incarnations > 1 ? ` (start ${this.incarnations})` : ""}`, this.agentArgv);
    this.current = agent;
    await agent.waitForOutput(/registered with controller/, daemonReadyMs);
    return agent;
  }

  /** Sends its agent a signal and waits for it to exit (SIGKILL after the grace period). */
  async killAgent(signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await this.current?.stop(signal, stopGraceMs);
  }

  /**
   * Sets the bridge's end of its link down or up: down, nothing reaches the
   * host or leaves it (a partition; its own interface stays configured),
   * up, the host is back on the network.
   */
  async setLink(state: "down" | "up"): Promise<void> {
    await ip("-n", this.link.netns, "link", "set", this.link.name, state);
  }

  /**
   * Starts a built fixture on this host and waits for its "ready" line:
   * `pid` is as this host (and its agent) sees it, `rootPid` as we do.
   * The fleet stops it at teardown if the test did not.
   */
  async startTarget(name: string, args: string[] = [], options: Omit<StartOptions, "wrapper" | "inPidNamespace"> = {}): Promise<Target> {
    const target = await this.box.startTarget(name, args, options);
    this.started.push(target);
    return target;
  }

  /** Root-namespace pids of every process on this host (its pid 1, agent, helper, targets). */
  processes(): Promise<number[]> {
    return this.box.processes();
  }

  /** Root-namespace pids of the live (not zombie) processes on this host named `name` (the kernel's comm keeps 15 bytes of it). */
  async processesNamed(name: string): Promise<number[]> {
    const found: number[] = [];
    for (const pid of await this.processes()) {
      const [comm, state] = await Promise.all([readFile(`/proc/${pid}/comm`, "utf8").catch(() => ""), procState(pid)]);
      if (comm.trim() === name.slice(0, 15) && state !== undefined && state !== "Z") found.push(pid);
    }
    return found;
  }
}

/** nats-server, a controller and K hosts with an agent each, in namespaces of their own. */
/** A job's states in the order the controller sent them, each with when it arrived. */
export class JobFollower {
  readonly states: Array<{ atMs: number; job: Job }> = [];
  private partial = "";

  constructor(readonly daemon: Daemon) {
    daemon.child.stdout?.on("data", (chunk: Buffer | string) => {
      const lines = (this.partial + chunk.toString()).split("\n");
      this.partial = lines.pop() ?? "";
      for (const line of lines) if (line.trim() !== "") this.states.push({ atMs: Date.now(), job: fromJsonString(JobSchema, line) });
    });
  }

  get latest(): Job | undefined {
    return this.states.at(-1)?.job;
  }
}

export class Fleet {
  readonly hosts = new Map<string, FleetHost>();
  infra: Box | undefined;
  nats: Daemon | undefined;
  /** The controller last started at each address index. */
  readonly controllers: Array<Daemon | undefined> = [];
  private readonly targets: Target[] = [];
  /** Every nats-server and controller ever started, so teardown stops each one still running. */
  private readonly infraDaemons: Daemon[] = [];
  /** Every network namespace made, in order of creation, with its `net:[inode]`. */
  private readonly netnsMade = new Map<string, string>();
  /** Every box started; the `pid:[inode]` of each is kept apart so it outlives the box. */
  private readonly boxes: Box[] = [];
  private readonly pidNamespaces = new Set<string>();
  private stopping: Promise<void> | undefined;

  private constructor(
    /** Starts the name of everything this fleet makes: namespaces, links, its temp dir. */
    readonly prefix: string,
    readonly dataDir: string,
    private readonly options: FleetOptions,
  ) {}

  /** Builds the fixtures, then the network, infra and every host; on any failure stops what it started. */
  static async start(options: FleetOptions): Promise<Fleet> {
    if (options.hosts.length === 0 || options.hosts.length > 200) throw new Error(`a fleet has 1 to 200 hosts, not ${options.hosts.length}`);
    await buildFixtures();
    // Short (link names have 15 bytes), random and of one length (no prefix
    // starts another): parallel runs and leftovers never collide.
    const prefix = `fw${randomBytes(3).toString("hex")}`;
    const controllers = options.controllers ?? 1;
    if (!Number.isInteger(controllers) || controllers < 1 || controllers > 9) throw new Error(`a fleet has 1 to 9 controller addresses, not ${controllers}`);
    const fleet = new Fleet(prefix, await mkdtemp(path.join(os.tmpdir(), `fleetwatch-${prefix}-`)), options);
    try {
      await fleet.issueCertificates();
      await fleet.startInfra();
      await Promise.all(options.hosts.map((host, index) => fleet.startHost(host, index)));
    } catch (err) {
      await fleet.stop().catch(() => undefined);
      throw err;
    }
    return fleet;
  }

  /** The fleet's CA and certificates (ca.crt, controller.crt, agent-ID.crt, user-operator.crt, and keys), nkey seeds and nats-auth.conf. */
  get certDir(): string {
    return path.join(this.dataDir, "certs");
  }

  /** The --ca/--cert/--key arguments of one party. */
  tlsArgs(identity: Identity): string[] {
    const base = path.join(this.certDir, certificateBaseName(identity));
    return ["--ca", path.join(this.certDir, caCertFile), "--cert", `${base}.crt`, "--key", `${base}.key`];
  }

  /** One party's NATS nkey seed file. */
  natsCreds(identity: Identity): string {
    return natsSeedFile(this.certDir, identity);
  }

  private async issueCertificates(): Promise<void> {
    const ca = await createAuthority(`fleetwatch test CA ${this.prefix}`);
    await writeIssued(this.certDir, ca, "ca");
    const users = ["operator", ...(this.options.users ?? [])];
    const identities: Identity[] = [{ kind: "controller", name: "controller" }, ...users.map((name) => ({ kind: "user" as const, name })), ...this.options.hosts.map((h) => ({ kind: "agent" as const, name: h.id }))];
    for (const identity of identities) {
      const issued = await issueCertificate(ca, identity);
      await writeIssued(this.certDir, issued, certificateBaseName(identity));
      await writeNatsSeed(this.certDir, identity);
    }
    await writeNatsAuthConfig(this.certDir);
  }

  get infraAddress(): string {
    return `${subnet}.1`;
  }

  /** The first controller's address as agents and the CLI (inside the infra namespace) dial it. */
  get controllerAddress(): string {
    return this.controllerAddressOf(0);
  }

  /** Controller i's address. */
  controllerAddressOf(index: number): string {
    return `${this.infraAddress}:${controllerPort + index}`;
  }

  /** Every controller address, comma-separated, as agents and the CLI are given them. */
  get controllerAddresses(): string {
    return Array.from({ length: this.options.controllers ?? 1 }, (_, i) => this.controllerAddressOf(i)).join(",");
  }

  /** The first controller as last started. */
  get controller(): Daemon | undefined {
    return this.controllers[0];
  }

  get natsUrl(): string {
    return `nats://${this.infraAddress}:${natsPort}`;
  }

  get infraNetns(): string {
    return `${this.prefix}-infra`;
  }

  host(id: string): FleetHost {
    const host = this.hosts.get(id);
    if (!host) throw new Error(`no host ${id} in this fleet (${[...this.hosts.keys()].join(", ")})`);
    return host;
  }

  private async addNetns(name: string): Promise<void> {
    await ip("netns", "add", name);
    this.netnsMade.set(name, `net:[${(await stat(`/run/netns/${name}`)).ino}]`);
    await ip("-n", name, "link", "set", "lo", "up");
  }

  private async addBox(netns: string): Promise<Box> {
    const box = await Box.start(netns);
    this.boxes.push(box);
    this.pidNamespaces.add(box.pidNamespace);
    return box;
  }

  private async startInfra(): Promise<void> {
    const ns = this.infraNetns;
    await this.addNetns(ns);
    const bridge = `${this.prefix}br`;
    await ip("-n", ns, "link", "add", bridge, "type", "bridge");
    await ip("-n", ns, "addr", "add", `${this.infraAddress}/24`, "dev", bridge);
    await ip("-n", ns, "link", "set", bridge, "up");
    this.infra = await this.addBox(ns);
    await this.startNats();
    await this.startController(0);
  }

  /** Starts nats-server in the infra namespace on its port, with the fleet's JetStream store and its parties' permissions. */
  private async startNats(): Promise<void> {
    const argv = ["nats-server", "-js", "-a", this.infraAddress, "-p", String(natsPort), "-sd", path.join(this.dataDir, "nats"), "-c", path.join(this.certDir, natsAuthFile)];
    const nats = await this.infraBox().daemon("nats-server", argv);
    this.infraDaemons.push(nats);
    this.nats = nats;
    await nats.waitForOutput(/Server is ready/, daemonReadyMs);
  }

  /**
   * Stops nats-server (SIGTERM: a clean shutdown; SIGKILL: a crash) and
   * starts it again on the same port with the same JetStream store.
   */
  async restartNats(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    await this.nats?.stop(signal, stopGraceMs);
    await this.startNats();
  }

  private infraBox(): Box {
    if (!this.infra) throw new Error(`fleet ${this.prefix}: no infra namespace`);
    return this.infra;
  }

  /**
   * Starts controller `index` (0 is the one the fleet starts with) on its
   * address, with the fleet's leases, and waits until it listens (it has
   * decided whether it leads or stands by).
   */
  async startController(index = 0): Promise<Daemon> {
    if (index >= (this.options.controllers ?? 1)) throw new Error(`fleet ${this.prefix} has ${this.options.controllers ?? 1} controller address(es); no controller ${index}`);
    if (this.controllers[index]?.running) throw new Error(`controller ${index} is still running`);
    const argv = [process.execPath, cliPath, "controller", "--listen", this.controllerAddressOf(index), "--nats", this.natsUrl, "--nats-creds", this.natsCreds({ kind: "controller", name: "controller" }), ...this.tlsArgs({ kind: "controller", name: "controller" })];
    if (this.options.leaseMs !== undefined) argv.push("--lease", `${this.options.leaseMs}ms`);
    if (this.options.electionLeaseMs !== undefined) argv.push("--election-lease", `${this.options.electionLeaseMs}ms`);
    if (this.options.accessPolicy !== undefined) {
      const file = path.join(this.dataDir, "access-policy.json");
      await writeFile(file, JSON.stringify(this.options.accessPolicy));
      argv.push("--access-policy", file);
    }
    const controller = await this.infraBox().daemon(index === 0 ? "controller" : `controller ${index}`, argv);
    this.infraDaemons.push(controller);
    this.controllers[index] = controller;
    await controller.waitForOutput(/listening on \S+:\d+/, daemonReadyMs);
    return controller;
  }

  /** Sends controller `index` a signal and waits for it to exit (SIGKILL after the grace period). */
  async killController(index = 0, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    await this.controllers[index]?.stop(signal, stopGraceMs);
  }

  private async startHost(options: FleetHostOptions, index: number): Promise<void> {
    const ns = `${this.prefix}-h${index}`;
    const address = `${subnet}.${firstHostOctet + index}`;
    const port = `${this.prefix}v${index}`;
    await this.addNetns(ns);
    await ip("-n", this.infraNetns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns);
    await ip("-n", this.infraNetns, "link", "set", port, "master", `${this.prefix}br`, "up");
    await ip("-n", ns, "addr", "add", `${address}/24`, "dev", "eth0");
    await ip("-n", ns, "link", "set", "eth0", "up");
    const box = await this.addBox(ns);
    const labels = options.labels ?? [];
    const argv = [process.execPath, cliPath, "agent", "--controller", this.controllerAddresses, "--nats", this.natsUrl, "--host-id", options.id, "--helper", helperPath, "--nats-creds", this.natsCreds({ kind: "agent", name: options.id }), ...this.tlsArgs({ kind: "agent", name: options.id })];
    for (const label of labels) argv.push("--label", label);
    const host = new FleetHost(options.id, labels, address, box, argv, { netns: this.infraNetns, name: port }, this.targets);
    this.hosts.set(options.id, host);
    // Registered (not just pending) before the host counts: the agent prints this once the controller accepted it.
    await host.startAgent();
  }

  /** The environment a client in the infra namespace signs in with, as `as`. */
  private clientEnv(as: Identity): NodeJS.ProcessEnv {
    const [, ca, , cert, , key] = this.tlsArgs(as);
    return { ...process.env, FLEETWATCH_CONTROLLER: this.controllerAddresses, FLEETWATCH_NATS: this.natsUrl, FLEETWATCH_NATS_CREDS: this.natsCreds(as), FLEETWATCH_CA: ca, FLEETWATCH_CERT: cert, FLEETWATCH_KEY: key };
  }

  /** Runs `fleetwatch ARGS` in the infra namespace against this fleet and collects its output. */
  cli(args: string[], options: { timeoutMs?: number; as?: Identity } = {}): Promise<CliResult> {
    // `ip netns exec` execs the CLI itself, so a timeout's SIGKILL reaches it.
    const child = spawn("ip", ["netns", "exec", this.infraNetns, process.execPath, cliPath, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: this.clientEnv(options.as ?? { kind: "user", name: "operator" }),
    });
    return collectCli(child, args, options.timeoutMs);
  }

  /**
   * Every state of a job as the controller streams it (WatchJob), from one
   * client in the infra namespace: what a test that watches a job through
   * faults looks at, instead of a CLI process per look. Ends with the job,
   * or with the fleet.
   */
  followJob(id: string): JobFollower {
    const child = spawn("ip", ["netns", "exec", this.infraNetns, process.execPath, jobFollowerPath, id], { stdio: ["pipe", "pipe", "pipe"], env: this.clientEnv({ kind: "user", name: "operator" }) });
    const follower = new JobFollower(new Daemon(`job follower ${id}`, child));
    this.infraDaemons.push(follower.daemon);
    return follower;
  }

  /** Stops everything, removes namespaces, links and data. Safe to call twice and after a failed start. */
  stop(): Promise<void> {
    this.stopping ??= this.teardown();
    return this.stopping;
  }

  private async teardown(): Promise<void> {
    const errors: unknown[] = [];
    const attempt = async (step: () => Promise<unknown>): Promise<void> => {
      try {
        await step();
      } catch (err) {
        errors.push(err);
      }
    };
    // A stopped process cannot act on SIGTERM: let everything in our PID namespaces run first.
    await attempt(async () => {
      for (const pid of await this.processesInBoxes()) {
        try {
          process.kill(pid, "SIGCONT");
        } catch {
          // gone
        }
      }
    });
    // Agents first: they disarm and detach every target before anything else goes.
    await attempt(() => Promise.all([...this.hosts.values()].filter((h) => h.hasAgent).map((h) => h.agent.stop("SIGTERM", stopGraceMs))));
    await attempt(() => Promise.all(this.targets.map((t) => stopTarget(t))));
    // Controllers (any still running, standbys too) before the nats-server they use.
    const [natsDaemons, controllers] = [this.infraDaemons.filter((d) => d.name === "nats-server"), this.infraDaemons.filter((d) => d.name !== "nats-server")];
    await attempt(() => Promise.all(controllers.map((d) => d.stop("SIGTERM", stopGraceMs))));
    await attempt(() => Promise.all(natsDaemons.map((d) => d.stop("SIGTERM", stopGraceMs))));
    // Hosts first, infra last; a box ends whatever is still inside it (e.g. after a start that failed midway).
    await attempt(() => Promise.all(this.boxes.filter((b) => b !== this.infra).map((b) => b.stop())));
    await attempt(async () => this.infra?.stop());
    await attempt(() => waitFor(`fleet ${this.prefix}: no process left in its PID namespaces`, async () => (await this.processesInBoxes()).length === 0, stopGraceMs));
    for (const ns of [...this.netnsMade.keys()].reverse()) {
      await attempt(async () => {
        if (await exists(`/run/netns/${ns}`)) await ip("netns", "delete", ns);
      });
    }
    await attempt(() => rm(this.dataDir, { recursive: true, force: true }));
    if (errors.length > 0) throw new AggregateError(errors, `fleet ${this.prefix}: teardown failed in ${errors.length} step(s)`);
  }

  /** Root-namespace pids of every process in a PID namespace of this fleet. */
  private processesInBoxes(): Promise<number[]> {
    return pidsWhere(async (pid) => this.pidNamespaces.has(await readlink(`/proc/${pid}/ns/pid`)));
  }

  /**
   * Throws naming every leftover: a network namespace or link with this
   * fleet's prefix, a process in one of its namespaces or with the prefix on
   * its command line, or its temp dir.
   */
  async assertClean(): Promise<void> {
    const leftovers: string[] = [];
    const { stdout: netns } = await execFileAsync("ip", ["netns", "list"]);
    for (const line of netns.split("\n")) if (line.startsWith(this.prefix)) leftovers.push(`network namespace ${line.split(" ")[0]}`);
    const { stdout: links } = await execFileAsync("ip", ["-o", "link", "show"]);
    for (const line of links.split("\n")) if (line.includes(this.prefix)) leftovers.push(`link ${line.split(":")[1]?.trim()}`);
    const netInodes = new Set(this.netnsMade.values());
    const processes = await pidsWhere(async (pid) => {
      if (pid === process.pid) return false;
      const [net, pidNs, cmdline] = await Promise.all([readlink(`/proc/${pid}/ns/net`), readlink(`/proc/${pid}/ns/pid`), readFile(`/proc/${pid}/cmdline`, "utf8")]);
      return netInodes.has(net) || this.pidNamespaces.has(pidNs) || cmdline.includes(this.prefix);
    });
    for (const pid of processes) {
      const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
      leftovers.push(`process ${pid} (${cmdline.split("\0").join(" ").trim()})`);
    }
    if (await exists(this.dataDir)) leftovers.push(`temp dir ${this.dataDir}`);
    if (leftovers.length > 0) throw new Error(`fleet ${this.prefix} left behind: ${leftovers.join("; ")}`);
  }
}

/** SIGCONT, SIGTERM with a grace, then SIGKILL: a target the test left running. */
async function stopTarget(target: Target): Promise<void> {
  if (target.child.exitCode !== null || target.child.signalCode !== null) return;
  for (const signal of ["SIGCONT", "SIGTERM"] as const) {
    try {
      process.kill(target.rootPid, signal);
    } catch {
      // gone
    }
  }
  await target.waitForExit(stopGraceMs).catch(() => target.kill());
}
