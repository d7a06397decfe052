/**
 * Uniform random choice, and power of two choices. Pure: randomness is passed in.
 *
 * @module
 */
import type { Endpoint } from "../endpoint.ts";
import type { Balancer, BalancerContext, Picker } from "./balancer.ts";
import {
  checkEndpoints,
  checkFields,
  checkFunction,
  isEndpointList,
  noOptionsAfterContext,
} from "./_arguments.ts";

/** Options of {@linkcode random} and {@linkcode p2c}. */
export interface RandomOptions {
  /**
   * A source of numbers in [0, 1). Default: a xorshift32 generator seeded from
   * `Math.random` (fast; fine for spreading load, not for secrets).
   */
  readonly random?: () => number;
}

/** The fields of {@linkcode RandomOptions}. */
const FIELDS = ["random"] as const;

/** The random source of checked options, `undefined` for the built-in generator. */
function sourceOf(name: string, options: RandomOptions): (() => number) | undefined {
  checkFields(name, options, FIELDS);
  checkFunction(name, "random", options.random);
  return options.random;
}

/** A seed for xorshift32 (never 0). */
function seed(): number {
  return (Math.random() * 0xffffffff) >>> 0 || 0x9e3779b9;
}

/** 2^-32: turns 32 random bits into [0, 1). */
const TO_UNIT = 2.3283064365386963e-10;

/**
 * Makes a uniform random balancer that draws from `options.random`: the result
 * is a {@linkcode Balancer}, to pass as `dial`'s `balancer`. Without options,
 * pass `random` itself (see the other form).
 *
 * @example A seeded source, for tests
 * ```ts
 * import assert from "node:assert/strict";
 * import { type Balancer, random } from "@seed/grpc-etcd";
 * const balancer: Balancer = random({ random: () => 0.75 });
 * assert.equal(balancer([{ addr: "a:1" }, { addr: "b:1" }])()?.addr, "b:1");
 * assert.throws(() => random({ random: 0.75 } as never), TypeError);
 * ```
 *
 * @param options the random source
 * @returns a balancer that builds random pickers drawing from that source
 * @throws {TypeError} when `options` has an unknown field or `random` is not a function
 */
export function random(options: RandomOptions): Balancer;
/**
 * Builds a picker that chooses an endpoint uniformly at random (with a
 * xorshift32 generator; see the form with options for another source). O(1)
 * per pick. This form is a {@linkcode Balancer} itself.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type Balancer, random } from "@seed/grpc-etcd";
 * const endpoints = [{ addr: "a:1" }, { addr: "b:1" }];
 * const pick = random(endpoints);
 * assert.ok(endpoints.includes(pick()!));
 * const balancer: Balancer = random; // as dial's `balancer`
 * assert.equal(balancer([])(), undefined);
 * ```
 *
 * @param endpoints the endpoints
 * @param context unused
 * @returns the picker
 * @throws {TypeError} when `endpoints` is neither an array nor an options object
 */
export function random(endpoints: readonly Endpoint[], context?: BalancerContext): Picker;
export function random(
  first: readonly Endpoint[] | RandomOptions,
  _context?: BalancerContext,
  ...extra: unknown[]
): Picker | Balancer {
  noOptionsAfterContext("random", extra);
  if (isEndpointList("random", first, FIELDS)) return randomPicker(first, undefined);
  const source = sourceOf("random", first);
  return (endpoints: readonly Endpoint[]) =>
    randomPicker(checkEndpoints("random", endpoints), source);
}

/** A uniform random picker over `endpoints`, drawing from `source` or xorshift32. */
function randomPicker(
  endpoints: readonly Endpoint[],
  source: (() => number) | undefined,
): Picker {
  const items = endpoints.slice();
  const n = items.length;
  if (n === 0) return () => undefined;
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
 * Makes a "power of two choices" balancer that draws from `options.random`:
 * the result is a {@linkcode Balancer}, to pass as `dial`'s `balancer`. Without
 * options, pass `p2c` itself (see the other form).
 *
 * @example A seeded source, for tests
 * ```ts
 * import assert from "node:assert/strict";
 * import { type Balancer, p2c } from "@seed/grpc-etcd";
 * let draw = 0;
 * const balancer: Balancer = p2c({ random: () => [0.1, 0.9][draw++ % 2]! });
 * const busy = new Map([["a:1", 5], ["b:1", 0]]);
 * const pick = balancer([{ addr: "a:1" }, { addr: "b:1" }], {
 *   inflight: (e) => busy.get(e.addr) ?? 0,
 * });
 * assert.equal(pick()?.addr, "b:1");
 * assert.throws(() => p2c({ seed: 1 } as never), TypeError);
 * ```
 *
 * @param options the random source
 * @returns a balancer that builds p2c pickers drawing from that source
 * @throws {TypeError} when `options` has an unknown field or `random` is not a function
 */
export function p2c(options: RandomOptions): Balancer;
/**
 * Builds a "power of two choices" picker: it draws two different endpoints at
 * random and takes the one with fewer calls in flight (`context.inflightAt` or
 * `context.inflight`, integers, which `dial()` provides), so a slow instance,
 * whose calls pile up, gets fewer new ones. Without either it is uniform
 * random. O(1) per pick. This form is a {@linkcode Balancer} itself.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type Balancer, p2c } from "@seed/grpc-etcd";
 * const busy = new Map([["a:1", 5], ["b:1", 0]]);
 * const pick = p2c([{ addr: "a:1" }, { addr: "b:1" }], { inflight: (e) => busy.get(e.addr) ?? 0 });
 * assert.equal(pick()?.addr, "b:1");
 * const balancer: Balancer = p2c; // as dial's `balancer`
 * assert.equal(balancer([])(), undefined);
 * ```
 *
 * @param endpoints the endpoints
 * @param context the calls in flight per endpoint
 * @returns the picker
 * @throws {TypeError} when `endpoints` is neither an array nor an options object
 */
export function p2c(endpoints: readonly Endpoint[], context?: BalancerContext): Picker;
export function p2c(
  first: readonly Endpoint[] | RandomOptions,
  context?: BalancerContext,
  ...extra: unknown[]
): Picker | Balancer {
  noOptionsAfterContext("p2c", extra);
  if (isEndpointList("p2c", first, FIELDS)) return p2cPicker(first, context, undefined);
  const source = sourceOf("p2c", first);
  return (endpoints: readonly Endpoint[], context?: BalancerContext) =>
    p2cPicker(checkEndpoints("p2c", endpoints), context, source);
}

/** A p2c picker over `endpoints`, drawing from `source` or xorshift32. */
function p2cPicker(
  endpoints: readonly Endpoint[],
  context: BalancerContext | undefined,
  source: (() => number) | undefined,
): Picker {
  const items = endpoints.slice();
  const n = items.length;
  if (n === 0) return () => undefined;
  const inflightAt = context?.inflightAt;
  const inflight = context?.inflight;
  if (n === 1 || (!inflightAt && !inflight)) return randomPicker(items, source);
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
