// A fleet of hosts on one machine for integration tests. Every host is a
// network namespace on a bridge plus a PID and mount namespace with its own
// /proc, so its agent sees only that host's processes; nats-server and the
// controller run in an "infra" namespace that owns the bridge. Addresses
// exist only inside namespaces made here; stop() removes all of it and
// assertClean() proves that nothing is left.
import { execFile, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { access, mkdtemp, readdir, readFile, readlink, rm, stat } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { collectCli, Daemon, type CliResult } from "./cluster.js";
import { cliPath, helperPath } from "./paths.js";
import { buildFixtures, childPids, startTarget, type StartOptions, type Target } from "./targets.js";
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
}

// A private /24 that exists only on the fleet's bridge: the infra namespace
// is .1, host i is .(10 + i). The root namespace has no route into it.
const subnet = "10.91.0";
const firstHostOctet = 10;
// The infra namespace is the fleet's alone, so fixed ports cannot collide
// with anything, and nothing outside has to be asked for a free one.
const natsPort = 4222;
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
 * a test runner that dies leaves no process behind.
 */
export class Box {
  private constructor(
    readonly netns: string,
    readonly init: Target,
    /** `pid:[inode]`, as /proc/PID/ns/pid of its processes reads. */
    readonly pidNamespace: string,
  ) {}

  static async start(netns: string): Promise<Box> {
    const init = await startTarget("idler", [], {
      wrapper: ["ip", "netns", "exec", netns, "unshare", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child", "--"],
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
  constructor(
    readonly id: string,
    readonly labels: readonly string[],
    /** Its address on the fleet's bridge. */
    readonly address: string,
    readonly box: Box,
    readonly agent: Daemon,
    private readonly started: Target[],
  ) {}

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
}

/** nats-server, a controller and K hosts with an agent each, in namespaces of their own. */
export class Fleet {
  readonly hosts = new Map<string, FleetHost>();
  infra: Box | undefined;
  nats: Daemon | undefined;
  controller: Daemon | undefined;
  private readonly targets: Target[] = [];
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
  ) {}

  /** Builds the fixtures, then the network, infra and every host; on any failure stops what it started. */
  static async start(options: FleetOptions): Promise<Fleet> {
    if (options.hosts.length === 0 || options.hosts.length > 200) throw new Error(`a fleet has 1 to 200 hosts, not ${options.hosts.length}`);
    await buildFixtures();
    // Short (link names have 15 bytes), random and of one length (no prefix
    // starts another): parallel runs and leftovers never collide.
    const prefix = `fw${randomBytes(3).toString("hex")}`;
    const fleet = new Fleet(prefix, await mkdtemp(path.join(os.tmpdir(), `fleetwatch-${prefix}-`)));
    try {
      await fleet.startInfra();
      await Promise.all(options.hosts.map((host, index) => fleet.startHost(host, index)));
    } catch (err) {
      await fleet.stop().catch(() => undefined);
      throw err;
    }
    return fleet;
  }

  get infraAddress(): string {
    return `${subnet}.1`;
  }

  /** The controller's address as agents and the CLI (inside the infra namespace) dial it. */
  get controllerAddress(): string {
    return `${this.infraAddress}:${controllerPort}`;
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
    this.nats = await this.infra.daemon("nats-server", ["nats-server", "-js", "-a", this.infraAddress, "-p", String(natsPort), "-sd", path.join(this.dataDir, "nats")]);
    await this.nats.waitForOutput(/Server is ready/, daemonReadyMs);
    this.controller = await this.infra.daemon("controller", [process.execPath, cliPath, "controller", "--listen", this.controllerAddress, "--nats", this.natsUrl]);
    await this.controller.waitForOutput(/listening on \S+:\d+/, daemonReadyMs);
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
    const argv = [process.execPath, cliPath, "agent", "--controller", this.controllerAddress, "--nats", this.natsUrl, "--host-id", options.id, "--helper", helperPath];
    for (const label of labels) argv.push("--label", label);
    // Registered (not just pending) before the host counts: the agent prints this once the controller accepted it.
    const agent = await box.daemon(`agent ${options.id}`, argv);
    this.hosts.set(options.id, new FleetHost(options.id, labels, address, box, agent, this.targets));
    await agent.waitForOutput(/registered with controller/, daemonReadyMs);
  }

  /** Runs `fleetwatch ARGS` in the infra namespace against this fleet and collects its output. */
  cli(args: string[], options: { timeoutMs?: number } = {}): Promise<CliResult> {
    // `ip netns exec` execs the CLI itself, so a timeout's SIGKILL reaches it.
    const child = spawn("ip", ["netns", "exec", this.infraNetns, process.execPath, cliPath, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, FLEETWATCH_CONTROLLER: this.controllerAddress, FLEETWATCH_NATS: this.natsUrl },
    });
    return collectCli(child, args, options.timeoutMs);
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
    await attempt(() => Promise.all([...this.hosts.values()].map((h) => h.agent.stop("SIGTERM", stopGraceMs))));
    await attempt(() => Promise.all(this.targets.map((t) => stopTarget(t))));
    await attempt(async () => this.controller?.stop("SIGTERM", stopGraceMs));
    await attempt(async () => this.nats?.stop("SIGTERM", stopGraceMs));
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
