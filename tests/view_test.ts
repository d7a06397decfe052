import assert from "node:assert/strict";
import { applyUpdates, diffViews, type Endpoint, type Update } from "../mod.ts";

Deno.test("applyUpdates() folds a batch in order without changing its input", () => {
  const before = new Map<string, Endpoint>([["k1", { addr: "a:1" }]]);
  const after = applyUpdates(before, [
    { op: "add", key: "k2", endpoint: { addr: "b:1" } },
    { op: "delete", key: "k1" },
    { op: "add", key: "k2", endpoint: { addr: "b:2" } },
    { op: "delete", key: "absent" },
  ]);
  assert.deepEqual([...after], [["k2", { addr: "b:2" }]]);
  assert.deepEqual([...before], [["k1", { addr: "a:1" }]]);
});

Deno.test("diffViews() turns any view into any other (200 random pairs)", () => {
  let seed = 7;
  const random = () => (seed = (seed * 48271) % 2147483647) / 2147483647;
  const randomView = () => {
    const view = new Map<string, Endpoint>();
    for (let i = 0; i < 20; i++) {
      if (random() < 0.5) {
        view.set(`k${i}`, {
          addr: `h${i}:${1 + Math.floor(random() * 3)}`,
          metadata: random() < 0.5 ? { w: Math.floor(random() * 2) } : undefined,
        });
      }
    }
    return view;
  };
  for (let i = 0; i < 200; i++) {
    const from = randomView();
    const to = randomView();
    const diff: Update[] = diffViews(from, to);
    assert.deepEqual([...applyUpdates(from, diff)].sort(), [...to].sort());
    const deletes = diff.filter((u) => u.op === "delete").length;
    assert.equal(deletes, [...from.keys()].filter((k) => !to.has(k)).length);
    const unchanged = [...to].filter(([k, e]) =>
      JSON.stringify(from.get(k)) === JSON.stringify(e)
    ).length;
    assert.equal(diff.length - deletes, to.size - unchanged, "adds only for new or changed keys");
  }
});

Deno.test("diffViews() of equal views is empty", () => {
  const view = new Map([["k", { addr: "a:1", metadata: { x: [1] } }]]);
  assert.deepEqual(diffViews(view, new Map([["k", { addr: "a:1", metadata: { x: [1] } }]])), []);
});
