// The jobs page: every job with its state, its targets with theirs and
// their reasons, and its counters; current as the console reads it.
import { connect, el, jobLink, showTable, stateBadge } from "./common.js";

function targetsCell(targets, more) {
  if (targets.length === 0) return el("td", { className: "muted" }, "-");
  return el(
    "td",
    {},
    el(
      "ul",
      { className: "targets" },
      targets.map((t) => el("li", {}, `${t.host}/${t.pid} `, stateBadge(t.state), t.reason ? el("span", { className: "reason" }, ` ${t.reason}`) : "")),
    ),
    more > 0 ? el("div", { className: "muted" }, `and ${more} more (on the job's page)`) : "",
  );
}

connect("/events/jobs", {
  jobs({ jobs }) {
    showTable(
      document.getElementById("jobs"),
      "no jobs",
      "jobs",
      ["JOB", "STATE", "WATCHES", "BACKEND", "TARGETS", "TRAPPED", "DELIVERED", "DROPPED", "SUPPRESSED", "FILTERED", "CREATED", "ENDS"],
      jobs.map((j) =>
        el(
          "tr",
          { "data-job-id": j.id },
          el("td", {}, jobLink(j.id)),
          el("td", {}, stateBadge(j.state), j.reason ? el("div", { className: "reason" }, j.reason) : ""),
          el("td", {}, j.watches),
          el("td", {}, j.backend),
          targetsCell(j.targets, j.moreTargets),
          ...["trapped", "delivered", "dropped", "suppressed", "filtered"].map((name) => el("td", { className: "number", "data-count": name }, j.counts[name])),
          el("td", {}, j.created),
          el("td", {}, j.ends),
        ),
      ),
    );
  },
});
