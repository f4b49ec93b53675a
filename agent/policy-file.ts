// The host policy file on disk: reading it, and reading it again on SIGHUP
// or when it changes. A file that cannot be used at start stops the agent;
// one that cannot be used on a reload leaves the policy in effect unchanged.
import { readFileSync, watch, type FSWatcher } from "node:fs";
import path from "node:path";
import { HostPolicyError, parseHostPolicy, parsePasswd, summarizePolicy, type HostPolicy } from "./host-policy.js";

/** A policy with the user names of this host as they were when it was read. */
export interface LoadedPolicy {
  readonly policy: HostPolicy;
  readonly userName: (uid: number) => string | undefined;
}

// Editors save in several steps (truncate, write, rename): changes this
// close together are read once, after the last.
const settleMs = 50;

/** Names of this host's users; none when /etc/passwd cannot be read (uids in the policy still work). */
function userNames(): (uid: number) => string | undefined {
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
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new HostPolicyError(`host policy ${file}: cannot read it (${code === "ENOENT" ? "no such file" : (code ?? String(err))})`, file, "");
  }
  return { policy: parseHostPolicy(text, file), userName: userNames() };
}

/**
 * Reads the file again on SIGHUP and whenever it changes, calling `onLoad`
 * with each new policy. The directory is watched, not the file: editors and
 * config managers replace the file, and a watch on the old one would go
 * quiet. A file that cannot be used is logged in one line and ignored.
 * Returns the function that stops watching.
 */
export function watchPolicyFile(file: string, onLoad: (loaded: LoadedPolicy) => void, log: (line: string) => void): () => void {
  const dir = path.dirname(file);
  const base = path.basename(file);
  let timer: NodeJS.Timeout | undefined;
  let lastText: string | undefined = readText(file);
  const reload = (why: string, force: boolean) => {
    const text = readText(file);
    // A change event that left the text as it was (touch, a rename back) changes nothing.
    if (!force && text !== undefined && text === lastText) return;
    try {
      const loaded = loadPolicyFile(file);
      lastText = text;
      log(`host policy ${file} reloaded (${why}): ${summarizePolicy(loaded.policy)}`);
      onLoad(loaded);
    } catch (err) {
      log(`host policy ${file}: reload (${why}) failed, keeping the policy in effect: ${err instanceof Error ? err.message : String(err)}`);
    }
  };
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dir, { persistent: false }, (_event, name) => {
      if (name !== null && name !== base) return;
      clearTimeout(timer);
      timer = setTimeout(() => reload("the file changed", false), settleMs);
    });
    watcher.on("error", (err) => log(`host policy ${file}: watching ${dir} failed (${err.message}); send SIGHUP to reload`));
  } catch (err) {
    log(`host policy ${file}: cannot watch ${dir} (${err instanceof Error ? err.message : String(err)}); send SIGHUP to reload`);
  }
  const onHup = () => reload("SIGHUP", true);
  process.on("SIGHUP", onHup);
  return () => {
    clearTimeout(timer);
    watcher?.close();
    process.off("SIGHUP", onHup);
  };
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}
