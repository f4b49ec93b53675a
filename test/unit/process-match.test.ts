import { test } from "node:test";
import assert from "node:assert/strict";

import {
  ProcessSelectorError,
  cgroupMatches,
  diffProcesses,
  hasExited,
  isKernelThread,
  kernelComm,
  matchesSelector,
  parseCgroupV2,
  parseStat,
  parseStatusEuid,
  parseStatusUid,
  processKey,
  validateSelector,
} from "../../agent/process-match.js";
import type { ProcessInfo, ProcessSelector } from "../../agent/process-match.js";

const postgres: ProcessInfo = {
  pid: 4242,
  comm: "postgres",
  exe: "/usr/lib/postgresql/15/bin/postgres",
  cgroup: "/system.slice/docker-abc.scope/db",
  startTime: 450363,
  uid: 105,
};

test("process-match - accepts each field alone and together, in the matcher's form", () => {
  const table: Array<[ProcessSelector, object]> = [
    [{ pid: 42 }, { pid: 42, notes: [] }],
    [{ pid: 4_194_304 }, { pid: 4_194_304, notes: [] }],
    [{ exe: "/usr/bin/postgres" }, { exe: "/usr/bin/postgres", notes: [] }],
    [{ comm: "postgres" }, { comm: "postgres", notes: [] }],
    [{ comm: "exactly-15-byte" }, { comm: "exactly-15-byte", notes: [] }],
    [{ cgroup: "/" }, { cgroup: "/", notes: [] }],
    [{ cgroup: "/system.slice/docker-abc.scope" }, { cgroup: "/system.slice/docker-abc.scope", notes: [] }],
    [{ cgroup: "/kubepods/pod1/" }, { cgroup: "/kubepods/pod1", notes: ['cgroup "/kubepods/pod1/" is read as "/kubepods/pod1"'] }],
    [{ pid: 7, exe: "/bin/x", comm: "x", cgroup: "/a" }, { pid: 7, exe: "/bin/x", comm: "x", cgroup: "/a", notes: [] }],
    [{ pid: 7, comm: undefined }, { pid: 7, notes: [] }],
  ];
  for (const [selector, expected] of table) {
    assert.deepEqual(validateSelector(selector), expected, JSON.stringify(selector));
  }
});

test("process-match - cuts a comm longer than 15 bytes to the kernel's name and says so", () => {
  const valid = validateSelector({ comm: "fleetwatch-long-name" });
  assert.equal(valid.comm, "fleetwatch-long");
  assert.deepEqual(valid.notes, [
    'comm "fleetwatch-long-name" is 20 bytes and the kernel keeps 15: matching processes named "fleetwatch-long", which includes any other name starting with those 15 bytes',
  ]);
  // The kernel cuts bytes, not characters: 7 two-byte letters are 14 bytes, the 8th is split.
  assert.equal(kernelComm("ääääääää"), "ääääääää".slice(0, 7) + "\uFFFD");
  assert.equal(kernelComm("ääääääää"), Buffer.from("ääääääää").subarray(0, 15).toString("utf8"));
  assert.equal(kernelComm("short"), "short");
});

test("process-match - refuses bad selectors naming the field and the reason", () => {
  const table: Array<[unknown, string, RegExp]> = [
    [{}, "selector", /^a process selector needs at least one of pid, exe, comm or cgroup$/],
    [{ pid: undefined }, "selector", /needs at least one of pid, exe, comm or cgroup/],
    [null, "selector", /^a process selector must be an object with pid, exe, comm or cgroup, got null$/],
    [[], "selector", /must be an object/],
    ["postgres", "selector", /must be an object with pid, exe, comm or cgroup, got "postgres"/],
    [{ name: "postgres" }, "selector", /^selector has an unknown field "name"; the fields are pid, exe, comm and cgroup$/],
    [{ pid: 0 }, "pid", /^selector.pid must be an integer from 1 to 4194304, got 0$/],
    [{ pid: -5 }, "pid", /got -5$/],
    [{ pid: 1.5 }, "pid", /got 1.5$/],
    [{ pid: "42" }, "pid", /got "42"$/],
    [{ pid: 4_194_305 }, "pid", /got 4194305$/],
    [{ pid: 1 }, "pid", /^selector.pid 1 is never watched \(host policy: the init process is not a target\)$/],
    [{ exe: "" }, "exe", /^selector.exe must be a non-empty path, got ""$/],
    [{ exe: 5 }, "exe", /must be a non-empty path, got 5$/],
    [{ exe: "bin/postgres" }, "exe", /^selector.exe must be an absolute path starting with "\/", got "bin\/postgres"$/],
    [{ exe: "/usr//bin/postgres" }, "exe", /must be a normalized path \(the kernel shows resolved paths\), got "\/usr\/\/bin\/postgres"; did you mean "\/usr\/bin\/postgres"\?/],
    [{ exe: "/usr/bin/../lib/postgres" }, "exe", /did you mean "\/usr\/lib\/postgres"\?/],
    [{ exe: "/usr/bin/postgres/" }, "exe", /did you mean "\/usr\/bin\/postgres"\?/],
    [{ exe: "/usr/bin/postgres (deleted)" }, "exe", /ends in " \(deleted\)", which the kernel only adds for executables that are gone/],
    [{ exe: "/usr/bin/a\0b" }, "exe", /must not contain a NUL byte/],
    [{ comm: "" }, "comm", /^selector.comm must be a non-empty process name, got ""$/],
    [{ comm: 42 }, "comm", /got 42$/],
    [{ comm: "pg\0" }, "comm", /must not contain a NUL byte/],
    [{ cgroup: "" }, "cgroup", /^selector.cgroup must be a non-empty cgroup path, got ""$/],
    [{ cgroup: "system.slice" }, "cgroup", /must be an absolute cgroup path starting with "\/", got "system.slice"/],
    [{ cgroup: "/a//b" }, "cgroup", /without "\/\/", "." or ".." parts, got "\/a\/\/b"; did you mean "\/a\/b"\?/],
    [{ cgroup: "/a/./b" }, "cgroup", /did you mean "\/a\/b"\?/],
    [{ cgroup: "/a/../b" }, "cgroup", /did you mean "\/b"\?/],
    [{ pid: 42, comm: "" }, "comm", /non-empty process name/],
  ];
  for (const [selector, field, message] of table) {
    assert.throws(
      () => validateSelector(selector as ProcessSelector),
      (err: unknown) => {
        assert.ok(err instanceof ProcessSelectorError, `${JSON.stringify(selector)} threw ${String(err)}`);
        assert.equal(err.field, field, JSON.stringify(selector));
        assert.match(err.message, message);
        return true;
      },
      JSON.stringify(selector),
    );
  }
});

test("process-match - matches only when every given field matches", () => {
  const table: Array<[ProcessSelector, Partial<ProcessInfo>, boolean]> = [
    [{ pid: 4242 }, {}, true],
    [{ pid: 4243 }, {}, false],
    [{ comm: "postgres" }, {}, true],
    [{ comm: "Postgres" }, {}, false],
    [{ comm: "postgre" }, {}, false],
    [{ comm: "postgres: walwriter" }, { comm: "postgres: walwr" }, true],
    [{ comm: "postgres: walwriter" }, { comm: "postgres: walwriter" }, false],
    [{ exe: "/usr/lib/postgresql/15/bin/postgres" }, {}, true],
    [{ exe: "/usr/lib/postgresql/15/bin/postgres" }, { exe: "/usr/lib/postgresql/15/bin/postgres (deleted)" }, false],
    [{ exe: "/usr/lib/postgresql/15/bin" }, {}, false],
    [{ cgroup: "/system.slice/docker-abc.scope/db" }, {}, true],
    [{ cgroup: "/system.slice/docker-abc.scope" }, {}, true],
    [{ cgroup: "/system.slice/docker-abc.scope/" }, {}, true],
    [{ cgroup: "/system.slice/docker-ab" }, {}, false],
    [{ cgroup: "/system.slice/docker-abc.scope/db/inner" }, {}, false],
    [{ cgroup: "/" }, {}, true],
    [{ cgroup: "/" }, { cgroup: undefined }, false],
    [{ cgroup: "/system.slice" }, { cgroup: undefined }, false],
    [{ pid: 4242, comm: "postgres", exe: "/usr/lib/postgresql/15/bin/postgres", cgroup: "/system.slice" }, {}, true],
    [{ pid: 4242, comm: "postgres", exe: "/usr/bin/postgres", cgroup: "/system.slice" }, {}, false],
    [{ pid: 4242, comm: "mysqld" }, {}, false],
  ];
  for (const [selector, change, expected] of table) {
    const process = { ...postgres, ...change };
    assert.equal(matchesSelector(validateSelector(selector), process), expected, `${JSON.stringify(selector)} vs ${JSON.stringify(process)}`);
  }
  assert.equal(cgroupMatches(validateSelector({ pid: 5 }), undefined), true, "a selector without cgroup ignores it");
});

test("process-match - parses /proc/PID/stat, names with spaces and parentheses included", () => {
  const tail = "S 17566 17566 8900 0 -1 4194304 101 0 0 0 0 0 0 0 20 0 1 0 450363 3133440 388 18446744073709551615 94733029810176 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
  const table: Array<[string, object | undefined]> = [
    [`17568 (cat) ${tail}`, { pid: 17568, comm: "cat", state: "S", ppid: 17566, flags: 4194304, startTime: 450363 }],
    [`17568 (a) (b) c) ${tail}`, { pid: 17568, comm: "a) (b) c", state: "S", ppid: 17566, flags: 4194304, startTime: 450363 }],
    [`17568 () ${tail}`, { pid: 17568, comm: "", state: "S", ppid: 17566, flags: 4194304, startTime: 450363 }],
    ["2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 24 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0", { pid: 2, comm: "kthreadd", state: "S", ppid: 0, flags: 2129984, startTime: 24 }],
    ["17568 (cat) S 1 2 3", undefined],
    ["not a stat line", undefined],
    ["", undefined],
    [`x (cat) ${tail}`, undefined],
  ];
  for (const [text, expected] of table) assert.deepEqual(parseStat(text), expected, text);

  const kthreadd = parseStat(table[3]![0])!;
  const cat = parseStat(table[0]![0])!;
  assert.equal(isKernelThread(kthreadd), true);
  assert.equal(isKernelThread(cat), false);
  for (const [state, exited] of [["Z", true], ["X", true], ["x", true], ["S", false], ["R", false], ["D", false], ["T", false], ["t", false], ["I", false]] as const) {
    assert.equal(hasExited({ ...cat, state }), exited, state);
  }
});

test("process-match - finds the cgroup v2 line in hybrid, v2-only and v1-only files", () => {
  const table: Array<[string, string | undefined]> = [
    ["9:name=systemd:/\n4:memory:/process_api/8113\n1:cpu:/\n0::/\n", "/"],
    ["0::/system.slice/docker-abc.scope\n", "/system.slice/docker-abc.scope"],
    ["0::/a b/c:d\n", "/a b/c:d"],
    ["12:pids:/user.slice\n1:name=systemd:/user.slice\n", undefined],
    ["", undefined],
  ];
  for (const [text, expected] of table) assert.equal(parseCgroupV2(text), expected, JSON.stringify(text));
});

test("process-match - reads the real uid from /proc/PID/status", () => {
  assert.equal(parseStatusUid("Name:\tpostgres\nUid:\t105\t0\t0\t0\nGid:\t110\t110\t110\t110\n"), 105);
  assert.equal(parseStatusUid("Name:\tx\n"), undefined);
  assert.equal(parseStatusEuid("Name:\tpostgres\nUid:\t105\t0\t0\t0\nGid:\t110\t110\t110\t110\n"), 0, "the effective uid is the second field");
  assert.equal(parseStatusEuid("Name:\tx\n"), undefined);
});

test("process-match - diff tells starts and exits apart by pid and start time", () => {
  const p = (pid: number, startTime: number, comm = "w"): ProcessInfo => ({ pid, comm, exe: "/bin/w", cgroup: "/", startTime, uid: 0 });
  const known = (...processes: ProcessInfo[]) => new Map(processes.map((q) => [processKey(q), q]));
  const keys = (processes: ProcessInfo[]) => processes.map(processKey);
  const table: Array<[string, ProcessInfo[], ProcessInfo[], string[], string[]]> = [
    ["first scan: every match starts, in pid order", [], [p(30, 5), p(10, 7), p(20, 6)], [], ["10@7", "20@6", "30@5"]],
    ["nothing changed", [p(10, 7), p(20, 6)], [p(20, 6), p(10, 7)], [], []],
    ["one exits, one starts", [p(10, 7), p(20, 6)], [p(10, 7), p(15, 9)], ["20@6"], ["15@9"]],
    ["a reused pid is an exit and a start", [p(10, 7)], [p(10, 90)], ["10@7"], ["10@90"]],
    ["all exit", [p(11, 1), p(10, 2)], [], ["10@2", "11@1"], []],
    ["a rename keeps the identity", [p(10, 7, "old")], [p(10, 7, "new")], [], []],
  ];
  for (const [name, before, now, exited, started] of table) {
    const diff = diffProcesses(known(...before), now);
    assert.deepEqual(keys(diff.exited), exited, name);
    assert.deepEqual(keys(diff.started), started, name);
    assert.deepEqual([...diff.known.keys()].sort(), keys(now).sort(), name);
  }
  // The known map carries the newest facts about a process that stays.
  assert.equal(diffProcesses(known(p(10, 7, "old")), [p(10, 7, "new")]).known.get("10@7")?.comm, "new");
});
