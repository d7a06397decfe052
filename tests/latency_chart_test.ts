import assert from "node:assert/strict";
import { cdfSvg, quantile } from "../bench/latency_chart.ts";

Deno.test("latency chart: quantiles by nearest rank", () => {
  const sorted = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  assert.equal(quantile(sorted, 0.5), 5);
  assert.equal(quantile(sorted, 0.9), 9);
  assert.equal(quantile(sorted, 0.99), 10);
  assert.equal(quantile(sorted, 0), 1);
  assert.throws(() => quantile([], 0.5), /quantile of no samples/);
});

Deno.test("latency chart: one cumulative curve per series, rising to 1, names escaped", () => {
  const svg = cdfSvg([
    { name: "a<b", color: "#111", samples: [3, 1, 2, 4] },
    { name: "c", color: "#222", samples: [2, 5, 8] },
  ], "t & u");
  const curves = [...svg.matchAll(/<polyline [^>]*stroke="(#\d+)"[^>]*points="([^"]+)"/g)];
  assert.deepEqual(curves.map((c) => c[1]), ["#111", "#222"]);
  for (const [i, n] of [[0, 4], [1, 3]] as const) {
    const points = curves[i]![2]!.split(" ").map((p) => p.split(",").map(Number));
    assert.equal(points.length, n);
    // x and y never go back: the samples are sorted and the fraction grows.
    for (let k = 1; k < n; k++) {
      assert.ok(points[k]![0]! >= points[k - 1]![0]!, `x of point ${k} of curve ${i}`);
      assert.ok(points[k]![1]! < points[k - 1]![1]!, `y of point ${k} of curve ${i}`);
    }
    assert.equal(points[n - 1]![1], 40, "the last point is at fraction 1 (the top)");
  }
  assert.match(svg, /a&#60;b: p50 2\.00 ms, p99 4\.00 ms, n = 4/);
  assert.match(svg, /t &#38; u/);
  assert.doesNotMatch(svg, /a<b|t & u/);
});
