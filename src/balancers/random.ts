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

/** A seed for xorshift32 (never 0). */
function seed(): number {
  return (Math.random() * 0xffffffff) >>> 0 || 0x9e3779b9;
}

/** 2^-32: turns 32 random bits into [0, 1). */
const TO_UNIT = 2.3283064365386963e-10;

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
  if (n === 0) return () => undefined;
  const source = options.random;
  if (source) return () => items[Math.floor(source() * n)];
  // xorshift32 inline: pickers run per call, and a nested generator call costs more than it.
  let state = seed();
  const scale = n * TO_UNIT;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return items[Math.floor((state >>> 0) * scale)];
  };
}

/**
 * Builds a "power of two choices" picker: it draws two different endpoints at
 * random and takes the one with fewer calls in flight (`context.inflightAt` or
 * `context.inflight`, integers, which `dial()` provides), so a slow instance,
 * whose calls pile up, gets fewer new ones. Without either it is uniform
 * random. O(1) per pick.
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
  if (n === 0) return () => undefined;
  const inflightAt = context?.inflightAt;
  const inflight = context?.inflight;
  if (n === 1 || (!inflightAt && !inflight)) return random(items, undefined, options);
  const source = options.random;
  // Two different indexes, uniform over the n(n-1) ordered pairs: j is i + 1 + k (k < n - 1)
  // wrapped below n. Then the less loaded of the two (i on a tie). Branch-free: both are
  // coin flips a CPU cannot predict.
  if (!source && inflightAt) {
    // The path dial() takes: two xorshift32 states (the draws run in parallel), counts by index.
    let s1 = seed();
    let s2 = seed();
    const first = n * TO_UNIT;
    const second = (n - 1) * TO_UNIT;
    return () => {
      s1 ^= s1 << 13;
      s1 ^= s1 >>> 17;
      s1 ^= s1 << 5;
      s2 ^= s2 << 13;
      s2 ^= s2 >>> 17;
      s2 ^= s2 << 5;
      const i = ((s1 >>> 0) * first) | 0;
      let j = i + 1 + (((s2 >>> 0) * second) | 0);
      j -= n & ((n - 1 - j) >> 31);
      return items[i ^ ((i ^ j) & ((inflightAt(j) - inflightAt(i)) >> 31))];
    };
  }
  const draw = source ?? (() => Math.random());
  const load = inflightAt ?? ((index: number) => inflight!(items[index]!));
  return () => {
    const i = Math.floor(draw() * n);
    let j = i + 1 + Math.floor(draw() * (n - 1));
    j -= n & ((n - 1 - j) >> 31);
    return items[i ^ ((i ^ j) & ((load(j) - load(i)) >> 31))];
  };
}
