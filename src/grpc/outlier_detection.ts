/**
 * Outlier detection (gRFC A50) as `dial()` runs it: per-instance call
 * counters, and the sweep that ejects and returns instances. Pure: the sweep
 * is given the time and a random source; the channel owns the timer.
 *
 * @module
 */
import type { OutlierDetectionConfig } from "./service_config.ts";

/** What outlier detection keeps for one instance: two buckets of call counts and its ejection. */
export class OutlierStats {
  /** Calls that ended OK since the last sweep. */
  ok = 0;
  /** Calls that ended with another status since the last sweep. */
  failed = 0;
  /** `ok` of the last complete interval. */
  lastOk = 0;
  /** `failed` of the last complete interval. */
  lastFailed = 0;
  /** When the instance was ejected (ms since the epoch), or -1 while it is not. */
  ejectedAt = -1;
  /** How long its ejection lasts, in ms (while ejected). */
  ejectionMs = 0;
  /** gRFC A50's ejection time multiplier: up by one per ejection, down by one per sweep it is not. */
  multiplier = 0;

  /** Whether the instance is ejected. */
  get ejected(): boolean {
    return this.ejectedAt >= 0;
  }
}

/** Something outlier detection watches: an instance, in `dial()`. */
export interface Watched {
  /** Its counters and ejection. */
  readonly outlier: OutlierStats;
}

/** An ejection made by a sweep, with the numbers that made it. */
export interface Ejection<T> {
  /** The ejected one. */
  readonly target: T;
  /** Which algorithm ejected it. */
  readonly by: "success_rate" | "failure_percentage";
  /** Its calls in the last interval. */
  readonly calls: number;
  /** How many of them failed. */
  readonly failed: number;
  /** How long the ejection lasts, in ms. */
  readonly forMs: number;
}

/** What one sweep changed. */
export interface SweepResult<T> {
  /** Ejected by this sweep. */
  readonly ejected: Ejection<T>[];
  /** Returned to service by this sweep (their ejection time has passed). */
  readonly returned: T[];
}

/**
 * Runs gRFC A50's sweeps over a population of instances. One deviation, to
 * make `max_ejection_percent` a maximum: an instance is ejected only while the
 * ejected share stays at most that percentage once it is out, except that one
 * instance may always be ejected when none is (A50: "will eject at least one
 * address regardless of the value"). A50's text, and grpc-js, check the share
 * before each ejection instead, which may eject one instance more than the
 * percentage allows (2 of 3 at 50 %).
 */
export class OutlierDetector {
  readonly #config: OutlierDetectionConfig;
  readonly #random: () => number;

  /**
   * @param config the `outlier_detection` config
   * @param random a source of numbers in [0, 1), for `enforcement_percentage`
   */
  constructor(config: OutlierDetectionConfig, random: () => number = Math.random) {
    this.#config = config;
    this.#random = random;
  }

  /** Whether calls are counted at all (A50: only with an ejection algorithm configured). */
  get counting(): boolean {
    return this.#config.successRate !== undefined || this.#config.failurePercentage !== undefined;
  }

  /**
   * One sweep at time `now`, over every instance of the service (ready or
   * not): switches the counters' buckets, runs success-rate then
   * failure-percentage ejection, then returns instances whose ejection time
   * has passed (never in the sweep that ejected them) and lowers the
   * multiplier of those not ejected.
   *
   * @param population the instances
   * @param now the time of the sweep, in ms (the ejection timestamp of this sweep)
   * @returns the ejections and returns it made
   */
  sweep<T extends Watched>(population: readonly T[], now: number): SweepResult<T> {
    for (const { outlier } of population) {
      outlier.lastOk = outlier.ok;
      outlier.lastFailed = outlier.failed;
      outlier.ok = 0;
      outlier.failed = 0;
    }
    const ejected: Ejection<T>[] = [];
    let ejectedCount = 0;
    for (const { outlier } of population) if (outlier.ejected) ejectedCount++;
    const total = population.length;
    const mayEject = () =>
      ejectedCount === 0 || ((ejectedCount + 1) * 100) / total <= this.#config.maxEjectionPercent;
    const eject = (target: T, by: Ejection<T>["by"]) => {
      const { outlier } = target;
      const { baseEjectionTimeMs, maxEjectionTimeMs } = this.#config;
      outlier.multiplier++;
      outlier.ejectedAt = now;
      outlier.ejectionMs = Math.min(
        baseEjectionTimeMs * outlier.multiplier,
        Math.max(baseEjectionTimeMs, maxEjectionTimeMs),
      );
      ejectedCount++;
      ejected.push({
        target,
        by,
        calls: outlier.lastOk + outlier.lastFailed,
        failed: outlier.lastFailed,
        forMs: outlier.ejectionMs,
      });
    };
    const sr = this.#config.successRate;
    if (sr && total > 0) {
      const rates: number[] = [];
      for (const { outlier } of population) {
        const calls = outlier.lastOk + outlier.lastFailed;
        if (calls >= sr.requestVolume && calls > 0) rates.push(outlier.lastOk / calls);
      }
      if (rates.length >= sr.minimumHosts && rates.length > 0) {
        const mean = rates.reduce((a, b) => a + b, 0) / rates.length;
        const variance = rates.reduce((a, rate) => a + (rate - mean) ** 2, 0) / rates.length;
        const threshold = mean - Math.sqrt(variance) * (sr.stdevFactor / 1000);
        for (const target of population) {
          if (!mayEject()) break;
          const { outlier } = target;
          const calls = outlier.lastOk + outlier.lastFailed;
          if (outlier.ejected || calls < sr.requestVolume || calls === 0) continue;
          if (outlier.lastOk / calls < threshold && this.#enforced(sr.enforcementPercentage)) {
            eject(target, "success_rate");
          }
        }
      }
    }
    const fp = this.#config.failurePercentage;
    if (fp && total > 0) {
      let withVolume = 0;
      for (const { outlier } of population) {
        if (outlier.lastOk + outlier.lastFailed >= fp.requestVolume) withVolume++;
      }
      if (withVolume >= fp.minimumHosts) {
        for (const target of population) {
          if (!mayEject()) break;
          const { outlier } = target;
          const calls = outlier.lastOk + outlier.lastFailed;
          if (outlier.ejected || calls < fp.requestVolume || calls === 0) continue;
          if (
            (outlier.lastFailed * 100) / calls > fp.threshold &&
            this.#enforced(fp.enforcementPercentage)
          ) {
            eject(target, "failure_percentage");
          }
        }
      }
    }
    const returned: T[] = [];
    for (const target of population) {
      const { outlier } = target;
      if (!outlier.ejected) {
        if (outlier.multiplier > 0) outlier.multiplier--;
      } else if (outlier.ejectedAt < now && now >= outlier.ejectedAt + outlier.ejectionMs) {
        outlier.ejectedAt = -1;
        returned.push(target);
      }
    }
    return { ejected, returned };
  }

  /** A50: a random integer in [0, 100) below the enforcement percentage. */
  #enforced(percentage: number): boolean {
    return Math.floor(this.#random() * 100) < percentage;
  }
}
