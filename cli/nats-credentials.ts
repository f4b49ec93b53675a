// NATS credentials of a fleet, next to its certificates: one NKEY seed file
// per party (`controller.nk`, `agent-HOST.nk`, `user-NAME.nk`, 0600) and
// `nats-auth.conf`, the nats-server authorization block naming every
// party's public key with its permissions, rewritten from the seed files
// whenever a party is added.
import { existsSync } from "node:fs";
import { mkdir, readdir, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { createNatsUserKey, natsPermissions, readNatsCredentials, type Identity } from "../proto/index.js";
import { certificateBaseName } from "./certificate-files.js";
import { UsageError } from "./errors.js";

/** The nats-server include written next to the seeds. */
export const natsAuthFile = "nats-auth.conf";

/** Where one party's seed goes: `agent-db-1.nk`. */
export function natsSeedFile(dir: string, identity: Identity): string {
  return path.join(dir, `${certificateBaseName(identity)}.nk`);
}

/** Writes a new seed for one party; refuses to replace an existing one. Returns its path and public key. */
export async function writeNatsSeed(dir: string, identity: Identity): Promise<{ path: string; publicKey: string }> {
  const file = natsSeedFile(dir, identity);
  if (existsSync(file)) throw new UsageError(`${file} exists already: remove it first to issue it again`);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const { seed, publicKey } = createNatsUserKey();
  await writeFile(file, `${seed}\n`, { mode: 0o600, flag: "wx" });
  return { path: file, publicKey };
}

/** The identity a seed file's name stands for, or undefined for other files. */
export function identityOfSeedFile(name: string): Identity | undefined {
  if (name === "controller.nk") return { kind: "controller", name: "controller" };
  const m = /^(agent|user)-(.+)\.nk$/.exec(name);
  return m ? { kind: m[1] as "agent" | "user", name: m[2]! } : undefined;
}

/** One party as the server knows it. */
export interface NatsUser {
  identity: Identity;
  publicKey: string;
}

/** nats-server's authorization block for these parties; every subject quoted (`$` and `>` are not bare words there). */
export function renderNatsAuthConfig(users: readonly NatsUser[]): string {
  const list = (subjects: readonly string[]) => `[${subjects.map((s) => JSON.stringify(s)).join(", ")}]`;
  const lines = [
    "# Written by `fleetwatch certs init|issue` from the .nk seed files next to it; rewritten when a party is added.",
    "# Include it from nats-server's configuration (include ./nats-auth.conf), or start nats-server with -c on it.",
    "authorization {",
    "  users = [",
  ];
  for (const user of users) {
    const permissions = natsPermissions(user.identity, user.publicKey);
    lines.push(`    # ${user.identity.kind} ${user.identity.name}`);
    lines.push(`    { nkey: ${JSON.stringify(user.publicKey)}, permissions: { publish: { allow: ${list(permissions.publish)} }, subscribe: { allow: ${list(permissions.subscribe)} } } }`);
  }
  lines.push("  ]", "}", "");
  return lines.join("\n");
}

/** Rewrites `nats-auth.conf` in dir from every seed file there (atomically). Returns its path. */
export async function writeNatsAuthConfig(dir: string): Promise<string> {
  const users: NatsUser[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const identity = identityOfSeedFile(name);
    if (identity) users.push({ identity, publicKey: readNatsCredentials(path.join(dir, name)).publicKey });
  }
  const file = path.join(dir, natsAuthFile);
  const temporary = `${file}.tmp`;
  await writeFile(temporary, renderNatsAuthConfig(users), { mode: 0o644 });
  await rename(temporary, file);
  return file;
}
