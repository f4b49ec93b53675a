// A throwaway PostgreSQL server from the distribution's packages, run as the
// postgres user on a Unix socket in a temporary directory, with interactive
// psql sessions whose backend pids tests can watch.
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import { chown, mkdtemp, readdir, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { freePort } from "../../cli/nats-server.js";
import { scaled, waitFor } from "./wait.js";

/** The newest installed server's bin directory, or undefined when none is installed. */
export async function postgresBinDir(): Promise<string | undefined> {
  const versions = await readdir("/usr/lib/postgresql").catch(() => [] as string[]);
  const newest = versions.filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a))[0];
  return newest ? `/usr/lib/postgresql/${newest}/bin` : undefined;
}

// setpriv execs the command as postgres (no intermediate process), so a
// child's pid is the server's or psql's own.
const asPostgres = ["--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"];

function postgresIds(): { uid: number; gid: number } {
  const id = (flag: string) => Number(spawnSync("id", [flag, "postgres"], { encoding: "utf8" }).stdout.trim());
  return { uid: id("-u"), gid: id("-g") };
}

/** One psql connection: one backend process. */
export class PsqlSession {
  private output = "";
  private marker = 0;

  constructor(readonly child: ChildProcessWithoutNullStreams) {
    child.stdout.setEncoding("utf8").on("data", (text: string) => (this.output += text));
    child.stderr.setEncoding("utf8").on("data", (text: string) => (this.output += text));
  }

  /** Runs SQL and returns what psql printed for it (unaligned, tuples only). */
  async query(sql: string, timeoutMs = 15_000): Promise<string> {
    const marker = `__fleetwatch_${++this.marker}__`;
    const start = this.output.length;
    this.child.stdin.write(`${sql}\n\\echo ${marker}\n`);
    const text = await waitFor(`psql answers ${JSON.stringify(sql)}`, () => {
      const at = this.output.indexOf(marker, start);
      return at >= 0 ? this.output.slice(start, at) : undefined;
    }, timeoutMs);
    return text.trim();
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.stdin.end("\\q\n");
    await exited;
  }
}

/** A running server. */
export class Postgres {
  private readonly sessions: PsqlSession[] = [];

  private constructor(
    readonly binDir: string,
    readonly dir: string,
    readonly port: number,
    readonly server: ChildProcessWithoutNullStreams,
  ) {}

  /** initdb into a temporary directory and start the server; resolves once it accepts connections. */
  static async start(binDir: string): Promise<Postgres> {
    const dir = await mkdtemp(path.join(os.tmpdir(), "fleetwatch-pg-"));
    const { uid, gid } = postgresIds();
    await chown(dir, uid, gid);
    const data = path.join(dir, "data");
    const init = spawnSync("setpriv", [...asPostgres, `${binDir}/initdb`, "-D", data, "-A", "trust", "--no-sync", "-U", "postgres"], { encoding: "utf8" });
    if (init.status !== 0) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(`initdb failed: ${init.stderr || init.stdout}`);
    }
    const port = await freePort();
    const server = spawn("setpriv", [...asPostgres, `${binDir}/postgres`, "-D", data, "-k", dir, "-p", String(port), "-c", "listen_addresses=", "-c", "fsync=off"], { stdio: ["pipe", "pipe", "pipe"] });
    const pg = new Postgres(binDir, dir, port, server);
    let log = "";
    server.stderr.setEncoding("utf8").on("data", (text: string) => (log += text));
    try {
      await waitFor("postgres accepts connections", () => {
        if (server.exitCode !== null) throw new Error(`postgres exited: ${log}`);
        return /ready to accept connections/.test(log);
      }, 30_000, 50);
    } catch (err) {
      await pg.stop();
      throw err;
    }
    return pg;
  }

  /** Opens a psql session (a new backend). */
  async connect(): Promise<PsqlSession> {
    const child = spawn("setpriv", [...asPostgres, `${this.binDir}/psql`, "-h", this.dir, "-p", String(this.port), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=0", "postgres"], { stdio: ["pipe", "pipe", "pipe"] });
    const session = new PsqlSession(child);
    this.sessions.push(session);
    await session.query("select 1;");
    return session;
  }

  /** Closes sessions, stops the server (fast shutdown) and removes its files. */
  async stop(): Promise<void> {
    for (const session of this.sessions) await session.close();
    if (this.server.exitCode === null) {
      const exited = new Promise((resolve) => this.server.once("exit", resolve));
      // SIGINT is postgres's fast shutdown.
      this.server.kill("SIGINT");
      const timer = setTimeout(() => this.server.kill("SIGKILL"), scaled(15_000));
      await exited;
      clearTimeout(timer);
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}
