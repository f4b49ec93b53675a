// A party's NATS credentials: an NKEY seed file (`fleetwatch certs init`
// writes one per party), read and checked before connecting, and the
// connection options that sign in with it and keep replies under the
// party's own inbox prefix (the only one its permissions let it read).
import { readFileSync } from "node:fs";
import { nkeyAuthenticator, nkeys, type ConnectionOptions, type NatsConnection } from "nats";
import { natsInboxPrefix } from "./nats-permissions.js";

/** The parts of nats.js's nkeys this code uses (the library exports it untyped). */
interface KeyPair {
  getPublicKey(): string;
  getSeed(): Uint8Array;
}
const keys = nkeys as { createUser(): KeyPair; fromSeed(seed: Uint8Array): KeyPair };

/** A seed file that cannot be used. */
export class NatsCredentialsError extends Error {
  override readonly name = "NatsCredentialsError";
  constructor(
    message: string,
    readonly path: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Credentials read from a seed file. */
export interface NatsCredentials {
  readonly path: string;
  /** The user's public nkey (`U…`): how nats-server names it. */
  readonly publicKey: string;
  readonly seed: Uint8Array;
}

/** A new user nkey: the seed (`SU…`) to keep secret and the public key for the server. */
export function createNatsUserKey(): { seed: string; publicKey: string } {
  const pair = keys.createUser();
  return { seed: new TextDecoder().decode(pair.getSeed()), publicKey: pair.getPublicKey() };
}

// A user seed: `SU` and 56 more base32 characters; the file may hold comments around it.
const userSeed = /\bSU[A-Z2-7]{56}\b/;

/** The public key of a seed, checking that it is a user seed. */
export function publicKeyOfSeed(seed: string, path = "(seed)"): string {
  try {
    return keys.fromSeed(new TextEncoder().encode(seed)).getPublicKey();
  } catch (err) {
    throw new NatsCredentialsError(`${path} holds no valid NATS user nkey seed: ${(err as Error).message}`, path, { cause: err });
  }
}

/** Reads and checks an NKEY seed file. */
export function readNatsCredentials(path: string): NatsCredentials {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new NatsCredentialsError(`--nats-creds ${path}: ${code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : String(err)}`, path, { cause: err });
  }
  const seed = userSeed.exec(text)?.[0];
  if (!seed) throw new NatsCredentialsError(`--nats-creds ${path} holds no NATS user nkey seed (SU…): use a .nk file written by \`fleetwatch certs init\``, path);
  return { path, publicKey: publicKeyOfSeed(seed, path), seed: new TextEncoder().encode(seed) };
}

/** Connection options that sign in with the credentials (none: connect unauthenticated). */
export function natsAuthOptions(credentials: NatsCredentials | undefined): Partial<ConnectionOptions> {
  if (!credentials) return {};
  return { authenticator: nkeyAuthenticator(credentials.seed), inboxPrefix: natsInboxPrefix(credentials.publicKey) };
}

/** Whether an error is nats-server refusing a subject under the party's permissions. */
export function isPermissionViolation(err: unknown): boolean {
  return (err as { code?: unknown } | null)?.code === "PERMISSIONS_VIOLATION";
}

/** Whether an error is nats-server refusing the connection's credentials (or their absence). */
export function isAuthorizationViolation(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "AUTHORIZATION_VIOLATION" || code === "AUTHENTICATION_EXPIRED";
}

/** The subject and operation of a permissions violation (a nats.js error or a NatsRefusedError), when the server named them. */
export function violationContext(err: unknown): { operation: string; subject: string } | undefined {
  return (err as { permissionContext?: { operation: string; subject: string } } | null)?.permissionContext;
}

/** nats-server refused a subject to this party. */
export class NatsRefusedError extends Error {
  override readonly name = "NatsRefusedError";
  readonly code = "PERMISSIONS_VIOLATION";
  constructor(
    readonly permissionContext: { operation: string; subject: string } | undefined,
    options?: { cause?: unknown },
  ) {
    super(`NATS refused: no permission to ${permissionContext ? `${permissionContext.operation} ${permissionContext.subject}` : "do that"}`, options);
  }
}

/**
 * The permission refusals a connection gets. A refused JetStream request is
 * not always answered by a rejection (nats.js retries creating an ordered
 * consumer for minutes), so work that may be refused is raced against the
 * refusals reported on the connection's status.
 */
export class NatsRefusals {
  private readonly waiters = new Set<(err: NatsRefusedError) => void>();

  constructor(nc: NatsConnection, onRefusal?: (err: NatsRefusedError) => void) {
    void (async () => {
      for await (const status of nc.status()) {
        if (status.type !== "error" || status.data !== "PERMISSIONS_VIOLATION") continue;
        const err = new NatsRefusedError((status as { permissionContext?: { operation: string; subject: string } }).permissionContext);
        onRefusal?.(err);
        for (const waiter of this.waiters) waiter(err);
      }
    })();
  }

  /** `work`'s outcome, or a NatsRefusedError if the server refuses anything on this connection first. */
  async guard<T>(work: Promise<T>): Promise<T> {
    let waiter!: (err: NatsRefusedError) => void;
    const refused = new Promise<never>((_, reject) => (waiter = reject));
    this.waiters.add(waiter);
    // Work that loses the race still ends some time; its outcome no longer matters.
    work.catch(() => {});
    try {
      return await Promise.race([work, refused]);
    } finally {
      this.waiters.delete(waiter);
    }
  }

  /** Calls `onRefused` at the first refusal from now on; returns the function that stops listening. */
  onNext(onRefused: (err: NatsRefusedError) => void): () => void {
    const waiter = (err: NatsRefusedError) => {
      this.waiters.delete(waiter);
      onRefused(err);
    };
    this.waiters.add(waiter);
    return () => this.waiters.delete(waiter);
  }
}

/**
 * Makes an ordered consumer fail at once when its first creation fails,
 * instead of nats.js retrying it for minutes (30 tries, up to 30 s apart):
 * a refused or missing consumer is then an error the caller reports, and
 * nothing keeps retrying after the caller gave up.
 */
export function failFirstCreation<C extends object>(consumer: C): C {
  if ("maxInitialReset" in consumer) (consumer as { maxInitialReset: number }).maxInitialReset = 0;
  return consumer;
}
