// The helper's --cpu-policy, measured: the real helper against the counter
// fixture (1 and 4 writer threads), rounds alternating "follow" and "none"
// in the same run, hits/s between the first and the last trap of each round.
//   npm run build && node dist/bench/helper-affinity.js [--writes N] [--rounds R]
// bench/helper-affinity.c is the same question for a bare ptrace loop.
import { parseArgs } from "node:util";

import { HelperProcess } from "../agent/helper-process.js";
import type { CpuPolicy, HelperHit } from "../agent/helper-process.js";
import { buildFixtures, startTarget } from "../test/support/targets.js";

const POLICIES: CpuPolicy[] = ["follow", "none"];
const DEADLINE_MS = 120_000;

/** One round: arm, let T threads write N times each, count hits/s. */
async function round(policy: CpuPolicy, threads: number, writes: number): Promise<number> {
  const helper = await HelperProcess.start({ cpuPolicy: policy });
  const target = await startTarget("counter", ["--threads", String(threads), "--writes", String(writes)]);
  try {
    const address = BigInt(target.lines[0]?.split(" ")[2] ?? "0");
    let first: HelperHit | undefined;
    let last: HelperHit | undefined;
    let count = 0;
    const done = (async () => {
      for await (const event of helper.events()) {
        if (event.kind === "hits") {
          first ??= event.hits[0];
          last = event.hits.at(-1) ?? last;
          count += event.hits.length;
        }
        if (event.kind === "group-done") return;
      }
    })();
    await helper.arm(target.pid, 1n, [{ dr: 0, mode: "w", length: 8, address }]);
    target.send("go");
    await target.waitForLine(/^done$/, DEADLINE_MS);
    await done;
    if (!first || !last || count !== threads * writes) throw new Error(`${count} hits, expected ${threads * writes}`);
    return count / (Number(last.timeNs - first.timeNs) / 1e9);
  } finally {
    await target.kill();
    await helper.shutdown();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { writes: { type: "string", default: "50000" }, rounds: { type: "string", default: "5" } } });
  const writes = Number(values.writes);
  const rounds = Number(values.rounds);
  await buildFixtures();
  for (const threads of [1, 4]) {
    const results = new Map<CpuPolicy, number[]>(POLICIES.map((p) => [p, []]));
    for (let r = 0; r < rounds; r++) {
      for (const policy of POLICIES) results.get(policy)?.push(await round(policy, threads, writes));
    }
    for (const policy of POLICIES) {
      const rates = (results.get(policy) ?? []).sort((a, b) => a - b);
      const median = rates[Math.floor(rates.length / 2)] ?? 0;
      console.log(
        `${threads} thread(s) x ${writes} writes, --cpu-policy ${policy.padEnd(6)}: median ${Math.round(median)} hits/s ` +
          `(${(1e6 / median).toFixed(1)} us/hit); rounds: ${rates.map((x) => Math.round(x)).join(" ")}`,
      );
    }
  }
}

await main();
