/**
 * dial()'s selection as pure functions: the filter check and the preference
 * for the local zone with its panic threshold.
 */
import assert from "node:assert/strict";
import type { Endpoint } from "../mod.ts";
import { accepts, checkLocality, preferZone, zoneOf } from "../src/grpc/selection.ts";

const instance = (addr: string, zone?: string) => ({
  endpoint: { addr, metadata: zone === undefined ? undefined : { zone } } as Endpoint,
});

Deno.test("preferZone: the local zone's ready instances while at least minReady are, else every zone's", () => {
  const a1 = instance("a1:1", "a"), a2 = instance("a2:1", "a"), a3 = instance("a3:1", "a");
  const b1 = instance("b1:1", "b"), none = instance("n:1");
  const all = [a1, a2, a3, b1, none];
  // Default minReady: a third of the zone's 3 instances = 1.
  assert.deepEqual(preferZone([a2, b1, none], all, { zone: "a" }), {
    chosen: [a2],
    local: true,
    localReady: 1,
    localTotal: 3,
    minReady: 1,
  });
  assert.deepEqual(preferZone([b1, none], all, { zone: "a" }).chosen, [b1, none]);
  assert.equal(preferZone([a1, b1], all, { zone: "a", minReady: 2 }).local, false);
  assert.deepEqual(preferZone([a1, a3, b1], all, { zone: "a", minReady: 2 }).chosen, [a1, a3]);
  // No instance in the zone at all: every zone.
  assert.deepEqual(preferZone([a1, b1], all, { zone: "c" }), {
    chosen: [a1, b1],
    local: false,
    localReady: 0,
    localTotal: 0,
    minReady: 1,
  });
  // Six in the zone: two must be ready.
  const six = Array.from({ length: 6 }, (_, i) => instance(`z${i}:1`, "z"));
  assert.equal(preferZone(six.slice(0, 1), six, { zone: "z" }).local, false);
  assert.equal(preferZone(six.slice(0, 2), six, { zone: "z" }).local, true);
  assert.equal(zoneOf({ addr: "x:1", metadata: "z" }), undefined);
});

Deno.test("checkLocality and accepts: errors name the field and value; a throwing filter leaves the endpoint out", () => {
  assert.deepEqual(checkLocality({ zone: "a" }), { zone: "a", minReady: undefined });
  assert.equal(checkLocality(undefined), undefined);
  assert.throws(
    () => checkLocality("a"),
    /options\.locality must be an object \{ zone, minReady\? \}, got "a"/,
  );
  assert.throws(
    () => checkLocality({ zone: "" }),
    /options\.locality\.zone must be a non-empty string, got ""/,
  );
  assert.throws(() => checkLocality({ zone: "a", minReady: 0 }), RangeError);
  assert.throws(
    () => checkLocality({ zone: "a", minReady: 1.5 }),
    /minReady must be an integer of at least 1, got 1.5/,
  );
  assert.throws(() => checkLocality({ zone: "a", min: 1 }), /options\.locality has no field "min"/);
  const reports: string[] = [];
  const report = (error: Error) => reports.push(error.message);
  const v2 = (e: Endpoint) => (e.metadata as { version?: string } | undefined)?.version === "2";
  assert.equal(accepts(v2, { addr: "a:1", metadata: { version: "2" } }, report), true);
  assert.equal(accepts(v2, { addr: "b:1", metadata: { version: "1" } }, report), false);
  const boom = () => {
    throw new Error("boom");
  };
  assert.equal(accepts(boom, { addr: "c:1" }, report), false);
  assert.deepEqual(reports, ["options.filter threw for the endpoint c:1: boom; it gets no calls"]);
});
