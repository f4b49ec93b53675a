// The host policy: which processes of this host may be watched and what
// leaves the host of their values. Pure: parsing a policy file's text, the
// allow/deny decision for one process, and the value redaction. Reading the
// file and reacting to changes live in policy-file.ts.
import { createHmac } from "node:crypto";
import { ValueRedaction, executableMatches, usersRefusal } from "../proto/index.js";

/** What happens to a hit's old and new values before they leave the host. */
export type ValuePolicy = "capture" | "hash" | "mask" | "off";

export const valuePolicies: readonly ValuePolicy[] = ["capture", "hash", "mask", "off"];

/** The processes that may be watched; an absent list allows every process in that dimension. */
export interface AllowLists {
  /** Globs on the resolved executable path: `*` and `?` stay within one path component, `**` crosses them. */
  readonly executables?: readonly string[];
  /** User names or uids; both the real and the effective uid must be allowed. */
  readonly users?: readonly (string | number)[];
  /** cgroup v2 paths: a process in one of them or in a group below it. */
  readonly cgroups?: readonly string[];
}

export interface HostPolicy {
  /** The file it came from, for messages; undefined = no policy file (the default policy). */
  readonly file: string | undefined;
  readonly allow: AllowLists;
  readonly values: ValuePolicy;
}

/** The policy without a file: every process but the forbidden ones, values captured. */
export const defaultPolicy: HostPolicy = { file: undefined, allow: {}, values: "capture" };

/** A policy file that cannot be used, naming the file and the key at fault. */
export class HostPolicyError extends Error {
  override readonly name = "HostPolicyError";
  constructor(
    message: string,
    readonly file: string,
    /** The key at fault, e.g. "allow.users[1]"; "" for the file as a whole. */
    readonly key: string,
  ) {
    super(message);
  }
}

/** What the decision needs to know of one process. */
export interface PolicySubject {
  readonly pid: number;
  /** Resolved /proc/PID/exe; ends in " (deleted)" when the file is gone. */
  readonly exe: string;
  /** Real uid. */
  readonly uid: number;
  /** Effective uid; the real one when unknown. */
  readonly euid?: number | undefined;
  /** cgroup v2 path; undefined when the kernel shows none. */
  readonly cgroup: string | undefined;
}

/** Who is never watched whatever the file says: the agent and its helper (pid 1 is always refused). */
export interface PolicyContext {
  readonly agentPid: number;
  readonly helperPid: number | undefined;
  /** The user name of a uid on this host, or undefined. */
  readonly userName: (uid: number) => string | undefined;
}

const topKeys = new Set(["allow", "values"]);
const allowKeys = new Set(["executables", "users", "cgroups"]);
const deletedSuffix = " (deleted)";

function describe(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "an array" : typeof value === "string" ? JSON.stringify(value) : typeof value === "object" ? "an object" : String(value);
}

function stringList(file: string, key: string, value: unknown, check: (item: string, at: string) => void): string[] {
  if (!Array.isArray(value)) throw new HostPolicyError(`host policy ${file}: ${key} must be an array of strings, got ${describe(value)}`, file, key);
  return value.map((item: unknown, i) => {
    const at = `${key}[${i}]`;
    if (typeof item !== "string" || item === "") throw new HostPolicyError(`host policy ${file}: ${at} must be a non-empty string, got ${describe(item)}`, file, at);
    check(item, at);
    return item;
  });
}

/**
 * Parses a policy file's text. Unknown keys and wrong types are errors
 * naming the file and the key: a typo must not silently widen the policy.
 */
export function parseHostPolicy(text: string, file: string): HostPolicy {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new HostPolicyError(`host policy ${file}: not JSON: ${err instanceof Error ? err.message : String(err)}`, file, "");
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new HostPolicyError(`host policy ${file}: must be a JSON object with "allow" and "values", got ${describe(raw)}`, file, "");
  const top = raw as Record<string, unknown>;
  for (const key of Object.keys(top)) {
    if (!topKeys.has(key)) throw new HostPolicyError(`host policy ${file}: unknown key "${key}"; the keys are "allow" and "values"`, file, key);
  }
  let values: ValuePolicy = "capture";
  if (top.values !== undefined) {
    if (typeof top.values !== "string" || !valuePolicies.includes(top.values as ValuePolicy)) {
      throw new HostPolicyError(`host policy ${file}: values must be one of ${valuePolicies.map((v) => `"${v}"`).join(", ")}, got ${describe(top.values)}`, file, "values");
    }
    values = top.values as ValuePolicy;
  }
  const allow: { executables?: string[]; users?: (string | number)[]; cgroups?: string[] } = {};
  if (top.allow !== undefined) {
    const a = top.allow;
    if (typeof a !== "object" || a === null || Array.isArray(a)) throw new HostPolicyError(`host policy ${file}: allow must be an object, got ${describe(a)}`, file, "allow");
    for (const key of Object.keys(a)) {
      if (!allowKeys.has(key)) throw new HostPolicyError(`host policy ${file}: unknown key "allow.${key}"; the keys are "executables", "users" and "cgroups"`, file, `allow.${key}`);
    }
    const lists = a as Record<string, unknown>;
    const absolute = (what: string) => (item: string, at: string) => {
      if (!item.startsWith("/")) throw new HostPolicyError(`host policy ${file}: ${at} must be an absolute ${what} starting with "/", got ${describe(item)}`, file, at);
    };
    if (lists.executables !== undefined) allow.executables = stringList(file, "allow.executables", lists.executables, absolute("path or glob"));
    if (lists.cgroups !== undefined) allow.cgroups = stringList(file, "allow.cgroups", lists.cgroups, absolute("cgroup path")).map((c) => (c.length > 1 ? c.replace(/\/+$/, "") || "/" : c));
    if (lists.users !== undefined) {
      if (!Array.isArray(lists.users)) throw new HostPolicyError(`host policy ${file}: allow.users must be an array of user names or uids, got ${describe(lists.users)}`, file, "allow.users");
      allow.users = lists.users.map((item: unknown, i) => {
        const at = `allow.users[${i}]`;
        if (typeof item === "number" && Number.isInteger(item) && item >= 0 && item <= 0xffff_ffff) return item;
        if (typeof item === "string" && item !== "") return item;
        throw new HostPolicyError(`host policy ${file}: ${at} must be a user name or a uid (integer from 0), got ${describe(item)}`, file, at);
      });
    }
  }
  return { file, allow, values };
}

function underCgroup(allowed: string, cgroup: string): boolean {
  if (allowed === "/") return cgroup.startsWith("/");
  return cgroup === allowed || cgroup.startsWith(`${allowed}/`);
}

/** The prefix every refusal carries, naming the policy's file. */
export function policyLabel(policy: HostPolicy): string {
  return policy.file === undefined ? "host policy" : `host policy (${policy.file})`;
}

/**
 * Why the policy forbids watching this process, or undefined when it may be
 * watched. Every allow list present must match; pid 1, the agent and its
 * helper are refused whatever the file says.
 */
export function refusal(policy: HostPolicy, subject: PolicySubject, context: PolicyContext): string | undefined {
  const why = ruleBroken(policy, subject, context);
  return why === undefined ? undefined : `${policyLabel(policy)}: ${why}`;
}

function ruleBroken(policy: HostPolicy, p: PolicySubject, context: PolicyContext): string | undefined {
  if (p.pid === 1) return "pid 1 (the init process) is never watched";
  if (p.pid === context.agentPid) return `pid ${p.pid} is the fleetwatch agent itself and is never watched`;
  if (p.pid === context.helperPid) return `pid ${p.pid} is the fleetwatch helper and is never watched`;
  const { executables, users, cgroups } = policy.allow;
  if (executables) {
    if (p.exe.endsWith(deletedSuffix)) return `${p.exe}: the executable was deleted or replaced since the process started, so allow.executables cannot vouch for it`;
    if (!executableMatches(executables, p.exe)) return `${p.exe} is not in allow.executables`;
  }
  if (users) {
    const euid = p.euid ?? p.uid;
    const why = usersRefusal(users, p.uid, euid, context.userName);
    if (why) return `${why}, is not in allow.users`;
  }
  if (cgroups) {
    if (p.cgroup === undefined) return "the process shows no cgroup v2 path, so allow.cgroups cannot vouch for it";
    if (!cgroups.some((c) => underCgroup(c, p.cgroup!))) return `cgroup ${p.cgroup} is not under allow.cgroups`;
  }
  return undefined;
}

/** One line for logs and `agents ls`: `exe 2, users 1, values hash`; lists absent are left out. */
export function summarizePolicy(policy: HostPolicy): string {
  const parts: string[] = [];
  if (policy.allow.executables) parts.push(`exe ${policy.allow.executables.length}`);
  if (policy.allow.users) parts.push(`users ${policy.allow.users.length}`);
  if (policy.allow.cgroups) parts.push(`cgroups ${policy.allow.cgroups.length}`);
  if (parts.length === 0) parts.push("any process");
  parts.push(`values ${policy.values}`);
  return parts.join(", ");
}

/** How the values of a hit leave the host. */
export interface RedactedValues {
  readonly oldValue: bigint;
  readonly newValue: bigint;
  readonly redaction: ValueRedaction;
}

/**
 * Applies the value policy to one hit's values. "hash" is HMAC-SHA256 under
 * `key` (random per agent run) of the 8 little-endian bytes, cut to its
 * first 8 bytes: equal values stay equal within one run without revealing
 * them, and a small value cannot be found by hashing candidates elsewhere.
 */
export function redactValues(values: ValuePolicy, key: Buffer, oldValue: bigint, newValue: bigint): RedactedValues {
  switch (values) {
    case "capture":
      return { oldValue, newValue, redaction: ValueRedaction.UNSPECIFIED };
    case "hash":
      return { oldValue: keyedHash(key, oldValue), newValue: keyedHash(key, newValue), redaction: ValueRedaction.HASHED };
    case "mask":
      return { oldValue: 0n, newValue: 0n, redaction: ValueRedaction.MASKED };
    case "off":
      return { oldValue: 0n, newValue: 0n, redaction: ValueRedaction.OFF };
  }
}

/** The value policy a job's own redaction asks for (its owner may not capture values). */
export function valuePolicyOf(redaction: ValueRedaction): ValuePolicy {
  return redaction === ValueRedaction.OFF ? "off" : redaction === ValueRedaction.MASKED ? "mask" : redaction === ValueRedaction.HASHED ? "hash" : "capture";
}

/** The stricter of two value policies: capture < hash < mask < off. */
export function stricterValues(a: ValuePolicy, b: ValuePolicy): ValuePolicy {
  return valuePolicies.indexOf(a) >= valuePolicies.indexOf(b) ? a : b;
}

const valueBytes = Buffer.alloc(8);

/** HMAC-SHA256(key, value as 8 little-endian bytes), first 8 bytes as a big-endian uint64. */
export function keyedHash(key: Buffer, value: bigint): bigint {
  valueBytes.writeBigUInt64LE(BigInt.asUintN(64, value));
  return createHmac("sha256", key).update(valueBytes).digest().readBigUInt64BE(0);
}

/** Parses /etc/passwd into uid → name (the first name of a uid wins). */
export function parsePasswd(text: string): Map<number, string> {
  const names = new Map<number, string>();
  for (const line of text.split("\n")) {
    const fields = line.split(":");
    if (fields.length < 3 || fields[0] === "" || line.startsWith("#")) continue;
    const uid = Number(fields[2]);
    if (Number.isInteger(uid) && !names.has(uid)) names.set(uid, fields[0]!);
  }
  return names;
}
