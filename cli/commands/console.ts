// `fleetwatch console [--listen 127.0.0.1:8080]`: a read-only web console
// served by this process with the user's own controller client and NATS
// credentials (as `kubectl proxy` serves the API with the user's): the fleet,
// the jobs, and one job live with its hits and writers. Loopback by default;
// runs until Ctrl-C.
import type { Command } from "commander";
import { untilAborted } from "../abort.js";
import { fleetReader } from "../console/fleet-reader.js";
import { defaultConsoleListen, exposureWarning, parseListenAddress, type ListenAddress } from "../console/listen-address.js";
import { ConsoleServer } from "../console/server.js";
import type { CliContext } from "../main.js";

/** The `console` command line after validation. */
export interface ConsoleRequest {
  listen: ListenAddress;
}

/** Validates the command line. */
export function parseConsoleArgs(opts: { listen: string }): ConsoleRequest {
  return { listen: parseListenAddress(opts.listen) };
}

/** The line printed once the console listens (scripts and tests wait for it). */
export function printConsoleReady(url: string): string {
  return `console: ${url}\n`;
}

/** Adds `console` to the program. */
export function registerConsoleCommand(program: Command, ctx: CliContext): void {
  program
    .command("console")
    .description("serve a read-only web console of the fleet, its jobs and their hits and writers, with your credentials, until Ctrl-C")
    .option("--listen <addr>", "HTTP listen address (port 0: a free one); anything but loopback is reachable by others, without authentication", defaultConsoleListen)
    .action(async (opts: { listen: string }) => {
      const request = parseConsoleArgs(opts);
      const interrupted = ctx.interrupted();
      const globals = ctx.globals();
      // Resolved now: a certificate that cannot be used fails here, not on the first page.
      const client = ctx.controller();
      const server = await ConsoleServer.start({
        reader: fleetReader(client, { url: globals.nats, credsPath: globals.natsCreds }),
        listen: request.listen,
        context: { controller: globals.controller, nats: globals.nats },
        log: (line) => ctx.stderr.write(`${line}\n`),
      });
      try {
        const warning = exposureWarning(request.listen, server.port);
        if (warning) ctx.stderr.write(warning);
        ctx.stdout.write(printConsoleReady(server.url));
        await untilAborted(interrupted);
      } finally {
        await server.close();
      }
    });
}
