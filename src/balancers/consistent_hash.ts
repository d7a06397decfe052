/**
 * Consistent hashing on a ring of virtual nodes. Pure.
 *
 * @module
 */
import type { Endpoint } from "../endpoint.ts";
import type { BalancerContext, Picker, PickInfo } from "./balancer.ts";

/** Options of {@linkcode consistentHash}. */
export interface ConsistentHashOptions {
  /** The request metadata header whose value is the routing key. Default `"x-hash-key"`. */
  readonly header?: string;
  /** Computes the routing key of a call instead of `header`. */
  readonly key?: (info: PickInfo) => string | undefined;
  /**
   * Points on the ring per endpoint. Default 100, lowered for large lists so the
   * ring stays near 100,000 points (10 per endpoint at least).
   */
  readonly replicas?: number;
}

const MAX_POINTS = 2 ** 21;
const RADIX_BITS = 11;
const RADIX = 1 << RADIX_BITS;

/**
 * 32-bit FNV-1a over UTF-16 code units, with murmur3's final avalanche (fmix32).
 * Exported for the picker benchmark (not from `mod.ts`).
 */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return fmix32(h);
}

/** murmur3's 32-bit finaliser: a bijection in which every input bit flips half the output bits. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * The indexes of `keys` in ascending order of key, equal keys in index order: an LSD radix
 * sort in three passes of 11 bits (counts that fit in L1, cheap for short lists too).
 */
function radixOrder(keys: Uint32Array): Uint32Array {
  const size = keys.length;
  let from = new Uint32Array(size);
  for (let i = 0; i < size; i++) from[i] = i;
  let to = new Uint32Array(size);
  const counts = new Uint32Array(RADIX);
  for (let shift = 0; shift < 32; shift += RADIX_BITS) {
    counts.fill(0);
    for (let i = 0; i < size; i++) counts[(keys[i]! >>> shift) & (RADIX - 1)]!++;
    for (let b = 0, sum = 0; b < RADIX; b++) {
      const count = counts[b]!;
      counts[b] = sum;
      sum += count;
    }
    for (let i = 0; i < size; i++) {
      const index = from[i]!;
      to[counts[(keys[index]! >>> shift) & (RADIX - 1)]!++] = index;
    }
    [from, to] = [to, from];
  }
  return from;
}

/**
 * Builds a picker that routes every call with the same key to the same
 * endpoint while the set of endpoints is unchanged, and when one of n endpoints
 * joins or leaves, moves only about 1/n of the keys (those of that endpoint).
 * The key comes from `options.key`, else from the request header
 * `options.header`; calls without a key go round robin. Ring positions derive
 * from `addr`, so every client builds the same ring.
 *
 * Building is O(n·r) for r replicas (n address hashes and a radix sort); each
 * pick is O(log(n·r)), and a few steps in practice (an index by the top bits
 * narrows the search).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { consistentHash } from "@seed/grpc-etcd";
 * const endpoints = [{ addr: "a:1" }, { addr: "b:1" }, { addr: "c:1" }];
 * const pick = consistentHash(endpoints, undefined, { key: (info) => info.header("user") });
 * const call = (user: string) => ({ method: "/x.Y/Z", header: (n: string) => n === "user" ? user : undefined });
 * assert.equal(pick(call("alice"))?.addr, pick(call("alice"))?.addr);
 * ```
 *
 * @param endpoints the endpoints
 * @param _context unused
 * @param options where the key comes from, and the ring's resolution
 * @returns the picker
 * @throws {RangeError} when `replicas` is not a positive integer
 */
export function consistentHash(
  endpoints: readonly Endpoint[],
  _context?: BalancerContext,
  options: ConsistentHashOptions = {},
): Picker {
  const replicas = options.replicas ??
    Math.max(10, Math.min(100, Math.ceil(100_000 / Math.max(1, endpoints.length))));
  if (!Number.isInteger(replicas) || replicas < 1 || replicas > 10_000) {
    throw new RangeError(`options.replicas must be an integer from 1 to 10000, got ${replicas}`);
  }
  if (endpoints.length * replicas >= MAX_POINTS) {
    throw new RangeError(
      `consistentHash supports up to ${
        MAX_POINTS - 1
      } ring points; ${endpoints.length} endpoints × ${replicas} replicas is more`,
    );
  }
  const header = (options.header ?? "x-hash-key").toLowerCase();
  const keyOf = options.key ?? ((info: PickInfo) => info.header(header));
  const items = endpoints.slice();
  const n = items.length;
  if (n === 0) return () => undefined;
  const size = n * replicas;
  // Point r of endpoint i: its address hashed once, then a distinct odd step per replica mixed
  // by fmix32 (a bijection), so building hashes n strings rather than n·r.
  const points = new Uint32Array(size);
  for (let i = 0; i < n; i++) {
    const base = hash32(items[i]!.addr);
    for (let r = 0; r < replicas; r++) {
      points[i * replicas + r] = fmix32((base + Math.imul(2 * r + 1, 0x9e3779b9)) | 0);
    }
  }
  // Sort the slots by point with a stable radix sort (ties stay in slot order).
  const slots = radixOrder(points);
  // Point p's position at ring[2p] and its owner's index at ring[2p + 1]: a lookup reads
  // one cache line, not one in each of two arrays.
  const ring = new Uint32Array(2 * size);
  for (let p = 0; p < size; p++) {
    const slot = slots[p]!;
    ring[2 * p] = points[slot]!;
    ring[2 * p + 1] = (slot / replicas) | 0;
  }
  // An index by the top bits of a hash (about one ring point per bucket, at most 2^16
  // buckets) narrows each lookup to a few ring points.
  const bits = Math.min(16, Math.max(4, Math.ceil(Math.log2(size))));
  const shift = 32 - bits;
  const buckets = new Uint32Array((1 << bits) + 1);
  for (let p = 0; p < size; p++) buckets[(ring[2 * p]! >>> shift) + 1]!++;
  for (let b = 1; b < buckets.length; b++) buckets[b]! += buckets[b - 1]!;
  let next = 0;
  return (info) => {
    const key = info ? keyOf(info) : undefined;
    if (key === undefined) {
      const item = items[next];
      next = next + 1 === n ? 0 : next + 1;
      return item;
    }
    const h = hash32(key);
    const b = h >>> shift;
    let lo = buckets[b]!;
    let hi = buckets[b + 1]!;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (ring[2 * mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    return items[ring[lo === size ? 1 : 2 * lo + 1]!];
  };
}
