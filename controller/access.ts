// The controller's gate for every request: the caller's certificate must be
// of the right kind (users call the API, agents open sessions), and the
// access policy must let that user do it. Every denial is PERMISSION_DENIED
// naming the rule, and goes to the audit trail. Over plaintext nobody is
// authenticated and everything is allowed (the operator chose that).
import { describeIdentity, readConfigText, watchParsedFile, type CallContext, type IdentityKind } from "../proto/index.js";
import { AccessPolicyError, defaultAccessPolicy, mayDo, mayWatch, parseAccessPolicy, summarizeAccessPolicy, type AccessPolicy, type Action, type Decision, type ScopeSubject } from "./access-policy.js";
import type { AuditTrail } from "./audit.js";
import { PermissionDeniedError } from "./errors.js";

/** Who made a request: `user alice` (and the user name), or nobody over plaintext. */
export interface Caller {
  readonly who: string;
  readonly user: string | undefined;
}

/** The caller over plaintext: unauthenticated, allowed everything. */
export const plaintextCaller: Caller = { who: "", user: undefined };

const allowed: Decision = { allowed: true, binding: defaultAccessPolicy.bindings[0]! };

/** Reads and parses an access policy file; throws AccessPolicyError naming the file. */
export function loadAccessPolicy(file: string): AccessPolicy {
  return parseAccessPolicy(readConfigText(file, "access policy", (message) => new AccessPolicyError(message)), file);
}

/** Authentication and authorization of requests, with the policy in effect (reloaded when its file changes). */
export class AccessControl {
  private policy: AccessPolicy;
  private readonly stopWatching: () => void;

  constructor(
    /** Mutual TLS: callers are known by their certificates. */
    readonly secure: boolean,
    private readonly audit: AuditTrail,
    private readonly log: (line: string) => void,
    /** The access policy file; unset: every user certificate is an admin. */
    file?: string,
  ) {
    if (file !== undefined && !secure) throw new AccessPolicyError(`access policy ${file}: needs mutual TLS (--ca, --cert, --key): over plaintext nobody is known`);
    this.policy = file === undefined ? defaultAccessPolicy : loadAccessPolicy(file);
    if (secure) log(`controller: access policy ${file ?? "(none: every user certificate is an admin)"}: ${summarizeAccessPolicy(this.policy)}`);
    this.stopWatching = file === undefined ? () => {} : watchParsedFile({ file, what: "access policy", load: loadAccessPolicy, describe: summarizeAccessPolicy, onLoad: (p) => (this.policy = p), log: (line) => log(`controller: ${line}`) });
  }

  stop(): void {
    this.stopWatching();
  }

  /**
   * The caller, once its certificate is of `kind` and (for users) the
   * policy lets it do `action`; otherwise PermissionDeniedError, recorded
   * in the audit trail with `about` (the job it was about).
   */
  async authorize(ctx: CallContext, kind: IdentityKind, action: Action | undefined, about: { method: string; jobId?: string }): Promise<Caller> {
    if (!this.secure) return plaintextCaller;
    const identity = ctx.identity;
    const who = identity ? `${identity.kind} ${identity.name}` : "";
    if (identity?.kind !== kind) {
      await this.deny(who, about, `this service is for ${kind} certificates; the caller presented one of ${describeIdentity(identity)}`);
    }
    const caller: Caller = { who, user: identity!.name };
    if (action !== undefined) {
      const decision = mayDo(this.policy, caller.user!, action);
      if (!decision.allowed) await this.deny(who, about, decision.why);
    }
    return caller;
  }

  /** Whether the caller may do `action` (no audit: the caller decides what a no means). */
  may(caller: Caller, action: Action): boolean {
    return caller.user === undefined || mayDo(this.policy, caller.user, action).allowed;
  }

  /** Whether the caller (a job's owner) may watch this process, and under which binding. */
  watchDecision(caller: Caller, subject: ScopeSubject): Decision {
    return caller.user === undefined ? allowed : mayWatch(this.policy, caller.user, subject);
  }

  /** Records the denial and throws it. */
  async deny(who: string, about: { method: string; jobId?: string }, why: string): Promise<never> {
    await this.audit.record({ who, action: about.method, ...(about.jobId ? { jobId: about.jobId } : {}), result: "PERMISSION_DENIED", reason: why });
    throw new PermissionDeniedError(why);
  }
}
