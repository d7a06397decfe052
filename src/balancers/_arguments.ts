/**
 * Argument checks shared by the balancers that take options. Pure.
 *
 * @module
 */
import type { Endpoint } from "../endpoint.ts";

/** A value for an error message: strings quoted, functions by name (never their source). */
export function show(value: unknown): string {
  if (typeof value === "function") return `a function ${value.name || "(anonymous)"}`;
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "object" && value !== null) return Object.prototype.toString.call(value);
  return String(value);
}

/**
 * Tells the two forms of a balancer with options apart: `true` for a list of endpoints
 * (`name(endpoints, context?)` builds a picker with default options), `false` for an options
 * object (`name(options)` makes a balancer).
 *
 * @throws {TypeError} for anything else, naming the argument and the value
 */
export function isEndpointList(
  name: string,
  first: unknown,
  known: readonly string[],
): first is readonly Endpoint[] {
  if (Array.isArray(first)) return true;
  if (typeof first === "object" && first !== null) return false;
  throw new TypeError(
    `${name}: the first argument must be an array of endpoints or an options object { ${
      known.join(", ")
    } }, got ${show(first)}`,
  );
}

/**
 * Refuses the older three-argument form `name(endpoints, context, options)`,
 * which JavaScript callers could still use without a type error.
 *
 * @throws {TypeError} saying what replaces it
 */
export function noOptionsAfterContext(name: string, extra: readonly unknown[]): void {
  if (extra.length === 0 || extra[0] === undefined) return;
  throw new TypeError(
    `${name}: options go first now - ${name}(options) makes a balancer to pass as dial()'s ` +
      `balancer; ${name}(endpoints, context, options) is no longer taken`,
  );
}

/**
 * Checks an options object's own fields: each must be one of `known`.
 *
 * @throws {TypeError} naming the first unknown field
 */
export function checkFields(name: string, options: object, known: readonly string[]): void {
  for (const field of Object.keys(options)) {
    if (!known.includes(field)) {
      throw new TypeError(
        `${name}: options has no field ${JSON.stringify(field)} (it takes ${known.join(", ")})`,
      );
    }
  }
}

/**
 * Checks that an optional option, when given, is a function.
 *
 * @throws {TypeError} naming the option and the value
 */
export function checkFunction(name: string, field: string, value: unknown): void {
  if (value !== undefined && typeof value !== "function") {
    throw new TypeError(`${name}: options.${field} must be a function, got ${show(value)}`);
  }
}

/**
 * Checks the list a balancer made from options is called with.
 *
 * @throws {TypeError} naming the argument and the value
 */
export function checkEndpoints(name: string, endpoints: unknown): readonly Endpoint[] {
  if (!Array.isArray(endpoints)) {
    throw new TypeError(
      `${name}(options) is a balancer: its first argument must be an array of endpoints, got ${
        show(endpoints)
      }`,
    );
  }
  return endpoints;
}
