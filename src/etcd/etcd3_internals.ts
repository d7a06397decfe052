/**
 * Every reach into `etcd3`'s private parts, in one place to audit when
 * `etcd3` is bumped (it is pinned exactly for this reason). `etcd3` 1.1.2 keeps
 * its connection pool in `etcd.pool`: `hosts` (each with `host`,
 * `channelCredentials`, `getServiceClient(name)` and `cachedServices`),
 * `withConnection(service, fn, hosts)`, `markFailed(host, error)`,
 * `shuffledHosts()` and `authenticator` (`credentials`, `invalidateMetadata()`,
 * `getCredentialsFromHost(address, name, password, callOptions)`); and its
 * options in `etcd.options`. {@linkcode Etcd3Pool} checks that they are there
 * and fails loudly if not.
 *
 * @module
 */
import { castGrpcError, type Etcd3 } from "etcd3";
import { setImmediate } from "node:timers";

/** One host of etcd3's pool. */
export interface PoolHost {
  /** The host as etcd3 keeps it (`host:port`). */
  readonly host: string;
}

/** A grpc-js duplex stream, as far as this module uses one. */
export interface Stream {
  /** Whether the stream can still be written to. */
  readonly writable: boolean;
  /** Adds a listener. */
  // deno-lint-ignore no-explicit-any
  on(event: "data" | "error" | "end", listener: (value: any) => void): unknown;
  /** Writes a message. */
  write(message: object): unknown;
  /** Half-closes the stream. */
  end(): void;
  /** Cancels the call. */
  cancel(): void;
}

type StreamClient = Record<string, (metadata: unknown, options: object) => Stream>;

/** A grpc-js client of one of etcd's services, as far as this module uses one. */
interface ServiceClient {
  close(): void;
}

/** etcd's Auth service client (grpc-js), as far as this module uses one. */
interface AuthClient extends ServiceClient {
  authenticate(
    request: { name: string; password: string },
    options: object,
    callback: (error: Error | null, response?: { token: string }) => void,
  ): unknown;
}

/** One host of etcd3's pool, with the parts used here. */
interface Host extends PoolHost {
  channelCredentials?: unknown;
  /** The host's cached client of `service`, made on first use (throws once closed). */
  getServiceClient(service: string): ServiceClient;
  /** The clients made so far, by service. */
  cachedServices: Record<string, ServiceClient | undefined>;
  closed: boolean;
}

/** etcd3's authenticator, typed by the parts used here. */
interface Authenticator {
  credentials?: unknown;
  invalidateMetadata?(): void;
  getCredentialsFromHost?(
    address: string,
    name: string,
    password: string,
    callOptions: object,
  ): Promise<string>;
}

/** etcd3's pool, typed by the parts used here. */
interface Pool {
  readonly hosts: readonly Host[];
  withConnection<T>(
    service: string,
    fn: (connection: { resource: PoolHost; client: StreamClient; metadata: unknown }) => T,
    hosts?: Iterator<PoolHost>,
  ): Promise<T>;
  markFailed(resource: PoolHost, error: Error): void;
  shuffledHosts(): Iterator<PoolHost>;
  readonly authenticator?: Authenticator;
}

/** The hosts an `Etcd3` instance was made with (its `options.hosts`), or `["etcd3"]`. */
export function configuredHosts(etcd: Etcd3): string[] {
  const hosts = (etcd as unknown as { options?: { hosts?: string | string[] } }).options?.hosts;
  return hosts === undefined ? ["etcd3"] : typeof hosts === "string" ? [hosts] : hosts;
}

/** etcd3's connection pool, reached by name. */
export class Etcd3Pool {
  readonly #pool: Pool;

  /**
   * @param etcd the etcd3 client
   * @throws {Error} when this version of etcd3 keeps its pool elsewhere
   */
  constructor(etcd: Etcd3) {
    const pool = (etcd as unknown as { pool?: Partial<Pool> }).pool;
    if (
      !pool || !Array.isArray(pool.hosts) || typeof pool.withConnection !== "function" ||
      typeof pool.markFailed !== "function" || typeof pool.shuffledHosts !== "function" ||
      !pool.hosts.every((host) =>
        typeof host.getServiceClient === "function" && typeof host.cachedServices === "object"
      )
    ) {
      throw new Error(
        "grpc-etcd: this version of npm:etcd3 keeps its connection pool elsewhere; " +
          "use the version this module pins",
      );
    }
    this.#pool = pool as Pool;
  }

  /** The pool's hosts. */
  get hosts(): readonly PoolHost[] {
    return this.#pool.hosts;
  }

  /**
   * Opens a stream call (watch, lease keepalive) on the first host of `order`
   * that etcd3's fault handling lets through. As etcd3's own stream calls do,
   * an error on a live stream counts against the host.
   */
  openStream(
    service: "Lease" | "Watch",
    method: "leaseKeepAlive" | "watch",
    options: object,
    order: Iterator<PoolHost>,
  ): Promise<{ stream: Stream; host: PoolHost }> {
    const pool = this.#pool;
    return pool.withConnection(service, ({ resource, client, metadata }) => {
      const stream = client[method]!(metadata, options);
      stream.on("error", (error: Error) => {
        if (stream.writable) pool.markFailed(resource, error);
      });
      return { stream, host: resource };
    }, order);
  }

  /** Makes etcd3's unary calls (and their retries) try hosts in `order`'s order. */
  useHostOrder(order: (hosts: readonly PoolHost[]) => Iterator<PoolHost>): void {
    const pool = this.#pool;
    pool.shuffledHosts = () => order(pool.hosts);
  }

  /** Forgets the auth token, so that the next call authenticates again. */
  invalidateToken(): void {
    this.#pool.authenticator?.invalidateMetadata?.();
  }

  /**
   * Makes every connection (to each host, and etcd3's own calls to
   * authenticate) use `credentials`: etcd3 takes TLS material only as buffers
   * for grpc-js's `createSsl`, whose connections to an IP address fail under Deno.
   *
   * @throws {Error} when this version of etcd3 keeps its credentials elsewhere
   */
  useCredentials(credentials: unknown): void {
    const { hosts, authenticator } = this.#pool;
    if (
      !hosts.every((host) => "channelCredentials" in host) || !authenticator ||
      !("credentials" in authenticator)
    ) {
      throw new Error(
        "grpc-etcd: this version of npm:etcd3 keeps its credentials elsewhere; " +
          "TLS cannot be set up",
      );
    }
    for (const host of hosts) host.channelCredentials = credentials;
    authenticator.credentials = credentials;
  }

  /**
   * Makes etcd3 authenticate over each host's own Auth client, cached with the
   * host's other clients and closed with them. etcd3 1.1.2 makes a new grpc-js
   * client for every authentication (the first, each token renewal, each retry
   * while etcd is down) and never closes it: each would keep its channel and
   * timers for good. The errors are etcd3's, as before
   * (`EtcdAuthenticationFailedError` for a wrong password, …).
   *
   * @throws {Error} when this version of etcd3 authenticates some other way
   */
  authenticateOverPool(): void {
    const { hosts, authenticator } = this.#pool;
    if (typeof authenticator?.getCredentialsFromHost !== "function") {
      throw new Error(
        "grpc-etcd: this version of npm:etcd3 authenticates some other way; " +
          "use the version this module pins",
      );
    }
    authenticator.getCredentialsFromHost = (address, name, password, callOptions) =>
      new Promise<string>((resolve, reject) => {
        const host = hosts.find((host) => host.host === address);
        if (!host) {
          throw new Error(`grpc-etcd: etcd3 authenticates with ${address}, not one of its hosts`);
        }
        const client = host.getServiceClient("Auth") as AuthClient;
        client.authenticate({ name, password }, callOptions ?? {}, (error, response) => {
          if (error) reject(castGrpcError(error));
          else resolve(response!.token);
        });
      });
  }

  /**
   * Closes every grpc-js client of every host, and marks the hosts closed
   * (later calls fail with etcd3's `ClientClosedError`). etcd3's own `close()`
   * keeps a client whose channel is still connecting open for up to 1 s more
   * (so that its calls do not fail UNAVAILABLE, grpc-node issue 1487): after
   * our `close()` every call fails as closed anyway. Two things still outlive
   * it: a call already running on a connection settles at its own deadline
   * (grpc-js cancels only queued calls), and a client etcd3 set aside after a
   * recoverable error closes itself within 1 s (etcd3's `resetAllServices`).
   *
   * The clients are closed one `setImmediate` later, once the hosts are marked
   * closed (no new client is made): grpc-js 1.14 hands an IP target's address
   * to a channel's balancer in a `setImmediate` even when the channel was
   * closed meanwhile, and that closed channel then connects and keeps its
   * connection (or, with etcd gone, its reconnect timers) for good.
   *
   * @returns when every client is closed
   */
  async closeNow(): Promise<void> {
    for (const host of this.#pool.hosts) host.closed = true;
    await new Promise<void>((resolve) => setImmediate(resolve));
    for (const host of this.#pool.hosts) {
      const clients = Object.values(host.cachedServices);
      host.cachedServices = Object.create(null);
      for (const client of clients) client?.close();
    }
  }
}
