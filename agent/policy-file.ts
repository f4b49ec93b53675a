// The host policy file on disk: reading it, and reading it again on SIGHUP
// or when it changes. A file that cannot be used at start stops the agent;
// one that cannot be used on a reload leaves the policy in effect unchanged.
import { readFileSync } from "node:fs";
import { readConfigText, watchParsedFile } from "../proto/index.js";
import { HostPolicyError, parseHostPolicy, parsePasswd, summarizePolicy, type HostPolicy } from "./host-policy.js";

/** A policy with the user names of this host as they were when it was read. */
export interface LoadedPolicy {
  readonly policy: HostPolicy;
  readonly userName: (uid: number) => string | undefined;
}

/** Names of this host's users; none when /etc/passwd cannot be read (uids in the policy still work). */
export function userNames(): (uid: number) => string | undefined {
  let names: Map<number, string>;
  try {
    names = parsePasswd(readFileSync("/etc/passwd", "utf8"));
  } catch {
    names = new Map();
  }
  return (uid) => names.get(uid);
}

/** Reads and parses the policy file; throws HostPolicyError naming the file (and the key at fault). */
export function loadPolicyFile(file: string): LoadedPolicy {
  const text = readConfigText(file, "host policy", (message) => new HostPolicyError(message, file, ""));
  return { policy: parseHostPolicy(text, file), userName: userNames() };
}

/** Reads the policy again on SIGHUP and whenever the file changes; returns the function that stops watching. */
export function watchPolicyFile(file: string, onLoad: (loaded: LoadedPolicy) => void, log: (line: string) => void): () => void {
  return watchParsedFile({ file, what: "host policy", load: loadPolicyFile, describe: (loaded) => summarizePolicy(loaded.policy), onLoad, log });
}
