// A process's memory map (/proc/PID/maps): whether an address range is
// mapped, and by what, before a watch is armed on it.
import { readFile } from "node:fs/promises";
import { hex } from "../proto/index.js";
import { AgentCommandError } from "./errors.js";

/** One line of /proc/PID/maps. */
export interface Mapping {
  readonly start: bigint;
  /** One past the last byte. */
  readonly end: bigint;
  readonly perms: string;
  /** The file, [heap], [stack], … ; "" for an anonymous mapping. */
  readonly path: string;
}

/** Parses /proc/PID/maps; lines it cannot read are skipped. */
export function parseMaps(text: string): Mapping[] {
  const maps: Mapping[] = [];
  for (const line of text.split("\n")) {
    const m = /^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+\S+\s+\S+\s+\S+\s*(.*)$/.exec(line);
    if (m) maps.push({ start: BigInt(`0x${m[1]}`), end: BigInt(`0x${m[2]}`), perms: m[3]!, path: m[4]! });
  }
  return maps;
}

/**
 * The mapping that holds `address` when every byte of [address, address +
 * length) is mapped (the range may run on into the next mapping), else
 * undefined.
 */
export function mappingOf(maps: readonly Mapping[], address: bigint, length: number): Mapping | undefined {
  const sorted = [...maps].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const first = sorted.find((m) => m.start <= address && address < m.end);
  if (!first) return undefined;
  const last = address + BigInt(Math.max(length, 1));
  let covered = first.end;
  for (const m of sorted) {
    if (covered >= last) break;
    if (m.start === covered) covered = m.end;
  }
  return covered >= last ? first : undefined;
}

/** A mapping's name for people: its file, or what the kernel calls it. */
export function mappingName(m: Mapping): string {
  return m.path === "" ? "[anonymous]" : m.path;
}

/** Where [address, address + length) is mapped in pid; ENOENT naming the range when any of it is not. */
export async function mappedAt(pid: number, address: bigint, length: number): Promise<{ address: bigint; size: bigint; module: string }> {
  const range = `${hex(address)}..${hex(address + BigInt(Math.max(length, 1)) - 1n)}`;
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/maps`, "utf8");
  } catch (err) {
    throw new AgentCommandError(`pid ${pid}: cannot read its memory map (${(err as NodeJS.ErrnoException).code === "ENOENT" ? "no such process" : String(err)})`, "ESRCH");
  }
  const mapping = mappingOf(parseMaps(text), address, length);
  if (!mapping) throw new AgentCommandError(`address ${range} is not mapped in pid ${pid}: give the address of a variable it has mapped, or --allow-unmapped to watch memory it maps later`, "ENOENT");
  return { address, size: BigInt(length), module: mappingName(mapping) };
}
