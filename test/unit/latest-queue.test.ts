import assert from "node:assert/strict";
import { test } from "node:test";
import { LatestQueue } from "../../proto/latest-queue.js";

test("latest queue - a push replaces the item not yet taken and counts it", async () => {
  const q = new LatestQueue<number>();
  for (let i = 1; i <= 1000; i++) q.push(i);
  assert.equal(q.size, 1);
  assert.equal(q.replaced, 999);
  const it = q[Symbol.asyncIterator]();
  assert.deepEqual(await it.next(), { value: 1000, done: false });
  assert.equal(q.size, 0);
});

test("latest queue - a waiting consumer gets each push; close ends after the pending item", async () => {
  const q = new LatestQueue<string>();
  const it = q[Symbol.asyncIterator]();
  const first = it.next();
  q.push("a");
  assert.deepEqual(await first, { value: "a", done: false });
  q.push("b");
  q.close();
  assert.equal(q.push("c"), false);
  assert.deepEqual(await it.next(), { value: "b", done: false });
  assert.deepEqual(await it.next(), { value: undefined, done: true });
  assert.equal(q.replaced, 0);
});

test("latest queue - fail rejects a waiting consumer", async () => {
  const q = new LatestQueue<string>();
  const next = q[Symbol.asyncIterator]().next();
  q.fail(new Error("gone"));
  await assert.rejects(next, /gone/);
});
