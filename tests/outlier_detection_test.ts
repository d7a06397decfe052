/**
 * OutlierDetector: gRFC A50's sweeps over call counters, driven with explicit
 * times (the sweep is given `now`), so every ejection and return is exact.
 */
import assert from "node:assert/strict";
import { OutlierDetector, OutlierStats } from "../src/grpc/outlier_detection.ts";
import type { OutlierDetectionConfig } from "../src/grpc/service_config.ts";

interface Host {
  readonly name: string;
  readonly outlier: OutlierStats;
}
const hosts = (...names: string[]): Host[] =>
  names.map((name) => ({ name, outlier: new OutlierStats() }));

const INTERVAL = 1000;
const FP: OutlierDetectionConfig = {
  intervalMs: INTERVAL,
  baseEjectionTimeMs: 3000,
  maxEjectionTimeMs: 300_000,
  maxEjectionPercent: 50,
  successRate: undefined,
  failurePercentage: {
    threshold: 85,
    enforcementPercentage: 100,
    minimumHosts: 3,
    requestVolume: 10,
  },
};

/**
 * Runs calls and sweeps from `from` to `to` (ms): every 10 ms each host not
 * ejected gets a call, failing when `fails(host, t)`; a sweep every INTERVAL.
 * Returns the sweeps' ejections and returns, with their times.
 */
function run(
  detector: OutlierDetector,
  population: Host[],
  from: number,
  to: number,
  fails: (host: Host, t: number) => boolean,
): { ejected: [number, string][]; returned: [number, string][] } {
  const ejected: [number, string][] = [];
  const returned: [number, string][] = [];
  for (let t = from + 10; t <= to; t += 10) {
    for (const host of population) {
      if (host.outlier.ejected) continue;
      if (fails(host, t)) host.outlier.failed++;
      else host.outlier.ok++;
    }
    if (t % INTERVAL === 0) {
      const result = detector.sweep(population, t);
      for (const e of result.ejected) ejected.push([t, e.target.name]);
      for (const r of result.returned) returned.push([t, r.name]);
    }
  }
  return { ejected, returned };
}

Deno.test("OutlierDetector: an instance that starts failing mid-interval is ejected within two intervals, and returns after its ejection time", () => {
  const detector = new OutlierDetector(FP, () => 0);
  const population = hosts("a", "b", "c");
  // b fails every call from t = 1350: the interval ending at 2000 is 65 % failures (under the
  // 85 % threshold), the one ending at 3000 is 100 %.
  const start = 1350;
  let failing = true;
  const fails = (host: Host, t: number) => failing && host.name === "b" && t > start;
  const first = run(detector, population, 0, 4000, fails);
  assert.deepEqual(first.ejected, [[3000, "b"]]);
  assert.ok(3000 - start <= 2 * INTERVAL);
  assert.equal(population[1]!.outlier.ejectionMs, 3000);
  failing = false;
  // Back once base_ejection_time (3000 ms) has passed: at the sweep at 6000, not before.
  const second = run(detector, population, 4000, 8000, fails);
  assert.deepEqual(second, { ejected: [], returned: [[6000, "b"]] });
});

Deno.test("OutlierDetector: an instance ejected again stays out base time x ejections, capped by max_ejection_time", () => {
  const config = { ...FP, maxEjectionTimeMs: 5000 };
  const detector = new OutlierDetector(config, () => 0);
  const population = hosts("a", "b", "c");
  const fails = (host: Host) => host.name === "b";
  const { ejected, returned } = run(detector, population, 0, 20_000, fails);
  // Ejected for 3 s, back, ejected for 6 s capped at 5 s, back, ejected for 5 s again.
  assert.deepEqual(ejected, [[1000, "b"], [5000, "b"], [11_000, "b"], [17_000, "b"]]);
  assert.deepEqual(returned, [[4000, "b"], [10_000, "b"], [16_000, "b"]]);
  // The multiplier goes down by one per sweep the instance is in, so a healthy spell forgives.
  assert.equal(population[1]!.outlier.multiplier, 4);
});

Deno.test("OutlierDetector: max_ejection_percent caps the ejected share, but one instance may always go", () => {
  const allFail = () => true;
  for (
    const [percent, names, most] of [
      [50, ["a", "b", "c"], 1], // grpc-js (A50's check before each ejection) would eject 2 of 3
      [50, ["a", "b", "c", "d"], 2],
      [10, ["a", "b", "c"], 1],
      [0, ["a", "b", "c"], 1],
      [100, ["a", "b", "c"], 3],
    ] as const
  ) {
    const detector = new OutlierDetector({ ...FP, maxEjectionPercent: percent }, () => 0);
    const population = hosts(...names);
    let worst = 0;
    for (let t = 0; t < 10_000; t += 1000) {
      run(detector, population, t, t + 1000, allFail);
      worst = Math.max(worst, population.filter((h) => h.outlier.ejected).length);
    }
    assert.equal(worst, most, `${percent} % of ${names.length}`);
  }
});

Deno.test("OutlierDetector: no ejection below minimum_hosts or request_volume, or with enforcement_percentage 0", () => {
  const failsB = (host: Host) => host.name === "b";
  const fewHosts = new OutlierDetector(
    { ...FP, failurePercentage: { ...FP.failurePercentage!, minimumHosts: 4 } },
    () => 0,
  );
  assert.deepEqual(run(fewHosts, hosts("a", "b", "c"), 0, 5000, failsB).ejected, []);
  const lowVolume = new OutlierDetector(
    { ...FP, failurePercentage: { ...FP.failurePercentage!, requestVolume: 101 } },
    () => 0,
  );
  assert.deepEqual(run(lowVolume, hosts("a", "b", "c"), 0, 5000, failsB).ejected, []);
  const notEnforced = new OutlierDetector(
    { ...FP, failurePercentage: { ...FP.failurePercentage!, enforcementPercentage: 0 } },
    () => 0,
  );
  assert.deepEqual(run(notEnforced, hosts("a", "b", "c"), 0, 5000, failsB).ejected, []);
  // enforcement_percentage 30: ejected when the random integer in [0, 100) is below 30.
  for (const [draw, ejected] of [[0.29, true], [0.3, false]] as const) {
    const partly = new OutlierDetector(
      { ...FP, failurePercentage: { ...FP.failurePercentage!, enforcementPercentage: 30 } },
      () => draw,
    );
    const population = hosts("a", "b", "c");
    run(partly, population, 0, 1000, failsB);
    assert.equal(population[1]!.outlier.ejected, ejected, `draw ${draw}`);
  }
});

Deno.test("OutlierDetector: success-rate ejection ejects below mean - stdev x stdev_factor / 1000", () => {
  const config: OutlierDetectionConfig = {
    ...FP,
    maxEjectionPercent: 100,
    failurePercentage: undefined,
    successRate: {
      stdevFactor: 1000,
      enforcementPercentage: 100,
      minimumHosts: 5,
      requestVolume: 10,
    },
  };
  const detector = new OutlierDetector(config, () => 0);
  assert.equal(detector.counting, true);
  const population = hosts("a", "b", "c", "d", "e");
  // Success rates 1, 1, 1, 1, 0.5: mean 0.9, stdev 0.2, threshold 0.7.
  for (const [i, host] of population.entries()) {
    host.outlier.ok = i === 4 ? 10 : 20;
    host.outlier.failed = i === 4 ? 10 : 0;
  }
  const { ejected } = detector.sweep(population, 1000);
  assert.deepEqual(ejected.map((e) => [e.target.name, e.by, e.calls, e.failed]), [
    ["e", "success_rate", 20, 10],
  ]);
  // With four hosts of enough volume, under minimum_hosts 5: no check.
  const fewer = hosts("a", "b", "c", "d", "e");
  for (const [i, host] of fewer.entries()) {
    host.outlier.ok = i === 4 ? 5 : i === 3 ? 4 : 20;
    host.outlier.failed = i === 4 ? 5 : 0;
  }
  assert.deepEqual(new OutlierDetector(config, () => 0).sweep(fewer, 1000).ejected, []);
  assert.equal(
    new OutlierDetector({ ...config, successRate: undefined }).counting,
    false,
    "no algorithm: nothing counted",
  );
});
