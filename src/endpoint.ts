/**
 * Endpoints, updates, the key layout and the value codec shared with etcd's
 * Go `client/v3/naming/endpoints` package. Pure: no I/O, no runtime APIs.
 *
 * @module
 */

/** One instance of a service: where to reach it, plus free-form JSON metadata. */
export interface Endpoint {
  /** `host:port` of the instance. */
  readonly addr: string;
  /** Any JSON value the instance published with its address (Go's `Metadata`). */
  readonly metadata?: unknown;
}

/** A change to a service's set of endpoints, keyed by the etcd key that holds it. */
export type Update =
  | { readonly op: "add"; readonly key: string; readonly endpoint: Endpoint }
  | { readonly op: "delete"; readonly key: string };

/** The largest value the decoder accepts, in bytes. Larger values are skipped. */
export const MAX_VALUE_BYTES = 64 * 1024;

/**
 * An etcd value under a service prefix that does not describe an endpoint.
 * Resolvers skip such keys and report this error with the key.
 */
export class EndpointDecodeError extends Error {
  /** The etcd key whose value could not be decoded. */
  readonly key: string;
  /**
   * Creates the error for one skipped key.
   *
   * @param key the etcd key holding the bad value
   * @param reason what is wrong with the value
   */
  constructor(key: string, reason: string) {
    super(`skipped etcd key ${JSON.stringify(key)}: ${reason}`);
    this.name = "EndpointDecodeError";
    this.key = key;
  }
}

// deno-lint-ignore no-control-regex
const FORBIDDEN_IN_SERVICE = /[\s\x00-\x1f\x7f]/;
const HOSTNAME = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?$/;
const IPV6 = /^\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?\]$/;

function show(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * Checks a service name: non-empty, at most 512 characters, no whitespace or
 * control characters, and not ending in `/` (the key layout is `<service>/<addr>`).
 *
 * @param service the name to check
 * @param argument the argument name used in the error message
 * @returns the service name
 * @throws {TypeError} when the name is not a usable service name
 */
export function checkService(service: unknown, argument = "service"): string {
  if (typeof service !== "string" || service.length === 0) {
    throw new TypeError(`${argument} must be a non-empty string, got ${show(service)}`);
  }
  if (service.length > 512) {
    throw new TypeError(`${argument} must be at most 512 characters, got ${service.length}`);
  }
  if (FORBIDDEN_IN_SERVICE.test(service)) {
    throw new TypeError(
      `${argument} must not contain whitespace or control characters, got ${show(service)}`,
    );
  }
  if (service.endsWith("/")) {
    throw new TypeError(
      `${argument} must not end with "/" (keys are "<service>/<addr>"), got ${show(service)}`,
    );
  }
  return service;
}

/**
 * Describes what is wrong with an address, or returns `undefined` when it is a
 * usable `host:port`: a hostname, an IPv4 address or a bracketed IPv6 address,
 * and a decimal port from 1 to 65535.
 *
 * @param addr the address to check
 * @returns a reason, or `undefined` when the address is valid
 */
export function addrProblem(addr: unknown): string | undefined {
  if (typeof addr !== "string") return "must be a string";
  if (addr.length === 0 || addr.length > 261) return "must be a host:port of 3 to 261 characters";
  const colon = addr.lastIndexOf(":");
  if (colon <= 0) return "must be host:port";
  const host = addr.slice(0, colon);
  const port = addr.slice(colon + 1);
  if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
    return "must end in a port from 1 to 65535";
  }
  if (host.startsWith("[") ? !IPV6.test(host) : !HOSTNAME.test(host)) {
    return "must have a hostname, an IPv4 address or a bracketed IPv6 address before the port";
  }
  return undefined;
}

/**
 * Checks an endpoint given by a caller: `addr` must be `host:port` and
 * `metadata`, when present, must be serialisable to JSON.
 *
 * @param endpoint the endpoint to check
 * @param argument the argument name used in error messages
 * @returns the endpoint
 * @throws {TypeError} when the endpoint is unusable
 */
export function checkEndpoint(endpoint: unknown, argument = "endpoint"): Endpoint {
  if (typeof endpoint !== "object" || endpoint === null) {
    throw new TypeError(`${argument} must be an object { addr, metadata? }, got ${show(endpoint)}`);
  }
  const { addr, metadata } = endpoint as Record<string, unknown>;
  const problem = addrProblem(addr);
  if (problem) {
    throw new TypeError(`${argument}.addr ${problem}, got ${show(addr)}`);
  }
  if (metadata !== undefined) {
    try {
      JSON.stringify(metadata);
    } catch (cause) {
      throw new TypeError(`${argument}.metadata must be serialisable to JSON`, { cause });
    }
  }
  return endpoint as Endpoint;
}

/**
 * The etcd key prefix under which a service's endpoints live: `<service>/`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { servicePrefix } from "@seed/grpc-etcd";
 * assert.equal(servicePrefix("svc/echo"), "svc/echo/");
 * ```
 *
 * @param service the service name
 * @returns the prefix, ending in `/`
 * @throws {TypeError} when the service name is unusable
 */
export function servicePrefix(service: string): string {
  return `${checkService(service)}/`;
}

/**
 * The etcd key of an endpoint, as Go's `naming/endpoints` writes it: `<service>/<addr>`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { endpointKey } from "@seed/grpc-etcd";
 * assert.equal(endpointKey("svc/echo", "10.0.0.1:50051"), "svc/echo/10.0.0.1:50051");
 * ```
 *
 * @param service the service name
 * @param addr the endpoint's `host:port`
 * @returns the key
 * @throws {TypeError} when the service or the address is unusable
 */
export function endpointKey(service: string, addr: string): string {
  const problem = addrProblem(addr);
  if (problem) throw new TypeError(`addr ${problem}, got ${show(addr)}`);
  return `${servicePrefix(service)}${addr}`;
}

function goJson(value: unknown): string {
  if (value === null || typeof value !== "object") {
    return JSON.stringify(value ?? null);
  }
  if (typeof (value as { toJSON?: unknown }).toJSON === "function") {
    return goJson(JSON.parse(JSON.stringify(value)));
  }
  if (Array.isArray(value)) {
    return `[${value.map((item) => goJson(item === undefined ? null : item)).join(",")}]`;
  }
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined && typeof v !== "function" && typeof v !== "symbol")
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${goJson(v)}`).join(",")}}`;
}

/**
 * Encodes an endpoint as Go's `encoding/json` writes `endpoints.Update`:
 * `{"Op":0,"Addr":"…","Metadata":…}`, with object keys sorted and `<`, `>`, `&`,
 * U+2028 and U+2029 escaped, so both languages write the same bytes.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeEndpoint } from "@seed/grpc-etcd";
 * assert.equal(
 *   encodeEndpoint({ addr: "127.0.0.1:50051" }),
 *   '{"Op":0,"Addr":"127.0.0.1:50051","Metadata":null}',
 * );
 * ```
 *
 * @param endpoint the endpoint to encode
 * @returns the JSON text
 * @throws {TypeError} when the endpoint is unusable
 */
export function encodeEndpoint(endpoint: Endpoint): string {
  checkEndpoint(endpoint);
  const json = `{"Op":0,"Addr":${JSON.stringify(endpoint.addr)},"Metadata":${
    goJson(endpoint.metadata)
  }}`;
  return json.replace(
    /[<>&\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

const decoder = new TextDecoder("utf-8", { fatal: true });

function field(object: Record<string, unknown>, name: string): unknown {
  if (Object.hasOwn(object, name)) return object[name];
  const lower = name.toLowerCase();
  for (const key of Object.keys(object)) {
    if (key.toLowerCase() === lower) return object[key];
  }
  return undefined;
}

/**
 * Decodes an etcd value written by this module or by Go's `naming/endpoints`.
 * Field names match case-insensitively, as Go's decoder does; `Op` is ignored on
 * a put, as Go's watcher does. Never throws: a bad value yields an
 * {@linkcode EndpointDecodeError} naming the key.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { decodeEndpoint, EndpointDecodeError } from "@seed/grpc-etcd";
 * assert.deepEqual(
 *   decodeEndpoint("svc/a:1", '{"addr":"a:1","metadata":{"zone":"z1"}}'),
 *   { addr: "a:1", metadata: { zone: "z1" } },
 * );
 * assert.ok(decodeEndpoint("svc/x", "not json") instanceof EndpointDecodeError);
 * ```
 *
 * @param key the etcd key, used in the error
 * @param value the value as bytes or text
 * @returns the endpoint, or the reason it was skipped
 */
export function decodeEndpoint(
  key: string,
  value: Uint8Array | string,
): Endpoint | EndpointDecodeError {
  const size = typeof value === "string" ? value.length : value.byteLength;
  if (size > MAX_VALUE_BYTES) {
    return new EndpointDecodeError(key, `value of ${size} bytes is over ${MAX_VALUE_BYTES}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(typeof value === "string" ? value : decoder.decode(value));
  } catch {
    return new EndpointDecodeError(key, "value is not JSON in UTF-8");
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    return new EndpointDecodeError(key, "value is not a JSON object");
  }
  const record = parsed as Record<string, unknown>;
  const addr = field(record, "Addr");
  const problem = addrProblem(addr);
  if (problem) {
    return new EndpointDecodeError(key, `Addr ${problem}, got ${show(addr).slice(0, 80)}`);
  }
  const metadata = field(record, "Metadata");
  return metadata === undefined || metadata === null
    ? { addr: addr as string }
    : { addr: addr as string, metadata };
}
