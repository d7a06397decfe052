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

const SLOTS = 2 ** 21;
const BUCKETS = 1 << 16;

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
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Builds a picker that routes every call with the same key to the same
 * endpoint while the set of endpoints is unchanged, and when one of n endpoints
 * joins or leaves, moves only about 1/n of the keys (those of that endpoint).
 * The key comes from `options.key`, else from the request header
 * `options.header`; calls without a key go round robin. Ring positions derive
 * from `addr`, so every client builds the same ring.
 *
 * Building is O(n·r log(n·r)) for r replicas; each pick is O(log(n·r)).
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
  if (endpoints.length * replicas >= SLOTS) {
    throw new RangeError(
      `consistentHash supports up to ${
        SLOTS - 1
      } ring points; ${endpoints.length} endpoints × ${replicas} replicas is more`,
    );
  }
  const header = (options.header ?? "x-hash-key").toLowerCase();
  const keyOf = options.key ?? ((info: PickInfo) => info.header(header));
  const items = endpoints.slice();
  const n = items.length;
  if (n === 0) return () => undefined;
  const size = n * replicas;
  // Sort (point, owner) pairs natively: point × 2^21 + slot is exact below 2^53.
  const packed = new Float64Array(size);
  for (let i = 0; i < n; i++) {
    for (let r = 0; r < replicas; r++) {
      const slot = i * replicas + r;
      packed[slot] = hash32(`${items[i]!.addr}#${r}`) * SLOTS + slot;
    }
  }
  packed.sort();
  // Point p's position at ring[2p] and its owner's index at ring[2p + 1]: a lookup reads
  // one cache line, not one in each of two arrays.
  const ring = new Uint32Array(2 * size);
  for (let p = 0; p < size; p++) {
    const slot = packed[p]! % SLOTS;
    ring[2 * p] = (packed[p]! - slot) / SLOTS;
    ring[2 * p + 1] = Math.floor(slot / replicas);
  }
  // An index by the top 16 bits of a hash narrows each lookup to a few ring points.
  const buckets = new Uint32Array(BUCKETS + 1);
  for (let b = 0, p = 0; b <= BUCKETS; b++) {
    while (p < size && ring[2 * p]! >>> 16 < b) p++;
    buckets[b] = p;
  }
  let next = 0;
  return (info) => {
    const key = info ? keyOf(info) : undefined;
    if (key === undefined) {
      const item = items[next];
      next = next + 1 === n ? 0 : next + 1;
      return item;
    }
    const h = hash32(key);
    const b = h >>> 16;
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
