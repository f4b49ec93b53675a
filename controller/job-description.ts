// Jobs in words: a job's watch and selector as the audit trail and the
// messages of refusals and queue timeouts name them.
import { WatchMode, backendName, countIntervalMs, formatDuration, resolveBackend, type JobSpec, type TargetSelector } from "../proto/index.js";

/**
 * A job's watch in words for the audit trail, with the backend it arms
 * with: `demo_counter (write) in comm 'demo-counter' on hosts role=db, perf`;
 * a counting job says so: `…, perf counting every 1s`.
 */
export function describeJobSpec(spec: JobSpec): string {
  const watches = spec.watches.map((w) => `${w.location.case === "symbol" ? w.location.value : w.location.case === "address" ? `0x${w.location.value.toString(16)}` : "?"} (${WatchMode[w.mode]?.toLowerCase() ?? "?"})`).join(", ");
  const t = spec.target;
  const hosts = !t ? "" : t.allHosts ? "all hosts" : t.hostSelector ? `hosts ${t.hostSelector}` : t.hostIds.length > 0 ? `hosts ${t.hostIds.join(", ")}` : "";
  const counting = spec.countOnly ? ` counting every ${formatDuration(countIntervalMs(spec))}` : "";
  return `${watches} in ${t ? describeProcesses(t) : "?"}${hosts ? ` on ${hosts}` : ""}, ${backendName(resolveBackend(spec))}${counting}`;
}

/** `pid 42, comm 'postgres'`, for messages. */
export function describeProcesses(selector: TargetSelector): string {
  const parts = [
    selector.pid ? `pid ${selector.pid}` : "",
    selector.exe ? `exe ${selector.exe}` : "",
    selector.comm ? `comm '${selector.comm}'` : "",
    selector.cgroup ? `cgroup ${selector.cgroup}` : "",
  ].filter(Boolean);
  return parts.join(", ");
}
