// The controller's door: start one on a NATS server and a listen address.
import { connect, type NatsConnection, RetentionPolicy, StorageType, nanos } from "nats";
import { AgentService, ControllerService, addService, bindServer, createServer, eventStream, eventSubjects } from "../proto/index.js";
import { Controller } from "./controller.js";
import { statusFor } from "./errors.js";
import { JobStore } from "./job-store.js";
import { agentService, controllerService } from "./service.js";

export interface ControllerOptions {
  /** host:port to listen on; port 0 picks one. */
  listen: string;
  natsUrl: string;
  /** A silent agent session is closed after this long. */
  leaseMs?: number;
  /** How long an agent may take to answer a command. */
  requestTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface RunningController {
  /** host:port actually bound. */
  readonly address: string;
  stop(): Promise<void>;
}

// Hit events are kept for replay (`fleetwatch events --since`) for a day, at most 1 GiB.
const eventMaxAgeMs = 24 * 3600 * 1000;
const eventMaxBytes = 1024 ** 3;

async function ensureEventStream(nc: NatsConnection): Promise<void> {
  const jsm = await nc.jetstreamManager();
  try {
    await jsm.streams.info(eventStream);
  } catch {
    // Another controller starting at the same moment may have just created it.
    await jsm.streams
      .add({ name: eventStream, subjects: [eventSubjects], retention: RetentionPolicy.Limits, storage: StorageType.File, max_age: nanos(eventMaxAgeMs), max_bytes: eventMaxBytes })
      .catch(async (err: unknown) => {
        await jsm.streams.info(eventStream).catch(() => Promise.reject(err));
      });
  }
}

/** Connects to NATS, loads the stored jobs, and serves both gRPC services. */
export async function startController(options: ControllerOptions): Promise<RunningController> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const leaseMs = options.leaseMs ?? 15_000;
  const nc = await connect({ servers: options.natsUrl, name: "fleetwatch-controller", maxReconnectAttempts: -1 });
  try {
    await ensureEventStream(nc);
    const store = await JobStore.open(nc.jetstream());
    const controller = new Controller(store, { leaseMs, heartbeatMs: Math.max(100, Math.floor(leaseMs / 3)), requestTimeoutMs: options.requestTimeoutMs ?? 15_000, log });
    await controller.start();
    const server = createServer();
    const logged = (err: unknown) => {
      const s = statusFor(err);
      if (s.details.startsWith("internal error")) log(`controller: internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      return s;
    };
    addService(server, ControllerService, controllerService(controller), logged);
    addService(server, AgentService, agentService(controller), logged);
    const port = await bindServer(server, options.listen);
    const host = options.listen.slice(0, options.listen.lastIndexOf(":"));
    const address = `${host}:${port}`;
    log(`controller: listening on ${address}, nats ${options.natsUrl}`);
    return {
      address,
      async stop() {
        controller.stop();
        // Streams still open after a short grace (job watchers) are cut.
        await new Promise<void>((resolve) => {
          const force = setTimeout(() => server.forceShutdown(), 2_000);
          server.tryShutdown(() => {
            clearTimeout(force);
            resolve();
          });
        });
        await nc.drain().catch(() => nc.close());
      },
    };
  } catch (err) {
    await nc.close();
    throw err;
  }
}
