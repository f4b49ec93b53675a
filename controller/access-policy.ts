// Who may do what: roles bound to user certificates, each binding with the
// hosts and processes it may watch and whether values may be captured.
// Pure: parsing the file's text and every decision; reading the file and
// reloading it live in access-file.ts. Every denial names the rule.
import { describeUser, executableMatches, formatSelector, matches as matchesSelector, parseSelector, usersRefusal, type Selector } from "../proto/index.js";

/** viewer: see jobs and agents; operator: also submit and cancel its own jobs; admin: everything. */
export type Role = "viewer" | "operator" | "admin";

export const roles: readonly Role[] = ["viewer", "operator", "admin"];

/** What a request asks to do. */
export type Action = "view" | "submit" | "cancel" | "cancel-any" | "disarm-all" | "audit";

const allowedActions: Record<Role, readonly Action[]> = {
  viewer: ["view"],
  operator: ["view", "submit", "cancel"],
  admin: ["view", "submit", "cancel", "cancel-any", "disarm-all", "audit"],
};

/** One binding of the file: these users have this role, within this scope. */
export interface Binding {
  /** 1-based place in the file, for messages. */
  readonly index: number;
  /** User names (as in their certificates); "*" is every user. */
  readonly users: readonly string[];
  readonly role: Role;
  /** Hosts whose labels match (a --selector expression); unset: every host. */
  readonly hosts?: Selector;
  /** Executable globs; unset: every executable. */
  readonly executables?: readonly string[];
  /** Process users (names or uids); unset: every user. */
  readonly processUsers?: readonly (string | number)[];
  /** Whether hits may carry the values read (default true; false: masked). */
  readonly values: boolean;
}

/** The access policy in effect; `file` undefined is the default without one. */
export interface AccessPolicy {
  readonly file: string | undefined;
  readonly bindings: readonly Binding[];
}

/** Without a policy file every user certificate is an admin: the CA is the only gate. */
export const defaultAccessPolicy: AccessPolicy = { file: undefined, bindings: [{ index: 1, users: ["*"], role: "admin", values: true }] };

/** An access policy file that cannot be used; names the file and the key. */
export class AccessPolicyError extends Error {
  override readonly name = "AccessPolicyError";
}

const bindingKeys = new Set(["users", "role", "hosts", "executables", "processUsers", "values"]);

/** Parses the file's JSON: `{"bindings": [{"users": [...], "role": "operator", "hosts": "role=db", "executables": [...], "processUsers": [...], "values": false}]}`. */
export function parseAccessPolicy(text: string, file: string): AccessPolicy {
  const fail = (key: string, why: string): never => {
    throw new AccessPolicyError(`access policy ${file}: ${key ? `"${key}" ` : ""}${why}`);
  };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    return fail("", `not JSON: ${(err as Error).message}`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) return fail("", "must be a JSON object with a \"bindings\" list");
  for (const key of Object.keys(doc)) if (key !== "bindings") fail(key, "is not a known key (only \"bindings\")");
  const list = (doc as { bindings?: unknown }).bindings;
  if (!Array.isArray(list)) return fail("bindings", "must be a list of bindings");
  const bindings = list.map((raw, i): Binding => {
    const at = `bindings[${i}]`;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return fail(at, "must be an object");
    const b = raw as Record<string, unknown>;
    for (const key of Object.keys(b)) if (!bindingKeys.has(key)) fail(`${at}.${key}`, `is not a known key (${[...bindingKeys].join(", ")})`);
    const users = b.users;
    if (!Array.isArray(users) || users.length === 0 || !users.every((u) => typeof u === "string" && u !== "")) fail(`${at}.users`, "must be a non-empty list of user names (\"*\": every user)");
    if (typeof b.role !== "string" || !roles.includes(b.role as Role)) fail(`${at}.role`, `must be one of ${roles.join(", ")}`);
    const binding: { -readonly [K in keyof Binding]: Binding[K] } = { index: i + 1, users: users as string[], role: b.role as Role, values: true };
    if (b.hosts !== undefined) {
      if (typeof b.hosts !== "string") fail(`${at}.hosts`, "must be a label selector such as \"role=db,zone in (a,b)\"");
      try {
        binding.hosts = parseSelector(b.hosts as string);
      } catch (err) {
        fail(`${at}.hosts`, (err as Error).message);
      }
    }
    if (b.executables !== undefined) {
      if (!Array.isArray(b.executables) || !b.executables.every((e) => typeof e === "string" && e.startsWith("/"))) fail(`${at}.executables`, "must be a list of absolute path globs");
      binding.executables = b.executables as string[];
    }
    if (b.processUsers !== undefined) {
      if (!Array.isArray(b.processUsers) || !b.processUsers.every((u) => (typeof u === "string" && u !== "") || (Number.isInteger(u) && (u as number) >= 0))) fail(`${at}.processUsers`, "must be a list of user names or uids");
      binding.processUsers = b.processUsers as (string | number)[];
    }
    if (b.values !== undefined) {
      if (typeof b.values !== "boolean") fail(`${at}.values`, "must be true (values may be captured) or false (masked)");
      binding.values = b.values as boolean;
    }
    return binding;
  });
  return { file, bindings };
}

/** A decision: allowed, or the rule that denied it. */
export type Decision = { readonly allowed: true; readonly binding: Binding } | { readonly allowed: false; readonly why: string };

function label(policy: AccessPolicy): string {
  return policy.file === undefined ? "access policy (default)" : `access policy (${policy.file})`;
}

/** `binding #2 (alice, bob: operator on hosts role=db, executables /usr/bin/postgres)` */
export function describeBinding(b: Binding): string {
  const scope = [
    b.hosts ? `hosts ${formatSelector(b.hosts)}` : "",
    b.executables ? `executables ${b.executables.join(" ")}` : "",
    b.processUsers ? `process users ${b.processUsers.join(" ")}` : "",
    b.values ? "" : "values masked",
  ].filter(Boolean);
  return `binding #${b.index} (${b.users.join(", ")}: ${b.role}${scope.length > 0 ? ` on ${scope.join(", ")}` : ""})`;
}

function bindingsOf(policy: AccessPolicy, user: string): Binding[] {
  return policy.bindings.filter((b) => b.users.includes("*") || b.users.includes(user));
}

/** Whether `user` may do `action` at all (scopes aside). */
export function mayDo(policy: AccessPolicy, user: string, action: Action): Decision {
  const mine = bindingsOf(policy, user);
  if (mine.length === 0) return { allowed: false, why: `${label(policy)}: no binding for user ${user}` };
  const binding = mine.find((b) => allowedActions[b.role].includes(action));
  if (binding) return { allowed: true, binding };
  const needed = roles.filter((r) => allowedActions[r].includes(action));
  return { allowed: false, why: `${label(policy)}: user ${user} is ${[...new Set(mine.map((b) => b.role))].join(", ")} (${mine.map((b) => `binding #${b.index}`).join(", ")}); ${action} needs ${needed.join(" or ")}` };
}

/** A process a job would watch, as the controller knows it from discovery. */
export interface ScopeSubject {
  readonly hostId: string;
  readonly hostLabels: Readonly<Record<string, string>>;
  readonly pid: number;
  readonly exe: string;
  readonly uid: number;
  readonly euid: number;
  /** The real uid's name on its host ("" unknown); the effective uid's name is known only when equal. */
  readonly user: string;
}

function outOfScope(b: Binding, p: ScopeSubject): string | undefined {
  if (b.hosts && !matchesSelector(b.hosts, p.hostLabels)) return `host ${p.hostId} does not match hosts ${formatSelector(b.hosts)}`;
  if (b.executables && !executableMatches(b.executables, p.exe)) return `${p.exe} is not in executables`;
  if (b.processUsers) {
    const why = usersRefusal(b.processUsers, p.uid, p.euid, (uid) => (uid === p.uid && p.user !== "" ? p.user : undefined));
    if (why) return `${why} is not in process users`;
  }
  return undefined;
}

/**
 * Whether `user` may watch this process: the first of its bindings that may
 * submit and whose scope holds it (preferring one that allows values), or
 * why none does.
 */
export function mayWatch(policy: AccessPolicy, user: string, p: ScopeSubject): Decision {
  const submitting = bindingsOf(policy, user).filter((b) => allowedActions[b.role].includes("submit"));
  if (submitting.length === 0) return mayDo(policy, user, "submit");
  const holding = submitting.filter((b) => outOfScope(b, p) === undefined);
  const binding = holding.find((b) => b.values) ?? holding[0];
  if (binding) return { allowed: true, binding };
  const reasons = submitting.map((b) => `${describeBinding(b)}: ${outOfScope(b, p)}`);
  return { allowed: false, why: `${label(policy)}: user ${user} may not watch ${p.hostId}/${p.pid} (${describeUser(p.uid, p.user || undefined)}, ${p.exe}): ${reasons.join("; ")}` };
}

/** One line on the policy in effect, for logs. */
export function summarizeAccessPolicy(policy: AccessPolicy): string {
  return policy.bindings.map(describeBinding).join("; ");
}
