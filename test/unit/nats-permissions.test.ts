import { test } from "node:test";
import assert from "node:assert/strict";
import { identityOfSeedFile, renderNatsAuthConfig } from "../../cli/nats-credentials.js";
import { createNatsUserKey, mayPublish, maySubscribe, natsInboxPrefix, natsPermissions, subjectMatches, type Identity } from "../../proto/index.js";

const key = "UKEY";
const agent: Identity = { kind: "agent", name: "h1" };
const user: Identity = { kind: "user", name: "alice" };
const controller: Identity = { kind: "controller", name: "controller" };

test("nats permissions - subject patterns match tokens, * one and > the rest", () => {
  const table: Array<[string, string, boolean]> = [
    ["a.*.c", "a.b.c", true],
    ["a.*.c", "a.b.d", false],
    ["a.*", "a.b.c", false],
    ["a.>", "a.b.c", true],
    ["a.>", "a", false],
    ["a.b", "a.b", true],
  ];
  for (const [pattern, subject, expected] of table) assert.equal(subjectMatches(pattern, subject), expected, `${pattern} ~ ${subject}`);
});

test("nats permissions - an agent publishes only its own host's hits and reads back only its own", () => {
  const p = natsPermissions(agent, key);
  const table: Array<[string, boolean]> = [
    ["fleetwatch.events.j1.h1", true],
    ["fleetwatch.events.j1.h2", false],
    ["fleetwatch.events.j1.h1.x", false],
    ["fleetwatch.jobs", false],
    // A message get reads any host's hits: the agent reads its own through a filtered consumer only.
    ["$JS.API.STREAM.MSG.GET.FLEETWATCH_EVENTS", false],
    ["$JS.API.STREAM.INFO.FLEETWATCH_EVENTS", true],
    ["$JS.API.CONSUMER.CREATE.FLEETWATCH_EVENTS.oc_1.fleetwatch.events.j1.h1", true],
    ["$JS.API.CONSUMER.CREATE.FLEETWATCH_EVENTS.oc_1.fleetwatch.events.j1.h2", false],
    ["$JS.API.CONSUMER.CREATE.FLEETWATCH_EVENTS.oc_1.fleetwatch.events.>", false],
    ["$JS.API.CONSUMER.CREATE.FLEETWATCH_EVENTS", false],
    ["$JS.API.CONSUMER.DURABLE.CREATE.FLEETWATCH_EVENTS.d", false],
    ["$JS.API.CONSUMER.MSG.NEXT.FLEETWATCH_EVENTS.oc_1", true],
    ["$JS.API.CONSUMER.DELETE.FLEETWATCH_EVENTS.oc_1", true],
    ["$JS.API.STREAM.CREATE.FLEETWATCH_EVENTS", false],
    ["$JS.API.STREAM.DELETE.FLEETWATCH_EVENTS", false],
    ["$JS.API.STREAM.PURGE.FLEETWATCH_EVENTS", false],
    ["$JS.API.STREAM.MSG.DELETE.FLEETWATCH_EVENTS", false],
    ["$KV.fleetwatch-jobs.j1", false],
    ["$KV.fleetwatch-leader.leader", false],
    ["$JS.API.STREAM.INFO.KV_fleetwatch-jobs", false],
    ["$JS.API.STREAM.MSG.GET.KV_fleetwatch-jobs", false],
    ["$JS.API.DIRECT.GET.KV_fleetwatch-jobs.$KV.fleetwatch-jobs.j1", false],
  ];
  for (const [subject, expected] of table) assert.equal(mayPublish(p, subject), expected, `agent h1 publish ${subject}`);
  assert.equal(maySubscribe(p, `${natsInboxPrefix(key)}.abc.1`), true);
  assert.equal(maySubscribe(p, "_INBOX.OTHER.abc"), false);
  assert.equal(maySubscribe(p, "fleetwatch.events.j1.h1"), false);
});

test("nats permissions - a user only reads events: consumers on the event stream, nothing under fleetwatch.> nor KV", () => {
  const p = natsPermissions(user, key);
  const table: Array<[string, boolean]> = [
    ["$JS.API.CONSUMER.CREATE.FLEETWATCH_EVENTS.oc_1.fleetwatch.events.j1.>", true],
    ["$JS.API.CONSUMER.MSG.NEXT.FLEETWATCH_EVENTS.oc_1", true],
    ["$JS.API.CONSUMER.INFO.FLEETWATCH_EVENTS.oc_1", true],
    ["$JS.API.CONSUMER.DELETE.FLEETWATCH_EVENTS.oc_1", true],
    ["$JS.API.STREAM.INFO.FLEETWATCH_EVENTS", true],
    ["fleetwatch.events.j1.h1", false],
    ["fleetwatch.anything", false],
    ["$JS.API.CONSUMER.CREATE.KV_fleetwatch-jobs", false],
    ["$JS.API.CONSUMER.CREATE.FLEETWATCH_EVENTS", false],
    ["$JS.API.STREAM.MSG.GET.FLEETWATCH_EVENTS", false],
    ["$JS.API.STREAM.DELETE.FLEETWATCH_EVENTS", false],
    ["$KV.fleetwatch-jobs.j1", false],
    ["$JS.API.STREAM.MSG.GET.KV_fleetwatch-jobs", false],
    // The audit trail is read through the controller (admins only), never from NATS.
    ["$JS.API.CONSUMER.CREATE.FLEETWATCH_AUDIT.oc_1.fleetwatch.audit.>", false],
    ["fleetwatch.audit.submit", false],
  ];
  for (const [subject, expected] of table) assert.equal(mayPublish(p, subject), expected, `user publish ${subject}`);
  assert.deepEqual(p.subscribe, [`${natsInboxPrefix(key)}.>`]);
});

test("nats permissions - the controller administers its buckets and the event and audit streams, writes the audit trail, and publishes no hits", () => {
  const p = natsPermissions(controller, key);
  const table: Array<[string, boolean]> = [
    ["$JS.API.STREAM.CREATE.FLEETWATCH_EVENTS", true],
    ["$JS.API.STREAM.INFO.KV_fleetwatch-jobs", true],
    ["$JS.API.STREAM.CREATE.KV_fleetwatch-leader", true],
    ["$JS.API.DIRECT.GET.KV_fleetwatch-jobs.$KV.fleetwatch-jobs.j1", true],
    ["$JS.API.CONSUMER.CREATE.KV_fleetwatch-leader", true],
    ["$KV.fleetwatch-jobs.j1", true],
    ["$KV.fleetwatch-leader.leader", true],
    ["$JS.FC.KV_fleetwatch-leader.x.y", true],
    ["$JS.API.STREAM.CREATE.FLEETWATCH_AUDIT", true],
    ["$JS.API.CONSUMER.CREATE.FLEETWATCH_AUDIT.c1.fleetwatch.audit.>", true],
    ["fleetwatch.audit.submit", true],
    ["$JS.API.STREAM.CREATE.OTHER", false],
    ["$KV.other.k", false],
    ["fleetwatch.events.j1.h1", false],
  ];
  for (const [subject, expected] of table) assert.equal(mayPublish(p, subject), expected, `controller publish ${subject}`);
});

test("nats permissions - seed file names map to parties, and the config lists each key with quoted subjects", () => {
  assert.deepEqual(identityOfSeedFile("controller.nk"), controller);
  assert.deepEqual(identityOfSeedFile("agent-db-1.nk"), { kind: "agent", name: "db-1" });
  assert.deepEqual(identityOfSeedFile("user-a.b@c.nk"), { kind: "user", name: "a.b@c" });
  assert.equal(identityOfSeedFile("agent-h1.key"), undefined);
  const { publicKey } = createNatsUserKey();
  assert.match(publicKey, /^U[A-Z2-7]{55}$/);
  const conf = renderNatsAuthConfig([{ identity: agent, publicKey }]);
  assert.match(conf, /authorization \{\n  users = \[\n    # agent h1\n    \{ nkey: "U[A-Z2-7]{55}", permissions: \{ publish: \{ allow: \["fleetwatch\.events\.\*\.h1", "\$JS\.API\.INFO"/);
  assert.ok(conf.includes(`subscribe: { allow: ["_INBOX.${publicKey}.>"] }`));
});
