/**
 * Consistent hashing on a ring of virtual nodes, with a lookup table for O(1) picks. Pure.
 *
 * @module
 */
import type { Endpoint } from "../endpoint.ts";
import type { Balancer, BalancerContext, Picker, PickInfo } from "./balancer.ts";
import {
  checkEndpoints,
  checkFields,
  checkFunction,
  isEndpointList,
  noOptionsAfterContext,
  show,
} from "./_arguments.ts";

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
/** Lookup table slots per ring point, at least (see `build`). */
const SLOTS_PER_POINT = 4;
/** The most slots a lookup table has, as a power of two. */
const MAX_TABLE_BITS = 21;
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
 * Makes a consistent-hashing balancer with options: the result is a
 * {@linkcode Balancer}, to pass as `dial`'s `balancer`. Without options, pass
 * `consistentHash` itself (see the other form).
 *
 * @example Routing by the "x-user" header
 * ```ts
 * import assert from "node:assert/strict";
 * import { type Balancer, consistentHash } from "@seed/grpc-etcd";
 * const balancer: Balancer = consistentHash({ header: "x-user" });
 * const pick = balancer([{ addr: "a:1" }, { addr: "b:1" }, { addr: "c:1" }]);
 * const call = (user: string) => ({
 *   method: "/x.Y/Z",
 *   header: (name: string) => (name === "x-user" ? user : undefined),
 * });
 * assert.equal(pick(call("alice"))?.addr, pick(call("alice"))?.addr);
 * assert.throws(() => consistentHash({ header: 42 } as never), TypeError);
 * ```
 *
 * @param options where the key comes from (`header`, or a `key` function), and
 *   the ring's resolution (`replicas`)
 * @returns a balancer that builds consistent-hashing pickers with those options
 * @throws {TypeError} when `options` has an unknown field, `header` is not a
 *   non-empty string or `key` not a function
 * @throws {RangeError} when `replicas` is not an integer from 1 to 10000
 */
export function consistentHash(options: ConsistentHashOptions): Balancer;
/**
 * Builds a picker that routes every call with the same key to the same
 * endpoint while the set of endpoints is unchanged. When one of n endpoints
 * leaves, only the keys it had move; when one joins, only the keys that now go
 * to it (about 1/n). The key comes from the request header `x-hash-key` (see
 * the form with options for another header or a key function); calls without a
 * key go round robin. Ring positions derive from `addr` alone (points at one
 * position go to the lowest `addr`), so every client builds the same ring from
 * the same set of addresses. This form is a {@linkcode Balancer} itself.
 *
 * The ring has `replicas` points per endpoint; a key belongs to the first point
 * at or after its 32-bit hash. A table splits the hash space into 2^k equal
 * ranges, 4 to 8 per point: a range with no point in it (78 to 88 % of them)
 * holds its owner, the others where their points start on the ring. So a pick
 * hashes the key once, reads one slot, and in a range with points compares the
 * hash with one or two of them: O(1), with the ring's exact answer. Building is
 * O(n·r + 2^k) for r replicas: n address hashes, a radix sort of the points and
 * one pass over the table. The table takes 8 bytes a slot (a reference each):
 * 16 KiB at 3 endpoints, 512 KiB at 100, 4 MiB at 10,000 with the default
 * `replicas`, next to 8 bytes per point for the ring.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type Balancer, consistentHash } from "@seed/grpc-etcd";
 * const pick = consistentHash([{ addr: "a:1" }, { addr: "b:1" }, { addr: "c:1" }]);
 * const call = (key: string) => ({
 *   method: "/x.Y/Z",
 *   header: (name: string) => (name === "x-hash-key" ? key : undefined),
 * });
 * assert.equal(pick(call("alice"))?.addr, pick(call("alice"))?.addr);
 * const balancer: Balancer = consistentHash; // as dial's `balancer`
 * assert.equal(balancer([])(), undefined);
 * ```
 *
 * @param endpoints the endpoints
 * @param context unused
 * @returns the picker
 * @throws {TypeError} when `endpoints` is neither an array nor an options object
 * @throws {RangeError} when the ring would have 2^21 points or more (over 20,000
 *   endpoints at 100 replicas)
 */
export function consistentHash(
  endpoints: readonly Endpoint[],
  context?: BalancerContext,
): Picker;
export function consistentHash(
  first: readonly Endpoint[] | ConsistentHashOptions,
  _context?: BalancerContext,
  ...extra: unknown[]
): Picker | Balancer {
  noOptionsAfterContext("consistentHash", extra);
  if (isEndpointList("consistentHash", first, FIELDS)) return picker(first, DEFAULTS);
  const settings = settingsOf(first);
  return (endpoints: readonly Endpoint[]) =>
    picker(checkEndpoints("consistentHash", endpoints), settings);
}

/** The fields of {@linkcode ConsistentHashOptions}. */
const FIELDS = ["header", "key", "replicas"] as const;

/** Checked options: how to find a call's key, and `replicas` when given. */
interface Settings {
  readonly keyOf: (info: PickInfo) => string | undefined;
  readonly replicas: number | undefined;
}

function checkReplicas(replicas: unknown): void {
  if (!Number.isInteger(replicas) || (replicas as number) < 1 || (replicas as number) > 10_000) {
    throw new RangeError(
      `consistentHash: options.replicas must be an integer from 1 to 10000, got ${show(replicas)}`,
    );
  }
}

function settingsOf(options: ConsistentHashOptions): Settings {
  checkFields("consistentHash", options, FIELDS);
  const { header = "x-hash-key", key, replicas } = options;
  if (typeof header !== "string" || header === "") {
    throw new TypeError(
      `consistentHash: options.header must be a non-empty string, got ${show(header)}`,
    );
  }
  checkFunction("consistentHash", "key", key);
  if (replicas !== undefined) checkReplicas(replicas);
  const name = header.toLowerCase();
  return { keyOf: key ?? ((info: PickInfo) => info.header(name)), replicas };
}

/** The default options: one key function shared by every picker they build. */
const DEFAULTS: Settings = settingsOf({});

/** A consistent-hashing picker over `endpoints` (see {@linkcode consistentHash}). */
function picker(endpoints: readonly Endpoint[], settings: Settings): Picker {
  const replicas = settings.replicas ??
    Math.max(10, Math.min(100, Math.ceil(100_000 / Math.max(1, endpoints.length))));
  if (endpoints.length * replicas >= MAX_POINTS) {
    throw new RangeError(
      `consistentHash supports up to ${
        MAX_POINTS - 1
      } ring points; ${endpoints.length} endpoints × ${replicas} replicas is more`,
    );
  }
  const keyOf = settings.keyOf;
  const items = endpoints.slice();
  const n = items.length;
  if (n === 0) return () => undefined;
  const { ring, table, shift } = build(items, replicas);
  let next = 0;
  return (info) => {
    const key = info ? keyOf(info) : undefined;
    if (key === undefined) {
      const item = items[next];
      next = next + 1 === n ? 0 : next + 1;
      return item;
    }
    const h = hash32(key);
    const slot = table[h >>> shift]!;
    if (typeof slot !== "number") return slot;
    // The range has points, the first at ring index ~slot: the key belongs to the first
    // point at or after h (a sentinel at 2^32 − 1 ends the ring with the first point's owner).
    let p = ~slot;
    while (ring[2 * p]! < h) p++;
    return items[ring[2 * p + 1]!];
  };
}

/**
 * The ring and its lookup table, for endpoints `items` with `replicas` points each.
 *
 * `ring` holds point p's position at `2p` and its owner's index at `2p + 1` (a scan reads one
 * cache line, not one in each of two arrays), in ascending order of position, then a sentinel
 * at 2^32 − 1 owned by the first point's owner, where a hash past the last point wraps.
 *
 * `table` splits the hash space into 2^k ranges; slot b covers [b·2^(32−k), (b+1)·2^(32−k))
 * and `shift` is 32 − k. When no point lies in a range, every hash in it belongs to the first
 * point after it, whose endpoint the slot holds. Otherwise the slot holds ~p (a negative
 * number) for p the first point in the range.
 *
 * Size: 2^k is the smallest power of two with at least 4 slots per point (so 4 to 8). A hash
 * lands in a range with points, and pays a mispredicted branch and a compare or two, with
 * probability 1 − e^(−points/2^k): 12–22 %. The slots hold endpoints rather than their
 * indexes because a pick then reads one array less: at 10,000 endpoints that is a tenth of a
 * pick, where 8 to 16 slots per point would gain a twenty-fifth for twice the memory and a
 * quarter more build time (measured against each other in one process). At most 2^21 slots
 * (16 MiB); rings that large have under 4 slots per point, and more slow picks.
 */
function build(
  items: readonly Endpoint[],
  replicas: number,
): { ring: Uint32Array; table: (Endpoint | number)[]; shift: number } {
  const n = items.length;
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
  const order = radixOrder(points);
  const ring = new Uint32Array(2 * size + 2);
  for (let p = 0; p < size;) {
    // Points at one position (rare) all go to the lowest addr among them, so that the
    // answer does not depend on the order of the list.
    const at = points[order[p]!]!;
    let owner = (order[p]! / replicas) | 0;
    let end = p + 1;
    for (; end < size && points[order[end]!] === at; end++) {
      const other = (order[end]! / replicas) | 0;
      if (items[other]!.addr < items[owner]!.addr) owner = other;
    }
    for (; p < end; p++) {
      ring[2 * p] = at;
      ring[2 * p + 1] = owner;
    }
  }
  ring[2 * size] = 0xffffffff;
  ring[2 * size + 1] = ring[1]!;
  const bits = Math.min(MAX_TABLE_BITS, Math.ceil(Math.log2(size * SLOTS_PER_POINT)));
  const shift = 32 - bits;
  const slots = 2 ** bits;
  const table: (Endpoint | number)[] = new Array(slots);
  let b = 0;
  for (let p = 0; p < size; p++) {
    const range = ring[2 * p]! >>> shift;
    if (range < b) continue;
    const owner = items[ring[2 * p + 1]!]!;
    while (b < range) table[b++] = owner;
    table[b++] = ~p;
  }
  const first = items[ring[1]!]!;
  while (b < slots) table[b++] = first;
  return { ring, table, shift };
}
