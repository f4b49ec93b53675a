// Compiles the bench's C programs (bench/*.c) into dist/bench/bin/ when a
// source is newer than its binary; the writer keeps -g so gdb can name fw_counter.
import { execFile } from "node:child_process";
import { mkdir, rename, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const execFileAsync = promisify(execFile);

/** Compiled to dist/bench/: the repository root is two levels up. */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const benchBinDir = path.join(repoRoot, "dist/bench/bin");

const CFLAGS = ["-O2", "-g", "-std=c11", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE"];

/** Paths of the built programs. */
export interface BenchBinaries {
  writer: string;
  bareLoop: string;
}

async function mtimeMs(file: string): Promise<number | undefined> {
  try {
    return (await stat(file)).mtimeMs;
  } catch {
    return undefined;
  }
}

async function compile(name: string, extra: string[]): Promise<string> {
  const src = path.join(repoRoot, "bench", `${name}.c`);
  const out = path.join(benchBinDir, name);
  const [srcTime, outTime] = await Promise.all([mtimeMs(src), mtimeMs(out)]);
  if (srcTime === undefined) throw new Error(`bench source ${src} is missing`);
  if (outTime !== undefined && outTime >= srcTime) return out;
  // Build beside, then rename: a concurrent run never sees half a binary.
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    await execFileAsync("gcc", [...CFLAGS, ...extra, "-o", tmp, src]);
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`gcc ${name}.c failed: ${e.stderr?.trim() || e.message}`, { cause: err });
  }
  await rename(tmp, out);
  return out;
}

/** Builds bench/writer.c and bench/bare-loop.c if needed. */
export async function buildBenchPrograms(): Promise<BenchBinaries> {
  await mkdir(benchBinDir, { recursive: true });
  const [writer, bareLoop] = await Promise.all([compile("writer", ["-pthread"]), compile("bare-loop", [])]);
  return { writer, bareLoop };
}
