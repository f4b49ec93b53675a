// One simulated agent for the scale bench: it speaks the real
// AgentService.Session protocol over real gRPC (Register, heartbeats, and
// answers to Discover, Resolve, Arm and Disarm, refusing a deposed leader's
// epoch; reconnecting with backoff) for a made-up host whose processes are
// fake register backends (sim-registers.ts). It sends no hits.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { setTimeout as delay } from "node:timers/promises";
import {
  AgentService,
  MessageQueue,
  Backend,
  EpochGuard,
  PerfValues,
  slotsPerThread,
  type Arm,
  type Disarm,
  type Discover,
  type Resolve,
  type ServiceClient,
  type SessionRequestSchema,
  type SessionResponse,
  type SlotAssignment,
  type TargetSelector,
  unbatched,
} from "../proto/index.js";
import { SimRegisters } from "./sim-registers.js";

type Outbound = MessageInitShape<typeof SessionRequestSchema>;

/** Answers as batch envelopes (SessionRequest.batch). */
const outboundBatches = {
  wrap: (messages: Outbound[]): Outbound => ({ msg: { case: "batch", value: { messages } } }),
  count: (m: Outbound): number => (m.msg?.case === "batch" ? (m.msg.value.messages?.length ?? 0) : 1),
};

// A real agent's reconnect backoff (agent/session-client.ts defaults).
const reconnect = { minBackoffMs: 200, maxBackoffMs: 5_000 } as const;

/** Fake addresses per symbol name, the same on every simulated host: a symbol resolves to one fixed 8-byte variable. */
export class SimSymbols {
  // A typical PIE data segment: user space, 8-byte aligned, far below the address limit.
  private static readonly base = 0x5555_5560_0000n;
  private readonly addresses = new Map<string, bigint>();

  addressOf(name: string): bigint {
    let address = this.addresses.get(name);
    if (address === undefined) {
      address = SimSymbols.base + 8n * BigInt(this.addresses.size);
      this.addresses.set(name, address);
    }
    return address;
  }
}

/** A simulated process: what discovery matches on, and its four registers. */
export interface SimProcess {
  readonly pid: number;
  readonly comm: string;
  readonly exe: string;
  readonly cgroup: string;
  readonly startTime: bigint;
  readonly registers: SimRegisters;
}

/** What every simulated process of the bench looks like; pids are `firstPid`, `firstPid + 1`, ... */
export const simProcessShape = { firstPid: 1001, comm: "simtarget", exe: "/usr/bin/simtarget", cgroupPrefix: "/sim.slice/p" } as const;

/** The pid of the simulated process with this index (0-based). */
export function simPid(index: number): number {
  return simProcessShape.firstPid + index;
}

export interface SimAgentOptions {
  hostId: string;
  labels: Record<string, string>;
  /** Processes on the host, each with its own four registers. */
  processCount: number;
  symbols: SimSymbols;
}

/** Per-agent counters; the fleet sums them. */
export interface SimAgentCounts {
  /** Registered answers received: 1 plus one per reconnect. */
  registrations: number;
  /** Sessions that ended without stop(). */
  sessionEnds: number;
  /** Targets disarmed by the agent itself after a lease without a session. */
  lapsedDisarms: number;
  discovers: number;
  resolves: number;
  heartbeatsSent: number;
  heartbeatAcks: number;
  follows: number;
  unfollows: number;
  /** Commands for a pid this host does not have. */
  unknownPid: number;
  /** Registrations and commands refused for an epoch older than one already seen (fencing). */
  staleEpoch: number;
}

function matchesProcess(selector: TargetSelector | undefined, p: SimProcess): boolean {
  if (!selector) return false;
  if (selector.pid && selector.pid !== p.pid) return false;
  if (selector.exe && selector.exe !== p.exe) return false;
  if (selector.comm && selector.comm !== p.comm) return false;
  if (selector.cgroup && p.cgroup !== selector.cgroup && !p.cgroup.startsWith(`${selector.cgroup.replace(/\/$/, "")}/`)) return false;
  return true;
}

/** One simulated host's session with the controller, reopened with backoff when it ends, like a real agent's. */
export class SimAgent {
  readonly processes: ReadonlyMap<number, SimProcess>;
  readonly counts: SimAgentCounts = {
    registrations: 0,
    sessionEnds: 0,
    lapsedDisarms: 0,
    discovers: 0,
    resolves: 0,
    heartbeatsSent: 0,
    heartbeatAcks: 0,
    follows: 0,
    unfollows: 0,
    unknownPid: 0,
    staleEpoch: 0,
  };
  /** Why the last session ended without stop(), if one did. */
  lastEndReason: string | undefined;
  private readonly stopping = new AbortController();
  // Fencing as a real agent does it: remember the highest leader epoch, refuse commands from older ones.
  private readonly epochs = new EpochGuard();
  /** What is armed, by `jobId/pid`: sent with Register after a reconnect. */
  private readonly armed = new Map<string, { jobId: string; pid: number; slots: SlotAssignment[] }>();
  private outbound: MessageQueue<Outbound> | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private lapseTimer: NodeJS.Timeout | undefined;
  private leaseMs = 0;
  private running: Promise<void> | undefined;

  constructor(private readonly options: SimAgentOptions) {
    const processes = new Map<number, SimProcess>();
    for (let i = 0; i < options.processCount; i++) {
      const pid = simPid(i);
      processes.set(pid, {
        pid,
        comm: simProcessShape.comm,
        exe: simProcessShape.exe,
        cgroup: `${simProcessShape.cgroupPrefix}${i}`,
        startTime: BigInt(1_000 + i),
        registers: new SimRegisters(),
      });
    }
    this.processes = processes;
  }

  get hostId(): string {
    return this.options.hostId;
  }

  /** True while a session is registered. */
  get registered(): boolean {
    return this.outbound !== undefined;
  }

  /** Registers held now over all processes of this host. */
  get slotsHeld(): number {
    let n = 0;
    for (const p of this.processes.values()) n += p.registers.used;
    return n;
  }

  /**
   * Opens the session on `client` (which may carry other agents' sessions
   * too), keeps reopening it until stop(), and resolves once the controller
   * first answered Register.
   */
  start(client: ServiceClient<typeof AgentService>): Promise<void> {
    let first!: () => void;
    const ready = new Promise<void>((resolve) => (first = resolve));
    this.running = this.run(client, first);
    return ready;
  }

  /** Ends the session (the controller sees the stream close) and waits for it. */
  async stop(): Promise<void> {
    this.stopping.abort();
    clearInterval(this.heartbeat);
    clearTimeout(this.lapseTimer);
    this.outbound?.close();
    await this.running;
  }

  private async run(client: ServiceClient<typeof AgentService>, first: () => void): Promise<void> {
    const signal = this.stopping.signal;
    let backoffMs: number = reconnect.minBackoffMs;
    while (!signal.aborted) {
      // Like a real agent: reads batches, and batches its answers once the controller reads them.
      const outbound = new MessageQueue<Outbound>(outboundBatches);
      outbound.push({ msg: { case: "register", value: { info: this.info(), armed: [...this.armed.values()].map((a) => ({ ...a, counts: {} })), readsBatches: true } } });
      try {
        for await (const received of client.session(outbound, { signal })) {
          for (const message of unbatched(received)) {
            if (message.msg.case === "registered") {
              if (!this.epochs.accept(message.msg.value.epoch)) this.counts.staleEpoch++;
              outbound.batching = message.msg.value.readsBatches;
              this.onRegistered(outbound, message.msg.value.heartbeatMs, message.msg.value.leaseMs);
              backoffMs = reconnect.minBackoffMs;
              first();
            } else {
              this.onCommand(message);
            }
          }
        }
        if (!signal.aborted) this.lastEndReason = "the controller closed the session";
      } catch (err) {
        if (!signal.aborted) this.lastEndReason = err instanceof Error ? err.message : String(err);
      } finally {
        clearInterval(this.heartbeat);
        if (this.outbound === outbound) this.outbound = undefined;
        outbound.close();
      }
      if (signal.aborted) break;
      this.counts.sessionEnds++;
      this.startLapseTimer();
      // Jitter spreads the reconnects of thousands of agents dropped at once.
      await delay(backoffMs * (0.5 + Math.random()), undefined, { signal }).catch(() => {});
      backoffMs = Math.min(reconnect.maxBackoffMs, backoffMs * 2);
    }
  }

  private onRegistered(outbound: MessageQueue<Outbound>, heartbeatMs: number, leaseMs: number): void {
    this.counts.registrations++;
    this.outbound = outbound;
    this.leaseMs = leaseMs;
    clearTimeout(this.lapseTimer);
    this.lapseTimer = undefined;
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => {
      this.counts.heartbeatsSent++;
      this.send({ msg: { case: "heartbeat", value: { sentUnixMs: BigInt(Date.now()) } } });
    }, Math.max(50, heartbeatMs || 5_000));
  }

  /** Without a session for a lease a real agent disarms everything itself; the controller re-arms on return. */
  private startLapseTimer(): void {
    if (this.leaseMs <= 0 || this.lapseTimer) return;
    this.lapseTimer = setTimeout(() => {
      this.lapseTimer = undefined;
      if (this.outbound || this.stopping.signal.aborted) return;
      for (const a of this.armed.values()) {
        this.processes.get(a.pid)?.registers.disarm(a.jobId);
        this.counts.lapsedDisarms++;
      }
      this.armed.clear();
    }, this.leaseMs);
  }

  private onCommand(message: SessionResponse): void {
    switch (message.msg.case) {
      case "heartbeatAck":
        this.counts.heartbeatAcks++;
        return;
      case "discover":
        this.discover(message.msg.value);
        return;
      case "resolve":
        this.resolve(message.msg.value);
        return;
      case "arm":
        this.arm(message.msg.value);
        return;
      case "disarm":
        this.disarm(message.msg.value);
        return;
      case "follow":
        this.counts.follows++;
        return;
      case "unfollow":
        this.counts.unfollows++;
        return;
      default:
        return;
    }
  }

  private info() {
    return {
      hostId: this.options.hostId,
      labels: this.options.labels,
      hostname: this.options.hostId,
      kernel: "sim",
      arch: "x86_64",
      slotsPerThread,
      agentVersion: "bench-sim",
      helperVersion: "bench-sim",
      // Like a real host: both backends, perf values read after the trap.
      backends: [Backend.PTRACE, Backend.PERF],
      perfValues: PerfValues.AFTER_TRAP,
    };
  }

  private send(message: Outbound): void {
    this.outbound?.push(message);
  }

  private discover(request: Discover): void {
    this.counts.discovers++;
    // Like a real agent, the lookups the request carries are answered for each process.
    const processes = [...this.processes.values()]
      .filter((p) => matchesProcess(request.selector, p))
      .map((p) => ({ pid: p.pid, comm: p.comm, exe: p.exe, startTime: p.startTime, resolved: request.resolve.map((r) => this.lookup({ ...r, pid: p.pid })) }));
    this.send({ msg: { case: "discoverResult", value: { requestId: request.requestId, processes } } });
  }

  private resolve(request: Resolve): void {
    this.counts.resolves++;
    this.send({ msg: { case: "resolveResult", value: { requestId: request.requestId, ...this.lookup(request) } } });
  }

  /** A symbol's or an address's answer in one process. */
  private lookup(request: Pick<Resolve, "pid" | "symbol" | "offset" | "address" | "length">) {
    if (!this.processes.has(request.pid)) {
      this.counts.unknownPid++;
      return { error: { errnoName: "ESRCH", message: `no process ${request.pid} on ${this.hostId}` } };
    }
    // A watch by address: every simulated process has it mapped.
    if (request.symbol === "") return { address: request.address, size: BigInt(request.length), module: "[heap]" };
    return { address: this.options.symbols.addressOf(request.symbol) + request.offset, size: 8n, module: simProcessShape.exe };
  }

  /** A fencing refusal, as a real agent words it. */
  private stale(epoch: bigint) {
    this.counts.staleEpoch++;
    return { errnoName: "ESTALE", message: `command from leader epoch ${epoch}, but epoch ${this.epochs.highest} already leads: refused` };
  }

  private arm(request: Arm): void {
    const reply = { requestId: request.requestId, jobId: request.jobId, pid: request.pid };
    if (!this.epochs.accept(request.epoch)) {
      this.send({ msg: { case: "armResult", value: { ...reply, error: this.stale(request.epoch) } } });
      return;
    }
    const target = this.processes.get(request.pid);
    if (!target) {
      this.counts.unknownPid++;
      this.send({ msg: { case: "armResult", value: { ...reply, error: { errnoName: "ESRCH", message: `no process ${request.pid} on ${this.hostId}` } } } });
      return;
    }
    // Like a real agent: UNSPECIFIED is taken as ptrace.
    const backend = request.backend === Backend.PERF ? "perf" : "ptrace";
    const refusal = target.registers.arm(request.jobId, request.slots.map((s) => s.dr), backend);
    if (refusal) {
      this.send({ msg: { case: "armResult", value: { ...reply, error: refusal, reservedMask: target.registers.reservedMask } } });
      return;
    }
    this.armed.set(`${request.jobId}/${request.pid}`, { jobId: request.jobId, pid: request.pid, slots: request.slots });
    // Values are read at the trap with ptrace; with perf after it, as info() says.
    const armed = { backend: backend === "perf" ? Backend.PERF : Backend.PTRACE, valuesExact: backend === "ptrace" };
    this.send({ msg: { case: "armResult", value: { ...reply, ...armed, threadsTotal: 1, threadsArmed: 1, slots: request.slots, reservedMask: target.registers.reservedMask } } });
  }

  private disarm(request: Disarm): void {
    const reply = { requestId: request.requestId, jobId: request.jobId, pid: request.pid };
    if (!this.epochs.accept(request.epoch)) {
      this.send({ msg: { case: "disarmResult", value: { ...reply, error: this.stale(request.epoch) } } });
      return;
    }
    const target = this.processes.get(request.pid);
    const refusal = target ? target.registers.disarm(request.jobId) : { errnoName: "ESRCH", message: `no process ${request.pid} on ${this.hostId}` };
    if (!target) this.counts.unknownPid++;
    this.armed.delete(`${request.jobId}/${request.pid}`);
    this.send({ msg: { case: "disarmResult", value: { ...reply, counts: {}, reservedMask: target?.registers.reservedMask ?? 0, ...(refusal ? { error: refusal } : {}) } } });
  }
}
