/**
 * The pure parts of dial()'s retries: the throttle's tokens (gRFC A6), the
 * server's pushback, and the replay buffer's limits.
 */
import assert from "node:assert/strict";
import { pushbackOf, RetryBuffer, RetryThrottle } from "../src/grpc/retry.ts";

Deno.test("RetryThrottle: retries stop at or below half the tokens and come back with successes", () => {
  const throttle = new RetryThrottle({ maxTokens: 10, tokenRatio: 0.1 });
  const seen: [number, boolean][] = [];
  for (let i = 0; i < 6; i++) {
    throttle.failed();
    seen.push([throttle.tokens, throttle.allowsRetry]);
  }
  assert.deepEqual(seen, [[9, true], [8, true], [7, true], [6, true], [5, false], [4, false]]);
  for (let i = 0; i < 10; i++) throttle.failed();
  assert.equal(throttle.tokens, 0, "never below 0");
  // 51 successes bring 0 tokens above 5.
  for (let i = 0; i < 50; i++) throttle.succeeded();
  assert.equal(throttle.allowsRetry, false, `${throttle.tokens} tokens`);
  throttle.succeeded();
  assert.equal(throttle.allowsRetry, true, `${throttle.tokens} tokens`);
  for (let i = 0; i < 100; i++) throttle.succeeded();
  assert.equal(throttle.tokens, 10, "never above maxTokens");
});

Deno.test("pushbackOf: a delay in ms, 'stop' for a negative or unreadable value, undefined for none", () => {
  assert.equal(pushbackOf([]), undefined);
  assert.equal(pushbackOf(["250"]), 250);
  assert.equal(pushbackOf(["0"]), 0);
  assert.equal(pushbackOf(["-1"]), "stop");
  assert.equal(pushbackOf(["soon"]), "stop");
  assert.equal(pushbackOf(["1.5"]), "stop");
  assert.equal(pushbackOf(["2147483648"]), "stop", "past a signed 32-bit integer");
});

Deno.test("RetryBuffer: a call keeps at most perCall bytes, all calls at most total", () => {
  const buffer = new RetryBuffer(100, 60);
  assert.equal(buffer.take(50, 0), true);
  assert.equal(buffer.take(20, 50), false, "over the per-call limit");
  assert.equal(buffer.take(51, 0), false, "over the total");
  assert.equal(buffer.take(40, 0), true);
  assert.equal(buffer.used, 90);
  buffer.give(90);
  assert.equal(buffer.used, 0);
});
