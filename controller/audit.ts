// The audit trail: every submit, cancel and kill switch with who asked, what,
// where and how it ended, and every request denied, as AuditRecords in a
// JetStream stream of their own (kept 90 days). Any controller writes it
// (a standby's denials too); ListAudit reads it back in order.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { JetStreamClient } from "nats";
import { AuditRecordSchema, auditStream, auditSubject, auditSubjects, capText, failFirstCreation, maxAuditRecords, readPending, withDeadline, type AuditRecord } from "../proto/index.js";

// A record that cannot be stored within this is logged as lost: the request it describes is not held up longer.
const publishTimeoutMs = 5_000;

// A record stays small whatever a request carried (a spec can quote 100,000-character strings).
const maxFieldBytes = 1_024;
const maxWhere = 64;

function cut(text: string): string {
  return capText(text, maxFieldBytes);
}

function bounded(entry: AuditEntry): AuditEntry {
  const where = entry.where ?? [];
  return {
    ...entry,
    who: cut(entry.who),
    ...(entry.jobId !== undefined ? { jobId: cut(entry.jobId) } : {}),
    ...(entry.what !== undefined ? { what: cut(entry.what) } : {}),
    ...(entry.reason !== undefined ? { reason: cut(entry.reason) } : {}),
    where: where.length <= maxWhere ? where.map(cut) : [...where.slice(0, maxWhere).map(cut), `… and ${where.length - maxWhere} more`],
  };
}

/** One record as the controller makes it (the time is added when stored). */
export interface AuditEntry {
  who: string;
  action: string;
  jobId?: string;
  what?: string;
  where?: string[];
  result: string;
  reason?: string;
}

/** Writes and reads the audit trail. */
export class AuditTrail {
  constructor(
    private readonly js: JetStreamClient,
    private readonly log: (line: string) => void,
    /** Hears every record as it is made (the metrics count denials). */
    private readonly onRecord: (entry: AuditEntry) => void = () => {},
  ) {}

  /** Stores one record; a record that cannot be stored is logged in full, so it is not lost from sight. */
  async record(init: AuditEntry): Promise<void> {
    this.onRecord(init);
    const record = create(AuditRecordSchema, { ...bounded(init), timeUnixMs: BigInt(Date.now()) });
    try {
      await withDeadline(this.js.publish(auditSubject(record.action), toBinary(AuditRecordSchema, record)), publishTimeoutMs, (ms) => new Error(`no answer from NATS within ${ms} ms`));
    } catch (err) {
      this.log(`audit: could not store the record (${err instanceof Error ? err.message : String(err)}): ${JSON.stringify({ ...record, timeUnixMs: String(record.timeUnixMs) })}`);
    }
  }

  /**
   * Records at or after `sinceUnixMs`, oldest first, at most maxAuditRecords:
   * those stored when the reading began (records written meanwhile, by a
   * busy controller, are not chased).
   */
  async list(sinceUnixMs: number): Promise<AuditRecord[]> {
    // Nothing is stored after now (and a start time far ahead is one the server refuses).
    if (sinceUnixMs > Date.now()) return [];
    const consumer = failFirstCreation(await this.js.consumers.get(auditStream, { filterSubjects: auditSubjects, ...(sinceUnixMs > 0 ? { opt_start_time: new Date(sinceUnixMs).toISOString() } : {}) }));
    const records: AuditRecord[] = [];
    await readPending(consumer, (message) => records.push(fromBinary(AuditRecordSchema, message.data)), { limit: maxAuditRecords });
    return records;
  }
}
