/**
 * Jittered exponential backoff. Pure: randomness is passed in.
 *
 * @module
 */

/** Options of {@linkcode backoff}. */
export interface BackoffOptions {
  /** Delay ceiling before jitter for the first retry, in ms. Default 100. */
  readonly initial?: number;
  /** The largest delay, in ms. Default 3000. */
  readonly max?: number;
  /** Growth per attempt. Default 2. */
  readonly factor?: number;
  /** A source of numbers in [0, 1). Default `Math.random`. */
  readonly random?: () => number;
}

/**
 * The delay before retry number `attempt` (0-based), with "full jitter": a
 * uniform draw from [0, min(max, initial × factor^attempt)). Spreads the retries
 * of many clients that failed together.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { backoff } from "./backoff.ts";
 * assert.equal(backoff(0, { random: () => 0.5 }), 50);
 * assert.equal(backoff(20, { random: () => 0.5 }), 1500); // capped at 3000
 * ```
 *
 * @param attempt how many retries came before this one
 * @param options the curve and the random source
 * @returns the delay in ms
 * @throws {RangeError} when `attempt` is not a non-negative integer
 */
export function backoff(attempt: number, options: BackoffOptions = {}): number {
  if (!Number.isInteger(attempt) || attempt < 0) {
    throw new RangeError(`attempt must be a non-negative integer, got ${attempt}`);
  }
  const { initial = 100, max = 3000, factor = 2, random = Math.random } = options;
  const ceiling = Math.min(max, initial * factor ** Math.min(attempt, 64));
  return Math.floor(random() * ceiling);
}
