// The `fleetwatch` program: global options, one subcommand per file under
// commands/, and the single place where failures become exit codes. Runs
// itself when it is the process entry (node dist/cli/main.js or bin/fleetwatch).
import { readFileSync, realpathSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Command, Option } from "commander";
import { ControllerService, channelCredentials, channelOptions, createFailoverClient, parseAddressList, type ServiceClient } from "../proto/index.js";
import { resolveTransport, type TlsOptions } from "./transport.js";
import { reportFailure } from "./errors.js";
import type { TextSink } from "./output.js";
import { registerAgentCommand } from "./commands/agent.js";
import { registerAgentsLsCommand } from "./commands/agents-ls.js";
import { registerCertsCommand } from "./commands/certs.js";
import { registerDisarmCommand } from "./commands/disarm.js";
import { registerAuditCommand } from "./commands/audit.js";
import { registerConsoleCommand } from "./commands/console.js";
import { registerControllerCommand } from "./commands/controller.js";
import { registerEventsCommand } from "./commands/events.js";
import { registerReportCommand } from "./commands/report.js";
import { registerJobsCancelCommand } from "./commands/jobs-cancel.js";
import { registerJobsGetCommand } from "./commands/jobs-get.js";
import { registerJobsLsCommand } from "./commands/jobs-ls.js";
import { registerUpCommand } from "./commands/up.js";
import { registerWatchCommand } from "./commands/watch.js";

/** A typed client of the controller's user-facing service. */
export type ControllerClient = ServiceClient<typeof ControllerService>;

/** Options every command sees. */
export interface GlobalOptions {
  /** Controller gRPC address, host:port. */
  controller: string;
  /** NATS URL for events. */
  nats: string;
  /** This party's NATS nkey seed file; unset: connect to NATS unauthenticated. */
  natsCreds?: string | undefined;
  /** Mutual TLS files, or plaintext on purpose. */
  tls: TlsOptions;
}

/** What a command gets from the program: its I/O, the global options and shared resources. */
export interface CliContext {
  readonly stdout: TextSink;
  readonly stderr: TextSink;
  /** The global options as parsed. */
  globals(): GlobalOptions;
  /** The controller client, created on first use and closed when the command ends. */
  controller(): ControllerClient;
  /**
   * Aborted on the first SIGINT or SIGTERM from now on; a second one exits
   * 130 at once. Handlers are removed when the command ends.
   */
  interrupted(): AbortSignal;
}

/** Where `main` writes; the process streams unless a test passes buffers. */
export interface MainIo {
  stdout?: TextSink;
  stderr?: TextSink;
}

/** Default controller address when neither --controller nor FLEETWATCH_CONTROLLER is given. */
export const defaultControllerAddress = "127.0.0.1:7070";

/** Default NATS URL when neither --nats nor FLEETWATCH_NATS is given. */
export const defaultNatsUrl = "nats://127.0.0.1:4222";

function packageVersion(): string {
  try {
    const here = path.dirname(fileURLToPath(import.meta.url));
    // dist/cli/main.js and cli/main.ts are both two levels below the package root.
    const text = readFileSync(path.resolve(here, "../../package.json"), "utf8");
    return (JSON.parse(text) as { version?: string }).version ?? "unknown";
  } catch {
    return "unknown";
  }
}

/** Builds the commander program bound to one context. */
export function createProgram(ctx: CliContext): Command {
  const program = new Command("fleetwatch")
    .description("x86 hardware data watchpoints as a fleet service")
    .version(packageVersion())
    .addOption(new Option("--controller <addr>", "controller gRPC address, or several comma-separated (leader and standbys)").env("FLEETWATCH_CONTROLLER").default(defaultControllerAddress))
    .addOption(new Option("--nats <url>", "NATS URL (events)").env("FLEETWATCH_NATS").default(defaultNatsUrl))
    .addOption(new Option("--nats-creds <file>", "NATS nkey seed file of this party (written by `certs init`); unset: no NATS authentication").env("FLEETWATCH_NATS_CREDS"))
    .addOption(new Option("--ca <file>", "mutual TLS: the CA certificate to trust (pinned)").env("FLEETWATCH_CA"))
    .addOption(new Option("--cert <file>", "mutual TLS: this party's certificate").env("FLEETWATCH_CERT"))
    .addOption(new Option("--key <file>", "mutual TLS: this party's private key").env("FLEETWATCH_KEY"))
    .addOption(new Option("--insecure", "plaintext gRPC with no authentication even off loopback (warns)").env("FLEETWATCH_INSECURE"))
    // Usage errors must become exit 3 with commander's message through the
    // one handler, so commander neither exits nor prints errors itself.
    .exitOverride()
    .configureOutput({
      writeOut: (text) => ctx.stdout.write(text),
      writeErr: (text) => ctx.stderr.write(text),
      outputError: () => {},
    })
    .configureHelp({ showGlobalOptions: true })
    .showSuggestionAfterError(true);

  registerWatchCommand(program, ctx);
  registerEventsCommand(program, ctx);
  registerReportCommand(program, ctx);
  const jobs = program.command("jobs").description("list, show and cancel jobs");
  registerJobsLsCommand(jobs, ctx);
  registerJobsGetCommand(jobs, ctx);
  registerJobsCancelCommand(jobs, ctx);
  const agents = program.command("agents").description("list agents and their debug registers");
  registerAgentsLsCommand(agents, ctx);
  registerConsoleCommand(program, ctx);
  registerControllerCommand(program, ctx);
  registerAgentCommand(program, ctx);
  registerUpCommand(program, ctx);
  registerCertsCommand(program, ctx);
  registerDisarmCommand(program, ctx);
  registerAuditCommand(program, ctx);
  return program;
}

/**
 * Runs `fleetwatch` with `argv` (as `process.argv`: node, script, args…) and
 * resolves with the exit code; never throws and never exits the process.
 */
export async function main(argv: readonly string[], io: MainIo = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout;
  const stderr = io.stderr ?? process.stderr;
  let client: ControllerClient | undefined;
  let interrupt: { controller: AbortController; remove: () => void } | undefined;
  let program: Command | undefined;

  const ctx: CliContext = {
    stdout,
    stderr,
    globals: () => {
      const opts = program?.opts<Partial<Omit<GlobalOptions, "tls"> & TlsOptions>>() ?? {};
      return { controller: opts.controller ?? defaultControllerAddress, nats: opts.nats ?? defaultNatsUrl, natsCreds: opts.natsCreds || undefined, tls: { ca: opts.ca, cert: opts.cert, key: opts.key, insecure: opts.insecure } };
    },
    controller: () => {
      if (!client) {
        const addresses = parseAddressList(ctx.globals().controller);
        const transport = resolveTransport(ctx.globals().tls, "user", addresses, (line) => stderr.write(`${line}\n`));
        client = createFailoverClient(ControllerService, addresses, channelCredentials(transport), channelOptions(transport));
      }
      return client;
    },
    interrupted: () => {
      if (!interrupt) {
        const controller = new AbortController();
        const onSignal = (signal: NodeJS.Signals) => {
          if (controller.signal.aborted) process.exit(130);
          controller.abort(signal);
        };
        process.on("SIGINT", onSignal);
        process.on("SIGTERM", onSignal);
        interrupt = {
          controller,
          remove: () => {
            process.removeListener("SIGINT", onSignal);
            process.removeListener("SIGTERM", onSignal);
          },
        };
      }
      return interrupt.controller.signal;
    },
  };

  try {
    program = createProgram(ctx);
    await program.parseAsync(argv as string[]);
    return 0;
  } catch (err) {
    return reportFailure(err, { controller: ctx.globals().controller, cert: ctx.globals().tls.cert || undefined }, stderr);
  } finally {
    interrupt?.remove();
    client?.close();
  }
}

function isProcessEntry(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  const self = fileURLToPath(import.meta.url);
  let entry: string;
  try {
    entry = realpathSync(script);
  } catch {
    return false;
  }
  // bin/fleetwatch only imports this file, from ../dist/cli/main.js.
  return entry === self || entry === path.resolve(path.dirname(self), "../../bin/fleetwatch");
}

if (isProcessEntry()) {
  // `fleetwatch events J | head` closes stdout early: that is the reader
  // saying it has seen enough, not a failure worth a stack trace.
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(0);
    throw err;
  });
  const code = await main(process.argv);
  process.exitCode = code;
  // Everything is closed by now, so the process normally ends by itself; a
  // handle some library keeps open must not hold a finished CLI, so exit
  // anyway after a grace period (unref: this timer alone keeps nothing alive).
  setTimeout(() => process.exit(code), 2_000).unref();
}
