// The fleet page: every host with its backends (and why not), whether it is
// connected, its watched processes with who holds each of DR0–DR3, and the
// jobs waiting in the queue with their reasons; current as the console reads it.
import { connect, el, fillSummary, jobLink, table } from "./common.js";

function registerCell(register) {
  const attrs = { "data-dr": register.dr, className: `register register-${register.holder}` };
  switch (register.holder) {
    case "free":
      return el("td", attrs, "free");
    case "reserved":
      return el("td", { ...attrs, title: "free, but the kernel still keeps it reserved for an earlier fleetwatch watch" }, "free (reserved)");
    case "foreign":
      return el("td", { ...attrs, title: "held outside fleetwatch (perf or a debugger)" }, "foreign");
    default: {
      const jobs = register.jobIds.flatMap((id, i) => [i > 0 ? ", " : "", jobLink(id)]);
      return el(
        "td",
        attrs,
        el("div", {}, jobs, register.shared ? el("span", { className: "pill", title: "ptrace jobs watching the identical chunk share this register" }, `shared by ${register.jobIds.length}`) : ""),
        el("div", { className: "muted" }, `${register.chunk} ${register.backend}`),
      );
    }
  }
}

function hostCard(host) {
  const dl = el("dl", { className: "summary" });
  fillSummary(dl, [
    ["hostname", host.hostname || "-"],
    ["labels", host.labels],
    ["kernel", host.kernel],
    ["backends", host.backends],
    ["traps", host.traps],
    ["policy", host.policy],
    ["last seen", host.lastSeen],
  ]);
  const processes =
    host.processes.length === 0
      ? el("p", { className: "muted" }, "no watched processes")
      : table(
          "registers",
          ["PID", "DR0", "DR1", "DR2", "DR3", "TRACED BY"],
          host.processes.map((p) => el("tr", { "data-host": host.hostId, "data-pid": p.pid }, el("td", {}, String(p.pid)), p.registers.map(registerCell), el("td", {}, p.tracedBy || "-"))),
        );
  return el(
    "article",
    { className: "host", "data-host": host.hostId },
    el("h3", {}, host.hostId, " ", el("span", { className: `pill ${host.connected ? "ok" : "bad"}` }, host.connected ? "connected" : "not connected")),
    dl,
    host.notes.length > 0 ? el("ul", { className: "notes" }, host.notes.map((n) => el("li", {}, n))) : "",
    processes,
  );
}

function pendingTable(jobs) {
  if (jobs.length === 0) return el("p", { className: "muted" }, "no job is waiting");
  return table(
    "pending",
    ["JOB", "WATCHES", "WHY IT WAITS", "FAILS AT", "SUBMITTED"],
    jobs.map((j) => el("tr", { "data-job-id": j.id }, el("td", {}, jobLink(j.id)), el("td", {}, j.watches), el("td", { className: "reason" }, j.reason || "-"), el("td", {}, j.queueDeadline), el("td", {}, j.created))),
  );
}

connect("/events/fleet", {
  fleet(view) {
    const hosts = document.getElementById("hosts");
    hosts.replaceChildren(...(view.hosts.length === 0 ? [el("p", { className: "muted" }, "no agents")] : view.hosts.map(hostCard)));
    document.getElementById("pending").replaceChildren(pendingTable(view.pending));
  },
});
