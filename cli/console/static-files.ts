// The console's static assets (scripts, style, icon): served only from its
// own folder, by plain file names of that folder (no path, no `..`, no
// encoded separators), each with its content type.
import { existsSync } from "node:fs";
import { readFile, realpath } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** Content types by extension: the only kinds of file served. */
const contentTypes: Record<string, string> = {
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
};

/** A file name the console may serve: lowercase letters, digits and `-`, one known extension. */
const assetName = /^[a-z0-9][a-z0-9-]*\.(?:js|css|svg|png)$/;

/**
 * The folder of the assets. tsc emits only JavaScript, so from
 * dist/cli/console/ it is the source tree's cli/console/static; beside the
 * module when the folder is copied there.
 */
export function defaultStaticDir(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const beside = path.join(here, "static");
  if (existsSync(beside)) return beside;
  // dist/cli/console/ is three levels below the package root.
  return path.resolve(here, "../../../cli/console/static");
}

/** One asset to send. */
export interface StaticAsset {
  body: Buffer;
  contentType: string;
}

/** The asset called `name` in `dir`, or undefined when there is none of that name (or the name is not one the console serves). */
export async function readStaticAsset(dir: string, name: string): Promise<StaticAsset | undefined> {
  if (!assetName.test(name)) return undefined;
  const file = path.join(dir, name);
  try {
    // A link out of the folder is not served either.
    const [real, realDir] = await Promise.all([realpath(file), realpath(dir)]);
    if (path.dirname(real) !== realDir) return undefined;
    return { body: await readFile(real), contentType: contentTypes[path.extname(name)]! };
  } catch {
    return undefined;
  }
}
