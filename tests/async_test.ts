import assert from "node:assert/strict";
import { later, Queue } from "../src/_async.ts";
import { fakeTime } from "./fake_time.ts";

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

Deno.test("later() waits out delays past what one timer keeps, and clear() cancels", async () => {
  using clock = fakeTime();
  let fired = 0;
  later(3_000_000_000, () => fired++);
  const cleared = later(3_000_000_000, () => fired++);
  cleared.clear();
  await clock.tick(2 ** 31);
  assert.equal(fired, 0, "not at 2^31 ms (a plain timer of 3e9 ms fires at once)");
  await clock.tick(3_000_000_000 - 2 ** 31 - 1);
  assert.equal(fired, 0);
  await clock.tick(1);
  assert.equal(fired, 1);
  later(Infinity, () => fired++);
  await clock.tick(10 * 2 ** 31);
  assert.equal(fired, 1, "Infinity never fires");
});
