// One job's page: its state and targets live, its latest hits (or a
// counting job's count reports) with a running count, and its writers as
// `fleetwatch report` computes them, with the flame graph the console draws
// from the same aggregation.
import { connect, countsLine, el, fillSummary, jobLink, nanosToIso, setProblems, showTable, stateBadge, table } from "./common.js";

const jobId = document.body.dataset.jobId;
const by = document.body.dataset.by;
const maxRows = 200;
// The flame graph is fetched again at most this often while hits arrive.
const flameEveryMs = 1500;

function showJob(job) {
  const state = document.getElementById("job-state");
  state.replaceChildren(stateBadge(job.state));
  document.getElementById("job-reason").textContent = job.reason;
  fillSummary(document.getElementById("job-summary"), [
    ["watches", job.watches],
    ["backend", job.backend],
    ["counts", countsLine(job.counts)],
    ["owner", job.owner || "-"],
    ["created", job.created],
    ["ends", job.ends],
  ]);
  showTable(
    document.getElementById("targets"),
    "no targets",
    "targets",
    ["HOST", "PID", "STATE", "THREADS", "REGISTERS", "BACKEND", "TRAPPED", "DELIVERED", "DROPPED", "SUPPRESSED", "FILTERED", "REASON"],
    job.targets.map((t) =>
      el(
        "tr",
        { "data-host": t.host, "data-pid": t.pid },
        el("td", {}, t.host),
        el("td", {}, String(t.pid)),
        el("td", {}, stateBadge(t.state)),
        el("td", {}, t.threads),
        el("td", {}, t.slots),
        el("td", {}, t.backend || "-"),
        ...["trapped", "delivered", "dropped", "suppressed", "filtered"].map((name) => el("td", { className: "number" }, t.counts[name])),
        el("td", { className: "reason" }, t.reason || "-"),
      ),
    ),
  );
}

let hitsBody;
let hitsCountOnly;

function hitRow(row) {
  return el("tr", { "data-n": row.n }, [row.time, row.host, String(row.pid), String(row.tid), row.address, row.change, row.ip, row.slot, row.sequence].map((v) => el("td", {}, v)));
}

function countRow(row) {
  return el("tr", { "data-n": row.n }, [row.time, row.host, String(row.pid), `+${row.hits}`, row.total, row.tids].map((v) => el("td", {}, v)));
}

function showHits({ replace, total, countOnly, rows }) {
  document.getElementById("hit-count").textContent = String(total);
  if (!hitsBody || hitsCountOnly !== countOnly || replace) {
    hitsCountOnly = countOnly;
    document.getElementById("hits-title").textContent = countOnly ? "Count reports" : "Hits";
    document.getElementById("hits-note").textContent = countOnly
      ? "a counting job reports hits per target and thread each interval; the latest reports, newest first"
      : `the latest hits (at most ${maxRows}), newest first, as they arrive`;
    const headers = countOnly ? ["TIME", "HOST", "PID", "HITS", "TOTAL", "THREADS (TID:HITS)"] : ["TIME", "HOST", "PID", "TID", "ADDRESS", "OLD → NEW", "IP", "SLOT", "SEQ"];
    const built = table("hits", headers, []);
    hitsBody = built.tBodies[0];
    document.getElementById("hits").replaceChildren(built);
  }
  for (const row of rows) hitsBody.prepend(countOnly ? countRow(row) : hitRow(row));
  while (hitsBody.rows.length > maxRows) hitsBody.lastElementChild.remove();
}

/** A group's key cell: a stack shows its innermost frame first, then its callers. */
function keyCell(kind, value) {
  if (kind !== "stack") return el("td", { className: "key" }, value);
  const frames = value.split(";");
  const top = frames.at(-1);
  const callers = frames.slice(0, -1).reverse();
  return el("td", { className: "key", title: value }, el("strong", {}, top), callers.length > 0 ? el("div", { className: "muted stack" }, callers.map((f) => `← ${f}`).join(" ")) : "");
}


function countingTables(counting) {
  const part = (title, rows) => [
    el("h3", {}, title),
    table(
      "counting",
      ["HITS", "PER SECOND", title.toUpperCase()],
      rows.map((r) => el("tr", { "data-key": r.key }, el("td", { className: "number" }, r.hits), el("td", { className: "number" }, r.perSecond.toFixed(1)), el("td", {}, r.key))),
    ),
  ];
  return [...part("host", counting.hosts), ...part("process", counting.processes), ...part("thread", counting.threads)];
}

function showWriters(report) {
  const shown = report.groups.length;
  const groupsText = report.countOnly ? "counting job" : `${report.hits} hits in ${report.groupCount} group${report.groupCount === 1 ? "" : "s"} by ${report.by.join(", ")}${report.groupCount > shown ? ` (the ${shown} with the most shown)` : ""}`;
  document.getElementById("coverage").textContent = `${groupsText}; ${report.coverage.note}${report.redacted ? "; some values are hashed or masked by their host's policy" : ""}`;
  const box = document.getElementById("writers");
  if (report.countOnly) {
    box.replaceChildren(...(report.counting ? countingTables(report.counting) : [el("p", { className: "muted" }, "no count report yet")]));
    return;
  }
  if (shown === 0) {
    box.replaceChildren(el("p", { className: "muted" }, "no hits yet"));
    return;
  }
  box.replaceChildren(
    table(
      "writers",
      ["HITS", "SHARE", ...report.by.map((k) => k.toUpperCase()), "HOSTS", "PROCS", "FIRST", "LAST", "MOST FREQUENT OLD → NEW"],
      report.groups.map((g) =>
        el(
          "tr",
          { "data-hits": g.hits },
          el("td", { className: "number hits" }, String(g.hits)),
          el("td", { className: "number" }, `${(g.share * 100).toFixed(1)}%`),
          report.by.map((kind) => keyCell(kind, g.key[kind])),
          el("td", { title: g.hosts.join(", ") }, String(g.hosts.length)),
          el("td", { title: g.processes.join(", ") }, String(g.processes.length)),
          el("td", {}, nanosToIso(g.firstUnixNano)),
          el("td", {}, nanosToIso(g.lastUnixNano)),
          el("td", {}, g.transitionsText || "-"),
        ),
      ),
    ),
  );
}

// The flame graph: fetched when the writers changed, at most every flameEveryMs, the newest version last.
let flameWanted = 0;
let flameShown = 0;
let flameBusy = false;
let flameLastMs = 0;

async function refreshFlame() {
  if (flameBusy || flameWanted === flameShown) return;
  const waitMs = flameLastMs + flameEveryMs - Date.now();
  if (waitMs > 0) {
    setTimeout(refreshFlame, waitMs);
    return;
  }
  flameBusy = true;
  const version = flameWanted;
  flameLastMs = Date.now();
  try {
    const response = await fetch(`/jobs/${encodeURIComponent(jobId)}/flame.svg?by=${encodeURIComponent(by)}`, { cache: "no-store" });
    if (response.ok) {
      const parsed = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
      const svg = parsed.documentElement;
      if (svg.nodeName === "svg") {
        svg.removeAttribute("width");
        svg.removeAttribute("height");
        document.getElementById("flame").replaceChildren(document.importNode(svg, true));
        flameShown = version;
      }
    }
  } finally {
    flameBusy = false;
    if (flameWanted !== flameShown) setTimeout(refreshFlame, flameEveryMs);
  }
}

connect(`/events/jobs/${encodeURIComponent(jobId)}?by=${encodeURIComponent(by)}`, {
  job: showJob,
  hits: showHits,
  writers({ version, report }) {
    showWriters(report);
    document.getElementById("flame-section").hidden = report.countOnly;
    if (!report.countOnly) {
      flameWanted = version;
      void refreshFlame();
    }
  },
  gone({ message }, source) {
    source.close();
    setProblems("server", [message]);
    document.getElementById("job-state").replaceChildren(stateBadge("gone"));
  },
});

// The id in the heading links to this page itself, for copying.
document.querySelector("h1 code")?.replaceChildren(jobLink(jobId));
