// How a certificate directory names its files. Apart from the certificate
// library (cli/certificates.ts), so commands that only need the names start
// without loading it.
import type { Identity } from "../proto/index.js";

/** File names in a certificate directory. */
export const caCertFile = "ca.crt";
export const caKeyFile = "ca.key";

/** Where one party's certificate and key go: `agent-db-1.crt`, `user-alice.key`, `controller.crt`. */
export function certificateBaseName(identity: Identity): string {
  return identity.kind === "controller" ? "controller" : `${identity.kind}-${identity.name}`;
}
