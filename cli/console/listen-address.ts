// Where the console listens: `--listen HOST:PORT` parsed, whether that is
// loopback (the default) or reachable from elsewhere, and the URL people open.
import { isIP } from "node:net";
import { isLoopbackAddress } from "../../proto/index.js";
import { UsageError } from "../errors.js";

/** A parsed `--listen`. */
export interface ListenAddress {
  /** As given, without brackets: `127.0.0.1`, `::1`, `localhost`, `0.0.0.0`. */
  host: string;
  /** 0 picks a free port. */
  port: number;
}

/** The console's default: loopback only. */
export const defaultConsoleListen = "127.0.0.1:8080";

/** Parses `HOST:PORT` or `[V6]:PORT`; throws a {@link UsageError} naming the option otherwise. */
export function parseListenAddress(text: string): ListenAddress {
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(text);
  const plain = /^([^:[\]]+):(\d+)$/.exec(text);
  const match = bracketed ?? plain;
  const port = match ? Number(match[2]) : NaN;
  if (!match || !Number.isInteger(port) || port > 65_535 || (bracketed && isIP(match[1]!) !== 6)) {
    throw new UsageError(`--listen '${text}' is not HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, or port 0 for a free one)`);
  }
  return { host: match[1]!.toLowerCase(), port };
}

/** Whether only this machine can reach the address. */
export function isLoopbackListen(listen: ListenAddress): boolean {
  return isLoopbackAddress(`${bracketed(listen.host)}:${listen.port}`);
}

/** Whether the address is every interface (`0.0.0.0`, `::`). */
export function isWildcardHost(host: string): boolean {
  return host === "0.0.0.0" || host === "::";
}

function bracketed(host: string): string {
  return isIP(host) === 6 ? `[${host}]` : host;
}

/** The URL of the console at `host` and the port it got: `http://127.0.0.1:8080/`, `http://[::1]:8080/`. */
export function consoleUrl(host: string, port: number): string {
  return `http://${bracketed(host)}:${port}/`;
}

/** The stderr warning for an address other machines can reach; undefined on loopback. */
export function exposureWarning(listen: ListenAddress, port: number): string | undefined {
  if (isLoopbackListen(listen)) return undefined;
  return `warning: console listening on ${bracketed(listen.host)}:${port}, not loopback: anyone who reaches it sees every job, host and hit your credentials can read, without authentication; prefer the default (${defaultConsoleListen}) and an SSH tunnel\n`;
}
