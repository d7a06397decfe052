/**
 * Draws the distribution of put → seen latency, `resolve()` over `connect()`
 * and over `connectFetch()` against a raw `etcd3` prefix watcher, as cumulative
 * curves in an SVG file. All three are measured in the same run on a real etcd
 * started here, alternating one sample of each so that all see the same
 * conditions.
 *
 *   deno task bench:chart            # writes bench/watch_latency.svg
 *   deno task bench:chart 5000 out.svg
 *
 * @module
 */
import { Etcd3 } from "etcd3";
import { connect, encodeEndpoint, resolve } from "../mod.ts";
import { connectFetch } from "../fetch.ts";
import { startEtcd } from "../harness/etcd_server.ts";

/** One curve: a name, a colour and its samples in milliseconds. */
export interface Series {
  readonly name: string;
  readonly color: string;
  readonly samples: readonly number[];
}

/** The `q` quantile (0–1) of ascending `sorted`, by nearest rank. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) throw new RangeError("quantile of no samples");
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

const escape = (text: string) => text.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);

/**
 * Renders cumulative distributions on a logarithmic time axis, from the fastest
 * sample to the 99.9th percentile of the slowest series. Pure.
 */
export function cdfSvg(series: readonly Series[], title: string): string {
  const width = 720, height = 400;
  const left = 60, right = 20, top = 40, bottom = 50;
  const sorted = series.map((s) => [...s.samples].sort((a, b) => a - b));
  const lo = Math.min(...sorted.map((s) => s[0]!));
  const hi = Math.max(...sorted.map((s) => quantile(s, 0.999)));
  const logLo = Math.log10(lo), logHi = Math.log10(Math.max(hi, lo * 1.01));
  const x = (ms: number) =>
    Math.round(
      10 * (left + (Math.log10(Math.min(Math.max(ms, lo), hi)) - logLo) / (logHi - logLo) *
          (width - left - right)),
    ) / 10;
  const y = (fraction: number) =>
    Math.round(10 * (top + (1 - fraction) * (height - top - bottom))) / 10;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14">${escape(title)}</text>`,
  ];
  // Grid: fractions on the left, powers of ten and their 2x and 5x on the bottom.
  for (const f of [0, 0.25, 0.5, 0.75, 0.9, 1]) {
    out.push(
      `<line x1="${left}" x2="${width - right}" y1="${y(f)}" y2="${y(f)}" stroke="#ddd"/>`,
      `<text x="${left - 6}" y="${y(f) + 4}" text-anchor="end">${f}</text>`,
    );
  }
  for (let decade = Math.floor(logLo); decade <= Math.ceil(logHi); decade++) {
    for (const m of [1, 2, 5]) {
      const ms = m * 10 ** decade;
      if (ms < lo || ms > hi) continue;
      const label = ms >= 1 ? `${ms} ms` : `${Math.round(ms * 1000)} µs`;
      out.push(
        `<line x1="${x(ms)}" x2="${x(ms)}" y1="${top}" y2="${height - bottom}" stroke="#ddd"/>`,
        `<text x="${x(ms)}" y="${height - bottom + 16}" text-anchor="middle">${label}</text>`,
      );
    }
  }
  out.push(
    `<text x="${(left + width - right) / 2}" y="${
      height - 10
    }" text-anchor="middle">latency from put to update (log scale)</text>`,
    `<text x="14" y="${
      (top + height - bottom) / 2
    }" text-anchor="middle" transform="rotate(-90 14 ${
      (top + height - bottom) / 2
    })">fraction of samples at or below</text>`,
  );
  sorted.forEach((samples, s) => {
    const points = samples.map((ms, i) => `${x(ms)},${y((i + 1) / samples.length)}`);
    const { name, color } = series[s]!;
    const p50 = quantile(samples, 0.5), p99 = quantile(samples, 0.99);
    out.push(
      `<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.join(" ")}"/>`,
      // Bottom right: every curve is near 1 there.
      `<text x="${width - right - 10}" y="${
        height - bottom - 12 - 16 * (sorted.length - 1 - s)
      }" text-anchor="end" fill="${color}">${escape(name)}: p50 ${p50.toFixed(2)} ms, p99 ${
        p99.toFixed(2)
      } ms, n = ${samples.length}</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

if (import.meta.main) {
  const count = Number(Deno.args[0] ?? 2000);
  const file: string = Deno.args[1] ?? new URL("./watch_latency.svg", import.meta.url).pathname;
  if (!Number.isInteger(count) || count < 10) {
    throw new RangeError(`the sample count (first argument) must be an integer ≥ 10, got ${count}`);
  }
  await using server = await startEtcd();
  const raw = new Etcd3({ hosts: server.endpoint });
  await using reader = connect({ hosts: server.endpoint });
  await using fetchReader = connectFetch({ hosts: server.endpoint });
  try {
    let rawSeen: (() => void) | undefined;
    const watcher = await raw.watch().prefix("chart/raw/").create();
    watcher.on("put", () => rawSeen?.());
    const updates = resolve(reader, "chart/ours", { onError: () => {} });
    await updates.next();
    const overFetch = resolve(fetchReader, "chart/fetch", { onError: () => {} });
    await overFetch.next();
    const value = encodeEndpoint({ addr: "10.0.0.1:50051" });
    const rawMs: number[] = [], oursMs: number[] = [], fetchMs: number[] = [];
    // 100 unmeasured rounds warm both paths up.
    for (let i = -100; i < count; i++) {
      const seen = new Promise<void>((r) => (rawSeen = r));
      let start = performance.now();
      await raw.put(`chart/raw/${i % 100}`).value(value);
      await seen;
      if (i >= 0) rawMs.push(performance.now() - start);
      start = performance.now();
      await raw.put(`chart/ours/${i % 100}`).value(value);
      await updates.next();
      if (i >= 0) oursMs.push(performance.now() - start);
      start = performance.now();
      await raw.put(`chart/fetch/${i % 100}`).value(value);
      await overFetch.next();
      if (i >= 0) fetchMs.push(performance.now() - start);
    }
    await updates.return();
    await overFetch.return();
    await watcher.cancel();
    const ours: Series = { name: "resolve()", color: "#d62728", samples: oursMs };
    const overHttp: Series = {
      name: "resolve() over connectFetch()",
      color: "#2ca02c",
      samples: fetchMs,
    };
    const base: Series = { name: "raw etcd3 watcher", color: "#1f77b4", samples: rawMs };
    await Deno.writeTextFile(
      file,
      cdfSvg([base, ours, overHttp], `put → seen on one local etcd, ${count} samples each`),
    );
    const sorted = (ms: number[]) => ms.sort((a, b) => a - b);
    const [sortedRaw, sortedOurs, sortedFetch] = [sorted(rawMs), sorted(oursMs), sorted(fetchMs)];
    for (const q of [0.5, 0.9, 0.99]) {
      const a = quantile(sortedRaw, q), b = quantile(sortedOurs, q), c = quantile(sortedFetch, q);
      console.log(
        `p${q * 100}: raw ${a.toFixed(3)} ms, resolve() ${b.toFixed(3)} ms (${
          (b / a).toFixed(2)
        }x), over connectFetch() ${c.toFixed(3)} ms (${(c / a).toFixed(2)}x)`,
      );
    }
    console.log(`wrote ${file}`);
  } finally {
    raw.close();
  }
}
