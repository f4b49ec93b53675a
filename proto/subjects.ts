// Names on the NATS side of the contract: event subjects, the stream that keeps
// them for replay, and the KV bucket of controller state.

/** JetStream stream holding every hit event. */
export const eventStream = "FLEETWATCH_EVENTS";

/** Subjects the event stream captures. */
export const eventSubjects = "fleetwatch.events.>";

/** KV bucket of jobs (protobuf Job, key = job id). */
export const jobBucket = "fleetwatch-jobs";

/** KV bucket of the controllers' leader lease. */
export const leaderBucket = "fleetwatch-leader";

const token = /^[A-Za-z0-9_-]+$/;

/** Checks that a job or host id can be one subject token. */
export function isSubjectToken(value: string): boolean {
  return token.test(value);
}

/** `fleetwatch.events.<job>.<host>`: where one host publishes one job's hits. */
export function eventSubject(jobId: string, hostId: string): string {
  return `fleetwatch.events.${jobId}.${hostId}`;
}

/** Every host's hits of one job. */
export function jobEventFilter(jobId: string): string {
  return `fleetwatch.events.${jobId}.>`;
}

/** JetStream's answer when a stream does not exist (a server without JetStream answers 503). */
export function isStreamNotFound(err: unknown): boolean {
  const e = err as { message?: string; code?: string; api_error?: { err_code?: number } } | null;
  return e?.api_error?.err_code === 10059 || e?.message === "stream not found" || e?.code === "503";
}

/** JetStream stream holding the audit trail (AuditRecord, protobuf binary). */
export const auditStream = "FLEETWATCH_AUDIT";

/** At most this many records per ListAudit answer (the oldest first); ask again with a later since. */
export const maxAuditRecords = 2_000;

/** Subjects the audit stream captures. */
export const auditSubjects = "fleetwatch.audit.>";

/** `fleetwatch.audit.<action>`: one record of the controller's decisions. */
export function auditSubject(action: string): string {
  return `fleetwatch.audit.${action.replace(/[^A-Za-z0-9_-]/g, "_")}`;
}
