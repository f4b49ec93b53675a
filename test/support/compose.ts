// docker-compose.yml read as data (YAML merge keys applied, as docker-compose
// does) for the tests of the deployment and monitoring files.
import { readFile } from "node:fs/promises";
import path from "node:path";
import { parse } from "yaml";
import { parseMetricsListen, type MetricsListen } from "../../proto/index.js";
import { repoRoot } from "./paths.js";

export interface ComposeService {
  image?: string;
  build?: unknown;
  command?: string[];
  entrypoint?: string[];
  user?: string;
  pid?: string;
  privileged?: boolean;
  cap_add?: string[];
  cap_drop?: string[];
  read_only?: boolean;
  security_opt?: string[];
  ports?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  depends_on?: string[] | Record<string, { condition: string }>;
  healthcheck?: { test: string[]; interval?: string; timeout?: string; retries?: number; start_period?: string };
  profiles?: string[];
}

export interface ComposeFile {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}

export const composePath = path.join(repoRoot, "docker-compose.yml");

export async function readCompose(): Promise<ComposeFile> {
  return parse(await readFile(composePath, "utf8"), { merge: true }) as ComposeFile;
}

/** `--flag value` from an argument list. */
export function arg(args: readonly string[], flag: string): string | undefined {
  const at = args.indexOf(flag);
  return at >= 0 ? args[at + 1] : undefined;
}

/** A bind mount `./path:/target[:ro]` of a service: the repository file and where it appears; undefined for named volumes. */
export function bindMounts(service: ComposeService): Array<{ source: string; target: string; readOnly: boolean }> {
  return (service.volumes ?? [])
    .filter((v) => v.startsWith("./"))
    .map((v) => {
      const [source, target, mode] = v.split(":");
      return { source: path.join(repoRoot, source!), target: target!, readOnly: mode === "ro" };
    });
}

/** The services that run a fleetwatch daemon (`controller` or `agent` in their command) with --metrics-listen, read by the daemons' own parser. */
export function metricsListeners(compose: ComposeFile): Map<string, MetricsListen & { daemon: "controller" | "agent" }> {
  const found = new Map<string, MetricsListen & { daemon: "controller" | "agent" }>();
  for (const [name, s] of Object.entries(compose.services)) {
    const daemon = s.command?.find((a): a is "controller" | "agent" => a === "controller" || a === "agent");
    const listen = s.command && arg(s.command, "--metrics-listen");
    if (daemon && listen !== undefined) found.set(name, { daemon, ...parseMetricsListen(listen) });
  }
  return found;
}
