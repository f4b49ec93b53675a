// Agents as `agents ls` shows them: every host this controller has seen,
// whether it is connected, and the debug registers of each of its targets.
import { create } from "@bufbuild/protobuf";
import { AgentSchema, Backend, SlotUseSchema, TargetSlotsSchema, slotsPerThread, type Agent } from "../proto/index.js";
import type { ControllerCore } from "./controller-core.js";

/** Every agent ever seen by this controller, with the slot map of its targets. */
export function listAgents(core: Pick<ControllerCore, "known" | "sessions" | "ledger">): Agent[] {
  const entries = core.ledger.entries();
  return [...core.known.values()]
    .sort((a, b) => a.info.hostId.localeCompare(b.info.hostId))
    .map(({ info, lastSeenMs }) =>
      create(AgentSchema, {
        info,
        connected: core.sessions.get(info.hostId)?.isOpen ?? false,
        lastSeenUnixMs: BigInt(core.sessions.get(info.hostId)?.lastSeenMs ?? lastSeenMs),
        targets: entries
          .filter((e) => e.hostId === info.hostId)
          .sort((a, b) => a.pid - b.pid)
          .map((e) =>
            create(TargetSlotsSchema, {
              pid: e.pid,
              slots: Array.from({ length: slotsPerThread }, (_, dr) => {
                const held = e.slots[dr];
                const jobIds = held?.holders.map((h) => h.jobId) ?? [];
                return create(SlotUseSchema, {
                  dr,
                  jobId: jobIds[0] ?? "",
                  jobIds,
                  chunk: held?.chunk,
                  reserved: ((e.reservedMask >> dr) & 1) === 1,
                  foreign: ((e.foreignMask >> dr) & 1) === 1,
                  backend: !held ? Backend.UNSPECIFIED : held.exclusive ? Backend.PERF : Backend.PTRACE,
                });
              }),
              tracedByPid: e.tracedBy?.pid ?? 0,
              tracedByComm: e.tracedBy?.comm ?? "",
            }),
          ),
      }),
    );
}
