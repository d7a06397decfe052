/**
 * The shapes every balancer shares. Pure.
 *
 * @module
 */
import type { Endpoint } from "../endpoint.ts";

/** What a picker may use to choose an endpoint for one call. */
export interface PickInfo {
  /** The full gRPC method path, e.g. `/helloworld.Greeter/SayHello`. */
  readonly method: string;
  /** The first value of a request metadata header (lower-case name), if any. */
  header(name: string): string | undefined;
}

/** What a balancer may know about the endpoints besides the list itself. */
export interface BalancerContext {
  /** The number of calls in flight to an endpoint of the list. */
  inflight?(endpoint: Endpoint): number;
  /**
   * The number of calls in flight to `endpoints[index]` of the list the balancer
   * was built with: the same as `inflight`, without a lookup by object, so
   * pickers prefer it. `dial()` provides both.
   */
  inflightAt?(index: number): number;
  /** Where a balancer reports a problem with the endpoints (such as a bad weight). */
  report?(error: Error): void;
}

/**
 * Returns the endpoint for the next call, or `undefined` when there is none.
 * The endpoint must be one of those the picker was built with: the same object,
 * or a copy with the same `addr`. `dial()` fails a call at once (INTERNAL, and
 * a report to `onError`) when a picker returns any other endpoint; with
 * `undefined`, the call waits for the next picker.
 */
export type Picker = (info?: PickInfo) => Endpoint | undefined;

/**
 * Builds a picker over a list of endpoints (the ready instances of a service).
 * `dial()` builds a new picker whenever the list changes.
 *
 * Every balancer of this module is a `Balancer` as it is: {@linkcode roundRobin},
 * `weightedRoundRobin`, `random`, `p2c` and `consistentHash` (the last three with
 * default options). A balancer with options makes a `Balancer` when called with
 * an options object instead of a list: `consistentHash({ header: "x-user" })`,
 * `random({ random })`, `p2c({ random })`. So `dial(..., { balancer: p2c })` and
 * `dial(..., { balancer: consistentHash({ header: "x-user" }) })` both work, with
 * no wrapper function. Anything but an array or an options object as the first
 * argument is a `TypeError`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { type Balancer, consistentHash, p2c, roundRobin } from "@seed/grpc-etcd";
 * const balancers: Balancer[] = [roundRobin, p2c, consistentHash({ header: "x-user" })];
 * for (const balancer of balancers) {
 *   assert.equal(balancer([{ addr: "a:1" }])()?.addr, "a:1");
 * }
 * ```
 */
export type Balancer = (endpoints: readonly Endpoint[], context?: BalancerContext) => Picker;
