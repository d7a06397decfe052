/**
 * `dial()`: a grpc-js client whose every call is balanced over the live
 * instances of a service, through a `channelOverride` channel.
 *
 * How it plugs in: grpc-js clients accept any `ChannelInterface` as
 * `channelOverride` (stable public API). Ours ({@linkcode BalancedChannel})
 * keeps one ordinary grpc-js `Channel` per instance (eagerly connected,
 * pick_first), folds `resolve()` updates into the set, and on each call runs
 * our picker over the instances whose channel is READY (and, with
 * `healthCheck`, whose health service says SERVING), then starts the call on
 * that instance's channel ({@linkcode PickedCall}). Calls that find no READY
 * instance wait (while instances are connecting, or with `waitForReady` until
 * their deadline) or fail fast with UNAVAILABLE, as gRPC's own round_robin does.
 * Each call is a `RetryingCall` (retrying_call.ts), retried as the service config in
 * `channelOptions["grpc.service_config"]` says; with `outlier_detection` in
 * it, instances that fail too many calls are ejected for a while.
 * This file checks the options and wires the parts.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import type { Balancer } from "../balancers/balancer.ts";
import { roundRobin } from "../balancers/round_robin.ts";
import { checkService, type Endpoint } from "../endpoint.ts";
import type { EtcdClient } from "../etcd/client.ts";
import { BalancedChannel } from "./balanced_channel.ts";
import { checkLocality, type Locality } from "./selection.ts";
import { DEFAULT_MAX_ATTEMPTS_LIMIT, parseServiceConfig } from "./service_config.ts";

/** Options of {@linkcode dial}. */
export interface DialOptions {
  /** Credentials for the connections to the instances. Default: insecure. */
  readonly credentials?: grpc.ChannelCredentials;
  /**
   * With TLS credentials: the name every instance's certificate must carry, also
   * sent as the `:authority`. Default: the service name, which must then be a DNS
   * name. Never taken from etcd: a registry value chooses only the address, so an
   * entry pointing at a server without a certificate for this name gets no calls.
   */
  readonly serverName?: string;
  /**
   * Client-side health checking (as gRPC's `healthCheckConfig`): each connected
   * instance is watched through `grpc.health.v1.Health/Watch` for `serviceName`
   * (`""`: the server as a whole), and gets calls only while it reports
   * SERVING. An instance that does not implement the health service is used
   * as if it were SERVING, and reported to `onError`. Default: off.
   */
  readonly healthCheck?: { readonly serviceName: string };
  /** Builds the per-call picker over the READY instances. Default {@linkcode roundRobin}. */
  readonly balancer?: Balancer;
  /**
   * grpc-js options for each per-instance channel. With TLS credentials, the
   * server name options (`grpc.ssl_target_name_override`,
   * `grpc.default_authority`) are refused: use `serverName`. Each instance's
   * channel keeps its connection to itself (`"grpc.use_local_subchannel_pool"`
   * defaults to 1 here, so that closing n instances costs O(n)); 0 shares
   * connections with other grpc-js channels of the process.
   *
   * `"grpc.service_config"` is read by `dial()` itself, with grpc-js's rules
   * (it is not passed on): per method (`methodConfig`), a `retryPolicy`
   * (gRFC A6; another instance is tried when one is ready), a `timeout` and a
   * `waitForReady` default; `retryThrottling`; and in `loadBalancingConfig`, an
   * `outlier_detection` entry (gRFC A50) ejects failing instances for a while,
   * with `balancer` as its child policy. `"grpc.enable_retries": 0` turns
   * every retry off, transparent ones too; `"grpc-node.retry_max_attempts_limit"`
   * caps `maxAttempts` (default 5); `"grpc.retry_buffer_size"` and
   * `"grpc.per_rpc_retry_buffer_size"` bound what calls keep to replay (16 MiB
   * and 1 MiB; 0 keeps nothing, so calls are not retried). See
   * docs/load_balancing.md.
   */
  readonly channelOptions?: grpc.ChannelOptions;
  /**
   * Only endpoints it returns true for get calls, and a connection: e.g.
   * `(e) => (e.metadata as { version?: string })?.version === "2"`. Asked again
   * when an endpoint's value in etcd changes. An endpoint it throws for is left
   * out and reported. Default: every endpoint.
   */
  readonly filter?: (endpoint: Endpoint) => boolean;
  /**
   * Prefer instances in the local zone (`metadata.zone` equal to `zone`): calls
   * go to the zone's ready instances while at least `minReady` of them are
   * ready (default: a third of the zone's instances, at least 1), else to the
   * ready instances of every zone. Each switch is reported to `onError`.
   */
  readonly locality?: Locality;
  /** Closes the client when aborted. */
  readonly signal?: AbortSignal;
  /**
   * Called with resolver problems (bad values in etcd, lost etcd connection),
   * balancer reports and, with TLS credentials, why an instance cannot be
   * connected to. Each distinct message at most once a minute. Default:
   * `console.warn`.
   */
  readonly onError?: (error: Error) => void;
}

/** A constructor of grpc-js clients: generated, `makeGenericClientConstructor` or proto-loader. */
export type ClientConstructor<C extends grpc.Client> = new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ClientOptions,
) => C;

const DNS_NAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/**
 * Makes a grpc-js client for a service registered in etcd. Every call picks
 * one of the service's READY instances with `balancer` (default
 * {@linkcode roundRobin}); instances come and go as `resolve()` reports them.
 * An instance whose connection fails is skipped while others are ready. With
 * no instance available, a call with `waitForReady` (set through
 * `new Metadata({ waitForReady: true })`) waits until its deadline and succeeds
 * if one appears; a call without it fails fast with UNAVAILABLE. Before the
 * first successful read of the service from etcd, a resolver error (etcd
 * unreachable, say) fails such calls at once with UNAVAILABLE naming etcd's
 * hosts and the reason; after it, a resolver error keeps the last known
 * instances. A call cut off by a broken connection fails UNAVAILABLE.
 * A call that never reached a server (its instance's connection broke just
 * before) is retried once on another instance; the service config in
 * `channelOptions["grpc.service_config"]` adds retry policies, timeouts and
 * outlier detection (see `channelOptions`). `client.close()` releases the
 * watch, every connection and every timer.
 *
 * @example
 * ```ts ignore
 * import * as grpc from "@grpc/grpc-js";
 * import { connect } from "@seed/grpc-etcd";
 * import { dial } from "@seed/grpc-etcd/grpc";
 * const etcd = connect({ hosts: "http://127.0.0.1:2379" });
 * const Greeter = grpc.loadPackageDefinition(definition).helloworld.Greeter;
 * const greeter = dial(etcd, "svc/greeter", Greeter);
 * greeter.SayHello({ name: "etcd" }, (err, reply) => console.log(err ?? reply));
 * ```
 *
 * @example Retries, outlier ejection, a version filter and the local zone first
 * ```ts
 * import assert from "node:assert/strict";
 * import * as grpc from "@grpc/grpc-js";
 * import { dial } from "@seed/grpc-etcd/grpc";
 * import { memoryClient } from "@seed/grpc-etcd/testing";
 *
 * const Echo = grpc.makeGenericClientConstructor({}, "Echo");
 * await using etcd = memoryClient();
 * const serviceConfig = {
 *   methodConfig: [{
 *     name: [{ service: "demo.Echo" }],
 *     timeout: "2s",
 *     retryPolicy: {
 *       maxAttempts: 3,
 *       initialBackoff: "0.1s",
 *       maxBackoff: "1s",
 *       backoffMultiplier: 2,
 *       retryableStatusCodes: ["UNAVAILABLE"],
 *     },
 *   }],
 *   retryThrottling: { maxTokens: 10, tokenRatio: 0.1 },
 *   loadBalancingConfig: [{
 *     outlier_detection: {
 *       interval: { seconds: 10, nanos: 0 },
 *       base_ejection_time: { seconds: 30, nanos: 0 },
 *       failure_percentage_ejection: { threshold: 50, minimum_hosts: 3, request_volume: 20 },
 *       child_policy: [{ round_robin: {} }],
 *     },
 *   }],
 * };
 * const echo = dial(etcd, "svc/echo", Echo, {
 *   channelOptions: { "grpc.service_config": JSON.stringify(serviceConfig) },
 *   filter: (endpoint) => (endpoint.metadata as { version?: string })?.version === "2",
 *   locality: { zone: "eu-west-1a" },
 * });
 * echo.close();
 * // A config grpc-js would refuse is refused here, naming the field and the value.
 * assert.throws(
 *   () =>
 *     dial(etcd, "svc/echo", Echo, {
 *       channelOptions: {
 *         "grpc.service_config": JSON.stringify({ retryThrottling: { maxTokens: 0, tokenRatio: 1 } }),
 *       },
 *     }),
 *   /retryThrottling\.maxTokens must be a number in \(0, 1000\], got 0/,
 * );
 * ```
 *
 * @param client the etcd client
 * @param service the service name the servers registered under
 * @param Ctor the grpc-js client class
 * @param options credentials, balancer, channel options (and the service config in them),
 *   filter, locality, signal, error handler
 * @returns a client instance of `Ctor`
 * @throws {TypeError} when the service name or `Ctor` is unusable, with TLS credentials
 *   when neither `serverName` nor the service name is a DNS name, or when the service
 *   config, `filter` or `locality` is invalid (naming the field and the value)
 * @throws {RangeError} when a number of the service config or `locality` is out of range
 */
export function dial<C extends grpc.Client>(
  client: EtcdClient,
  service: string,
  Ctor: ClientConstructor<C>,
  options: DialOptions = {},
): C {
  checkService(service);
  if (typeof Ctor !== "function" || typeof Ctor.prototype?.makeUnaryRequest !== "function") {
    throw new TypeError(
      `Ctor must be a grpc-js client class (generated, makeGenericClientConstructor or loadPackageDefinition), got ${
        String(Ctor).slice(0, 80)
      }`,
    );
  }
  if (
    options.healthCheck !== undefined &&
    (typeof options.healthCheck !== "object" || options.healthCheck === null ||
      typeof options.healthCheck.serviceName !== "string")
  ) {
    throw new TypeError(
      `options.healthCheck must be { serviceName: string }, got ${
        JSON.stringify(options.healthCheck)
      }`,
    );
  }
  if (options.balancer !== undefined && typeof options.balancer !== "function") {
    throw new TypeError(`options.balancer must be a function, got ${String(options.balancer)}`);
  }
  if (options.serverName !== undefined && !DNS_NAME.test(String(options.serverName))) {
    throw new TypeError(
      `options.serverName must be a DNS name, got ${JSON.stringify(options.serverName)}`,
    );
  }
  if (
    options.credentials?._isSecure() && options.serverName === undefined && !DNS_NAME.test(service)
  ) {
    throw new TypeError(
      `options.serverName is needed with TLS credentials: the service name ${
        JSON.stringify(service)
      } is not a DNS name that the instances' certificates could carry`,
    );
  }
  if (options.credentials?._isSecure()) {
    for (const name of ["grpc.ssl_target_name_override", "grpc.default_authority"]) {
      if (options.channelOptions?.[name] !== undefined) {
        throw new TypeError(
          `options.channelOptions[${
            JSON.stringify(name)
          }] is set by dial() with TLS credentials; ` +
            `give options.serverName instead, got ${JSON.stringify(options.channelOptions[name])}`,
        );
      }
    }
  }
  if (options.filter !== undefined && typeof options.filter !== "function") {
    throw new TypeError(`options.filter must be a function, got ${String(options.filter)}`);
  }
  const locality = checkLocality(options.locality);
  const { "grpc.service_config": serviceConfigText, ...channelOptions } = options.channelOptions ??
    {};
  const serviceConfig = parseServiceConfig(serviceConfigText, {
    where: 'options.channelOptions["grpc.service_config"]',
    maxAttemptsLimit: integerOption(
      channelOptions,
      "grpc-node.retry_max_attempts_limit",
      DEFAULT_MAX_ATTEMPTS_LIMIT,
      1,
    ),
  });
  // 0 is valid, as for grpc-js: nothing is kept, every call is committed to its first attempt.
  const retryBuffer = {
    total: integerOption(channelOptions, "grpc.retry_buffer_size", 1 << 24, 0),
    perCall: integerOption(channelOptions, "grpc.per_rpc_retry_buffer_size", 1 << 20, 0),
  };
  options.signal?.throwIfAborted();
  const credentials = options.credentials ?? grpc.credentials.createInsecure();
  const onError = options.onError ??
    ((error: Error) =>
      console.warn(`grpc-etcd dial(${JSON.stringify(service)}): ${error.message}`));
  const instanceOptions: grpc.ChannelOptions = {
    // Each instance's channel keeps its connection in a pool of its own: grpc-js's global pool
    // makes every channel's close() walk every subchannel in the process, so closing n instances
    // took O(n²) (10,000: over a minute with the event loop blocked). Set it to 0 to share.
    "grpc.use_local_subchannel_pool": 1,
    ...channelOptions,
  };
  const channel = new BalancedChannel(client, service, {
    credentials,
    channelOptions: credentials._isSecure()
      ? {
        ...instanceOptions,
        // The name to verify comes from the caller, never from the registry value (an address,
        // often an IP, which Deno's node:tls would refuse as a TLS server name anyway).
        "grpc.ssl_target_name_override": options.serverName ?? service,
        "grpc.default_authority": options.serverName ?? service,
      }
      : instanceOptions,
    balancer: options.balancer ?? roundRobin,
    healthService: options.healthCheck?.serviceName,
    onError,
    signal: options.signal,
    serviceConfig,
    retries: channelOptions["grpc.enable_retries"] !== 0,
    retryBuffer,
    filter: options.filter,
    locality,
    singleResponse: singleResponseMethods(Ctor),
  });
  return new Ctor(channel.getTarget(), credentials, { channelOverride: channel });
}

/**
 * The paths of the methods whose response is one message, from the client
 * class's service definition (`Ctor.service`, which generated, proto-loader
 * and `makeGenericClientConstructor` classes carry); none without one.
 */
function singleResponseMethods(Ctor: unknown): Set<string> {
  const paths = new Set<string>();
  const service = (Ctor as { service?: unknown }).service;
  if (typeof service !== "object" || service === null) return paths;
  for (const method of Object.values(service)) {
    const { path, responseStream } = (method ?? {}) as { path?: unknown; responseStream?: unknown };
    if (typeof path === "string" && responseStream === false) paths.add(path);
  }
  return paths;
}

/**
 * A channel option that must be an integer of at least `min` when given.
 *
 * @throws {RangeError} naming the option and the value
 */
function integerOption(
  options: grpc.ChannelOptions,
  name: string,
  fallback: number,
  min: 0 | 1,
): number {
  const value = options[name];
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < min) {
    throw new RangeError(
      `options.channelOptions[${JSON.stringify(name)}] must be ${
        min === 1 ? "a positive integer" : "an integer of at least 0"
      }, got ${JSON.stringify(value)}`,
    );
  }
  return value;
}
