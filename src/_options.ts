/**
 * Checks of option values shared by the public functions. Private to this
 * module; pure.
 *
 * @module
 */

/** The longest delay a JavaScript timer keeps (2^31 − 1 ms, about 24.8 days); longer ones fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * `options[name]` as a number of milliseconds, or `fallback` when it is
 * undefined. Throws a RangeError naming the option and the value unless it is
 * a finite number from 1 (from 0 with `zero`) to {@linkcode MAX_TIMER_MS}.
 */
export function milliseconds(
  value: unknown,
  name: string,
  fallback: number,
  { zero = false }: { zero?: boolean } = {},
): number {
  if (value === undefined) return fallback;
  if (
    typeof value !== "number" || !Number.isFinite(value) || value < 0 || (!zero && value === 0) ||
    value > MAX_TIMER_MS
  ) {
    throw new RangeError(
      `options.${name} must be a ${zero ? "non-negative" : "positive"} number of ms ` +
        `up to ${MAX_TIMER_MS}, got ${String(value)}`,
    );
  }
  return value;
}
