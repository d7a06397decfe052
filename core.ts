/**
 * The pure core of grpc-etcd: everything in `@seed/grpc-etcd` except
 * `connect()`, with no import of npm packages, Node built-ins or Deno APIs, so
 * that it runs on any JavaScript runtime (edge workers included). Bring an
 * {@linkcode EtcdClient}: the one `connect()` makes, `memoryClient()` from
 * `@seed/grpc-etcd/testing`, or your own over any etcd transport.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { consistentHash, decodeEndpoint, encodeEndpoint, type Endpoint } from "@seed/grpc-etcd/core";
 *
 * const value = encodeEndpoint({ addr: "10.0.0.1:50051", metadata: { zone: "eu-1" } });
 * assert.equal(value, '{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"zone":"eu-1"}}');
 * const endpoint = decodeEndpoint("svc/a/10.0.0.1:50051", new TextEncoder().encode(value));
 * const pick = consistentHash({ key: () => "alice" })([endpoint as Endpoint]);
 * assert.equal(pick({ method: "/x.Y/Z", header: () => undefined })?.addr, "10.0.0.1:50051");
 * ```
 *
 * @module
 */
export {
  decodeEndpoint,
  encodeEndpoint,
  type Endpoint,
  EndpointDecodeError,
  endpointKey,
  servicePrefix,
  type Update,
} from "./src/endpoint.ts";
export { applyUpdates, applyUpdatesInPlace, diffViews } from "./src/view.ts";
export type { Balancer, BalancerContext, Picker, PickInfo } from "./src/balancers/balancer.ts";
export { roundRobin } from "./src/balancers/round_robin.ts";
export { weightedRoundRobin } from "./src/balancers/weighted_round_robin.ts";
export { p2c, random, type RandomOptions } from "./src/balancers/random.ts";
export { consistentHash, type ConsistentHashOptions } from "./src/balancers/consistent_hash.ts";
export {
  AuthenticationError,
  ClientClosedError,
  CompactedError,
  type EtcdClient,
  type KeyValue,
  LeaseNotFoundError,
  PermissionDeniedError,
  type RangeResult,
  type WatchBatch,
  type WatchEvent,
  type WatchOptions,
} from "./src/etcd/client.ts";
export {
  register,
  type RegisterOptions,
  type Registration,
  type RegistrationState,
} from "./src/register.ts";
export { type Resolution, resolve, type ResolveOptions } from "./src/resolve.ts";
