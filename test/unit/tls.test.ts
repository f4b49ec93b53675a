// The pure rules of mutual TLS: identities in certificates, which addresses
// are loopback, and when plaintext is allowed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { identityFromSubjectAltName, identityUri, isLoopbackAddress } from "../../proto/index.js";
import { resolveTransport } from "../../cli/transport.js";

test("tls - one fleetwatch identity URI in the subject alternative names, or none", () => {
  assert.deepEqual(identityFromSubjectAltName("URI:fleetwatch://agent/db-1, DNS:localhost"), { kind: "agent", name: "db-1" });
  assert.deepEqual(identityFromSubjectAltName("DNS:x, URI:fleetwatch://user/alice@example.com"), { kind: "user", name: "alice@example.com" });
  assert.equal(identityUri({ kind: "controller", name: "controller" }), "fleetwatch://controller/controller");
  for (const san of [undefined, "", "DNS:db-1", "URI:fleetwatch://root/x", "URI:https://agent/db-1", "URI:fleetwatch://agent/", "URI:fleetwatch://agent/a/b", "URI:fleetwatch://agent/a, URI:fleetwatch://user/b"]) {
    assert.equal(identityFromSubjectAltName(san), undefined, String(san));
  }
});

test("tls - loopback addresses", () => {
  for (const a of ["127.0.0.1:7070", "127.8.9.10:1", "localhost:7070", "[::1]:7070"]) assert.ok(isLoopbackAddress(a), a);
  for (const a of ["0.0.0.0:7070", "10.0.0.1:7070", "[::]:7070", "db-1:7070", "128.0.0.1:1"]) assert.ok(!isLoopbackAddress(a), a);
});

test("tls - plaintext on loopback, or with --insecure and a warning; otherwise certificates, all three", () => {
  const warnings: string[] = [];
  const warn = (line: string) => warnings.push(line);
  assert.deepEqual(resolveTransport({}, "user", ["127.0.0.1:7070", "[::1]:7071"], warn), { plaintext: true });
  assert.deepEqual(warnings, []);
  assert.throws(() => resolveTransport({}, "user", ["127.0.0.1:7070", "10.0.0.2:7070"], warn), /^UsageError: 10\.0\.0\.2:7070 is not on loopback: give --ca, --cert and --key \(create them with `fleetwatch certs init`\), or --insecure/);
  assert.deepEqual(resolveTransport({ insecure: true }, "agent", ["10.0.0.2:7070"], warn), { plaintext: true });
  assert.match(warnings[0]!, /^warning: --insecure: gRPC in plaintext with no authentication on 10\.0\.0\.2:7070/);
  assert.throws(() => resolveTransport({ ca: "ca.crt", cert: "c.crt" }, "user", ["127.0.0.1:1"], warn), /needs all of --ca, --cert and --key/);
  assert.throws(() => resolveTransport({ ca: "a", cert: "b", key: "c", insecure: true }, "user", ["127.0.0.1:1"], warn), /exclude each other/);
  assert.throws(() => resolveTransport({ ca: "/nonexistent/ca.crt", cert: "b", key: "c" }, "user", ["127.0.0.1:1"], warn), /^UsageError: CA \/nonexistent\/ca\.crt: no such file$/);
});
