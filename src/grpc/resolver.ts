/**
 * An `etcd:///<service>` name resolver for grpc-js, for users who want
 * grpc-js's own load-balancing policies (`round_robin`, `pick_first`) instead of
 * `dial()`'s per-call pickers. It streams from `resolve()`, so it shares the
 * watch with every other resolver of the service on the same client.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { applyUpdates } from "../view.ts";
import type { Endpoint } from "../endpoint.ts";
import type { EtcdClient } from "../etcd/client.ts";
import { type Resolution, resolve } from "../resolve.ts";

type GrpcUri = grpc.experimental.GrpcUri;

interface Binding {
  readonly client: EtcdClient;
  readonly onError?: (error: Error) => void;
}

const bindings = new Map<string, Binding>();
const registered = new Set<string>();

function toGrpcEndpoints(view: ReadonlyMap<string, Endpoint>) {
  const endpoints = [];
  for (const { addr } of view.values()) {
    const hostPort = grpc.experimental.splitHostPort(addr);
    if (hostPort?.port !== undefined) {
      endpoints.push({ addresses: [{ host: hostPort.host, port: hostPort.port }] });
    }
  }
  return endpoints;
}

class EtcdResolver implements grpc.experimental.Resolver {
  readonly #target: GrpcUri;
  readonly #listener: grpc.experimental.ResolverListener;
  #resolution: Resolution | undefined;
  #view: ReadonlyMap<string, Endpoint> | undefined;

  constructor(
    target: GrpcUri,
    listener: grpc.experimental.ResolverListener,
    _options: grpc.ChannelOptions,
  ) {
    this.#target = target;
    this.#listener = listener;
  }

  /** The service name: the target's path without its leading slashes. */
  static service(target: GrpcUri): string {
    return target.path.replace(/^\/+/, "");
  }

  /**
   * The `:authority` of calls: the last segment of the service name, as a host
   * name ("svc/greeter" → "greeter"); HTTP/2 servers reject a "/" there. Set the
   * channel option `grpc.default_authority` to choose another.
   */
  static getDefaultAuthority(target: GrpcUri): string {
    const last = EtcdResolver.service(target).split("/").filter(Boolean).pop() ?? "etcd";
    return last.replace(/[^A-Za-z0-9.-]/g, "-") || "etcd";
  }

  #publish(): void {
    if (this.#view) {
      this.#listener(
        grpc.experimental.statusOrFromValue(toGrpcEndpoints(this.#view)),
        {},
        null,
        "",
      );
    }
  }

  #fail(details: string): void {
    this.#listener(
      grpc.experimental.statusOrFromError({ code: grpc.status.UNAVAILABLE, details }),
      {},
      null,
      details,
    );
  }

  updateResolution(): void {
    // Already streaming: every change is pushed as it happens. (grpc-js asks again on
    // connection failures, from inside the listener; answering then would recurse.)
    if (this.#resolution) return;
    const scheme = this.#target.scheme ?? "";
    const binding = bindings.get(scheme);
    if (!binding) {
      this.#fail(`no etcd client is bound to the ${scheme}: scheme (see registerEtcdResolver)`);
      return;
    }
    const service = EtcdResolver.service(this.#target);
    let resolution: Resolution;
    try {
      resolution = resolve(binding.client, service, { onError: binding.onError });
    } catch (error) {
      this.#fail(error instanceof Error ? error.message : String(error));
      return;
    }
    this.#resolution = resolution;
    void (async () => {
      // A new resolution starts with the whole set: an instance that left meanwhile is gone.
      let view: ReadonlyMap<string, Endpoint> = new Map();
      for await (const batch of resolution) {
        if (this.#resolution !== resolution) break;
        view = applyUpdates(view, batch);
        this.#view = view;
        this.#publish();
      }
    })();
  }

  destroy(): void {
    const resolution = this.#resolution;
    this.#resolution = undefined;
    void resolution?.return();
  }
}

/**
 * Lets grpc-js resolve `etcd:///<service>` targets (or `<scheme>:///<service>`)
 * through `client`, so that grpc-js's own load-balancing policies can be used:
 *
 * ```ts ignore
 * registerEtcdResolver(etcd);
 * const greeter = new Greeter("etcd:///svc/greeter", grpc.credentials.createInsecure(), {
 *   "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
 * });
 * ```
 *
 * The resolver shares its watch with `resolve()` and `dial()` on the same
 * client, keeps the last known instances through etcd errors, and can be
 * destroyed and restarted by grpc-js (as it does on idle) any number of times.
 * grpc-js keeps resolver classes for the life of the process; disposing the
 * result unbinds the client, so later resolutions of the scheme fail.
 *
 * @param client the etcd client to resolve through
 * @param options the URI scheme (default `"etcd"`) and an error handler
 * @returns a handle whose disposal unbinds the client
 * @throws {TypeError} when the scheme is not a URI scheme or is already bound
 */
export function registerEtcdResolver(
  client: EtcdClient,
  options: { scheme?: string; onError?: (error: Error) => void } = {},
): Disposable {
  const scheme = options.scheme ?? "etcd";
  if (!/^[a-z][a-z0-9+.-]*$/.test(scheme)) {
    throw new TypeError(
      `options.scheme must be a lower-case URI scheme, got ${JSON.stringify(scheme)}`,
    );
  }
  if (bindings.has(scheme)) {
    throw new TypeError(
      `the ${scheme}: scheme is already bound to an etcd client; dispose it first`,
    );
  }
  bindings.set(scheme, { client, onError: options.onError });
  if (!registered.has(scheme)) {
    grpc.experimental.registerResolver(scheme, EtcdResolver);
    registered.add(scheme);
  }
  return {
    [Symbol.dispose]() {
      if (bindings.get(scheme)?.client === client) bindings.delete(scheme);
    },
  };
}
