/**
 * {@linkcode EtcdClient} over `npm:etcd3`, with fault handling tuned for short
 * outages. The only file that imports `etcd3`.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import {
  ClientClosedError as Etcd3ClosedError,
  Etcd3,
  EtcdAuthenticationFailedError,
  EtcdLeaseInvalidError,
  EtcdPermissionDeniedError,
  type IKeyValue,
  type IOptions,
  isRecoverableError,
  type IWatchResponse,
} from "etcd3";
import {
  circuitBreaker,
  ConsecutiveBreaker,
  handleWhen,
  isBrokenCircuitError,
  retry,
} from "cockatiel";
import { Queue } from "../_async.ts";
import { milliseconds } from "../_options.ts";
import {
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
} from "./client.ts";
import { EtcdTlsCredentials } from "./tls.ts";

/**
 * PEM text (a string holding `-----BEGIN`), PEM bytes, or the path of a PEM
 * file (any other string; read once by `connect()`).
 */
export type Pem = string | Uint8Array;

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

const HOST = /^(?:(https?):\/\/)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})\/?$/;

function checkHosts(hosts: unknown): string[] {
  const list = typeof hosts === "string" ? [hosts] : hosts;
  if (!Array.isArray(list) || list.length === 0) {
    throw new TypeError(
      `options.hosts must be a non-empty string or array of "host:port" or URLs, got ${
        JSON.stringify(hosts)
      }`,
    );
  }
  const schemes = new Set<string>();
  for (const host of list) {
    const match = typeof host === "string" ? HOST.exec(host) : null;
    const port = match ? Number(match[3]) : 0;
    if (!match || port < 1 || port > 65535) {
      throw new TypeError(
        `options.hosts entries must be "host:port" or "http(s)://host:port", got ${
          JSON.stringify(host)
        }`,
      );
    }
    schemes.add(match[1] ?? "http");
  }
  if (schemes.size > 1) {
    throw new TypeError(
      `options.hosts must be all https:// or all http://, got ${JSON.stringify(list)}`,
    );
  }
  return list as string[];
}

function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

function toKeyValue(kv: IKeyValue): KeyValue {
  return {
    key: kv.key.toString("utf8"),
    value: new Uint8Array(kv.value.buffer, kv.value.byteOffset, kv.value.byteLength),
    modRevision: Number(kv.mod_revision),
    lease: String(kv.lease ?? "0"),
  };
}

function toEvent(event: IWatchResponse["events"][number]): WatchEvent {
  return event.type === "Put" ? { type: "put", kv: toKeyValue(event.kv) } : {
    type: "delete",
    key: event.kv.key.toString("utf8"),
    modRevision: Number(event.kv.mod_revision),
  };
}

/** The parts of etcd3's (internal) connection pool that stream calls go through. */
interface PoolHost {
  readonly host: string;
}
interface Pool {
  readonly hosts: readonly PoolHost[];
  withConnection<T>(
    service: string,
    fn: (connection: { resource: PoolHost; client: StreamClient; metadata: unknown }) => T,
    hosts?: Iterator<PoolHost>,
  ): Promise<T>;
  markFailed(resource: PoolHost, error: Error): void;
  readonly authenticator?: { invalidateMetadata?(): void };
}
/** A grpc-js duplex stream, as far as this file uses one. */
interface Stream {
  readonly writable: boolean;
  // deno-lint-ignore no-explicit-any
  on(event: "data" | "error" | "end", listener: (value: any) => void): unknown;
  write(message: object): unknown;
  end(): void;
  cancel(): void;
}
type StreamClient = Record<string, (metadata: unknown, options: object) => Stream>;

/** The TLS material given to `connect()`, for explaining handshake failures. */
interface TlsMode {
  readonly secure: boolean;
  readonly ca: boolean;
  /**
   * Given when a client certificate is: says what is wrong with it, as far as
   * this process can tell.
   */
  readonly clientCert?: () => string | undefined;
}

/** How long a host whose stream hung or failed goes to the back of the line, in ms. */
const AVOID_MS = 5000;

class Etcd3Client implements EtcdClient {
  readonly hosts: readonly string[];
  readonly #etcd: Etcd3;
  readonly #owned: boolean;
  readonly #timeout: number;
  readonly #tls: TlsMode;
  readonly #user: string | undefined;
  /** Hosts whose stream just hung or failed, and until when new streams avoid them. */
  readonly #avoid = new Map<PoolHost, number>();
  #closed = false;

  constructor(
    etcd: Etcd3,
    hosts: readonly string[],
    owned: boolean,
    timeout: number,
    tls: TlsMode = { secure: false, ca: false },
    user?: string,
  ) {
    this.#etcd = etcd;
    this.hosts = hosts;
    this.#owned = owned;
    this.#timeout = timeout;
    this.#tls = tls;
    this.#user = user;
    if (owned) {
      // Unary calls too (etcd3's exec and its retries) try hosts in our order, so that a
      // put or a grant does not wait out its deadline on a member a stream found frozen.
      const pool = this.#pool as Pool & { shuffledHosts(): Iterator<PoolHost> };
      pool.shuffledHosts = () => this.#preferred(pool.hosts);
    }
  }

  /**
   * Call options of a unary call. An owned client leaves the deadline to its
   * `defaultCallOptions`, which etcd3 evaluates per attempt: a fixed deadline
   * here would be spent by a first attempt that hung on a frozen host, and the
   * retry on another host would fail at once ("Deadline exceeded after 0.000s").
   */
  #deadline(): { deadline: number } | undefined {
    return this.#owned ? undefined : { deadline: Date.now() + this.#timeout };
  }

  /**
   * Runs a call, turning "client closed" (ours or etcd3's) into ClientClosedError
   * and a refusal by etcd's RBAC into PermissionDeniedError naming `operation`.
   */
  async #run<T>(operation: string, call: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new ClientClosedError();
    try {
      return await call();
    } catch (error) {
      if (this.#closed || error instanceof Etcd3ClosedError) {
        throw new ClientClosedError({ cause: error });
      }
      if (error instanceof EtcdPermissionDeniedError) {
        throw new PermissionDeniedError(operation, this.#user, { cause: error });
      }
      throw this.#explain(error);
    }
  }

  /** etcd3's connection pool (internal to etcd3: reached by name, typed by what is used). */
  get #pool(): Pool {
    return (this.#etcd as unknown as { pool: Pool }).pool;
  }

  /**
   * Opens a stream (watch, keepalive) on the host least likely to hang: etcd3
   * picks hosts at random and its breaker only counts failures, so a frozen
   * member (TCP up, nothing answers) would keep getting half of them. Hosts
   * whose last stream hung or failed go last for {@linkcode AVOID_MS}.
   */
  async #openStream(
    service: "Lease" | "Watch",
    method: "leaseKeepAlive" | "watch",
    options: object,
  ): Promise<{ stream: Stream; host: PoolHost }> {
    const pool = this.#pool;
    return await pool.withConnection(service, ({ resource, client, metadata }) => {
      const stream = client[method]!(metadata, options);
      // As etcd3's own stream calls do: an error on a live stream counts against the host.
      stream.on("error", (error: Error) => {
        if (stream.writable) pool.markFailed(resource, error);
      });
      return { stream, host: resource };
    }, this.#preferred(pool.hosts));
  }

  /**
   * Hosts in the order to try: the ones not to avoid, shuffled, then the others.
   * Asking for another host means the one before failed (etcd3 moves on only after a
   * failure or an open breaker): that one is avoided from then on.
   */
  *#preferred(hosts: readonly PoolHost[]): Generator<PoolHost> {
    const now = Date.now();
    const fresh: PoolHost[] = [];
    const avoided: PoolHost[] = [];
    for (const host of hosts) {
      if ((this.#avoid.get(host) ?? 0) > now) avoided.push(host);
      else fresh.push(host);
    }
    for (let i = fresh.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [fresh[i], fresh[j]] = [fresh[j]!, fresh[i]!];
    }
    avoided.sort((a, b) => this.#avoid.get(a)! - this.#avoid.get(b)!);
    const order = [...fresh, ...avoided];
    let previous: PoolHost | undefined;
    while (true) {
      for (const host of order) {
        if (previous && previous !== host) this.#avoidHost(previous);
        previous = host;
        yield host;
      }
    }
  }

  /** Sends new streams elsewhere for a while (see {@linkcode #openStream}). */
  #avoidHost(host: PoolHost): void {
    if (this.#closed) return;
    this.#avoid.set(host, Date.now() + AVOID_MS);
  }

  /**
   * Forgets the auth token after etcd called it invalid (expired, or etcd restarted):
   * etcd3 does this itself for unary calls, but streams (watch, keepalive) would be
   * re-created with the stale token forever.
   */
  #tokenRejected(reason: string): boolean {
    if (!/invalid auth token/i.test(reason)) return false;
    this.#pool.authenticator?.invalidateMetadata?.();
    return true;
  }

  #lastFailure: Error | undefined;

  /**
   * Says in plain words what a connection error means: TLS and auth failures
   * read as such, and an open circuit breaker names the failure that opened it.
   */
  #explain(error: unknown): unknown {
    if (!(error instanceof Error)) return error;
    if (isBrokenCircuitError(error)) {
      const last = this.#lastFailure;
      return last
        ? new Error(`${last.message} (calls to this host pause briefly after failures)`, {
          cause: error,
        })
        : error;
    }
    const text = error.message;
    // etcd aborts a TLS handshake it rejects; the client then sees the alert, or only EPIPE or
    // ECONNRESET when its own write loses the race. Either way the certificate is the suspect.
    const aborted = /EPIPE|ECONNRESET|bad ?certificate|certificate ?required/i.test(text);
    let hint: string | undefined;
    if (/unable to verify|self[- ]signed|certificate verify failed|unknown ?ca/i.test(text)) {
      hint = this.#tls.ca
        ? "etcd's server certificate is not signed by the CA given in tls.ca"
        : "etcd's server certificate is not signed by a CA this system trusts (give etcd's CA " +
          "as tls.ca)";
    } else if (/servername' must not be an IP address/.test(text)) {
      // Only an Etcd3 instance made by the user gets here: connect()'s own clients avoid it.
      hint = "Deno refuses an IP address as TLS server name, which etcd3's own TLS setup sends; " +
        "let connect({ hosts, tls }) make the client, or give etcd hosts by DNS name";
    } else if (/does not match certificate's altnames|ERR_TLS_CERT_ALTNAME/i.test(text)) {
      hint = "etcd's server certificate does not name the host as given in options.hosts";
    } else if (
      !this.#tls.secure &&
      /No connection established\. Last error: (Failed to connect \(|read ECONNRESET)/.test(text)
    ) {
      // Closed before any HTTP/2 answer ("Failed to connect" is grpc-js's words for that), or
      // reset: a TLS server drops a plain-text client either way.
      hint = "etcd accepted the connection but did not answer in plain-text HTTP/2; " +
        "if it serves TLS, give https:// hosts";
    } else if (this.#tls.secure && /disconnected before secure TLS connection/i.test(text)) {
      hint = "etcd closed the connection before the TLS handshake completed; " +
        "if it serves plain text, give http:// hosts";
    } else if (aborted && this.#tls.secure && !this.#tls.clientCert) {
      hint = "etcd closed the TLS connection; it may require a client certificate " +
        "(tls.cert and tls.key were not given)";
    } else if (aborted && this.#tls.clientCert) {
      const problem = this.#tls.clientCert();
      hint = problem
        ? `etcd rejected the client certificate: ${problem}`
        : "etcd rejected the client certificate or closed the TLS connection " +
          "(expired, or not signed by a CA etcd trusts)";
    }
    const explained = error instanceof EtcdAuthenticationFailedError
      ? new AuthenticationError(this.#user ?? "", { cause: error })
      : this.#user === undefined && /user name is empty/.test(text)
      ? new AuthenticationError(undefined, { cause: error })
      : hint
      ? new Error(`${hint}: ${text}`, { cause: error })
      : error;
    this.#lastFailure = explained;
    return explained;
  }

  getPrefix(prefix: string): Promise<RangeResult> {
    if (prefix === "") return Promise.reject(new TypeError("prefix must not be empty"));
    const key = Buffer.from(prefix);
    return this.#run(`reading the prefix ${JSON.stringify(prefix)}`, async () => {
      const res = await this.#etcd.kv.range({ key, range_end: prefixEnd(key) }, this.#deadline());
      return { revision: Number(res.header.revision), kvs: res.kvs.map(toKeyValue) };
    });
  }

  get(key: string): Promise<RangeResult> {
    return this.#run(`reading ${JSON.stringify(key)}`, async () => {
      const res = await this.#etcd.kv.range({ key: Buffer.from(key) }, this.#deadline());
      return { revision: Number(res.header.revision), kvs: res.kvs.map(toKeyValue) };
    });
  }

  put(key: string, value: string, lease?: string): Promise<number> {
    return this.#run(`writing ${JSON.stringify(key)}`, () => this.#put(key, value, lease));
  }

  async #put(key: string, value: string, lease?: string): Promise<number> {
    try {
      const res = await this.#etcd.kv.put(
        { key: Buffer.from(key), value: Buffer.from(value), lease: lease ?? "0" },
        this.#deadline(),
      );
      return Number(res.header.revision);
    } catch (error) {
      if (lease && error instanceof EtcdLeaseInvalidError) {
        throw new LeaseNotFoundError(lease, { cause: error });
      }
      throw error;
    }
  }

  delete(key: string): Promise<number> {
    return this.#run(`deleting ${JSON.stringify(key)}`, async () => {
      const res = await this.#etcd.kv.deleteRange({ key: Buffer.from(key) }, this.#deadline());
      return Number(res.header.revision);
    });
  }

  grantLease(ttl: number): Promise<string> {
    return this.#run("granting a lease", async () => {
      const res = await this.#etcd.leaseClient.leaseGrant({ TTL: ttl }, this.#deadline());
      if (res.error) throw new Error(`etcd refused a lease of ${ttl} s: ${res.error}`);
      return String(res.ID);
    });
  }

  keepAlive(lease: string, options: { timeout?: number } = {}): Promise<number> {
    const timeout = Math.min(options.timeout ?? this.#timeout, this.#timeout);
    return this.#run(`renewing lease ${lease}`, () => this.#keepAlive(lease, timeout));
  }

  async #keepAlive(lease: string, timeout: number): Promise<number> {
    const { stream, host } = await this.#openStream("Lease", "leaseKeepAlive", {
      deadline: Date.now() + timeout,
    });
    return await new Promise<number>((resolve, reject) => {
      stream.on("data", (res: { TTL: string }) => {
        this.#avoid.delete(host);
        resolve(Number(res.TTL));
        stream.end();
      });
      // Keep a listener for the whole life of the stream: an 'error' with none crashes.
      stream.on("error", (error: Error) => {
        if (!this.#tokenRejected(error.message)) this.#avoidHost(host);
        reject(error);
      });
      stream.on("end", () => reject(new Error("etcd ended the keepalive stream")));
      stream.write({ ID: lease });
    });
  }

  revokeLease(lease: string): Promise<void> {
    return this.#run(`revoking lease ${lease}`, async () => {
      try {
        await this.#etcd.leaseClient.leaseRevoke({ ID: lease }, this.#deadline());
      } catch (error) {
        if (!(error instanceof EtcdLeaseInvalidError)) throw error;
      }
    });
  }

  async *watch(prefix: string, options: WatchOptions): AsyncIterable<WatchBatch> {
    const { startRevision, signal, exact = false, heartbeat } = options;
    if (signal?.aborted) return;
    const key = Buffer.from(prefix);
    const what = `watching ${JSON.stringify(prefix)}`;
    // Open first: an open that throws must leave nothing behind on the caller's signal.
    const { stream, host } = await this.#run(what, () => this.#openStream("Watch", "watch", {}));
    const queue = new Queue<WatchBatch>();
    const stop = () => queue.end();
    signal?.addEventListener("abort", stop, { once: true });
    if (signal?.aborted) queue.end();
    // Whether a progress request is out and unanswered (see WatchOptions.heartbeat).
    let waiting = false;
    stream.on("data", (res: IWatchResponse) => {
      waiting = false;
      if (res.canceled) {
        const compacted = Number(res.compact_revision);
        const reason = String(res.cancel_reason);
        const rejected = this.#tokenRejected(reason);
        queue.fail(
          compacted > 0
            ? new CompactedError(compacted)
            : /permission denied/i.test(reason)
            ? new PermissionDeniedError(what, this.#user)
            : new Error(
              `etcd cancelled the watch on ${prefix}: ${reason}${
                rejected ? " (the auth token is renewed for the next attempt)" : ""
              }`,
            ),
        );
        return;
      }
      queue.push({ revision: Number(res.header.revision), events: res.events.map(toEvent) });
    });
    // Keep a listener for the whole life of the stream: an 'error' with none crashes.
    stream.on("error", (error: Error) => {
      if (!this.#tokenRejected(error.message)) this.#avoidHost(host);
      queue.fail(this.#closed ? new ClientClosedError({ cause: error }) : error);
    });
    stream.on("end", () => queue.fail(new Error(`etcd ended the watch stream on ${prefix}`)));
    const timer = heartbeat === undefined ? undefined : setInterval(() => {
      if (waiting) {
        this.#avoidHost(host);
        queue.fail(
          new Error(
            `etcd at ${host.host} did not answer on the watch of ${prefix} for ${heartbeat} ms ` +
              "(a frozen or unreachable member); watching again",
          ),
        );
        return;
      }
      waiting = true;
      stream.write({ progress_request: {} });
    }, heartbeat);
    try {
      stream.write({
        create_request: {
          key,
          range_end: exact ? undefined : prefixEnd(key),
          start_revision: startRevision,
          progress_notify: true,
        },
      });
      yield* queue;
    } finally {
      clearInterval(timer);
      signal?.removeEventListener("abort", stop);
      // end() first: etcd3 counts an error on a still-writable stream against the host.
      stream.end();
      stream.cancel();
    }
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      if (this.#owned) this.#etcd.close();
    }
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** PEM text or bytes as given, or read from the file a string names. */
const CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

function pem(name: string, value: Pem | undefined): Buffer | undefined {
  if (value === undefined) return undefined;
  if (value instanceof Uint8Array) return Buffer.from(value);
  if (typeof value !== "string" || value === "") {
    throw new TypeError(
      `options.tls.${name} must be PEM text, PEM bytes or a file path, got ${String(value)}`,
    );
  }
  if (value.includes("-----BEGIN")) return Buffer.from(value);
  let bytes: Buffer;
  try {
    bytes = readFileSync(value);
  } catch (error) {
    throw new TypeError(
      `options.tls.${name}: could not read the file ${JSON.stringify(value)}: ${
        (error as Error).message
      }`,
      { cause: error },
    );
  }
  if (!bytes.toString("latin1").includes("-----BEGIN")) {
    throw new TypeError(`options.tls.${name}: the file ${JSON.stringify(value)} is not PEM`);
  }
  return bytes;
}

/** A certificate's subject on one line (`CN=client`, `O=acme, CN=client`). */
function subject(certificate: X509Certificate): string {
  return certificate.subject.replaceAll("\n", ", ");
}

/** Runs `parse`, or throws a TypeError saying that `what` cannot be read, and why. */
function parsed<T>(what: string, parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    throw new TypeError(`${what} cannot be read: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Checks TLS material when `connect()` is called: the runtime would only fail
 * at the first handshake, and obscurely ("unsupported protocol" for a key that
 * does not match its certificate).
 */
function checkTlsMaterial(
  ca?: Buffer,
  key?: Buffer,
  cert?: Buffer,
): { cas: X509Certificate[]; certificate?: X509Certificate } {
  const cas: X509Certificate[] = [];
  if (ca) {
    const blocks = ca.toString("latin1").match(CERTIFICATE) ?? [];
    if (blocks.length === 0) throw new TypeError("options.tls.ca holds no PEM certificate");
    blocks.forEach((block, i) =>
      cas.push(parsed(
        `options.tls.ca (certificate ${i + 1} of ${blocks.length})`,
        () => new X509Certificate(block),
      ))
    );
  }
  if (!key || !cert) return { cas };
  const privateKey = parsed("options.tls.key", () => createPrivateKey(key));
  const first = cert.toString("latin1").match(CERTIFICATE)?.[0];
  if (!first) throw new TypeError("options.tls.cert holds no PEM certificate");
  const certificate = parsed("options.tls.cert", () => new X509Certificate(first));
  if (!certificate.checkPrivateKey(privateKey)) {
    throw new TypeError(
      `options.tls.key is not the key of options.tls.cert (${subject(certificate)})`,
    );
  }
  return { cas, certificate };
}

/**
 * What this process can tell is wrong with the client certificate when etcd
 * rejects it: out of its dates, or not issued by the CA in `tls.ca` (which
 * etcd usually trusts for clients too). `undefined` when neither.
 */
export function clientCertProblem(
  certificate: X509Certificate,
  cas: readonly X509Certificate[],
  now: number = Date.now(),
): string | undefined {
  const which = `the one in tls.cert (${subject(certificate)})`;
  const from = Date.parse(certificate.validFrom);
  const to = Date.parse(certificate.validTo);
  if (to < now) return `${which} expired on ${new Date(to).toISOString()}`;
  if (from > now) return `${which} is not valid until ${new Date(from).toISOString()}`;
  if (
    cas.length > 0 &&
    !cas.some((ca) => certificate.checkIssued(ca) && certificate.verify(ca.publicKey))
  ) {
    return `${which} was not issued by the CA in tls.ca; etcd must trust its issuer ` +
      "(--trusted-ca-file)";
  }
  return undefined;
}

/**
 * Makes every connection of `etcd` (to each host, and etcd3's own calls to
 * authenticate) use `credentials`: etcd3 takes TLS material only as buffers for
 * grpc-js's `createSsl`, whose connections to an IP address fail under Deno.
 */
function useCredentials(etcd: Etcd3, credentials: EtcdTlsCredentials): void {
  const pool = (etcd as unknown as {
    pool?: {
      hosts?: { channelCredentials?: unknown }[];
      authenticator?: { credentials?: unknown };
    };
  }).pool;
  const hosts = pool?.hosts;
  const authenticator = pool?.authenticator;
  if (
    !hosts?.every((host) => "channelCredentials" in host) || !authenticator ||
    !("credentials" in authenticator)
  ) {
    throw new Error(
      "connect(): this version of npm:etcd3 keeps its credentials elsewhere; TLS cannot be set up",
    );
  }
  for (const host of hosts) host.channelCredentials = credentials;
  authenticator.credentials = credentials;
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
    const hosts = (options as unknown as { options?: IOptions }).options?.hosts ?? "etcd3";
    return new Etcd3Client(options, typeof hosts === "string" ? [hosts] : hosts, false, 5000);
  }
  if (typeof options !== "object" || options === null || !("hosts" in options)) {
    throw new TypeError(
      `options must be { hosts, … } or an Etcd3 instance from npm:etcd3, got ${String(options)}`,
    );
  }
  const hosts = checkHosts(options.hosts);
  const dialTimeout = milliseconds(options.dialTimeout, "dialTimeout", 5000);
  const { tls, auth } = options;
  if (
    auth !== undefined &&
    (typeof auth !== "object" || auth === null || typeof auth.username !== "string" ||
      auth.username === "" || typeof auth.password !== "string")
  ) {
    throw new TypeError(
      `options.auth must be { username, password } with a non-empty username, got ${
        auth === null || typeof auth !== "object"
          ? String(auth)
          : `{ username: ${JSON.stringify(auth.username)}, password: … }`
      }`,
    );
  }
  if (tls !== undefined && (tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError(
      `options.tls.cert and options.tls.key go together, got only ${tls.cert ? "cert" : "key"}`,
    );
  }
  if (tls !== undefined && hosts.some((host) => host.startsWith("http://"))) {
    throw new TypeError(
      `options.tls needs https:// hosts, got ${JSON.stringify(hosts)}`,
    );
  }
  const secure = tls !== undefined || hosts.some((host) => host.startsWith("https://"));
  let credentials: EtcdTlsCredentials | undefined;
  let clientCert: (() => string | undefined) | undefined;
  if (secure) {
    const [ca, key, cert] = [pem("ca", tls?.ca), pem("key", tls?.key), pem("cert", tls?.cert)];
    const { cas, certificate } = checkTlsMaterial(ca, key, cert);
    if (certificate) clientCert = () => clientCertProblem(certificate, cas);
    credentials = new EtcdTlsCredentials(ca, key, cert);
  }
  const etcd = new Etcd3({
    hosts,
    auth: auth ? { username: auth.username, password: auth.password } : undefined,
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
  if (credentials) useCredentials(etcd, credentials);
  const tlsMode = {
    secure,
    ca: tls?.ca !== undefined,
    clientCert,
  };
  return new Etcd3Client(etcd, hosts, true, dialTimeout, tlsMode, auth?.username);
}
