// Where the repository's files are, seen from compiled test code (dist/test/support).
import { fileURLToPath } from "node:url";
import path from "node:path";

/** The repository root. */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

/** The built native helper. */
export const helperPath = path.join(repoRoot, "agent/native/build/fleetwatch-helper");

/** The CLI entry point as built by `npm run build`. */
export const cliPath = path.join(repoRoot, "dist/cli/main.js");
/** test/support/job-follower.ts, built. */
export const jobFollowerPath = path.join(repoRoot, "dist/test/support/job-follower.js");

// Daemons the tests start log one line as said, as in a terminal: tests wait
// for and match those lines. The JSON lines a pipe gets by default are tested
// on their own (test/unit/daemon-log.test.ts, test/integration/metrics.test.ts).
process.env.FLEETWATCH_LOG_FORMAT ??= "text";
