import assert from "node:assert/strict";
import { Reports } from "../src/grpc/reports.ts";

Deno.test("Reports passes a message once per window, and again after it", () => {
  let now = 0;
  const seen: string[] = [];
  const reports = new Reports((error) => seen.push(error.message), 60_000, () => now);
  reports.report(new Error("a"));
  reports.report(new Error("a"));
  now = 59_999;
  reports.report(new Error("a"));
  assert.deepEqual(seen, ["a"]);
  now = 60_000;
  reports.report(new Error("a"));
  assert.deepEqual(seen, ["a", "a"], "a flapping instance is reported again later");
});

Deno.test("Reports never mutes new messages, however many came before", () => {
  let now = 0;
  const seen: string[] = [];
  const reports = new Reports((error) => seen.push(error.message), 60_000, () => now);
  for (let i = 0; i < 5000; i++) {
    now = i;
    reports.report(new Error(`instance 10.0.${i >> 8}.${i & 255}:50051 gets no calls`));
  }
  assert.equal(seen.length, 5000);
});

Deno.test("Reports survives a throwing handler", () => {
  const reports = new Reports(() => {
    throw new Error("handler");
  });
  reports.report(new Error("a"));
});

Deno.test("Reports keeps time by a monotonic clock: a wall clock set back mutes nothing", async () => {
  const now = Date.now;
  let offset = 0;
  Date.now = () => now() + offset;
  try {
    const seen: string[] = [];
    const reports = new Reports((error) => seen.push(error.message), 50);
    reports.report(new Error("a"));
    offset = -3_600_000; // the wall clock steps back an hour
    await new Promise((resolve) => setTimeout(resolve, 60)); // the 50 ms window passes
    reports.report(new Error("a"));
    assert.deepEqual(seen, ["a", "a"]);
  } finally {
    Date.now = now;
  }
});

Deno.test("Reports.event passes every event on, however recent the same one, and survives a throwing handler", () => {
  const seen: string[] = [];
  const reports = new Reports((error) => seen.push(error.message), 60_000, () => 0);
  reports.report(new Error("switch"));
  reports.event(new Error("switch"));
  reports.event(new Error("switch"));
  assert.deepEqual(seen, ["switch", "switch", "switch"]);
  new Reports(() => {
    throw new Error("handler");
  }).event(new Error("a"));
});
