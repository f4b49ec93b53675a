// Whether a host can arm a job's backend: perf events offered by its helper,
// and watched writes seen to trap in the helper's self-test.
import { Backend, TrapDelivery, backendName, resolveBackend, stopNeededFor, type AgentInfo, type JobSpec } from "../proto/index.js";
import { PreconditionError } from "./errors.js";

/** Whether a host's helper saw watched writes trap with a backend; undefined when it did not test (an older agent). */
function trapDelivery(info: AgentInfo, backend: Backend): TrapDelivery | undefined {
  const delivery = info.trapChecks.find((c) => c.backend === backend)?.delivery;
  return delivery === TrapDelivery.UNSPECIFIED ? undefined : delivery;
}

/**
 * Refuses a job on a host that cannot arm its backend, with the host's
 * reason: perf where the helper cannot open perf breakpoints, and any
 * backend whose trap self-test did not deliver (such a watch would say
 * armed and never see a hit). Never a silent fall back to the other
 * backend (ptrace stops the target and survives no SIGKILL of the helper;
 * perf has no conditions); the refusal names it when it would work there.
 */
export function checkHostBackend(info: AgentInfo, spec: JobSpec): void {
  const backend = resolveBackend(spec);
  if (backend === Backend.PERF && !info.backends.includes(Backend.PERF)) {
    const why = info.perfNote || "its agent does not offer them";
    const fix = spec.countOnly ? "counting (--count) needs them" : "use --backend ptrace";
    throw new PreconditionError(`perf events are unavailable on host ${info.hostId}: ${why}; ${fix}`);
  }
  const delivery = trapDelivery(info, backend);
  if (delivery === undefined || delivery === TrapDelivery.DELIVERED) return;
  const check = info.trapChecks.find((c) => c.backend === backend)!;
  const name = backendName(backend);
  const saw = check.detail || `${check.traps} of ${check.writes} probe writes trapped`;
  const what = delivery === TrapDelivery.NOT_RUN ? `could not be tested: ${saw}; a watch there might never see a hit` : `are not delivered: ${saw}; no hit could be seen there`;
  // The other backend, where it traps and the spec allows it (counting needs perf, a stop at each trap needs ptrace).
  const other = backend === Backend.PERF ? Backend.PTRACE : Backend.PERF;
  const allowed = other === Backend.PTRACE ? !spec.countOnly : stopNeededFor(spec) === undefined && info.backends.includes(Backend.PERF);
  const auto = spec.backend === Backend.UNSPECIFIED ? ` (${name} was the automatic choice)` : "";
  const fix = allowed && trapDelivery(info, other) === TrapDelivery.DELIVERED ? `; ${backendName(other)} traps are delivered there: use --backend ${backendName(other)}${auto}` : "";
  throw new PreconditionError(`host ${info.hostId}: ${name} watch traps ${what}${fix}`);
}
