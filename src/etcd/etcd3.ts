/**
 * `connect()`: the {@linkcode EtcdClient} over `npm:etcd3`, with fault
 * handling tuned for short outages. With `./etcd3_client.ts` and
 * `./etcd3_internals.ts`, the only files that import `etcd3`.
 *
 * @module
 */
import { circuitBreaker, ConsecutiveBreaker, handleWhen, retry } from "cockatiel";
import { Etcd3, isRecoverableError } from "etcd3";
import { milliseconds } from "../_options.ts";
import type { EtcdClient } from "./client.ts";
import { Etcd3Client } from "./etcd3_client.ts";
import { configuredHosts, Etcd3Pool } from "./etcd3_internals.ts";
import { checkAuth, checkHosts, originOf } from "./options.ts";
import { EtcdTlsCredentials } from "./tls.ts";
import { checkTlsMaterial, clientCertProblem, type Pem, pem } from "./tls_material.ts";

export type { Pem } from "./tls_material.ts";

/** How long the one-off TLS handshake that explains a failure waits for etcd, at most, in ms. */
const HANDSHAKE_MS = 3000;

/** Options of {@linkcode connect}. */
export interface ConnectOptions {
  /** etcd client URLs or `host:port`s, e.g. `"http://127.0.0.1:2379"`. */
  readonly hosts: string | readonly string[];
  /** User and password, when etcd has auth enabled. */
  readonly auth?: { readonly username: string; readonly password: string };
  /**
   * TLS material: the CA that signed etcd's certificate, and a client certificate
   * and key (both or neither). Each is PEM text, PEM bytes or a file path, read
   * and checked by `connect()`. Hosts may be DNS names or IP addresses; etcd's
   * certificate must name each as given. Without `tls`, `https://` hosts are
   * checked against the system's CAs.
   */
  readonly tls?: { readonly ca?: Pem; readonly cert?: Pem; readonly key?: Pem };
  /**
   * The deadline of every unary call (get, put, lease grant/renew/revoke), in ms.
   * Default 5000. A call to an etcd that is down or frozen fails after this.
   */
  readonly dialTimeout?: number;
}

/**
 * An `Etcd3` instance from `npm:etcd3`, described by the parts this module uses
 * (so that its types stay out of this module's public surface).
 */
export interface Etcd3Instance {
  /** The KV service client. */
  readonly kv: object;
  /** The lease service client. */
  readonly leaseClient: object;
  /** The watch service client. */
  readonly watchClient: object;
  /** Closes every connection. */
  close(): void;
}

/**
 * Connects to etcd through `npm:etcd3`. Given options, the client owns its
 * connections and `close()` releases them; given an existing `Etcd3`, it wraps
 * it without owning it (`close()` leaves it open).
 *
 * The owned client is tuned for short outages: each host's circuit breaker opens
 * after 3 failures and half-opens after 0.5 s (etcd3's default is 5 s, longer
 * than short lease TTLs), every unary call has a deadline, calls try first the
 * hosts that did not just hang or fail (a frozen member is passed over for 5 s),
 * and gRPC keepalive pings detect a dead connection within about 15 s.
 *
 * @example
 * ```ts ignore
 * import { connect, register } from "@seed/grpc-etcd";
 * await using client = connect({ hosts: "http://127.0.0.1:2379" });
 * await using reg = await register(client, "svc/echo", { addr: "127.0.0.1:50051" });
 * ```
 *
 * @param options the hosts and credentials, or an `Etcd3` instance to wrap
 * @returns the client
 * @throws {TypeError} when `hosts` is empty or malformed, or mixes http and https
 * @throws {RangeError} when `dialTimeout` is not a positive number
 */
export function connect(options: ConnectOptions | Etcd3Instance): EtcdClient {
  if (options instanceof Etcd3) {
    return new Etcd3Client(options, configuredHosts(options), false, 5000);
  }
  if (typeof options !== "object" || options === null || !("hosts" in options)) {
    throw new TypeError(
      `options must be { hosts, … } or an Etcd3 instance from npm:etcd3, got ${String(options)}`,
    );
  }
  const { hosts: urls, https } = checkHosts(options.hosts);
  const hosts = urls.map((host) => host.name);
  const dialTimeout = milliseconds(options.dialTimeout, "dialTimeout", 5000);
  const auth = checkAuth(options.auth);
  const { tls } = options;
  if (tls !== undefined && (tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError(
      `options.tls.cert and options.tls.key go together, got only ${tls.cert ? "cert" : "key"}`,
    );
  }
  if (tls !== undefined && urls.some((host) => host.scheme === "http")) {
    throw new TypeError(
      `options.tls needs https:// hosts, got ${JSON.stringify(hosts)}`,
    );
  }
  const secure = tls !== undefined || https;
  let credentials: EtcdTlsCredentials | undefined;
  let clientCert: (() => string | undefined) | undefined;
  if (secure) {
    const [ca, key, cert] = [pem("ca", tls?.ca), pem("key", tls?.key), pem("cert", tls?.cert)];
    const { cas, certificate } = checkTlsMaterial(ca, key, cert);
    if (certificate) clientCert = () => clientCertProblem(certificate, cas);
    credentials = new EtcdTlsCredentials(ca, key, cert);
  }
  const etcd = new Etcd3({
    hosts: urls.map((host) => originOf(host, secure)),
    auth,
    dialTimeout,
    defaultCallOptions: (context) => context.isStream ? {} : { deadline: Date.now() + dialTimeout },
    faultHandling: {
      host: () =>
        circuitBreaker(handleWhen(isRecoverableError), {
          halfOpenAfter: 500,
          breaker: new ConsecutiveBreaker(3),
        }),
      global: retry(handleWhen(isRecoverableError), { maxAttempts: hosts.length > 1 ? 2 : 1 }),
    },
    grpcOptions: {
      // etcd batches watch events into one response, and a prefix read returns everything at
      // once: either can pass grpc-js's 4 MiB default, and a watch response that cannot be
      // received would fail the same way on every retry. etcd's Go client has no limit either.
      "grpc.max_receive_message_length": -1,
      "grpc.keepalive_time_ms": 10_000,
      "grpc.keepalive_timeout_ms": 5_000,
      // etcd refuses pings on a connection without streams (PermitWithoutStream=false) and
      // answers them with GOAWAY "too many pings"; ping only while calls are open.
      "grpc.keepalive_permit_without_calls": 0,
    },
  });
  const pool = new Etcd3Pool(etcd);
  if (credentials) pool.useCredentials(credentials);
  if (auth) pool.authenticateOverPool();
  const tlsMode = {
    secure,
    ca: tls?.ca !== undefined,
    clientCert,
  };
  // For a TLS failure that grpc-js reports without a reason: ask each host in turn.
  const tlsCredentials = credentials;
  const handshake = tlsCredentials && (async () => {
    for (const host of urls) {
      const origin = originOf(host, true);
      const said = await tlsCredentials.handshake(origin, Math.min(dialTimeout, HANDSHAKE_MS));
      if (said !== undefined) return said;
    }
    return undefined;
  });
  return new Etcd3Client(etcd, hosts, true, dialTimeout, tlsMode, auth?.username, handshake);
}
