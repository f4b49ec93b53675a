// What each party may do on NATS: the subjects it may publish to and
// subscribe on, as nats-server permissions. An agent publishes only its own
// host's hits and reads back only its own; a user only reads events; the
// controller administers its own streams and buckets. Pure: the certificate
// tooling renders these into nats-server's authorization block.
import { auditStream, auditSubjects, eventStream, jobBucket, leaderBucket } from "./subjects.js";
import type { Identity } from "./tls.js";

/** Allowed subjects of one party (nats-server denies everything else). */
export interface NatsPermissions {
  readonly publish: readonly string[];
  readonly subscribe: readonly string[];
}

const api = "$JS.API";

/**
 * Where a party's replies arrive: `_INBOX.<its public nkey>`. Each party may
 * subscribe only under its own prefix, so none can read the answers another
 * party's requests get (the controller's KV reads, a user's events).
 */
export function natsInboxPrefix(publicKey: string): string {
  return `_INBOX.${publicKey}`;
}

/** The JetStream API subjects an ordered consumer on `stream` uses once created: pull, look, and remove it on reset or stop. */
function orderedConsumerUse(stream: string): string[] {
  return [`${api}.STREAM.INFO.${stream}`, `${api}.CONSUMER.MSG.NEXT.${stream}.*`, `${api}.CONSUMER.INFO.${stream}.*`, `${api}.CONSUMER.DELETE.${stream}.*`];
}

/** Everything the controller does to a stream it owns: create and update it, read and watch it (KV gets and watches), delete from it. */
function streamAdmin(stream: string): string[] {
  return [
    // CREATE, UPDATE, INFO, DELETE, PURGE.
    `${api}.STREAM.*.${stream}`,
    // MSG.GET, MSG.DELETE.
    `${api}.STREAM.MSG.*.${stream}`,
    `${api}.DIRECT.GET.${stream}`,
    `${api}.DIRECT.GET.${stream}.>`,
    // CREATE (no name), LIST, NAMES; then CREATE.<name>[.<filter>], INFO, DELETE; then DURABLE.CREATE, MSG.NEXT.
    `${api}.CONSUMER.*.${stream}`,
    `${api}.CONSUMER.*.${stream}.>`,
    `${api}.CONSUMER.*.*.${stream}.>`,
  ];
}

/**
 * The permissions of one party, given its public nkey (which names its inbox).
 *
 * - agent HOST: publishes hits only on `fleetwatch.events.*.HOST`; reads its
 *   stored hits back with an ordered consumer whose create subject carries
 *   the filter, so only consumers filtered on its own subjects can be made;
 *   no message get, no stream or KV administration.
 * - user: reads the event stream through ordered consumers; publishes nothing
 *   under `fleetwatch.>` and has no KV access.
 * - controller: administers the event and audit streams and its two KV
 *   buckets, and writes the audit trail.
 */
export function natsPermissions(identity: Identity, publicKey: string): NatsPermissions {
  const inbox = `${natsInboxPrefix(publicKey)}.>`;
  switch (identity.kind) {
    case "agent":
      return {
        publish: [
          `fleetwatch.events.*.${identity.name}`,
          // The manager's account check when it is opened.
          `${api}.INFO`,
          // Its stored hits are read through a consumer filtered on its own subjects (no message get: that reads any host's).
          `${api}.CONSUMER.CREATE.${eventStream}.*.fleetwatch.events.*.${identity.name}`,
          ...orderedConsumerUse(eventStream),
        ],
        subscribe: [inbox],
      };
    case "user":
      return {
        // Consumer name, then the filter the CLI reads (`fleetwatch.events.<job>.>`).
        publish: [`${api}.CONSUMER.CREATE.${eventStream}.*.fleetwatch.events.>`, ...orderedConsumerUse(eventStream)],
        subscribe: [inbox],
      };
    case "controller":
      return {
        publish: [
          `${api}.INFO`,
          ...streamAdmin(eventStream),
          ...streamAdmin(auditStream),
          auditSubjects,
          ...streamAdmin(`KV_${jobBucket}`),
          ...streamAdmin(`KV_${leaderBucket}`),
          `$KV.${jobBucket}.>`,
          `$KV.${leaderBucket}.>`,
          // Flow control answers of the KV watchers' push consumers.
          "$JS.FC.>",
        ],
        subscribe: [inbox],
      };
  }
}

/** Whether a concrete subject is matched by a NATS subject pattern (`*` one token, `>` the rest). */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split(".");
  const s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    if (p[i] === ">") return s.length > i;
    if (i >= s.length) return false;
    if (p[i] !== "*" && p[i] !== s[i]) return false;
  }
  return p.length === s.length;
}

/** Whether the permissions let a party publish to `subject`. */
export function mayPublish(permissions: NatsPermissions, subject: string): boolean {
  return permissions.publish.some((pattern) => subjectMatches(pattern, subject));
}

/** Whether the permissions let a party subscribe on `subject` (a concrete subject). */
export function maySubscribe(permissions: NatsPermissions, subject: string): boolean {
  return permissions.subscribe.some((pattern) => subjectMatches(pattern, subject));
}
