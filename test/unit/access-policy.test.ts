// The access policy: parsing its file, and each role/scope decision, allowed
// and denied, with the rule named.
import { test } from "node:test";
import assert from "node:assert/strict";
import { AccessPolicyError, defaultAccessPolicy, mayDo, mayWatch, parseAccessPolicy, type ScopeSubject } from "../../controller/access-policy.js";

const file = "/etc/fleetwatch/access.json";
const policy = parseAccessPolicy(
  JSON.stringify({
    bindings: [
      { users: ["vera"], role: "viewer" },
      { users: ["olga", "omar"], role: "operator", hosts: "role=db", executables: ["/usr/lib/postgresql/*/bin/postgres"], processUsers: ["postgres", 1001] },
      { users: ["omar"], role: "operator", hosts: "role=web", values: false },
      { users: ["ada"], role: "admin" },
    ],
  }),
  file,
);

const postgres: ScopeSubject = { hostId: "db-1", hostLabels: { role: "db" }, pid: 42, exe: "/usr/lib/postgresql/16/bin/postgres", uid: 1001, euid: 1001, user: "postgres" };

test("access policy - file errors name the file and the key", () => {
  const cases: Array<[unknown, RegExp]> = [
    ["{", /access policy \/etc\/fleetwatch\/access\.json: not JSON/],
    [[], /must be a JSON object with a "bindings" list/],
    [{ binding: [] }, /"binding" is not a known key/],
    [{ bindings: [{ users: [], role: "viewer" }] }, /"bindings\[0\]\.users" must be a non-empty list/],
    [{ bindings: [{ users: ["a"], role: "root" }] }, /"bindings\[0\]\.role" must be one of viewer, operator, admin/],
    [{ bindings: [{ users: ["a"], role: "viewer", exe: [] }] }, /"bindings\[0\]\.exe" is not a known key/],
    [{ bindings: [{ users: ["a"], role: "operator", hosts: "role==" }] }, /"bindings\[0\]\.hosts" /],
    [{ bindings: [{ users: ["a"], role: "operator", executables: ["postgres"] }] }, /"bindings\[0\]\.executables" must be a list of absolute path globs/],
    [{ bindings: [{ users: ["a"], role: "operator", processUsers: [-1] }] }, /"bindings\[0\]\.processUsers" must be a list of user names or uids/],
    [{ bindings: [{ users: ["a"], role: "operator", values: "no" }] }, /"bindings\[0\]\.values" must be true/],
  ];
  for (const [doc, re] of cases) assert.throws(() => parseAccessPolicy(typeof doc === "string" ? doc : JSON.stringify(doc), file), (err: unknown) => err instanceof AccessPolicyError && re.test(err.message), String(re));
});

test("access policy - roles: what each may do, and the rule when not", () => {
  const table: Array<[string, string, boolean, RegExp?]> = [
    ["vera", "view", true],
    ["vera", "submit", false, /user vera is viewer \(binding #1\); submit needs operator or admin/],
    ["olga", "submit", true],
    ["olga", "cancel", true],
    ["olga", "cancel-any", false, /cancel-any needs admin/],
    ["olga", "disarm-all", false, /user olga is operator \(binding #2\); disarm-all needs admin/],
    ["olga", "audit", false, /audit needs admin/],
    ["ada", "disarm-all", true],
    ["ada", "audit", true],
    ["mallory", "view", false, /access policy \(\/etc\/fleetwatch\/access\.json\): no binding for user mallory/],
  ];
  for (const [user, action, allowed, why] of table) {
    const d = mayDo(policy, user, action as never);
    assert.equal(d.allowed, allowed, `${user} ${action}`);
    if (!d.allowed) assert.match(d.why, why!);
  }
  assert.equal(mayDo(defaultAccessPolicy, "anyone", "disarm-all").allowed, true);
});

test("access policy - scopes: hosts, executables, process users (real and effective), values", () => {
  assert.equal(mayWatch(policy, "olga", postgres).allowed, true);
  const cases: Array<[Partial<ScopeSubject>, RegExp]> = [
    [{ hostId: "web-1", hostLabels: { role: "web" } }, /host web-1 does not match hosts role=db/],
    [{ exe: "/usr/bin/bash" }, /\/usr\/bin\/bash is not in executables/],
    [{ uid: 0, euid: 0, user: "root" }, /uid 0 \(root\), the process's real user is not in process users/],
    [{ euid: 0 }, /uid 0, the process's effective user is not in process users/],
  ];
  for (const [change, why] of cases) {
    const d = mayWatch(policy, "olga", { ...postgres, ...change });
    assert.equal(d.allowed, false, String(why));
    if (!d.allowed) {
      assert.match(d.why, /^access policy \(\/etc\/fleetwatch\/access\.json\): user olga may not watch /);
      assert.match(d.why, why);
      assert.match(d.why, /binding #2 \(olga, omar: operator on hosts role=db, executables \/usr\/lib\/postgresql\/\*\/bin\/postgres, process users postgres 1001\)/);
    }
  }
  const viewer = mayWatch(policy, "vera", postgres);
  assert.ok(!viewer.allowed && /submit needs operator or admin/.test(viewer.why));
});

test("access policy - a user with several bindings: any may allow, one that captures values wins", () => {
  const web: ScopeSubject = { ...postgres, hostId: "web-1", hostLabels: { role: "web" }, exe: "/usr/bin/nginx", user: "www-data", uid: 33, euid: 33 };
  const onWeb = mayWatch(policy, "omar", web);
  assert.ok(onWeb.allowed && onWeb.binding.index === 3 && onWeb.binding.values === false);
  const onDb = mayWatch(policy, "omar", postgres);
  assert.ok(onDb.allowed && onDb.binding.index === 2 && onDb.binding.values === true);
  const star = parseAccessPolicy(JSON.stringify({ bindings: [{ users: ["*"], role: "viewer" }, { users: ["ada"], role: "admin" }] }), file);
  assert.equal(mayDo(star, "anyone", "view").allowed, true);
  assert.equal(mayDo(star, "anyone", "submit").allowed, false);
  assert.equal(mayDo(star, "ada", "submit").allowed, true);
});
