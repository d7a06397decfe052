/**
 * Round robin over a fixed list of endpoints. Pure.
 *
 * @module
 */
import type { Endpoint } from "../endpoint.ts";
import type { Picker } from "./balancer.ts";

/**
 * Builds a picker that cycles through the endpoints in order, starting with the
 * first. The list is copied, so later changes to it do not affect the picker.
 * Each pick is O(1).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { roundRobin } from "@seed/grpc-etcd";
 * const pick = roundRobin([{ addr: "a:1" }, { addr: "b:1" }]);
 * assert.deepEqual([pick(), pick(), pick()].map((e) => e?.addr), ["a:1", "b:1", "a:1"]);
 * assert.equal(roundRobin([])(), undefined);
 * ```
 *
 * @param endpoints the endpoints to cycle through
 * @returns the picker
 */
export function roundRobin(endpoints: readonly Endpoint[]): Picker {
  const items = endpoints.slice();
  const n = items.length;
  if (n === 0) return () => undefined;
  let next = 0;
  return () => {
    const item = items[next];
    next = next + 1 === n ? 0 : next + 1;
    return item;
  };
}
