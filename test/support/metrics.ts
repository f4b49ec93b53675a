// Scraping a daemon's metrics listener as Prometheus would: a real HTTP GET
// (with a deadline) parsed by a Prometheus text-format parser.
import parsePrometheusTextFormat, { type ParsedFamily, type ParsedSample } from "parse-prometheus-text-format";
import { scaled } from "./wait.js";

// One request may take this long: a readiness check answers within 2 s by design.
const requestTimeoutMs = 5_000;

/** One scrape of /metrics. */
export class Scrape {
  readonly families: Map<string, ParsedFamily>;

  constructor(readonly text: string) {
    this.families = new Map(parsePrometheusTextFormat(text).map((f) => [f.name, f]));
  }

  /** The sample of a counter or gauge whose labels include these; undefined when there is none. */
  value(name: string, labels: Record<string, string> = {}): number | undefined {
    const sample = this.sample(name, labels);
    return sample?.value === undefined ? undefined : Number(sample.value);
  }

  /** Like value, but the sample must exist. */
  get(name: string, labels: Record<string, string> = {}): number {
    const v = this.value(name, labels);
    if (v === undefined) throw new Error(`no sample ${name}${JSON.stringify(labels)} in the scrape`);
    return v;
  }

  /** An unlabelled histogram's count and sum (the parser merges the label sets of a labelled one). */
  histogram(name: string): { count: number; sum: number; buckets: Record<string, number> } {
    const h = this.families.get(name);
    if (h?.type !== "HISTOGRAM") throw new Error(`no histogram ${name} in the scrape`);
    const m = h.metrics[0]!;
    return { count: Number(m.count), sum: Number(m.sum), buckets: Object.fromEntries(Object.entries(m.buckets ?? {}).map(([le, n]) => [le, Number(n)])) };
  }

  private sample(name: string, labels: Record<string, string>): ParsedSample | undefined {
    return this.families.get(name)?.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
  }
}

/** GET url's /metrics. */
export async function scrape(metricsUrl: string): Promise<Scrape> {
  const response = await fetch(metricsUrl, { signal: AbortSignal.timeout(scaled(requestTimeoutMs)) });
  if (response.status !== 200) throw new Error(`GET ${metricsUrl}: ${response.status} ${await response.text()}`);
  return new Scrape(await response.text());
}

/** GET /healthz or /readyz beside a /metrics URL: the status and the body. */
export async function probe(metricsUrl: string, path: "/healthz" | "/readyz"): Promise<{ status: number; text: string }> {
  const response = await fetch(metricsUrl.replace(/\/metrics$/, path), { signal: AbortSignal.timeout(scaled(requestTimeoutMs)) });
  return { status: response.status, text: await response.text() };
}
