import { test } from "node:test";
import assert from "node:assert/strict";
import { WatchSpecError } from "../../proto/errors.js";
import { formatSelector, matches, parseSelector, type Requirement } from "../../proto/selector.js";

test("selector - parses each requirement form, tolerating whitespace", () => {
  const cases: Array<[string, Requirement[]]> = [
    ["", []],
    ["   ", []],
    ["role=db", [{ key: "role", op: "=", value: "db" }]],
    ["role==db", [{ key: "role", op: "=", value: "db" }]],
    ["env!=prod", [{ key: "env", op: "!=", value: "prod" }]],
    ["zone in (a,b)", [{ key: "zone", op: "in", values: ["a", "b"] }]],
    ["zone in(a)", [{ key: "zone", op: "in", values: ["a"] }]],
    ["zone notin (c)", [{ key: "zone", op: "notin", values: ["c"] }]],
    ["zone in (b, a, b)", [{ key: "zone", op: "in", values: ["b", "a"] }]],
    ["canary", [{ key: "canary", op: "exists" }]],
    ["!canary", [{ key: "canary", op: "absent" }]],
    ["in", [{ key: "in", op: "exists" }]],
    ["k8s.io/role-name_x=v1.2/x-y_z", [{ key: "k8s.io/role-name_x", op: "=", value: "v1.2/x-y_z" }]],
    [
      "  role = db , zone  in  ( a , b ) ,  ! canary , env != prod , tier ",
      [
        { key: "role", op: "=", value: "db" },
        { key: "zone", op: "in", values: ["a", "b"] },
        { key: "canary", op: "absent" },
        { key: "env", op: "!=", value: "prod" },
        { key: "tier", op: "exists" },
      ],
    ],
  ];
  for (const [text, requirements] of cases) assert.deepEqual(parseSelector(text), { requirements }, text);
});

test("selector - formats canonically and parses back to the same selector", () => {
  const cases: Array<[string, string]> = [
    ["", ""],
    ["role==db", "role=db"],
    [" env != prod ", "env!=prod"],
    ["zone in ( a , b )", "zone in (a,b)"],
    ["zone notin (c)", "zone notin (c)"],
    ["canary , ! old", "canary,!old"],
    ["role=db,zone in (a,b),!canary", "role=db,zone in (a,b),!canary"],
  ];
  for (const [text, canonical] of cases) {
    const selector = parseSelector(text);
    assert.equal(formatSelector(selector), canonical, text);
    assert.deepEqual(parseSelector(canonical), selector, canonical);
  }
});

test("selector - matches labels as Kubernetes does (!= and notin hold when the key is absent)", () => {
  const db = { role: "db", zone: "a", canary: "" };
  const web = { role: "web", zone: "c" };
  const cases: Array<[string, Record<string, string>, boolean]> = [
    ["", {}, true],
    ["role=db", db, true],
    ["role=db", web, false],
    ["role=db", {}, false],
    ["role!=db", web, true],
    ["role!=db", {}, true],
    ["role!=db", db, false],
    ["zone in (a,b)", db, true],
    ["zone in (a,b)", web, false],
    ["zone in (a,b)", {}, false],
    ["zone notin (c)", db, true],
    ["zone notin (c)", web, false],
    ["zone notin (c)", {}, true],
    ["canary", db, true],
    ["canary", web, false],
    ["!canary", web, true],
    ["!canary", db, false],
    ["role=db,zone in (a,b),canary", db, true],
    ["role=db,zone in (b)", db, false],
    ["constructor", {}, false],
    ["!toString", {}, true],
  ];
  for (const [text, labels, expected] of cases) assert.equal(matches(parseSelector(text), labels), expected, `${text} on ${JSON.stringify(labels)}`);
});

test("selector - rejects malformed text saying what was expected, after what, and where", () => {
  const cases: Array<[string, string]> = [
    ["zone in a,b", "expected '(' after 'in', found 'a' (column 9)"],
    ["zone in", "expected '(' after 'in', found the end (column 8)"],
    ["zone in ()", "expected a value after '(', found ')' (column 10)"],
    ["zone in (a b)", "expected ',' or ')' after 'a', found 'b' (column 12)"],
    ["zone in (a,", "expected a value after ',', found the end (column 12)"],
    ["zone notin (a", "expected ',' or ')' after 'a', found the end (column 14)"],
    ["a,,b", "expected a label key after ',', found ',' (column 3)"],
    ["a,", "expected a label key after ',', found the end (column 3)"],
    [",a", "expected a label key, found ',' (column 1)"],
    ["=db", "expected a label key, found '=' (column 1)"],
    ["role=", "expected a value after '=', found the end (column 6)"],
    ["role==", "expected a value after '==', found the end (column 7)"],
    ["role=db x", "expected ',' or the end after 'db', found 'x' (column 9)"],
    ["role ~ db", "expected '=', '==', '!=', 'in', 'notin', ',' or the end after 'role', found '~' (column 6)"],
    ["zone within (a)", "expected '=', '==', '!=', 'in', 'notin', ',' or the end after 'zone', found 'within' (column 6)"],
    ["!", "expected a label key after '!', found the end (column 2)"],
    ["!canary=1", "expected ',' or the end after 'canary', found '=' (column 8)"],
    ["rôle=db", "expected '=', '==', '!=', 'in', 'notin', ',' or the end after 'r', found 'ô' (column 2)"],
  ];
  for (const [text, message] of cases) {
    assert.throws(
      () => parseSelector(text),
      (err: unknown) => {
        assert.ok(err instanceof WatchSpecError, text);
        assert.equal(err.field, "selector");
        assert.equal(err.message, `selector '${text}': ${message}`);
        return true;
      },
      text,
    );
  }
});
