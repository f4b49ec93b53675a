// What the console refuses before routing: any method but GET and HEAD (it
// changes nothing), and a Host header that is not this console (DNS
// rebinding: a page of another site whose name was pointed at this address
// would otherwise read the console with the user's credentials).
import { isIP } from "node:net";
import type { ListenAddress } from "./listen-address.js";

/** Why a request is refused: its HTTP status, the words, and headers it needs. */
export interface Refusal {
  status: 403 | 405;
  message: string;
  headers: Record<string, string>;
}

/** The methods the console answers. */
export const allowedMethods = ["GET", "HEAD"] as const;

/** `host[:port]` of a Host header, the brackets of an IPv6 literal removed; undefined when malformed. */
export function parseHostHeader(header: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(header.trim());
  if (!match) return undefined;
  const host = (match[1] ?? match[2]!).toLowerCase();
  if (match[1] !== undefined && isIP(host) !== 6) return undefined;
  const port = match[3] === undefined ? 80 : Number(match[3]);
  return port > 65_535 ? undefined : { host, port };
}

/**
 * Whether a Host header names this console: the port it listens on, and a
 * host that is an IP address (a browser that sends one was pointed at the
 * address itself, so no foreign name is involved), `localhost`, or the name
 * it was told to listen on.
 */
export function isAllowedHost(header: string | undefined, listen: ListenAddress, port: number): boolean {
  if (header === undefined) return false;
  const parsed = parseHostHeader(header);
  if (!parsed || parsed.port !== port) return false;
  return isIP(parsed.host) !== 0 || parsed.host === "localhost" || parsed.host === listen.host;
}

/** The refusal of a request the console must not answer, or undefined to route it. */
export function refusalOf(method: string | undefined, hostHeader: string | undefined, listen: ListenAddress, port: number): Refusal | undefined {
  if (!(allowedMethods as readonly string[]).includes(method ?? "")) {
    return { status: 405, message: `${method ?? "this method"} is not allowed: the console is read-only (GET and HEAD only)`, headers: { Allow: allowedMethods.join(", ") } };
  }
  if (!isAllowedHost(hostHeader, listen, port)) {
    return { status: 403, message: `Host '${hostHeader ?? ""}' is not this console: open it by its address or as localhost`, headers: {} };
  }
  return undefined;
}
