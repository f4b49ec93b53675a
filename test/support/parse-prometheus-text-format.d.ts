// Types of the Prometheus text-format parser the metrics tests read scrapes with (the package ships none).
declare module "parse-prometheus-text-format" {
  /** One sample: a value (counters, gauges), or a histogram's buckets, count and sum; values are strings as written. */
  export interface ParsedSample {
    labels?: Record<string, string>;
    value?: string;
    buckets?: Record<string, string>;
    count?: string;
    sum?: string;
  }
  export interface ParsedFamily {
    name: string;
    help: string;
    type: "COUNTER" | "GAUGE" | "HISTOGRAM" | "SUMMARY" | "UNTYPED";
    metrics: ParsedSample[];
  }
  export default function parsePrometheusTextFormat(text: string): ParsedFamily[];
}
