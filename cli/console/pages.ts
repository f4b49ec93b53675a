// The console's HTML: one shell per page (the skeleton the page's script
// fills from its event stream) and the error pages. Every value put into
// the HTML is escaped here; the scripts only ever set text.
import { groupKinds, type GroupKind } from "../report/writers.js";

/** What every page says about where it reads from. */
export interface PageContext {
  /** The controller address(es) the console reads from. */
  controller: string;
  /** The NATS URL it reads events from. */
  nats: string;
}

/** Text made safe for HTML content and attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}

interface ShellOptions {
  title: string;
  /** The nav entry it belongs to. */
  section: "fleet" | "jobs" | "none";
  /** Its script under /static, without `.js`. */
  script?: string;
  /** `data-*` attributes of <body>, already safe names; values are escaped. */
  data?: Record<string, string>;
  /** Reload every this many seconds (a page that cannot say more until the controller answers). */
  refreshSeconds?: number;
  main: string;
}

function shell(ctx: PageContext, options: ShellOptions): string {
  const data = Object.entries(options.data ?? {})
    .map(([name, value]) => ` data-${name}="${escapeHtml(value)}"`)
    .join("");
  const current = (section: string) => (options.section === section ? ' aria-current="page"' : "");
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
${options.refreshSeconds ? `<meta http-equiv="refresh" content="${options.refreshSeconds}">\n` : ""}<title>${escapeHtml(options.title)} · fleetwatch console</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/style.css">
${options.script ? `<script type="module" src="/static/${options.script}.js"></script>\n` : ""}</head>
<body${data}>
<header>
<a class="brand" href="/">fleetwatch</a>
<nav><a href="/"${current("fleet")}>Fleet</a><a href="/jobs"${current("jobs")}>Jobs</a></nav>
<span class="badge" title="this console only reads: it cannot submit, cancel or disarm">read-only</span>
</header>
<div id="banner" role="alert" hidden></div>
<main>
${options.main}
</main>
<footer>controller ${escapeHtml(ctx.controller)} · events ${escapeHtml(ctx.nats)} · read with your own credentials; nothing here changes anything</footer>
</body>
</html>
`;
}

/** `/`: every host, its backends and watched processes with DR0–DR3, and the jobs waiting in the queue. */
export function fleetPage(ctx: PageContext): string {
  return shell(ctx, {
    title: "Fleet",
    section: "fleet",
    script: "fleet",
    main: `<h1>Fleet</h1>
<section><h2>Hosts</h2><div id="hosts"><p class="muted">loading…</p></div></section>
<section><h2>Pending jobs</h2><div id="pending"><p class="muted">loading…</p></div></section>`,
  });
}

/** `/jobs`: every job with its state, targets and counters. */
export function jobsPage(ctx: PageContext): string {
  return shell(ctx, {
    title: "Jobs",
    section: "jobs",
    script: "jobs",
    main: `<h1>Jobs</h1>
<div id="jobs"><p class="muted">loading…</p></div>`,
  });
}

/** `/jobs/<id>`: one job live, its hits and its writers grouped `by`. */
export function jobPage(ctx: PageContext, jobId: string, by: readonly GroupKind[]): string {
  const options = groupKinds.map((kind) => `<option value="${kind}"${by.length === 1 && by[0] === kind ? " selected" : ""}>${kind}</option>`).join("");
  const id = escapeHtml(jobId);
  return shell(ctx, {
    title: `Job ${jobId}`,
    section: "jobs",
    script: "job",
    data: { "job-id": jobId, by: by.join(",") },
    main: `<h1>Job <code>${id}</code> <span id="job-state" class="state">…</span></h1>
<p id="job-reason" class="reason"></p>
<section><dl id="job-summary" class="summary"></dl></section>
<section><h2>Targets</h2><div id="targets"><p class="muted">loading…</p></div></section>
<section><h2>Writers</h2>
<form class="group-by" method="get" action="/jobs/${id}"><label>group by <select name="by">${options}</select></label> <button type="submit">show</button></form>
<p id="coverage" class="muted"></p>
<div id="writers"><p class="muted">waiting for the job…</p></div></section>
<section id="flame-section"><h2>Flame graph</h2><div id="flame"><p class="muted">waiting for the writers…</p></div></section>
<section><h2><span id="hits-title">Hits</span>: <span id="hit-count">0</span></h2>
<p class="muted" id="hits-note">the latest hits, newest first, as they arrive</p>
<div id="hits" class="scroll"></div></section>`,
  });
}

/** An error page: its status, a title and one sentence. */
export function errorPage(ctx: PageContext, status: number, title: string, message: string, refreshSeconds?: number): string {
  return shell(ctx, {
    title: `${status} ${title}`,
    section: "none",
    ...(refreshSeconds ? { refreshSeconds } : {}),
    main: `<h1>${status} ${escapeHtml(title)}</h1>
<p class="error-message" id="error-message">${escapeHtml(message)}</p>
<p><a href="/">the fleet</a> · <a href="/jobs">all jobs</a></p>`,
  });
}
