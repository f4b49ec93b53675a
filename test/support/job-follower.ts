// Follows one job's states over WatchJob and prints each as a JSON line
// (protobuf JSON of the Job) until the job is final or stdin closes. Tests
// of a fleet in network namespaces run it inside the controller's
// namespace: one long-lived client instead of a CLI process per look.
// Usage: node job-follower.js JOB_ID (controller and TLS from the
// FLEETWATCH_CONTROLLER, FLEETWATCH_CA, FLEETWATCH_CERT, FLEETWATCH_KEY
// environment, as the CLI takes them).
import { toJsonString } from "@bufbuild/protobuf";
import { ControllerService, JobSchema, channelCredentials, channelOptions, createFailoverClient, isFinalJobState, parseAddressList } from "../../proto/index.js";
import { resolveTransport } from "../../cli/transport.js";

const id = process.argv[2];
if (!id) {
  process.stderr.write("usage: job-follower JOB_ID\n");
  process.exit(2);
}
const env = process.env;
const addresses = parseAddressList(env.FLEETWATCH_CONTROLLER ?? "127.0.0.1:7070");
const transport = resolveTransport({ ca: env.FLEETWATCH_CA, cert: env.FLEETWATCH_CERT, key: env.FLEETWATCH_KEY }, "user", addresses, (line) => process.stderr.write(`${line}\n`));
const client = createFailoverClient(ControllerService, addresses, channelCredentials(transport), channelOptions(transport));
const stop = new AbortController();
process.stdin.on("end", () => stop.abort());
process.stdin.resume();

// A controller restart or failover ends the stream: follow again until the job is final.
for (;;) {
  try {
    for await (const { job } of client.watchJob({ id }, { signal: stop.signal, deadlineMs: 3_600_000 })) {
      if (!job) continue;
      process.stdout.write(`${toJsonString(JobSchema, job)}\n`);
      if (isFinalJobState(job.state)) process.exit(0);
    }
  } catch (err) {
    if (stop.signal.aborted) process.exit(0);
    process.stderr.write(`job-follower: ${err instanceof Error ? err.message : String(err)}; following again\n`);
  }
  if (stop.signal.aborted) process.exit(0);
  await new Promise((resolve) => setTimeout(resolve, 200));
}
