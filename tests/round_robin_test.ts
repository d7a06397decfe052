import assert from "node:assert/strict";
import { type Endpoint, roundRobin } from "../mod.ts";

Deno.test("roundRobin() cycles in order and spreads 300 picks evenly over 3", () => {
  const endpoints: Endpoint[] = [{ addr: "a:1" }, { addr: "b:1" }, { addr: "c:1" }];
  const pick = roundRobin(endpoints);
  const counts = new Map<string, number>();
  for (let i = 0; i < 300; i++) {
    const addr = pick()!.addr;
    counts.set(addr, (counts.get(addr) ?? 0) + 1);
  }
  assert.deepEqual([...counts], [["a:1", 100], ["b:1", 100], ["c:1", 100]]);
});

Deno.test("roundRobin() copies its input and returns undefined when empty", () => {
  const endpoints: Endpoint[] = [{ addr: "a:1" }];
  const pick = roundRobin(endpoints);
  endpoints.push({ addr: "b:1" });
  assert.deepEqual([pick(), pick()], [{ addr: "a:1" }, { addr: "a:1" }]);
  assert.equal(roundRobin([])(), undefined);
});
