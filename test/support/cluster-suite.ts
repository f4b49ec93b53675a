// The frame most end-to-end suites share: fixtures built and a cluster
// started before their tests; every target they started killed and the
// cluster stopped after, however the tests ended.
import { after, before } from "node:test";
import { Cluster, type ClusterOptions } from "./cluster.js";
import { buildFixtures, startTarget, type StartOptions, type Target } from "./targets.js";

/** What a suite's tests use. */
export interface ClusterSuite {
  /** The cluster (started by the time a test runs). */
  readonly cluster: Cluster;
  /** Starts a fixture target, killed when the suite ends. */
  target(name: string, args?: string[], options?: StartOptions): Promise<Target>;
}

/** Call inside a describe: registers its before and after hooks. */
export function clusterSuite(options: ClusterOptions = {}): ClusterSuite {
  let cluster: Cluster | undefined;
  const targets: Target[] = [];
  before(async () => {
    await buildFixtures();
    cluster = await Cluster.start(options);
  });
  after(async () => {
    for (const t of targets) await t.kill();
    await cluster?.stop();
  });
  return {
    get cluster(): Cluster {
      if (!cluster) throw new Error("the cluster is not started yet: use it inside a test");
      return cluster;
    },
    async target(name, args = [], startOptions = {}) {
      const target = await startTarget(name, args, startOptions);
      targets.push(target);
      return target;
    },
  };
}
