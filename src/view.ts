/**
 * Folding update batches into a view, and the difference between two views. Pure.
 *
 * @module
 */
import type { Endpoint, Update } from "./endpoint.ts";

/**
 * Applies a batch of updates to a view and returns the new view; the input is
 * not changed. An add replaces any endpoint under the same key; a delete of an
 * absent key does nothing.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { applyUpdates } from "@seed/grpc-etcd";
 * const view = applyUpdates(new Map(), [
 *   { op: "add", key: "svc/a:1", endpoint: { addr: "a:1" } },
 *   { op: "add", key: "svc/b:1", endpoint: { addr: "b:1" } },
 *   { op: "delete", key: "svc/a:1" },
 * ]);
 * assert.deepEqual([...view.keys()], ["svc/b:1"]);
 * ```
 *
 * @param view the current view, keyed by etcd key
 * @param batch the updates, in order
 * @returns a new map holding the result
 */
export function applyUpdates(
  view: ReadonlyMap<string, Endpoint>,
  batch: readonly Update[],
): Map<string, Endpoint> {
  return applyUpdatesInPlace(new Map(view), batch);
}

function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * The updates that turn one view into another: deletes for keys that left, adds
 * for keys that are new or whose endpoint changed. `applyUpdates(from, diffViews(from, to))`
 * equals `to`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { diffViews } from "@seed/grpc-etcd";
 * const before = new Map([["k1", { addr: "a:1" }], ["k2", { addr: "b:1" }]]);
 * const after = new Map([["k2", { addr: "b:1" }], ["k3", { addr: "c:1" }]]);
 * assert.deepEqual(diffViews(before, after), [
 *   { op: "delete", key: "k1" },
 *   { op: "add", key: "k3", endpoint: { addr: "c:1" } },
 * ]);
 * ```
 *
 * @param from the view a consumer has
 * @param to the view it should have
 * @returns the updates, deletes first
 */
export function diffViews(
  from: ReadonlyMap<string, Endpoint>,
  to: ReadonlyMap<string, Endpoint>,
): Update[] {
  const updates: Update[] = [];
  for (const key of from.keys()) {
    if (!to.has(key)) updates.push({ op: "delete", key });
  }
  for (const [key, endpoint] of to) {
    const old = from.get(key);
    if (!old || old.addr !== endpoint.addr || !sameJson(old.metadata, endpoint.metadata)) {
      updates.push({ op: "add", key, endpoint });
    }
  }
  return updates;
}

/**
 * Applies a batch of updates to a view in place, in O(batch) time: for large
 * views whose owner does not share them ({@linkcode applyUpdates} copies the
 * whole view, O(n)).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { applyUpdatesInPlace, type Endpoint } from "@seed/grpc-etcd";
 * const view = new Map<string, Endpoint>();
 * applyUpdatesInPlace(view, [{ op: "add", key: "svc/a:1", endpoint: { addr: "a:1" } }]);
 * assert.equal(view.size, 1);
 * ```
 *
 * @param view the view to change
 * @param batch the updates, in order
 * @returns the same map
 */
export function applyUpdatesInPlace(
  view: Map<string, Endpoint>,
  batch: readonly Update[],
): Map<string, Endpoint> {
  for (const update of batch) {
    if (update.op === "add") view.set(update.key, update.endpoint);
    else view.delete(update.key);
  }
  return view;
}
