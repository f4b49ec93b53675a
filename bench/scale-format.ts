// How the scale bench's report writes numbers and tables: seconds,
// milliseconds, counts with thousands separators, ratios, aligned columns.
// Pure.

/** Seconds: three decimals below 10, one above; "-" for NaN. */
export function s(seconds: number): string {
  return Number.isNaN(seconds) ? "-" : seconds < 10 ? seconds.toFixed(3) : seconds.toFixed(1);
}

/** Milliseconds: two decimals below 10, none above; "-" for NaN. */
export function ms(value: number): string {
  return Number.isNaN(value) ? "-" : value < 10 ? value.toFixed(2) : value.toFixed(0);
}

/** A whole number with thousands separators; "-" for NaN or infinity. */
export function n(value: number): string {
  return Number.isFinite(value) ? Math.round(value).toLocaleString("en-US") : "-";
}

/** A ratio as `×2.9` (two decimals below 1, so a halving reads ×0.50); "-" for NaN. */
export function ratio(value: number): string {
  return Number.isFinite(value) ? `×${value < 1 ? value.toFixed(2) : value.toFixed(1)}` : "-";
}

/** MiB with one decimal and its sign, for slopes: `+12.3`, `-0.4`. */
export function signedMiB(value: number): string {
  return Number.isFinite(value) ? `${value >= 0 ? "+" : ""}${value.toFixed(1)}` : "-";
}

/** Rows as left-aligned columns two spaces apart; the last column is not padded. */
export function table(rows: string[][]): string {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] as number))).join("  ").trimEnd()).join("\n");
}
