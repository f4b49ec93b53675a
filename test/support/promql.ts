// What a PromQL expression reads, found without a full parser: the metric
// names, the functions and aggregations it calls, each selector's label
// matchers, and the labels its grouping clauses name. Enough to hold the
// dashboards and scrape configs this repository ships to what the daemons
// export; anything it cannot read is an error, never silently skipped.

/** One label matcher of a selector: `label op "value"`. */
export interface LabelMatcher {
  label: string;
  op: "=" | "!=" | "=~" | "!~";
  value: string;
}

/** A metric name and the matchers between its braces (none without braces). */
export interface Selector {
  metric: string;
  matchers: LabelMatcher[];
}

/** What one expression reads. */
export interface PromqlReads {
  /** Metric names, each once, in order of first use. */
  metrics: string[];
  /** Functions and aggregation operators called, each once. */
  functions: string[];
  selectors: Selector[];
  /** Labels named by `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`, each once. */
  groupingLabels: string[];
}

/** An expression this reader cannot take apart (unbalanced, a bare selector, a name it cannot place). */
export class PromqlReadError extends Error {
  override readonly name = "PromqlReadError";
}

// Keywords that are neither metrics nor functions; the grouping ones are followed by a label list.
const grouping = new Set(["by", "without", "on", "ignoring", "group_left", "group_right"]);
const keywords = new Set([...grouping, "and", "or", "unless", "bool", "offset", "inf", "nan"]);

type Token = { kind: "string" | "number" | "ident" | "variable" | "punct" | "op"; text: string };

// Grafana's variables ($__rate_interval, ${datasource}) stand where a duration or value would.
const tokenPattern =
  /\s+|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)|(\$\{[^}]*\}|\$[A-Za-z_]\w*)|(0x[0-9a-fA-F]+|(?:\d+(?:ms|[smhdwy]))+|\d*\.?\d+(?:[eE][+-]?\d+)?)|([A-Za-z_:][\w:]*)|([(){}[\],@])|(=~|!~|!=|==|<=|>=|[-+*/%^<>=])/y;

function tokenize(expr: string): Token[] {
  const tokens: Token[] = [];
  tokenPattern.lastIndex = 0;
  while (tokenPattern.lastIndex < expr.length) {
    const at = tokenPattern.lastIndex;
    const m = tokenPattern.exec(expr);
    if (!m || m.index !== at) throw new PromqlReadError(`cannot read ${JSON.stringify(expr)} at ${at}: ${JSON.stringify(expr.slice(at, at + 10))}`);
    if (m[1] !== undefined) tokens.push({ kind: "string", text: m[1] });
    else if (m[2] !== undefined) tokens.push({ kind: "variable", text: m[2] });
    else if (m[3] !== undefined) tokens.push({ kind: "number", text: m[3] });
    else if (m[4] !== undefined) tokens.push({ kind: "ident", text: m[4] });
    else if (m[5] !== undefined) tokens.push({ kind: "punct", text: m[5] });
    else if (m[6] !== undefined) tokens.push({ kind: "op", text: m[6] });
  }
  return tokens;
}

/** A string literal's value (raw strings as they are, escapes in quoted ones taken literally). */
function unquote(text: string): string {
  const inner = text.slice(1, -1);
  return text.startsWith("`") ? inner : inner.replace(/\\(.)/g, "$1");
}

/** Checks that (), [] and {} pair up. */
function checkBalanced(expr: string, tokens: readonly Token[]): void {
  const open: string[] = [];
  const pairs: Record<string, string> = { ")": "(", "]": "[", "}": "{" };
  for (const t of tokens) {
    if (t.kind !== "punct") continue;
    if ("([{".includes(t.text)) open.push(t.text);
    else if (t.text in pairs && open.pop() !== pairs[t.text]) throw new PromqlReadError(`unbalanced ${t.text} in ${JSON.stringify(expr)}`);
  }
  if (open.length > 0) throw new PromqlReadError(`unclosed ${open.join("")} in ${JSON.stringify(expr)}`);
}

/** Reads a `{label op "value", …}` block starting at tokens[i] === "{"; returns the matchers and the index after "}". */
function readMatchers(expr: string, tokens: readonly Token[], i: number): [LabelMatcher[], number] {
  const matchers: LabelMatcher[] = [];
  i++;
  while (tokens[i]?.text !== "}") {
    const [label, op, value] = [tokens[i], tokens[i + 1], tokens[i + 2]];
    if (label?.kind !== "ident" || !op || !["=", "!=", "=~", "!~"].includes(op.text) || value?.kind !== "string") {
      throw new PromqlReadError(`a label matcher of ${JSON.stringify(expr)} is not label op "value"`);
    }
    matchers.push({ label: label.text, op: op.text as LabelMatcher["op"], value: unquote(value.text) });
    i += 3;
    if (tokens[i]?.text === ",") i++;
  }
  return [matchers, i + 1];
}

/** Takes one PromQL expression apart (see the file header for how far). */
export function readPromql(expr: string): PromqlReads {
  const tokens = tokenize(expr);
  checkBalanced(expr, tokens);
  const metrics = new Set<string>();
  const functions = new Set<string>();
  const labels = new Set<string>();
  const selectors: Selector[] = [];
  for (let i = 0; i < tokens.length; ) {
    const t = tokens[i]!;
    if (t.kind === "punct" && t.text === "[") {
      // A range or subquery: durations, variables and a colon only.
      while (tokens[i]?.text !== "]") i++;
      i++;
      continue;
    }
    if (t.kind === "punct" && t.text === "{") throw new PromqlReadError(`a selector without a metric name in ${JSON.stringify(expr)}: name every metric`);
    if (t.kind !== "ident") {
      i++;
      continue;
    }
    const word = t.text.toLowerCase();
    const next = tokens[i + 1];
    if (grouping.has(word)) {
      i++;
      if (next?.text !== "(") continue; // group_left without a label list
      for (i++; tokens[i]?.text !== ")"; i++) if (tokens[i]!.kind === "ident") labels.add(tokens[i]!.text);
      i++;
      continue;
    }
    if (keywords.has(word)) {
      i++;
      continue;
    }
    // A call, or an aggregation whose grouping clause comes first: `sum by (le) (…)`.
    if (next?.text === "(" || (next?.kind === "ident" && ["by", "without"].includes(next.text.toLowerCase()))) {
      functions.add(t.text);
      i++;
      continue;
    }
    let matchers: LabelMatcher[] = [];
    i++;
    if (next?.text === "{") [matchers, i] = readMatchers(expr, tokens, i);
    metrics.add(t.text);
    selectors.push({ metric: t.text, matchers });
  }
  return { metrics: [...metrics], functions: [...functions], selectors, groupingLabels: [...labels] };
}

/** PromQL's functions and aggregation operators (Prometheus 2.x and 3.x, stable ones). */
export const promqlFunctions: ReadonlySet<string> = new Set([
  // Aggregations.
  "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
  // Functions.
  "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "day_of_month", "day_of_week", "day_of_year",
  "days_in_month", "delta", "deriv", "exp", "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
  "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln", "log2",
  "log10", "minute", "month", "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp",
  "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time", "quantile_over_time",
  "stddev_over_time", "stdvar_over_time", "last_over_time", "present_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos",
  "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad", "pi",
]);

/** The series a metric family of this type exposes: a histogram's _bucket, _sum and _count, a summary's _sum and _count and itself. */
export function exposedSeries(name: string, type: string): string[] {
  if (type === "histogram") return [`${name}_bucket`, `${name}_sum`, `${name}_count`];
  if (type === "summary") return [name, `${name}_sum`, `${name}_count`];
  return [name];
}
