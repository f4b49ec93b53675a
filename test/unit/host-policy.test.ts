import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { ValueRedaction, globToRegExp } from "../../proto/index.js";
import {
  HostPolicyError,
  defaultPolicy,
  keyedHash,
  parseHostPolicy,
  parsePasswd,
  redactValues,
  refusal,
  summarizePolicy,
  type HostPolicy,
  type PolicyContext,
  type PolicySubject,
} from "../../agent/host-policy.js";

const file = "/etc/fleetwatch/policy.json";
const names = new Map([
  [0, "root"],
  [105, "postgres"],
  [1001, "app"],
]);
const context: PolicyContext = { agentPid: 900, helperPid: 901, userName: (uid) => names.get(uid) };

const postgres: PolicySubject = { pid: 4242, exe: "/usr/lib/postgresql/15/bin/postgres", uid: 105, euid: 105, cgroup: "/system.slice/postgresql.service" };

function policy(json: object): HostPolicy {
  return parseHostPolicy(JSON.stringify(json), file);
}

test("host policy - parses a full file and fills in what is absent", () => {
  assert.deepEqual(policy({ allow: { executables: ["/usr/lib/postgresql/*/bin/postgres"], users: ["postgres", 1001], cgroups: ["/system.slice/postgresql.service/"] }, values: "hash" }), {
    file,
    allow: { executables: ["/usr/lib/postgresql/*/bin/postgres"], users: ["postgres", 1001], cgroups: ["/system.slice/postgresql.service"] },
    values: "hash",
  });
  assert.deepEqual(policy({}), { file, allow: {}, values: "capture" });
  for (const values of ["capture", "hash", "mask", "off"]) assert.equal(policy({ values }).values, values);
});

test("host policy - a file that cannot be used is an error naming the file and the key", () => {
  const table: Array<[string, string, RegExp]> = [
    ["{", "", /^host policy \/etc\/fleetwatch\/policy\.json: not JSON: /],
    ["[]", "", /must be a JSON object with "allow" and "values", got an array/],
    ['{"allow": {}, "value": "hash"}', "value", /unknown key "value"; the keys are "allow" and "values"$/],
    ['{"values": "redact"}', "values", /values must be one of "capture", "hash", "mask", "off", got "redact"$/],
    ['{"values": true}', "values", /values must be one of .*, got true$/],
    ['{"allow": []}', "allow", /allow must be an object, got an array$/],
    ['{"allow": {"exe": ["/bin/x"]}}', "allow.exe", /unknown key "allow\.exe"; the keys are "executables", "users" and "cgroups"$/],
    ['{"allow": {"executables": "/bin/x"}}', "allow.executables", /allow\.executables must be an array of strings, got "\/bin\/x"$/],
    ['{"allow": {"executables": ["/bin/x", 3]}}', "allow.executables[1]", /allow\.executables\[1\] must be a non-empty string, got 3$/],
    ['{"allow": {"executables": ["bin/x"]}}', "allow.executables[0]", /allow\.executables\[0\] must be an absolute path or glob starting with "\/", got "bin\/x"$/],
    ['{"allow": {"cgroups": ["system.slice"]}}', "allow.cgroups[0]", /allow\.cgroups\[0\] must be an absolute cgroup path/],
    ['{"allow": {"users": "postgres"}}', "allow.users", /allow\.users must be an array of user names or uids, got "postgres"$/],
    ['{"allow": {"users": [-1]}}', "allow.users[0]", /allow\.users\[0\] must be a user name or a uid \(integer from 0\), got -1$/],
    ['{"allow": {"users": [1.5]}}', "allow.users[0]", /allow\.users\[0\]/],
    ['{"allow": {"users": [""]}}', "allow.users[0]", /allow\.users\[0\]/],
    ['{"allow": {"users": [null]}}', "allow.users[0]", /got null$/],
  ];
  for (const [text, key, message] of table) {
    assert.throws(
      () => parseHostPolicy(text, file),
      (err: unknown) => err instanceof HostPolicyError && err.file === file && err.key === key && message.test(err.message) && err.message.startsWith(`host policy ${file}: `),
      text,
    );
  }
});

test("host policy - allows and refuses each process by each rule, naming the file and the rule", () => {
  const full = policy({ allow: { executables: ["/usr/lib/postgresql/*/bin/postgres", "/opt/app/**"], users: ["postgres", 1001], cgroups: ["/system.slice/postgresql.service", "/app"] } });
  const table: Array<[string, HostPolicy, Partial<PolicySubject>, string | undefined]> = [
    ["the default policy allows any process", defaultPolicy, {}, undefined],
    ["every list matches", full, {}, undefined],
    ["exe glob: * within one component", full, { exe: "/usr/lib/postgresql/16/bin/postgres" }, undefined],
    ["exe glob: * does not cross /", full, { exe: "/usr/lib/postgresql/15/x/bin/postgres" }, "/usr/lib/postgresql/15/x/bin/postgres is not in allow.executables"],
    ["exe glob: ** crosses /", full, { exe: "/opt/app/bin/v2/server", uid: 1001, euid: 1001, cgroup: "/app/web" }, undefined],
    ["exe not listed", full, { exe: "/usr/bin/bash" }, "/usr/bin/bash is not in allow.executables"],
    ["exe deleted since start", full, { exe: "/usr/lib/postgresql/15/bin/postgres (deleted)" }, "/usr/lib/postgresql/15/bin/postgres (deleted): the executable was deleted or replaced since the process started, so allow.executables cannot vouch for it"],
    ["user by uid", full, { uid: 1001, euid: 1001 }, undefined],
    ["real user not listed", full, { uid: 0, euid: 105 }, "uid 0 (root), the process's real user, is not in allow.users"],
    ["effective user not listed (setuid)", full, { uid: 105, euid: 0 }, "uid 0 (root), the process's effective user, is not in allow.users"],
    ["user without a name", full, { uid: 4000, euid: 4000 }, "uid 4000, the process's real user, is not in allow.users"],
    ["effective uid unknown: the real one decides", full, { uid: 105, euid: undefined }, undefined],
    ["cgroup below an allowed one", full, { cgroup: "/system.slice/postgresql.service/child" }, undefined],
    ["cgroup that only shares a prefix", full, { cgroup: "/system.slice/postgresql.service2" }, "cgroup /system.slice/postgresql.service2 is not under allow.cgroups"],
    ["cgroup not listed", full, { cgroup: "/user.slice" }, "cgroup /user.slice is not under allow.cgroups"],
    ["no cgroup v2 path", full, { cgroup: undefined }, "the process shows no cgroup v2 path, so allow.cgroups cannot vouch for it"],
    ["root cgroup allows all", policy({ allow: { cgroups: ["/"] } }), { cgroup: "/user.slice" }, undefined],
    ["pid 1 never, even when allowed", full, { pid: 1 }, "pid 1 (the init process) is never watched"],
    ["the agent never", defaultPolicy, { pid: 900 }, "pid 900 is the fleetwatch agent itself and is never watched"],
    ["the helper never", defaultPolicy, { pid: 901 }, "pid 901 is the fleetwatch helper and is never watched"],
    ["only the lists present count", policy({ allow: { users: ["postgres"] } }), { exe: "/usr/bin/anything", cgroup: undefined }, undefined],
  ];
  for (const [name, p, change, why] of table) {
    const got = refusal(p, { ...postgres, ...change }, context);
    const label = p.file === undefined ? "host policy" : `host policy (${file})`;
    assert.equal(got, why === undefined ? undefined : `${label}: ${why}`, name);
  }
});

test("host policy - globs treat everything but *, ** and ? literally", () => {
  assert.ok(globToRegExp("/usr/bin/a.b").test("/usr/bin/a.b"));
  assert.ok(!globToRegExp("/usr/bin/a.b").test("/usr/bin/axb"));
  assert.ok(globToRegExp("/usr/bin/p?").test("/usr/bin/p3"));
  assert.ok(!globToRegExp("/usr/bin/p?").test("/usr/bin/p/"));
  assert.ok(globToRegExp("/a/(x)+[y]").test("/a/(x)+[y]"));
});

test("host policy - values: captured as they are, hashed with the key, masked or off as 0, each marked", () => {
  const key = Buffer.alloc(32, 7);
  assert.deepEqual(redactValues("capture", key, 41n, 42n), { oldValue: 41n, newValue: 42n, redaction: ValueRedaction.UNSPECIFIED });
  assert.deepEqual(redactValues("mask", key, 41n, 42n), { oldValue: 0n, newValue: 0n, redaction: ValueRedaction.MASKED });
  assert.deepEqual(redactValues("off", key, 41n, 42n), { oldValue: 0n, newValue: 0n, redaction: ValueRedaction.OFF });
  const hashed = redactValues("hash", key, 41n, 41n);
  assert.equal(hashed.redaction, ValueRedaction.HASHED);
  assert.equal(hashed.oldValue, hashed.newValue, "equal values hash equal");
  assert.notEqual(hashed.oldValue, 41n);
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64LE(41n);
  assert.equal(hashed.oldValue, createHmac("sha256", key).update(bytes).digest().readBigUInt64BE(0), "HMAC-SHA256 of the 8 little-endian bytes, first 8 bytes");
  assert.notEqual(keyedHash(key, 41n), keyedHash(key, 42n));
  assert.notEqual(keyedHash(Buffer.alloc(32, 8), 41n), keyedHash(key, 41n), "another key, another hash");
});

test("host policy - summary names the lists present and the value policy", () => {
  assert.equal(summarizePolicy(policy({ allow: { executables: ["/a", "/b"], users: ["postgres"] }, values: "hash" })), "exe 2, users 1, values hash");
  assert.equal(summarizePolicy(policy({ allow: { cgroups: ["/a"] } })), "cgroups 1, values capture");
  assert.equal(summarizePolicy(policy({ values: "off" })), "any process, values off");
});

test("host policy - /etc/passwd gives user names by uid, the first name of a uid winning", () => {
  const names = parsePasswd("root:x:0:0:root:/root:/bin/bash\n# comment\n\npostgres:x:105:110::/var/lib/postgresql:/bin/bash\ntoor:x:0:0::/:/bin/sh\nbroken\n");
  assert.deepEqual([...names], [
    [0, "root"],
    [105, "postgres"],
  ]);
});
