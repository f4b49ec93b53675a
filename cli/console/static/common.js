// What every console page shares: building DOM from data (text only, never
// HTML), the banner that says why the page is not current, and a live event
// stream that reconnects by itself.

/**
 * An element with attributes and children; strings become text nodes, so
 * nothing read from the fleet is ever parsed as HTML.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "className") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A table with a header row; `rows` are arrays of cells (nodes or text) or ready <tr> elements. */
export function table(className, headers, rows) {
  return el(
    "table",
    { className },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((row) => (row instanceof Node ? row : el("tr", {}, row.map((cell) => (cell instanceof Node && cell.tagName === "TD" ? cell : el("td", {}, cell))))))),
  );
}

/** Fills `box` with the table, or with `emptyText` when there is no row. */
export function showTable(box, emptyText, className, headers, rows) {
  box.replaceChildren(rows.length === 0 ? el("p", { className: "muted" }, emptyText) : table(className, headers, rows));
}

/** A link to a job's page. */
export function jobLink(id) {
  return el("a", { href: `/jobs/${encodeURIComponent(id)}`, className: "job-id" }, id);
}

/** A job or target state as a coloured word. */
export function stateBadge(state) {
  return el("span", { className: `state state-${state}` }, state);
}

/** A nanosecond timestamp given as a decimal string, as ISO 8601 with milliseconds. */
export function nanosToIso(text) {
  try {
    const ms = Number(BigInt(text) / 1000000n);
    return ms === 0 ? "-" : new Date(ms).toISOString();
  } catch {
    return "-";
  }
}

const problems = new Map();

function showBanner() {
  const banner = document.getElementById("banner");
  const all = [...problems.values()].flat();
  banner.replaceChildren(...all.map((p) => el("div", {}, p)));
  banner.hidden = all.length === 0;
  // What the page shows is the last that was read: dimmed while it may be out of date.
  document.body.classList.toggle("stale", all.length > 0);
}

/** Sets (or clears, with none) what one source says is wrong; the banner shows them all. */
export function setProblems(source, list) {
  if (list.length === 0) problems.delete(source);
  else problems.set(source, list);
  showBanner();
}

/**
 * Opens the page's event stream and calls `handlers[event](data)` for each
 * event. `status` events fill the banner. The browser reconnects by itself
 * when the console goes away; the banner says so meanwhile.
 */
export function connect(url, handlers) {
  const source = new EventSource(url);
  source.addEventListener("open", () => setProblems("console", []));
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.OPEN) setProblems("console", ["console unavailable: its event stream dropped, reconnecting"]);
  });
  source.addEventListener("status", (e) => setProblems("server", JSON.parse(e.data).problems));
  for (const [event, handle] of Object.entries(handlers)) {
    source.addEventListener(event, (e) => handle(JSON.parse(e.data), source));
  }
  return source;
}

/** Fills a definition list from [term, value] pairs (value: text or a node). */
export function fillSummary(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
}

/** The counters as `trapped 12 · delivered 10 · …`, each in an element tests and people can find. */
export function countsLine(counts) {
  const names = ["trapped", "delivered", "suppressed", "dropped", "filtered"];
  return el(
    "span",
    { className: "counts" },
    names.flatMap((name, i) => [i > 0 ? " · " : "", `${name} `, el("span", { "data-count": name, className: "count" }, counts[name])]),
  );
}
