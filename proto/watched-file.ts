// A configuration file read again without a restart: on SIGHUP and whenever
// it changes. Shared by each agent's host policy and the controller's access
// policy: both must take effect at once and neither may be lost to a typo.
import { readFileSync, watch, type FSWatcher } from "node:fs";
import path from "node:path";

// Editors save in several steps (truncate, write, rename): changes this
// close together are read once, after the last.
const settleMs = 50;

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return undefined;
  }
}

/** A configuration file's text; when it cannot be read, throws what `fail` makes of `<what> <file>: cannot read it (...)`. */
export function readConfigText(file: string, what: string, fail: (message: string) => Error): string {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw fail(`${what} ${file}: cannot read it (${code === "ENOENT" ? "no such file" : (code ?? String(err))})`);
  }
}

/** What watchParsedFile needs to know about the file. */
export interface WatchedFile<T> {
  /** The file, absolute. */
  file: string;
  /** What it is, for log lines: "host policy", "access policy". */
  what: string;
  /** Reads and parses it; throws an error naming the file (and the key at fault). */
  load(file: string): T;
  /** One line on what is now in effect. */
  describe(loaded: T): string;
  onLoad(loaded: T): void;
  log(line: string): void;
}

/**
 * Reads the file again on SIGHUP and whenever it changes, calling `onLoad`
 * with each new version. The directory is watched, not the file: editors
 * and config managers replace the file, and a watch on the old one would go
 * quiet. A version that cannot be used is logged in one line and ignored:
 * what is in effect stays. Returns the function that stops watching.
 */
export function watchParsedFile<T>(spec: WatchedFile<T>): () => void {
  const { file, what, log } = spec;
  const dir = path.dirname(file);
  const base = path.basename(file);
  let timer: NodeJS.Timeout | undefined;
  let lastText: string | undefined = readText(file);
  const reload = (why: string, force: boolean) => {
    const text = readText(file);
    // A change event that left the text as it was (touch, a rename back) changes nothing.
    if (!force && text !== undefined && text === lastText) return;
    try {
      const loaded = spec.load(file);
      lastText = text;
      log(`${what} ${file} reloaded (${why}): ${spec.describe(loaded)}`);
      spec.onLoad(loaded);
    } catch (err) {
      log(`${what} ${file}: reload (${why}) failed, keeping the ${what} in effect: ${err instanceof Error ? err.message : String(err)}`);
    }
  };
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dir, { persistent: false }, (_event, name) => {
      if (name !== null && name !== base) return;
      clearTimeout(timer);
      timer = setTimeout(() => reload("the file changed", false), settleMs);
    });
    watcher.on("error", (err) => log(`${what} ${file}: watching ${dir} failed (${err.message}); send SIGHUP to reload`));
  } catch (err) {
    log(`${what} ${file}: cannot watch ${dir} (${err instanceof Error ? err.message : String(err)}); send SIGHUP to reload`);
  }
  const onHup = () => reload("SIGHUP", true);
  process.on("SIGHUP", onHup);
  return () => {
    clearTimeout(timer);
    watcher?.close();
    process.off("SIGHUP", onHup);
  };
}
