import assert from "node:assert/strict";
import { backoff } from "../src/backoff.ts";

Deno.test("backoff() grows exponentially to its cap, with full jitter", () => {
  const top = (attempt: number) => backoff(attempt, { random: () => 0.999999 });
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map(top), [99, 199, 399, 799, 1599, 2999, 2999]);
  assert.equal(backoff(3, { random: () => 0 }), 0);
  assert.equal(backoff(1000, { initial: 10, max: 50, random: () => 0.5 }), 25);
});

Deno.test("backoff() with Math.random spreads 10,000 draws over [0, cap)", () => {
  const draws = Array.from({ length: 10_000 }, () => backoff(10));
  assert.ok(draws.every((d) => d >= 0 && d < 3000));
  const buckets = [0, 0, 0];
  for (const d of draws) buckets[Math.floor(d / 1000)]!++;
  for (const count of buckets) assert.ok(count > 3000 && count < 3700, `bucket ${count}`);
});

Deno.test("backoff() rejects an attempt that is not a non-negative integer", () => {
  assert.throws(() => backoff(-1), /attempt must be a non-negative integer, got -1/);
  assert.throws(() => backoff(1.5), RangeError);
});
