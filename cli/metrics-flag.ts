// The daemons' `--metrics-listen ADDR`: parsed as a usage error when it is
// not an address, warned about on a non-loopback host, and the one line a
// daemon prints once its metrics listener is up.
import { MetricsListenError, metricsListenWarning, parseMetricsListen, type MetricsListen } from "../proto/index.js";
import { UsageError } from "./errors.js";

/** `PORT` or `HOST:PORT` (a bare port is loopback; port 0 picks one); a bad value is exit 3. */
export function parseMetricsFlag(text: string, flag = "--metrics-listen"): MetricsListen {
  try {
    return parseMetricsListen(text, flag);
  } catch (err) {
    if (err instanceof MetricsListenError) throw new UsageError(err.message);
    throw err;
  }
}

/** Warns on stderr when the listener is reachable from beyond this machine. */
export function warnIfExposed(listen: MetricsListen, log: (line: string) => void): void {
  const warning = metricsListenWarning(listen);
  if (warning) log(warning);
}

/** The line a daemon prints once its metrics listener is up. */
export function printMetricsReady(url: string): string {
  return `metrics: ${url}\n`;
}
