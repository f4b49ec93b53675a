// The agent's door: start one per host. It owns the host's debug registers
// through the native helper, keeps a session with the controller and
// publishes hits to NATS.
import os from "node:os";
import { create } from "@bufbuild/protobuf";
import { connect } from "nats";
import { AgentInfoSchema, isSubjectToken, slotsPerThread } from "../proto/index.js";
import { AgentCore } from "./agent.js";
import { HelperProcess } from "./helper-process.js";
import { HitPublisher } from "./hit-publisher.js";
import { SessionClient } from "./session-client.js";
import { AgentCommandError } from "./errors.js";

export interface AgentOptions {
  /** Controller address host:port. */
  controller: string;
  natsUrl: string;
  /** This host's id: letters, digits, '-' and '_'. */
  hostId: string;
  labels?: Record<string, string>;
  /** The native helper; default the one built in agent/native/build. */
  helperPath?: string;
  log?: (line: string) => void;
}

export interface RunningAgent {
  readonly hostId: string;
  /** Resolves once the controller has accepted the session. */
  registered(): Promise<void>;
  /** Disarms every target, stops the helper, closes the session and NATS. */
  stop(): Promise<void>;
}

export const agentVersion = "0.1.0";

/** Starts the helper, connects to NATS, and dials the controller. */
export async function startAgent(options: AgentOptions): Promise<RunningAgent> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  if (!isSubjectToken(options.hostId)) throw new AgentCommandError(`host id '${options.hostId}' must be letters, digits, '-' or '_'`, "EINVAL");
  const nc = await connect({ servers: options.natsUrl, name: `fleetwatch-agent-${options.hostId}`, maxReconnectAttempts: -1 });
  let helper: HelperProcess;
  try {
    helper = await HelperProcess.start(options.helperPath ? { path: options.helperPath } : {});
  } catch (err) {
    await nc.close();
    throw err;
  }
  const core = new AgentCore(helper, new HitPublisher(nc.jetstream()), options.hostId, log);
  const running = core.run().catch((err) => log(`agent ${options.hostId}: helper event loop failed: ${String(err)}`));
  const info = create(AgentInfoSchema, {
    hostId: options.hostId,
    labels: options.labels ?? {},
    hostname: os.hostname(),
    kernel: os.release(),
    arch: os.arch() === "x64" ? "x86_64" : os.arch(),
    slotsPerThread,
    agentVersion,
    helperVersion: helper.helperVersion,
  });
  const session = new SessionClient(core, { controller: options.controller, info, log });
  session.start();
  void helper.exited.then(({ code, signal }: { code: number | null; signal: string | null }) => log(`agent ${options.hostId}: helper exited (code ${code}, signal ${signal})`));

  return {
    hostId: options.hostId,
    registered: () => session.registered(),
    async stop() {
      await core.disarmAll(`agent on ${options.hostId} stopped`);
      await session.stop();
      await helper.shutdown();
      await running;
      await nc.drain().catch(() => nc.close());
    },
  };
}
