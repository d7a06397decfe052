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
 * This file checks the options and wires the parts.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import type { Balancer } from "../balancers/balancer.ts";
import { roundRobin } from "../balancers/round_robin.ts";
import { checkService } from "../endpoint.ts";
import type { EtcdClient } from "../etcd/client.ts";
import { BalancedChannel } from "./balanced_channel.ts";

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
   * `grpc.default_authority`) are refused: use `serverName`.
   */
  readonly channelOptions?: grpc.ChannelOptions;
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
 * `client.close()` releases the watch and every connection.
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
 * @param client the etcd client
 * @param service the service name the servers registered under
 * @param Ctor the grpc-js client class
 * @param options credentials, balancer, channel options, signal, error handler
 * @returns a client instance of `Ctor`
 * @throws {TypeError} when the service name or `Ctor` is unusable, or with TLS credentials
 *   when neither `serverName` nor the service name is a DNS name
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
  options.signal?.throwIfAborted();
  const credentials = options.credentials ?? grpc.credentials.createInsecure();
  const channel = new BalancedChannel(client, service, {
    credentials,
    channelOptions: credentials._isSecure()
      ? {
        ...options.channelOptions,
        // The name to verify comes from the caller, never from the registry value (an address,
        // often an IP, which Deno's node:tls would refuse as a TLS server name anyway).
        "grpc.ssl_target_name_override": options.serverName ?? service,
        "grpc.default_authority": options.serverName ?? service,
      }
      : options.channelOptions ?? {},
    balancer: options.balancer ?? roundRobin,
    healthService: options.healthCheck?.serviceName,
    onError: options.onError ??
      ((error) => console.warn(`grpc-etcd dial(${JSON.stringify(service)}): ${error.message}`)),
    signal: options.signal,
  });
  return new Ctor(channel.getTarget(), credentials, { channelOverride: channel });
}
