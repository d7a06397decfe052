import assert from "node:assert/strict";
import { Queue } from "../src/_async.ts";

Deno.test("Queue settles overlapping next() calls in call order: values, the error once, then done", async () => {
  const queue = new Queue<number>();
  const calls = [queue.next(), queue.next(), queue.next(), queue.next()];
  queue.push(1);
  queue.push(2);
  queue.fail(new Error("broken"));
  queue.push(3); // ignored after the end
  const settled = await Promise.allSettled(calls);
  assert.deepEqual(settled.slice(0, 2), [
    { status: "fulfilled", value: { value: 1, done: false } },
    { status: "fulfilled", value: { value: 2, done: false } },
  ]);
  assert.equal(settled[2]!.status, "rejected");
  assert.deepEqual(settled[3], { status: "fulfilled", value: { value: undefined, done: true } });
  assert.deepEqual(await queue.next(), { value: undefined, done: true });
});

Deno.test("Queue keeps values pushed before a next() call, in order, across its compaction", async () => {
  const queue = new Queue<number>();
  for (let i = 0; i < 5000; i++) queue.push(i);
  queue.end();
  const seen: number[] = [];
  for await (const value of queue) seen.push(value);
  assert.deepEqual(seen, Array.from({ length: 5000 }, (_, i) => i));
});
