// The controller's `--keep-finished DURATION` and `--keep-finished-count N`
// (`fleetwatch controller` and `fleetwatch up`): how long, and how many,
// finished jobs the store keeps before the leader deletes the oldest.
import { Option } from "commander";
import { UsageError } from "./errors.js";
import { parseDuration } from "./output.js";

/** The flags as the controller takes them; unset: its defaults. */
export interface RetentionFlags {
  keepFinishedMs?: number;
  keepFinishedCount?: number;
}

/** The two options, with the controller's defaults (a day, 100,000 jobs). */
export function retentionOptions(): [Option, Option] {
  return [
    new Option("--keep-finished <time>", "delete a finished job (and its targets) from the store this long after it ended").default("24h"),
    new Option("--keep-finished-count <n>", "keep at most this many finished jobs: beyond them the oldest are deleted").default("100000"),
  ];
}

/** Validates the flags given: a duration above zero, a whole number of at least 1 (a bad value is exit 3). */
export function parseRetentionFlags(opts: { keepFinished?: string; keepFinishedCount?: string }): RetentionFlags {
  const flags: RetentionFlags = {};
  if (opts.keepFinished !== undefined) {
    flags.keepFinishedMs = parseDuration(opts.keepFinished, "--keep-finished");
    if (flags.keepFinishedMs <= 0) throw new UsageError(`--keep-finished '${opts.keepFinished}' must be longer than 0 (e.g. 24h, 30m)`);
  }
  if (opts.keepFinishedCount !== undefined) {
    const text = opts.keepFinishedCount.trim();
    flags.keepFinishedCount = Number(text);
    if (!/^\d+$/.test(text) || flags.keepFinishedCount < 1 || !Number.isSafeInteger(flags.keepFinishedCount)) {
      throw new UsageError(`--keep-finished-count '${opts.keepFinishedCount}' is not a number of jobs: give a whole number of at least 1 (e.g. 100000)`);
    }
  }
  return flags;
}
