// Many simulated agents in this one Node process for the scale bench: hosts
// `sim-00001` ... with labels, spread over gRPC channels (N sessions share
// one channel, i.e. one HTTP/2 connection), connected with bounded
// concurrency, with their counters summed.
import { setTimeout as delay } from "node:timers/promises";
import { AgentService, createClient, type ServiceClient } from "../proto/index.js";
import { BenchInterruptedError, BenchTimeoutError, until } from "./processes.js";
import { SimAgent, SimSymbols } from "./sim-agent.js";

export interface SimFleetOptions {
  /** The controller's host:port. */
  address: string;
  agents: number;
  /** Processes per host (each its own four registers). */
  processesPerAgent: number;
  /** Sessions per gRPC channel; 1 = a connection per agent. */
  agentsPerChannel: number;
  /** Registrations in flight at once while connecting. */
  connectConcurrency: number;
  /** Per agent: how long the controller may take to answer Register. */
  registerTimeoutMs: number;
  signal: AbortSignal;
  /** Called every few hundred registrations with the count so far. */
  progress?: (registered: number) => void;
}

/** What every simulated agent did, summed. */
export interface SimFleetTotals {
  agents: number;
  channels: number;
  discovers: number;
  resolves: number;
  arms: number;
  disarms: number;
  /** Arms refused by the fake registers, by errno name (EBUSY = a register handed out twice, ENOSPC = a perf arm on a register ptrace reserved). */
  refused: Record<string, number>;
  slotsHeld: number;
  /** Most registers in use at once in any one process. */
  peakSlotsPerProcess: number;
  heartbeatsSent: number;
  heartbeatAcks: number;
  follows: number;
  unknownPid: number;
  staleEpoch: number;
  /** Sessions that ended without the bench stopping them (each then reconnects), with a sample reason. */
  sessionEnds: number;
  sessionEndSample: string | undefined;
  /** Registrations after the first, i.e. reconnects that succeeded. */
  reregistrations: number;
  /** Targets the agents disarmed themselves after a lease without a session. */
  lapsedDisarms: number;
  /** Agents without a registered session right now. */
  unregistered: number;
}

/** Zero-padded host ids sort like their numbers (the controller sorts by host id). */
export function simHostId(index: number, agents: number): string {
  return `sim-${String(index + 1).padStart(Math.max(5, String(agents).length), "0")}`;
}

/** Labels of simulated host `index`, for label-selector jobs later: a role, a zone, and `sim=1` on all. */
export function simLabels(index: number): Record<string, string> {
  return { sim: "1", role: index % 2 === 0 ? "db" : "web", zone: ["a", "b", "c"][index % 3] as string };
}

async function runBounded(count: number, concurrency: number, work: (index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(concurrency, count) }, async () => {
    while (next < count) await work(next++);
  });
  await Promise.all(lanes);
}

/** K simulated agents connected to one controller. */
export class SimFleet {
  readonly symbols = new SimSymbols();
  readonly agents: SimAgent[] = [];
  private readonly clients: Array<ServiceClient<typeof AgentService>> = [];

  private constructor(readonly options: SimFleetOptions) {}

  /** Creates the agents and waits until every one is registered; stops them all if one fails. */
  static async connect(options: SimFleetOptions): Promise<SimFleet> {
    const fleet = new SimFleet(options);
    const channels = Math.ceil(options.agents / options.agentsPerChannel);
    for (let c = 0; c < channels; c++) {
      // A local subchannel pool gives this client its own connection: by
      // default grpc-js would put every client with the same target and
      // options on one shared connection.
      fleet.clients.push(createClient(AgentService, options.address, undefined, { "grpc.use_local_subchannel_pool": 1 }));
    }
    for (let i = 0; i < options.agents; i++) {
      fleet.agents.push(new SimAgent({ hostId: simHostId(i, options.agents), labels: simLabels(i), processCount: options.processesPerAgent, symbols: fleet.symbols }));
    }
    let registered = 0;
    try {
      await runBounded(options.agents, options.connectConcurrency, async (i) => {
        const agent = fleet.agents[i] as SimAgent;
        const client = fleet.clients[Math.floor(i / options.agentsPerChannel)] as ServiceClient<typeof AgentService>;
        await until(agent.start(client), `agent ${agent.hostId} to be registered`, options.signal, options.registerTimeoutMs);
        registered++;
        if (registered % 500 === 0) options.progress?.(registered);
      });
    } catch (err) {
      await fleet.stop();
      throw err;
    }
    return fleet;
  }

  get hostIds(): string[] {
    return this.agents.map((a) => a.hostId);
  }

  get channels(): number {
    return this.clients.length;
  }

  /** Agents without a registered session right now. */
  unregistered(): number {
    return this.agents.filter((a) => !a.registered).length;
  }

  /**
   * Waits until every agent has a registered session again (after the
   * controller dropped some); returns how long that took.
   */
  async waitAllRegistered(timeoutMs: number, signal: AbortSignal): Promise<number> {
    const started = Date.now();
    for (let polls = 0; ; polls++) {
      if (signal.aborted) throw new BenchInterruptedError("interrupted while waiting for the agents to register again");
      const missing = this.unregistered();
      if (missing === 0) return polls === 0 ? 0 : (Date.now() - started) / 1000;
      if (Date.now() - started > timeoutMs) throw new BenchTimeoutError(`${missing} agent(s) not registered again after ${timeoutMs} ms`);
      await delay(100);
    }
  }

  /** Registers held now over the whole fleet. */
  slotsHeld(): number {
    return this.agents.reduce((n, a) => n + a.slotsHeld, 0);
  }

  totals(): SimFleetTotals {
    const t: SimFleetTotals = {
      agents: this.agents.length,
      channels: this.clients.length,
      discovers: 0,
      resolves: 0,
      arms: 0,
      disarms: 0,
      refused: {},
      slotsHeld: 0,
      peakSlotsPerProcess: 0,
      heartbeatsSent: 0,
      heartbeatAcks: 0,
      follows: 0,
      unknownPid: 0,
      staleEpoch: 0,
      sessionEnds: 0,
      sessionEndSample: undefined,
      reregistrations: 0,
      lapsedDisarms: 0,
      unregistered: 0,
    };
    for (const a of this.agents) {
      t.discovers += a.counts.discovers;
      t.resolves += a.counts.resolves;
      t.heartbeatsSent += a.counts.heartbeatsSent;
      t.heartbeatAcks += a.counts.heartbeatAcks;
      t.follows += a.counts.follows;
      t.unknownPid += a.counts.unknownPid;
      t.staleEpoch += a.counts.staleEpoch;
      t.sessionEnds += a.counts.sessionEnds;
      t.reregistrations += Math.max(0, a.counts.registrations - 1);
      t.lapsedDisarms += a.counts.lapsedDisarms;
      if (!a.registered) t.unregistered++;
      if (a.lastEndReason !== undefined) t.sessionEndSample ??= `${a.hostId}'s last: ${a.lastEndReason}`;
      for (const p of a.processes.values()) {
        const c = p.registers.counts;
        t.arms += c.arms;
        t.disarms += c.disarms;
        t.slotsHeld += p.registers.used;
        t.peakSlotsPerProcess = Math.max(t.peakSlotsPerProcess, c.peakUsed);
        for (const [errno, n] of Object.entries(c.refused)) t.refused[errno] = (t.refused[errno] ?? 0) + n;
      }
    }
    return t;
  }

  /** Closes every session, then every channel. */
  async stop(): Promise<void> {
    await Promise.all(this.agents.map((a) => a.stop()));
    for (const client of this.clients) client.close();
  }
}
