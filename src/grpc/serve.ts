/**
 * `serve()`: bind a grpc-js server, serve health, register it in etcd, and
 * drain it on close.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { networkInterfaces } from "node:os";
import { sleep } from "../_async.ts";
import { milliseconds } from "../_options.ts";
import { addrProblem, checkService } from "../endpoint.ts";
import type { EtcdClient } from "../etcd/client.ts";
import { checkTimings, register, type Registration } from "../register.ts";

/** Options of {@linkcode serve}. */
export interface ServeOptions {
  /** `host:port` to listen on. Default `"127.0.0.1:0"`; port 0 picks a free port. */
  readonly bind?: string;
  /** `host:port` written to etcd. Default: the bound address (a local IP for 0.0.0.0/[::]). */
  readonly advertise?: string;
  /** Server credentials. Default: insecure. */
  readonly credentials?: grpc.ServerCredentials;
  /** Lease TTL in seconds (see `register`). Default 10. */
  readonly ttl?: number;
  /** JSON metadata published with the address. */
  readonly metadata?: unknown;
  /** How long to keep serving after deregistering, so clients see the change. Default 1000 ms. */
  readonly drainMs?: number;
  /** How long in-flight calls may take to finish before they are cancelled. Default 5000 ms. */
  readonly shutdownMs?: number;
  /**
   * How long `serve()` tries to register before it gives up, shuts the server
   * down and rejects (see `register`). Default 5000 ms.
   */
  readonly timeout?: number;
  /**
   * Closes (drains) the server when aborted. Aborted before `serve()` has
   * registered, it shuts the server down and rejects with the signal's reason.
   */
  readonly signal?: AbortSignal;
  /** Called with problems the registration recovers from by itself. */
  readonly onError?: (error: Error) => void;
}

/** A server that is bound, healthy and registered. */
export interface Serving extends AsyncDisposable {
  /** The `host:port` registered in etcd. */
  readonly addr: string;
  /** The port the server listens on. */
  readonly port: number;
  /** The registration behind it. */
  readonly registration: Registration;
  /**
   * Sets what the health service reports, for `""` and for the service: NOT_SERVING
   * keeps the instance registered but takes it out of the picks of clients that
   * check health (`dial`'s `healthCheck`), for example while a dependency is down.
   * `close()` sets NOT_SERVING for good.
   */
  setHealth(status: "SERVING" | "NOT_SERVING"): void;
  /**
   * Drains and stops: health NOT_SERVING, lease revoked (the key leaves etcd),
   * `drainMs` for clients to notice, then a graceful shutdown bounded by
   * `shutdownMs`, then a forced one. Never hangs; idempotent.
   */
  close(): Promise<void>;
}

const BIND = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$/;

function localAddress(): string {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? []) {
      if (address.family === "IPv4" && !address.internal) return address.address;
    }
  }
  return "127.0.0.1";
}

/**
 * Serves a grpc-js server under a service name: binds it (`bind`, default
 * `127.0.0.1:0`), adds the standard `grpc.health.v1.Health` service reporting
 * SERVING for `""` and for `service`, then registers `advertise` (default: the
 * bound address) in etcd. Add your own services to `server` before calling.
 *
 * @example
 * ```ts ignore
 * import * as grpc from "@grpc/grpc-js";
 * import { connect } from "@seed/grpc-etcd";
 * import { serve } from "@seed/grpc-etcd/grpc";
 * const server = new grpc.Server();
 * server.addService(Greeter.service, { SayHello: (call, cb) => cb(null, { message: "hi" }) });
 * await using serving = await serve(server, connect({ hosts: "127.0.0.1:2379" }), "svc/greeter");
 * ```
 *
 * @param server a grpc-js server with its services added, not yet bound
 * @param client the etcd client
 * @param service the service name to register under
 * @param options bind/advertise addresses, credentials, TTL, metadata, drain timing, signal
 * @returns the serving handle, once registered
 * @throws {TypeError} for an unusable `bind`, `advertise`, service name or server
 * @throws {RangeError} for bad timings or TTL
 */
export async function serve(
  server: grpc.Server,
  client: EtcdClient,
  service: string,
  options: ServeOptions = {},
): Promise<Serving> {
  checkService(service);
  if (
    !server || typeof server.bindAsync !== "function" || typeof server.tryShutdown !== "function"
  ) {
    throw new TypeError(`server must be a grpc-js Server, got ${String(server)}`);
  }
  const bind = options.bind ?? "127.0.0.1:0";
  const match = typeof bind === "string" ? BIND.exec(bind) : null;
  if (!match || Number(match[2]) > 65535) {
    throw new TypeError(
      `options.bind must be "host:port" (port 0 picks one), got ${JSON.stringify(bind)}`,
    );
  }
  if (options.advertise !== undefined) {
    const problem = addrProblem(options.advertise);
    if (problem) {
      throw new TypeError(`options.advertise ${problem}, got ${JSON.stringify(options.advertise)}`);
    }
  }
  const drainMs = milliseconds(options.drainMs, "drainMs", 1000, { zero: true });
  const shutdownMs = milliseconds(options.shutdownMs, "shutdownMs", 5000, { zero: true });
  const { ttl, timeout } = checkTimings(options);
  options.signal?.throwIfAborted();

  const health = new HealthImplementation({ "": "SERVING", [service]: "SERVING" });
  health.addToServer(server);
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(
      bind,
      options.credentials ?? grpc.ServerCredentials.createInsecure(),
      (error, port) => {
        if (error) {
          reject(new Error(`serve(): could not bind ${bind}: ${error.message}`, { cause: error }));
        } else resolve(port);
      },
    );
  });
  const host = match[1]!;
  const unspecified = host === "0.0.0.0" || host === "[::]" || host === "::";
  const addr = options.advertise ?? `${unspecified ? localAddress() : host}:${port}`;

  let registration: Registration;
  try {
    registration = await register(client, service, { addr, metadata: options.metadata }, {
      ttl,
      timeout,
      signal: options.signal,
      onError: options.onError,
    });
  } catch (error) {
    server.forceShutdown();
    throw error;
  }

  /** What the health service answers, for the server as a whole and for `service`. */
  const report = (status: "SERVING" | "NOT_SERVING") => {
    health.setStatus("", status);
    health.setStatus(service, status);
  };
  let closing: Promise<void> | undefined;
  const signal = options.signal;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      signal?.removeEventListener("abort", onAbort);
      report("NOT_SERVING");
      await registration.close();
      await sleep(drainMs);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, shutdownMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      // Streams still open (such as health Watch) do not outlive close().
      server.forceShutdown();
    })();
    return closing;
  };
  const onAbort = () => void close();
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) onAbort();
  const setHealth = (status: "SERVING" | "NOT_SERVING") => {
    if (status !== "SERVING" && status !== "NOT_SERVING") {
      throw new TypeError(`status must be "SERVING" or "NOT_SERVING", got ${String(status)}`);
    }
    if (!closing) report(status);
  };
  return { addr, port, registration, setHealth, close, [Symbol.asyncDispose]: close };
}
