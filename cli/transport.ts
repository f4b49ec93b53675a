// How a command talks gRPC: mutual TLS with --ca/--cert/--key, or plaintext
// where that is safe (every address on loopback) or asked for on purpose
// (--insecure, with a warning).
import { isLoopbackAddress, loadTls, TlsConfigError, type IdentityKind, type Transport } from "../proto/index.js";
import { UsageError } from "./errors.js";

/** The TLS options every command takes. */
export interface TlsOptions {
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
  insecure?: boolean | undefined;
}

/**
 * The transport for a party of kind `role` that dials or listens on
 * `addresses`. A certificate of another kind is refused here, before any
 * connection, with the file named.
 */
export function resolveTransport(opts: TlsOptions, role: IdentityKind, addresses: readonly string[], warn: (line: string) => void): Transport {
  const given = [opts.ca, opts.cert, opts.key].filter((v) => v !== undefined && v !== "").length;
  if (given > 0) {
    if (opts.insecure) throw new UsageError("--insecure and --ca/--cert/--key exclude each other: choose one");
    if (given < 3) throw new UsageError("mutual TLS needs all of --ca, --cert and --key (or FLEETWATCH_CA, FLEETWATCH_CERT, FLEETWATCH_KEY)");
    try {
      return { tls: loadTls({ ca: opts.ca!, cert: opts.cert!, key: opts.key! }, role) };
    } catch (err) {
      if (err instanceof TlsConfigError) throw new UsageError(err.message, { cause: err });
      throw err;
    }
  }
  if (opts.insecure) {
    warn(`warning: --insecure: gRPC in plaintext with no authentication on ${addresses.join(", ")}: anyone who reaches it can watch any process the agents can`);
    return { plaintext: true };
  }
  const remote = addresses.filter((a) => !isLoopbackAddress(a));
  if (remote.length === 0) return { plaintext: true };
  throw new UsageError(`${remote.join(", ")} is not on loopback: give --ca, --cert and --key (create them with \`fleetwatch certs init\`), or --insecure to use plaintext anyway`);
}
