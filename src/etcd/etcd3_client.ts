/**
 * {@linkcode EtcdClient} over an `npm:etcd3` client: every unary call with a
 * deadline, watch and keepalive loops of its own over etcd3's raw streams,
 * hosts that hung or failed tried last, and errors said in plain words.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import {
  ClientClosedError as Etcd3ClosedError,
  type Etcd3,
  EtcdAuthenticationFailedError,
  EtcdLeaseInvalidError,
  EtcdPermissionDeniedError,
  type IKeyValue,
  type IWatchResponse,
} from "etcd3";
import { isBrokenCircuitError } from "cockatiel";
import { Queue } from "../_async.ts";
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
import { Etcd3Pool, type PoolHost, type Stream } from "./etcd3_internals.ts";
import { explainText, saysNoReason, type TlsMode } from "./explain.ts";
import { prefixEnd } from "./gateway.ts";

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

/** How long a host whose stream hung or failed goes to the back of the line, in ms. */
const AVOID_MS = 5000;

/** The `EtcdClient` over an `Etcd3` instance. */
export class Etcd3Client implements EtcdClient {
  readonly hosts: readonly string[];
  readonly #etcd: Etcd3;
  readonly #pool: Etcd3Pool;
  readonly #owned: boolean;
  readonly #timeout: number;
  readonly #tls: TlsMode;
  readonly #user: string | undefined;
  readonly #handshake: (() => Promise<string | undefined>) | undefined;
  /** The handshake under way, shared by the calls that fail meanwhile. */
  #handshaking: Promise<string | undefined> | undefined;
  /** Hosts whose stream just hung or failed, and until when new streams avoid them. */
  readonly #avoid = new Map<PoolHost, number>();
  /** The queues of open watches, failed at once by `close()`. */
  readonly #watches = new Set<Queue<WatchBatch>>();
  #closed = false;
  #closing: Promise<void> = Promise.resolve();

  /**
   * @param etcd the etcd3 client
   * @param hosts the hosts, for messages
   * @param owned whether `close()` closes `etcd` (and the client may set its host order)
   * @param timeout the deadline of unary calls, in ms
   * @param tls the TLS set-up, for explaining failures
   * @param user the user name given in `auth`, for messages
   * @param handshake a one-off TLS handshake with etcd that says why it fails,
   *   for the failures that grpc-js reports without a reason
   */
  constructor(
    etcd: Etcd3,
    hosts: readonly string[],
    owned: boolean,
    timeout: number,
    tls: TlsMode = { secure: false, ca: false },
    user?: string,
    handshake?: () => Promise<string | undefined>,
  ) {
    this.#etcd = etcd;
    this.#pool = new Etcd3Pool(etcd);
    this.hosts = hosts;
    this.#owned = owned;
    this.#timeout = timeout;
    this.#tls = tls;
    this.#user = user;
    this.#handshake = handshake;
    if (owned) {
      // Unary calls too (etcd3's exec and its retries) try hosts in our order, so that a
      // put or a grant does not wait out its deadline on a member a stream found frozen.
      this.#pool.useHostOrder((hosts) => this.#preferred(hosts));
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
      throw await this.#explain(error);
    }
  }

  /**
   * Opens a stream (watch, keepalive) on the host least likely to hang: etcd3
   * picks hosts at random and its breaker only counts failures, so a frozen
   * member (TCP up, nothing answers) would keep getting half of them. Hosts
   * whose last stream hung or failed go last for {@linkcode AVOID_MS}.
   */
  #openStream(
    service: "Lease" | "Watch",
    method: "leaseKeepAlive" | "watch",
    options: object,
  ): Promise<{ stream: Stream; host: PoolHost }> {
    return this.#pool.openStream(service, method, options, this.#preferred(this.#pool.hosts));
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
    this.#pool.invalidateToken();
    return true;
  }

  #lastFailure: Error | undefined;

  /**
   * Says in plain words what a connection error means: TLS and auth failures
   * read as such, and an open circuit breaker names the failure that opened it.
   * A TLS failure that grpc-js reports without a reason (the call that
   * authenticates does) is explained by what a handshake of our own says.
   */
  async #explain(error: unknown): Promise<unknown> {
    if (!(error instanceof Error)) return error;
    if (isBrokenCircuitError(error)) {
      const last = this.#lastFailure;
      return last
        ? new Error(`${last.message} (calls to this host pause briefly after failures)`, {
          cause: error,
        })
        : error;
    }
    let text = error.message;
    let hint = explainText(text, this.#tls);
    if (this.#handshake && this.#tls.secure && saysNoReason(text)) {
      this.#handshaking ??= this.#handshake().catch(() => undefined).finally(() => {
        this.#handshaking = undefined;
      });
      const said = await this.#handshaking;
      if (said !== undefined) {
        hint = explainText(said, this.#tls) ?? hint;
        text = `${text} (a TLS handshake of its own with etcd: ${said})`;
      }
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
      const res = await this.#etcd.kv.range(
        { key, range_end: Buffer.from(prefixEnd(key)) },
        this.#deadline(),
      );
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
    this.#watches.add(queue);
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
          range_end: exact ? undefined : Buffer.from(prefixEnd(key)),
          start_revision: startRevision,
          progress_notify: true,
        },
      });
      yield* queue;
    } finally {
      this.#watches.delete(queue);
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
      // Open watches end now, not when their streams notice the closed connection.
      for (const queue of this.#watches) queue.fail(new ClientClosedError());
      this.#closing = this.#owned
        ? this.#pool.closeNow().then(() => this.#etcd.close())
        : Promise.resolve();
    }
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
