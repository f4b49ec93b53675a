// Starts and stops a local nats-server with JetStream: the embedded default
// (`fleetwatch up`) and the test harness both use the real server this way.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdir } from "node:fs/promises";
import net from "node:net";

/** How to start nats-server. */
export interface NatsServerOptions {
  /** Directory for JetStream data. */
  dataDir: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** Executable; default `nats-server` from PATH. */
  binary?: string;
  /**
   * A configuration file for the server (`-c`), e.g. the `nats-auth.conf`
   * written by `fleetwatch certs init`: its parties and their permissions.
   * Unset: no authentication.
   */
  configFile?: string;
  /** How long to wait for the server to accept connections. */
  readyTimeoutMs?: number;
  /**
   * Run the server in its own process group, so a terminal's Ctrl-C (sent to
   * the whole foreground group) reaches only the parent, which then stops
   * the server last, after everything that uses it.
   */
  ownProcessGroup?: boolean;
}

/** A started nats-server. */
export interface RunningNatsServer {
  readonly url: string;
  readonly port: number;
  readonly process: ChildProcess;
  /** Stops the server (SIGTERM, then SIGKILL after a grace period) and waits for it. */
  stop(): Promise<void>;
}

/** The server could not start. */
export class NatsServerError extends Error {
  override readonly name = "NatsServerError";
}

/** Asks the kernel for a free TCP port on host. */
export function freePort(host = "127.0.0.1"): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, host, () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function accepts(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

/** Starts nats-server with JetStream and resolves once it accepts connections. */
export async function startNatsServer(options: NatsServerOptions): Promise<RunningNatsServer> {
  const host = options.host ?? "127.0.0.1";
  const port = options.port || (await freePort(host));
  // Readiness is "the port accepts connections": a server already there
  // (another `fleetwatch up`, a system nats-server) would pass for ours.
  if (options.port && (await accepts(host, port))) {
    throw new NatsServerError(`${host}:${port} is already in use: is another nats-server (or \`fleetwatch up\`) running? Stop it or pick another port`);
  }
  await mkdir(options.dataDir, { recursive: true });
  const binary = options.binary ?? "nats-server";
  const args = ["-js", "-a", host, "-p", String(port), "-sd", options.dataDir];
  if (options.configFile !== undefined) args.push("-c", options.configFile);
  const child = spawn(binary, args, {
    stdio: ["ignore", "ignore", "pipe"],
    detached: options.ownProcessGroup === true,
  });
  let log = "";
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
    log = (log + chunk).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));

  const deadline = Date.now() + (options.readyTimeoutMs ?? 10_000);
  for (;;) {
    const outcome = await Promise.race([
      spawnError.then((err) => ({ err })),
      exited.then(() => ({ err: new NatsServerError(`nats-server exited while starting: ${log.trim() || "no output"}`) })),
      accepts(host, port).then((ok) => ({ ok })),
    ]);
    if ("err" in outcome) {
      const err = outcome.err as NodeJS.ErrnoException;
      if (err.code === "ENOENT") throw new NatsServerError(`${binary} not found: install it (apt-get install nats-server) or put it on PATH`, { cause: err });
      throw err;
    }
    if (outcome.ok) break;
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new NatsServerError(`nats-server did not accept connections on ${host}:${port} within ${options.readyTimeoutMs ?? 10_000} ms: ${log.trim()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }

  return {
    url: `nats://${host}:${port}`,
    port,
    process: child,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
