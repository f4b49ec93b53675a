import { test } from "node:test";
import assert from "node:assert/strict";
import { createDaemonLog, levelOf, resolveLogFormat, subjectOf } from "../../cli/daemon-log.js";

test("daemon log - the host, job and pid a line names, by the house's phrasing", () => {
  const table: Array<[string, ReturnType<typeof subjectOf>]> = [
    ["agent db-1: job 87ed38eb1f on pid 4242: disarmed", { host: "db-1", job: "87ed38eb1f", pid: 4242 }],
    ["job 87ed38eb1f: arming db-2/31337 failed: ESRCH", { host: "db-2", job: "87ed38eb1f", pid: 31337 }],
    ["job r-whole: db-2/17 joined (armed)", { host: "db-2", job: "r-whole", pid: 17 }],
    ["controller: leading with epoch 3", {}],
    ["leader election: vm/127.0.0.1:7070 leads with epoch 1 (127.0.0.1:7070)", {}],
    ["agent h1: no session with a controller for 2000 ms (the job's lost-after): after the job ended", { host: "h1" }],
    ["queue: placed 2 job(s): job 0a1b2c3d4e on db-1/77", { job: "0a1b2c3d4e", host: "db-1", pid: 77 }],
  ];
  for (const [line, subject] of table) assert.deepEqual(subjectOf(line), subject, line);
});

test("daemon log - levels by the words: failures and refusals warn, internal errors are errors", () => {
  assert.equal(levelOf("job 1a2b3c4d5e: arming db-1/2 failed: EPERM"), "warn");
  assert.equal(levelOf("agent h: session with c:1 refused"), "warn");
  assert.equal(levelOf("controller: internal error: TypeError: x"), "error");
  assert.equal(levelOf("controller: leading with epoch 1"), "info");
});

test("daemon log - json: one object per line with level, time, component, host and the line's subject; text: the line as said", async () => {
  const out: string[] = [];
  const sink = { write: (t: string) => out.push(t) };
  const json = await createDaemonLog({ format: "json", level: "info", component: "agent", host: "db-1", sink });
  json("agent db-1: job 87ed38eb1f on pid 4242: re-armed");
  json("agent db-1: job 87ed38eb1f on pid 4242: disarming failed: EIO");
  const [first, second] = out.map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(out.every((l) => l.endsWith("\n") && !l.slice(0, -1).includes("\n")), true);
  assert.deepEqual({ ...first, time: undefined }, { level: "info", time: undefined, component: "agent", host: "db-1", job: "87ed38eb1f", pid: 4242, msg: "agent db-1: job 87ed38eb1f on pid 4242: re-armed" });
  assert.match(String(first!.time), /^\d{4}-\d\d-\d\dT/);
  assert.equal(second!.level, "warn");
  out.length = 0;
  const text = await createDaemonLog({ format: "text", level: "warn", component: "controller", sink });
  text("controller: leading with epoch 1");
  text("job 1a2b3c4d5e: arming h/1 failed: EPERM");
  assert.deepEqual(out, ["job 1a2b3c4d5e: arming h/1 failed: EPERM\n"]);
});

test("daemon log - json by default unless stderr is a terminal", () => {
  assert.equal(resolveLogFormat(undefined, { write: () => true }), "json");
  assert.equal(resolveLogFormat(undefined, { write: () => true, isTTY: true } as never), "text");
  assert.equal(resolveLogFormat("text", { write: () => true }), "text");
});
