// The JetStream streams the controller keeps: created at start if missing,
// by whichever controller gets there first.
import { nanos, RetentionPolicy, StorageType, type NatsConnection } from "nats";
import { auditStream, auditSubjects, eventStream, eventSubjects } from "../proto/index.js";

interface StreamLimits {
  name: string;
  subjects: string;
  maxAgeMs: number;
  maxBytes: number;
}

// Hit events are kept for replay (`fleetwatch events --since`) for a day, at most 1 GiB.
const events: StreamLimits = { name: eventStream, subjects: eventSubjects, maxAgeMs: 24 * 3600 * 1000, maxBytes: 1024 ** 3 };
// The audit trail is kept 90 days, at most 256 MiB.
const audit: StreamLimits = { name: auditStream, subjects: auditSubjects, maxAgeMs: 90 * 24 * 3600 * 1000, maxBytes: 256 * 1024 ** 2 };

async function ensureStream(nc: NatsConnection, s: StreamLimits): Promise<void> {
  const jsm = await nc.jetstreamManager();
  try {
    await jsm.streams.info(s.name);
  } catch {
    // Another controller starting at the same moment may have just created it.
    await jsm.streams
      .add({ name: s.name, subjects: [s.subjects], retention: RetentionPolicy.Limits, storage: StorageType.File, max_age: nanos(s.maxAgeMs), max_bytes: s.maxBytes })
      .catch(async (err: unknown) => {
        await jsm.streams.info(s.name).catch(() => Promise.reject(err));
      });
  }
}

/** Creates the event and audit streams where they are missing. */
export async function ensureStreams(nc: NatsConnection): Promise<void> {
  await ensureStream(nc, events);
  await ensureStream(nc, audit);
}
