import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, mkdir, rm, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { UsageError } from "../../cli/errors.js";
import { consoleUrl, exposureWarning, isLoopbackListen, parseListenAddress } from "../../cli/console/listen-address.js";
import { isAllowedHost, parseHostHeader, refusalOf } from "../../cli/console/request-guard.js";
import { readStaticAsset } from "../../cli/console/static-files.js";

test("console listen - parses HOST:PORT and [V6]:PORT; refuses anything else as bad input", () => {
  assert.deepEqual(parseListenAddress("127.0.0.1:8080"), { host: "127.0.0.1", port: 8080 });
  assert.deepEqual(parseListenAddress("[::1]:0"), { host: "::1", port: 0 });
  assert.deepEqual(parseListenAddress("LocalHost:9000"), { host: "localhost", port: 9000 });
  assert.deepEqual(parseListenAddress("0.0.0.0:8080"), { host: "0.0.0.0", port: 8080 });
  for (const bad of ["8080", "127.0.0.1", "127.0.0.1:", ":8080", "127.0.0.1:65536", "::1:8080", "[localhost]:80", "127.0.0.1:8o80"]) {
    assert.throws(() => parseListenAddress(bad), (err: unknown) => err instanceof UsageError && /--listen/.test(err.message), bad);
  }
});

test("console listen - loopback is quiet; any other address warns on stderr naming it", () => {
  assert.equal(isLoopbackListen(parseListenAddress("127.0.0.1:8080")), true);
  assert.equal(isLoopbackListen(parseListenAddress("[::1]:8080")), true);
  assert.equal(isLoopbackListen(parseListenAddress("localhost:8080")), true);
  assert.equal(exposureWarning(parseListenAddress("127.0.0.1:0"), 41234), undefined);
  const warning = exposureWarning(parseListenAddress("0.0.0.0:0"), 41234);
  assert.match(warning ?? "", /^warning: console listening on 0\.0\.0\.0:41234, not loopback: anyone who reaches it/);
  assert.match(exposureWarning(parseListenAddress("[::]:8080"), 8080) ?? "", /on \[::\]:8080, not loopback/);
  assert.equal(consoleUrl("127.0.0.1", 8080), "http://127.0.0.1:8080/");
  assert.equal(consoleUrl("::1", 8080), "http://[::1]:8080/");
});

test("console guard - Host headers: this port, by IP address, localhost or the name it listens on; nothing else", () => {
  const loopback = parseListenAddress("127.0.0.1:8080");
  const named = parseListenAddress("console.example:8080");
  const table: Array<[string | undefined, boolean, string]> = [
    ["127.0.0.1:8080", true, "the address itself"],
    ["localhost:8080", true, "localhost"],
    ["LOCALHOST:8080", true, "names are case-insensitive"],
    ["[::1]:8080", true, "an IPv6 literal"],
    ["10.1.2.3:8080", true, "another IP literal: no foreign name involved"],
    ["127.0.0.1:8081", false, "another port"],
    ["127.0.0.1", false, "no port means 80"],
    ["evil.example:8080", false, "a foreign name (DNS rebinding)"],
    ["localhost.evil.example:8080", false, "a name that merely starts like localhost"],
    ["[evil]:8080", false, "brackets around a name"],
    ["127.0.0.1:8080:1", false, "malformed"],
    ["", false, "empty"],
    [undefined, false, "absent"],
  ];
  for (const [header, allowed, why] of table) assert.equal(isAllowedHost(header, loopback, 8080), allowed, `${header}: ${why}`);
  assert.equal(isAllowedHost("console.example:8080", named, 8080), true, "the name it listens on");
  assert.equal(isAllowedHost("console.example:8080", loopback, 8080), false, "a name it does not listen on");
  assert.deepEqual(parseHostHeader("[::1]:80"), { host: "::1", port: 80 });
  assert.deepEqual(parseHostHeader("example"), { host: "example", port: 80 });
});

test("console guard - only GET and HEAD (405 with Allow), then the Host (403)", () => {
  const listen = parseListenAddress("127.0.0.1:0");
  for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]) {
    const refusal = refusalOf(method, "127.0.0.1:4000", listen, 4000);
    assert.equal(refusal?.status, 405, method);
    assert.equal(refusal?.headers.Allow, "GET, HEAD");
    assert.match(refusal?.message ?? "", /read-only/);
  }
  assert.equal(refusalOf("GET", "127.0.0.1:4000", listen, 4000), undefined);
  assert.equal(refusalOf("HEAD", "localhost:4000", listen, 4000), undefined);
  const forbidden = refusalOf("GET", "evil.example:4000", listen, 4000);
  assert.equal(forbidden?.status, 403);
  assert.match(forbidden?.message ?? "", /Host 'evil\.example:4000' is not this console/);
  assert.equal(refusalOf("POST", "evil.example:4000", listen, 4000)?.status, 405, "the method is refused first");
});

test("console static - serves plain names of its folder only: no paths, no dot-dot, no encoded separators, no links out", async () => {
  const root = await mkdtemp(path.join(os.tmpdir(), "console-static-"));
  try {
    const dir = path.join(root, "static");
    await mkdir(dir);
    await writeFile(path.join(dir, "app.js"), "export {};\n");
    await writeFile(path.join(dir, "style.css"), "body {}\n");
    await writeFile(path.join(root, "secret.js"), "secret\n");
    await symlink(path.join(root, "secret.js"), path.join(dir, "link.js"));
    const js = await readStaticAsset(dir, "app.js");
    assert.equal(js?.contentType, "text/javascript; charset=utf-8");
    assert.equal(js?.body.toString(), "export {};\n");
    assert.equal((await readStaticAsset(dir, "style.css"))?.contentType, "text/css; charset=utf-8");
    for (const name of ["../secret.js", "..%2fsecret.js", "%2e%2e%2fsecret.js", "..", ".", "", "/etc/passwd", "sub/app.js", "App.js", ".hidden.js", "app.js.map", "app.txt", "link.js", "missing.js", "app.js\u0000.css"]) {
      assert.equal(await readStaticAsset(dir, name), undefined, JSON.stringify(name));
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
