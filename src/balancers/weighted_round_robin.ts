/**
 * Smooth weighted round robin. Pure.
 *
 * @module
 */
import type { Endpoint } from "../endpoint.ts";
import type { BalancerContext, Picker } from "./balancer.ts";
import { show } from "./_arguments.ts";

const GOLDEN = 0.6180339887498949;
/** Periods up to this many picks are recorded and replayed (8 MiB of references). */
const MAX_RECORD = 1 << 20;

/** Reads `metadata.weight`: a positive safe integer, else `undefined`. */
function weightOf(endpoint: Endpoint): number | undefined {
  const weight = (endpoint.metadata as { weight?: unknown } | null | undefined)?.weight;
  return typeof weight === "number" && Number.isSafeInteger(weight) && weight > 0
    ? weight
    : undefined;
}

/**
 * Builds a picker that gives each endpoint a share of picks proportional to its
 * `metadata.weight` (a positive integer; missing means 1; anything else falls
 * back to 1 and is reported through `context.report`). Over every run of
 * `sum(weights)` picks each endpoint is picked exactly `weight` times, spread
 * out rather than in bursts: picks follow earliest-deadline-first order, the
 * k-th pick of an endpoint due at `(k - 1 + φ) / weight` within a period, with
 * phases φ in (0, 1] spread by the golden ratio so that light endpoints fall
 * between a heavy one's picks instead of all together.
 *
 * Building is O(n); a pick is O(log n) during the first period and O(1) after
 * (the first period's order is recorded, for periods of up to 2^20 picks).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { weightedRoundRobin } from "@seed/grpc-etcd";
 * const pick = weightedRoundRobin([
 *   { addr: "a:1", metadata: { weight: 3 } },
 *   { addr: "b:1" },
 * ]);
 * assert.deepEqual([1, 2, 3, 4].map(() => pick()?.addr), ["a:1", "b:1", "a:1", "a:1"]);
 * ```
 *
 * @param endpoints the endpoints, with optional `metadata.weight`
 * @param context where invalid weights are reported
 * @returns the picker
 * @throws {TypeError} when `endpoints` is not an array (weightedRoundRobin takes
 *   no options: it is a {@linkcode Balancer} as it is)
 */
export function weightedRoundRobin(
  endpoints: readonly Endpoint[],
  context?: BalancerContext,
): Picker {
  if (!Array.isArray(endpoints)) {
    throw new TypeError(
      `weightedRoundRobin: endpoints must be an array (it takes no options; weights come from metadata.weight), got ${
        show(endpoints)
      }`,
    );
  }
  const n = endpoints.length;
  if (n === 0) return () => undefined;
  const items = endpoints.slice();
  const weights = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const endpoint = items[i]!;
    const weight = weightOf(endpoint);
    const raw = (endpoint.metadata as { weight?: unknown } | null | undefined)?.weight;
    if (weight === undefined && raw !== undefined) {
      context?.report?.(
        new RangeError(
          `weightedRoundRobin: ${endpoint.addr} has metadata.weight ${JSON.stringify(raw)}; ` +
            "a weight must be a positive integer, so 1 is used",
        ),
      );
    }
    weights[i] = weight ?? 1;
    total += weights[i]!;
  }
  // Item i's k-th pick (k from 1) is due at (k - 1 + phase[i]) / weight[i] in a period of
  // length 1; next[i] holds the numerator. Compare a/b < c/d as a*d < c*b.
  const phase = new Float64Array(n);
  for (let i = 0; i < n; i++) phase[i] = 1 - ((i * GOLDEN) % 1);
  const next = new Float64Array(n);
  const heap = new Int32Array(n);
  const before = (i: number, j: number): boolean => {
    const left = next[i]! * weights[j]!;
    const right = next[j]! * weights[i]!;
    return left < right || (left === right && i < j);
  };
  const down = (start: number): void => {
    let at = start;
    while (true) {
      const l = 2 * at + 1;
      const r = l + 1;
      let best = at;
      if (l < n && before(heap[l]!, heap[best]!)) best = l;
      if (r < n && before(heap[r]!, heap[best]!)) best = r;
      if (best === at) return;
      const swap = heap[at]!;
      heap[at] = heap[best]!;
      heap[best] = swap;
      at = best;
    }
  };
  const reset = (): void => {
    for (let i = 0; i < n; i++) {
      next[i] = phase[i]!;
      heap[i] = i;
    }
    for (let i = (n >> 1) - 1; i >= 0; i--) down(i);
  };
  reset();
  // The first period runs on the heap and records its order; later periods replay
  // the record, so picks become O(1) (unless the period is too long to record).
  // The record holds the endpoints themselves: one load per replayed pick.
  const record: Endpoint[] | undefined = total <= MAX_RECORD ? [] : undefined;
  let picked = 0;
  let replaying = false;
  return () => {
    if (picked === total) {
      picked = 0;
      if (record) replaying = true;
      else reset();
    }
    if (replaying) return record![picked++];
    const top = heap[0]!;
    record?.push(items[top]!);
    picked++;
    next[top] = next[top]! + 1;
    down(0);
    return items[top];
  };
}
