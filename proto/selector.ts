// Kubernetes-style label selectors over host labels (`role=db,zone in (a,b)`):
// the parser, the matcher and the canonical text. Shared by the CLI (to
// reject a bad --selector before submitting) and the controller (to match).
import { WatchSpecError } from "./errors.js";

/** One condition on one label; a selector is the AND of its requirements. */
export type Requirement =
  | { readonly key: string; readonly op: "=" | "!="; readonly value: string }
  | { readonly key: string; readonly op: "in" | "notin"; readonly values: readonly string[] }
  | { readonly key: string; readonly op: "exists" | "absent" };

/** A parsed selector. No requirements matches every label set (as Kubernetes' empty selector does). */
export interface Selector {
  readonly requirements: readonly Requirement[];
}

const word = /[A-Za-z0-9._/-]+/y;
const space = /\s*/y;

/**
 * Parses `role=db`, `role==db`, `env!=prod`, `zone in (a,b)`,
 * `zone notin (c)`, `canary` (key exists), `!canary` (key absent); commas
 * join requirements with AND; whitespace between tokens is ignored. Keys and
 * values are `[A-Za-z0-9._/-]+`. Empty text is the empty selector.
 * Throws WatchSpecError (field `selector`) naming what was expected, after
 * which token, what was found and the column.
 */
export function parseSelector(text: string): Selector {
  let at = 0;
  let previous = "";

  const skipSpace = (): void => {
    space.lastIndex = at;
    space.exec(text);
    at = space.lastIndex;
  };
  const peekWord = (): string | undefined => {
    word.lastIndex = at;
    return word.exec(text)?.[0];
  };
  const fail = (expected: string): never => {
    const found = at >= text.length ? "the end" : `'${peekWord() ?? text[at]}'`;
    const after = previous ? ` after '${previous}'` : "";
    throw new WatchSpecError(`selector '${text}': expected ${expected}${after}, found ${found} (column ${at + 1})`, "selector");
  };
  const take = (expected: string): string => {
    skipSpace();
    const w = peekWord();
    if (w === undefined) return fail(expected);
    at += w.length;
    previous = w;
    return w;
  };
  const eat = (token: string): boolean => {
    skipSpace();
    if (!text.startsWith(token, at)) return false;
    at += token.length;
    previous = token;
    return true;
  };
  const atEnd = (): boolean => {
    skipSpace();
    return at >= text.length;
  };

  const requirements: Requirement[] = [];
  if (atEnd()) return { requirements };
  for (;;) {
    if (eat("!")) {
      requirements.push({ key: take("a label key"), op: "absent" });
    } else {
      const key = take("a label key");
      skipSpace();
      const next = peekWord();
      if (eat("==") || eat("=")) {
        requirements.push({ key, op: "=", value: take("a value") });
      } else if (eat("!=")) {
        requirements.push({ key, op: "!=", value: take("a value") });
      } else if (next === "in" || next === "notin") {
        at += next.length;
        previous = next;
        if (!eat("(")) fail("'('");
        const values: string[] = [];
        do {
          const value = take("a value");
          if (!values.includes(value)) values.push(value);
        } while (eat(","));
        if (!eat(")")) fail("',' or ')'");
        requirements.push({ key, op: next, values });
      } else if (atEnd() || text[at] === ",") {
        requirements.push({ key, op: "exists" });
      } else {
        fail("'=', '==', '!=', 'in', 'notin', ',' or the end");
      }
    }
    if (atEnd()) return { requirements };
    if (!eat(",")) fail("',' or the end");
  }
}

/** Whether a host's labels satisfy every requirement (`!=` and `notin` also hold when the key is absent, as in Kubernetes). */
export function matches(selector: Selector, labels: Readonly<Record<string, string>>): boolean {
  for (const r of selector.requirements) {
    // Own properties only: a key named `constructor` must not match Object.prototype.
    const has = Object.hasOwn(labels, r.key);
    const value = has ? labels[r.key] : undefined;
    let ok: boolean;
    switch (r.op) {
      case "=":
        ok = has && value === r.value;
        break;
      case "!=":
        ok = !has || value !== r.value;
        break;
      case "in":
        ok = has && r.values.includes(value!);
        break;
      case "notin":
        ok = !has || !r.values.includes(value!);
        break;
      case "exists":
        ok = has;
        break;
      case "absent":
        ok = !has;
        break;
    }
    if (!ok) return false;
  }
  return true;
}

/** Canonical text (`role=db,zone in (a,b),!canary`); parseSelector(formatSelector(s)) equals s. */
export function formatSelector(selector: Selector): string {
  return selector.requirements
    .map((r) => {
      switch (r.op) {
        case "=":
        case "!=":
          return `${r.key}${r.op}${r.value}`;
        case "in":
        case "notin":
          return `${r.key} ${r.op} (${r.values.join(",")})`;
        case "exists":
          return r.key;
        case "absent":
          return `!${r.key}`;
      }
    })
    .join(",");
}
