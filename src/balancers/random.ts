/**
 * Uniform random choice, and power of two choices. Pure: randomness is passed in.
 *
 * @module
 */
import type { Endpoint } from "../endpoint.ts";
import type { BalancerContext, Picker } from "./balancer.ts";

/** Options of {@linkcode random} and {@linkcode p2c}. */
export interface RandomOptions {
  /**
   * A source of numbers in [0, 1). Default: a xorshift32 generator seeded from
   * `Math.random` (fast; fine for spreading load, not for secrets).
   */
  readonly random?: () => number;
}

/** A xorshift32 generator seeded from `Math.random`. */
function xorshift(): () => number {
  let state = (Math.random() * 0xffffffff) >>> 0 || 0x9e3779b9;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 0x100000000;
  };
}

/**
 * Builds a picker that chooses an endpoint uniformly at random. O(1) per pick.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { random } from "@seed/grpc-etcd";
 * const pick = random([{ addr: "a:1" }, { addr: "b:1" }], undefined, { random: () => 0.75 });
 * assert.equal(pick()?.addr, "b:1");
 * ```
 *
 * @param endpoints the endpoints
 * @param _context unused
 * @param options the random source
 * @returns the picker
 */
export function random(
  endpoints: readonly Endpoint[],
  _context?: BalancerContext,
  options: RandomOptions = {},
): Picker {
  const items = endpoints.slice();
  const n = items.length;
  const rng = options.random ?? xorshift();
  if (n === 0) return () => undefined;
  return () => items[Math.floor(rng() * n)];
}

/**
 * Builds a "power of two choices" picker: it draws two different endpoints at
 * random and takes the one with fewer calls in flight (`context.inflight`,
 * which `dial()` provides), so a slow instance, whose calls pile up, gets fewer
 * new ones. Without `inflight` it is uniform random. O(1) per pick.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { p2c } from "@seed/grpc-etcd";
 * const busy = new Map([["a:1", 5], ["b:1", 0]]);
 * const pick = p2c([{ addr: "a:1" }, { addr: "b:1" }], { inflight: (e) => busy.get(e.addr) ?? 0 });
 * assert.equal(pick()?.addr, "b:1");
 * ```
 *
 * @param endpoints the endpoints
 * @param context the calls in flight per endpoint
 * @param options the random source
 * @returns the picker
 */
export function p2c(
  endpoints: readonly Endpoint[],
  context?: BalancerContext,
  options: RandomOptions = {},
): Picker {
  const items = endpoints.slice();
  const n = items.length;
  const rng = options.random ?? xorshift();
  const inflight = context?.inflight;
  if (n === 0) return () => undefined;
  if (n === 1 || !inflight) return () => items[Math.floor(rng() * n)];
  return () => {
    const i = Math.floor(rng() * n);
    let j = Math.floor(rng() * (n - 1));
    if (j >= i) j++;
    const a = items[i]!;
    const b = items[j]!;
    return inflight(b) < inflight(a) ? b : a;
  };
}
