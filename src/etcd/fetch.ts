/**
 * {@linkcode EtcdClient} over etcd's JSON gateway (`/v3/…` on the client port,
 * etcd ≥ 3.4) and the web-standard `fetch`: no npm package, no `node:` module,
 * no runtime-specific API, so that discovery runs wherever `fetch` and
 * streams do (Deno, Node, Bun, Cloudflare's workerd).
 *
 * @module
 */
import { abortable, asError, Queue } from "../_async.ts";
import {
  AuthenticationError,
  ClientClosedError,
  type EtcdClient,
  type KeyValue,
  LeaseNotFoundError,
  PermissionDeniedError,
  type RangeResult,
  type WatchBatch,
  type WatchEvent,
  type WatchOptions,
} from "./client.ts";
import {
  base64ToText,
  classify,
  fromBase64,
  judgeAnswer,
  judgeCancel,
  judgeStatus,
  notEtcd,
  prefixEnd,
  readStatus,
  type RequestContext,
  toBase64,
  type Verdict,
} from "./gateway.ts";
import { checkAuth, checkHosts, originOf } from "./options.ts";
import { milliseconds } from "../_options.ts";

/**
 * The `fetch` a client sends its requests with: the runtime's own, or one that
 * adds TLS settings (a private CA, a client certificate), a proxy or headers.
 * The global `fetch` of every runtime fits.
 */
export type FetchFunction = (url: string, init: RequestInit) => Promise<Response>;

/** Options of {@linkcode connectFetch}. */
export interface ConnectFetchOptions {
  /**
   * etcd client URLs, e.g. `"http://10.0.0.5:2379"` or `"https://etcd.internal:2379"`
   * (all http or all https), or `"host:port"` for plain HTTP.
   */
  readonly hosts: string | readonly string[];
  /** User and password, when etcd has auth enabled. */
  readonly auth?: { readonly username: string; readonly password: string };
  /**
   * The `fetch` to use (default: the global one), e.g. one that presents a
   * client certificate or trusts a private CA (see {@linkcode connectFetch}).
   */
  readonly fetch?: FetchFunction;
  /**
   * How long each request attempt may take, in ms, from sending it to etcd's
   * answer (for a watch: to etcd's "created"). Default 5000. A call retried
   * on another host gets a fresh deadline.
   */
  readonly dialTimeout?: number;
}

/** How long a host whose request failed or hung goes to the back of the line, in ms. */
const AVOID_MS = 5000;
/**
 * A watch stream with a heartbeat that stays silent this many periods is
 * reopened: its connection may have died without a word (a NAT, proxy or load
 * balancer that forgot an idle connection sends no FIN or RST).
 */
const QUIET_PERIODS = 6;
/**
 * The longest such a stream stays silent, in ms, whatever the heartbeat: well
 * under the idle timeouts that end a silent response body in Node (undici's
 * `bodyTimeout`, 300 s by default) and Bun (its fetch `timeout`, 5 minutes or
 * more).
 */
const MAX_QUIET_MS = 60_000;
/**
 * A stream that ends by itself is reopened quietly only if it lasted this long,
 * in ms: one that ends at once goes to the caller, who backs off.
 */
const MIN_STREAM_MS = 1000;

const encoder = new TextEncoder();

interface Host {
  /** As the user gave it, for messages. */
  readonly name: string;
  /** `scheme://host[:port]`, the base of every request URL. */
  readonly origin: string;
  /** Until when new requests try this host last. */
  avoidUntil: number;
  /** The authentication in flight on this host, which attempts on it wait for. */
  authenticating?: Promise<string>;
}

/** A parsed JSON object, as the gateway sends them. */
type Json = Record<string, unknown>;

function isRecord(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function toKeyValue(kv: Json): KeyValue {
  return {
    key: base64ToText(kv.key as string | undefined),
    value: fromBase64(kv.value as string | undefined),
    modRevision: Number(kv.mod_revision ?? 0),
    lease: String(kv.lease ?? "0"),
  };
}

function toRange(value: Json): RangeResult {
  const kvs = Array.isArray(value.kvs) ? value.kvs.filter(isRecord).map(toKeyValue) : [];
  return { revision: revisionOf(value), kvs };
}

function revisionOf(message: Json): number {
  return Number((message.header as Json | undefined)?.revision ?? 0);
}

function toEvent(event: Json): WatchEvent {
  const kv = isRecord(event.kv) ? event.kv : {};
  return event.type === "DELETE" || event.type === 1
    ? { type: "delete", key: base64ToText(kv.key as string), modRevision: Number(kv.mod_revision) }
    : { type: "put", kv: toKeyValue(kv) };
}

/** Reads a body of newline-delimited JSON one line at a time. */
class Lines {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #decoder = new TextDecoder();
  #buffer = "";
  #scanned = 0;
  #done = false;

  constructor(body: ReadableStream<Uint8Array> | null) {
    this.#reader = (body ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() }))
      .getReader();
  }

  /** The next non-empty line, or the unterminated rest at the end; `undefined` after it. */
  async next(): Promise<string | undefined> {
    while (true) {
      const newline = this.#buffer.indexOf("\n", this.#scanned);
      if (newline >= 0) {
        const line = this.#buffer.slice(0, newline);
        this.#buffer = this.#buffer.slice(newline + 1);
        this.#scanned = 0;
        if (line.trim() !== "") return line;
        continue;
      }
      this.#scanned = this.#buffer.length;
      if (this.#done) {
        const rest = this.#buffer;
        this.#buffer = "";
        this.#scanned = 0;
        return rest.trim() === "" ? undefined : rest;
      }
      const { value, done } = await this.#reader.read();
      if (done) {
        this.#done = true;
        this.#buffer += this.#decoder.decode();
      } else {
        this.#buffer += this.#decoder.decode(value, { stream: true });
      }
    }
  }

  /** Stops reading and releases the body. */
  async cancel(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
  }
}

/** The first line of a body (a stream's first message), releasing the rest. */
async function firstLine(response: Response): Promise<string> {
  const lines = new Lines(response.body);
  try {
    return (await lines.next()) ?? "";
  } finally {
    await lines.cancel();
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** A failure already explained (naming the host): the call moves on to the next host. */
class HostFailure extends Error {}

/** A message and its cause's, once (runtimes put what failed in `cause`). */
function describe(error: unknown): string {
  const e = asError(error);
  const cause = e.cause instanceof Error ? e.cause.message : e.cause ? String(e.cause) : "";
  return cause && !e.message.includes(cause) ? `${e.message}: ${cause}` : e.message;
}

/** An outcome of one exchange with one host: a value, or what etcd's answer means. */
type Outcome<T> = { readonly value: T } | { readonly verdict: Verdict };

/** One request attempt: its host, token, deadline and what it is for. */
interface Attempt {
  readonly host: Host;
  readonly token: string | undefined;
  readonly signal: AbortSignal;
  readonly context: RequestContext;
}

/** The state of a watch once etcd has created it. */
interface OpenWatch {
  readonly lines: Lines;
  readonly created: WatchBatch;
  /** The auth token the watch was opened with. */
  readonly token: string | undefined;
}

/** One HTTP stream of a watch, from etcd's "created" on. */
interface WatchStream extends OpenWatch {
  readonly host: Host;
  /** Aborts the request; registered for close() while the stream is open. */
  readonly controller: AbortController;
  /** When etcd created it. */
  readonly opened: number;
  /** Reads the stream until it ends; settles once nothing more comes from it. */
  pump?: Promise<void>;
}

class FetchClient implements EtcdClient {
  readonly hosts: readonly string[];
  readonly #hosts: readonly Host[];
  readonly #fetch: FetchFunction;
  readonly #timeout: number;
  readonly #auth: { readonly username: string; readonly password: string } | undefined;
  /** Every request and stream in flight: close() aborts them. */
  readonly #inflight = new Set<AbortController>();
  /** The auth token: `undefined` until taken, `""` when etcd has auth off. */
  #token: string | undefined;
  /**
   * The hosts where a request carrying the token got no answer (the connection
   * failed or closed) since etcd last answered one carrying it.
   */
  readonly #unansweredAt = new Set<Host>();
  #closed = false;

  constructor(
    hosts: readonly Host[],
    fetcher: FetchFunction,
    timeout: number,
    auth: { readonly username: string; readonly password: string } | undefined,
  ) {
    this.#hosts = hosts;
    this.hosts = hosts.map((host) => host.name);
    this.#fetch = fetcher;
    this.#timeout = timeout;
    this.#auth = auth;
  }

  /** Hosts in the order to try: those not avoided, shuffled, then the avoided ones. */
  #order(): Host[] {
    const now = Date.now();
    const fresh = this.#hosts.filter((host) => host.avoidUntil <= now);
    for (let i = fresh.length - 1; i > 0; i--) {
      const j = Math.floor(Math.random() * (i + 1));
      [fresh[i], fresh[j]] = [fresh[j]!, fresh[i]!];
    }
    const avoided = this.#hosts.filter((host) => host.avoidUntil > now)
      .sort((a, b) => a.avoidUntil - b.avoidUntil);
    return [...fresh, ...avoided];
  }

  #avoid(host: Host): void {
    host.avoidUntil = Date.now() + AVOID_MS;
  }

  #setToken(token: string): void {
    this.#token = token;
    this.#unansweredAt.clear();
  }

  #forgetToken(token: string | undefined): void {
    if (token !== undefined && this.#token === token) {
      this.#token = undefined;
      this.#unansweredAt.clear();
    }
  }

  /** etcd answered a request carrying `token`: the token is good. */
  #answered(token: string | undefined): void {
    if (token && token === this.#token) this.#unansweredAt.clear();
  }

  /**
   * A request carrying `token` got no answer from `host`: the connection failed
   * or closed. Some etcd releases close the connection over a stale token (etcd
   * issues 15256, 20332), but so does a host that is down. The token is dropped
   * when the same host fails it a second time with no answer carrying it, from
   * any host, in between.
   *
   * @returns whether the token was dropped
   */
  #unanswered(host: Host, token: string | undefined): boolean {
    if (!token || token !== this.#token) return false;
    if (!this.#unansweredAt.has(host)) {
      this.#unansweredAt.add(host);
      return false;
    }
    this.#forgetToken(token);
    return true;
  }

  /** An abort controller registered for close(), with a deadline when `ms` is given. */
  #controller(ms?: number): {
    controller: AbortController;
    timedOut: () => boolean;
    stopTimer: () => void;
    release: () => void;
  } {
    const controller = new AbortController();
    let expired = false;
    const timer = ms === undefined ? undefined : setTimeout(() => {
      expired = true;
      controller.abort(new DOMException(`no answer within ${ms} ms`, "TimeoutError"));
    }, ms);
    this.#inflight.add(controller);
    return {
      controller,
      timedOut: () => expired,
      stopTimer: () => clearTimeout(timer),
      release: () => {
        clearTimeout(timer);
        this.#inflight.delete(controller);
      },
    };
  }

  #post(host: Host, path: string, body: unknown, token: string | undefined, signal: AbortSignal) {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (token) headers.authorization = token;
    return this.#fetch(`${host.origin}${path}`, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      signal,
      redirect: "manual",
    });
  }

  /**
   * The token to send to `host`, authenticating there first when there is none.
   * An attempt waits only for its own host's authentication, never for one on
   * another host (which may be down); the token taken then serves every host.
   */
  async #tokenFor(host: Host, signal: AbortSignal): Promise<string | undefined> {
    if (!this.#auth) return undefined;
    if (this.#token !== undefined) return this.#token || undefined;
    host.authenticating ??= this.#authenticate(host).finally(() => {
      host.authenticating = undefined;
    });
    return (await abortable(host.authenticating, signal)) || undefined;
  }

  async #authenticate(host: Host): Promise<string> {
    const auth = this.#auth!;
    const context: RequestContext = {
      host: host.name,
      path: "/v3/auth/authenticate",
      operation: `authenticating as user ${JSON.stringify(auth.username)}`,
      user: auth.username,
    };
    const { controller, timedOut, release } = this.#controller(this.#timeout);
    try {
      const response = await this.#post(
        host,
        context.path,
        { name: auth.username, password: auth.password },
        undefined,
        controller.signal,
      );
      const text = await response.text();
      const value = parseJson(text);
      if (response.ok) {
        if (isRecord(value) && typeof value.token === "string" && value.token !== "") {
          this.#setToken(value.token);
          return value.token;
        }
        throw new HostFailure(notEtcd(response.status, null, text, context).message);
      }
      const status = readStatus(value);
      if (status && classify(status.code, status.message) === "auth-disabled") {
        this.#setToken("");
        return "";
      }
      const verdict = judgeAnswer(
        response.status,
        response.headers.get("content-type"),
        text,
        context,
      );
      if (verdict.error instanceof AuthenticationError) throw verdict.error;
      throw new HostFailure(verdict.error.message, { cause: verdict.error });
    } catch (error) {
      if (error instanceof HostFailure || error instanceof AuthenticationError) throw error;
      if (this.#closed) throw new ClientClosedError({ cause: error });
      if (timedOut()) {
        throw new HostFailure(
          `etcd at ${host.name} did not answer ${context.operation} within ${this.#timeout} ms`,
          { cause: error },
        );
      }
      throw new HostFailure(this.#unreachable(host, context.operation, error), { cause: error });
    } finally {
      release();
    }
  }

  /** Says that `host` could not be reached, with a hint when the error tells why. */
  #unreachable(host: Host, operation: string, error: unknown): string {
    const text = describe(error);
    const https = host.origin.startsWith("https:");
    const hint =
      https && /certificate required|alert|connection closed|reset|broken pipe|EPIPE/i.test(text)
        ? " (etcd ended the TLS connection: it may require a client certificate, given through " +
          "options.fetch; see connectFetch())"
        : https &&
            /certificate|UnknownIssuer|NotValidForName|self[- ]signed|unable to verify/i.test(text)
        ? " (etcd's certificate is not trusted: to trust a private CA, pass options.fetch; see " +
          "connectFetch())"
        : https && /handshake eof|corrupt message|InvalidContentType|wrong version|packet length/i
            .test(text)
        ? " (the TLS handshake failed: if etcd serves plain HTTP, give http:// hosts)"
        : !https && /closed before message completed|socket hang up|other side closed/i.test(text)
        ? " (the connection closed without an answer: if etcd serves TLS, give https:// hosts)"
        : "";
    return `could not reach etcd at ${host.name} while ${operation}: ${text}${hint}`;
  }

  /**
   * Runs one call: tries each host at most once, in {@linkcode #order}, each
   * attempt bounded by the dial timeout (and what is left of `timeout`), renews
   * the auth token once per host when etcd rejects it, and moves on to the next
   * host when one did not answer as etcd or said it cannot serve the call.
   */
  async #run<T>(
    operation: string,
    path: string,
    exchange: (attempt: Attempt) => Promise<Outcome<T>>,
    options: {
      lease?: string;
      timeout?: number;
      signal?: AbortSignal;
      keep?: boolean;
      /** The host to try first, when it is one of the client's. */
      first?: Host;
    } = {},
  ): Promise<{ value: T; host: Host; controller: AbortController }> {
    if (this.#closed) throw new ClientClosedError();
    const started = Date.now();
    const failures: Error[] = [];
    const user = this.#auth?.username;
    const left = () =>
      options.timeout === undefined
        ? this.#timeout
        : Math.min(this.#timeout, options.timeout - (Date.now() - started));
    const order = this.#order();
    const first = options.first ? order.indexOf(options.first) : -1;
    if (first > 0) order.unshift(...order.splice(first, 1));
    hosts: for (const host of order) {
      const context: RequestContext = {
        host: host.name,
        path,
        operation,
        user,
        lease: options.lease,
      };
      for (let renewed = false;;) {
        const limit = left();
        if (limit <= 0) break hosts;
        const { controller, timedOut, stopTimer, release } = this.#controller(limit);
        const onAbort = () => controller.abort(options.signal?.reason);
        options.signal?.addEventListener("abort", onAbort, { once: true });
        let token: string | undefined;
        let verdict: Verdict;
        let kept = false;
        try {
          token = await this.#tokenFor(host, controller.signal);
          const outcome = await exchange({ host, token, signal: controller.signal, context });
          this.#answered(token);
          if ("value" in outcome) {
            host.avoidUntil = 0;
            kept = options.keep === true;
            return { value: outcome.value, host, controller };
          }
          verdict = outcome.verdict;
        } catch (error) {
          if (this.#closed) throw new ClientClosedError({ cause: error });
          if (options.signal?.aborted) throw options.signal.reason;
          if (
            error instanceof AuthenticationError || error instanceof PermissionDeniedError ||
            error instanceof LeaseNotFoundError
          ) throw error;
          const failure = error instanceof HostFailure
            ? error
            : timedOut()
            ? new Error(`etcd at ${host.name} did not answer ${operation} within ${limit} ms`, {
              cause: error,
            })
            : new Error(this.#unreachable(host, operation, error), { cause: error });
          // A token this host failed twice is dropped: take a new one and repeat the call here.
          if (!timedOut() && this.#unanswered(host, token) && !renewed) {
            renewed = true;
            continue;
          }
          this.#avoid(host);
          failures.push(failure);
          break;
        } finally {
          options.signal?.removeEventListener("abort", onAbort);
          if (kept) {
            stopTimer();
          } else {
            release();
          }
        }
        if (verdict.retry === "token" && this.#auth && !renewed) {
          this.#forgetToken(token ?? "");
          renewed = true;
          continue;
        }
        if (verdict.retry === "host") {
          this.#avoid(host);
          failures.push(verdict.error);
          break;
        }
        throw verdict.error;
      }
    }
    if (failures.length === 1) throw failures[0];
    if (failures.length === 0) {
      throw new Error(
        `no etcd host was tried for ${operation} within ${options.timeout} ms (${
          this.hosts.join(", ")
        })`,
      );
    }
    throw new Error(
      `no etcd host answered ${operation}: ${failures.map((f) => f.message).join("; ")}`,
      { cause: failures[failures.length - 1] },
    );
  }

  /** A unary call: POST `body` to `path` and read the answer with `read`. */
  async #unary<T>(
    operation: string,
    path: string,
    body: unknown,
    read: (message: Json) => T,
    options: { lease?: string; timeout?: number; stream?: boolean } = {},
  ): Promise<T> {
    const { value } = await this.#run<T>(
      operation,
      path,
      async ({ host, token, signal, context }) => {
        const response = await this.#post(host, path, body, token, signal);
        const text = options.stream ? await firstLine(response) : await response.text();
        const contentType = response.headers.get("content-type");
        if (!response.ok) {
          return {
            verdict: judgeAnswer(response.status, contentType, text, context),
          };
        }
        const parsed = parseJson(text);
        const status = options.stream ? readStatus(parsed) : undefined;
        if (status) return { verdict: judgeStatus(status, context) };
        const message = options.stream && isRecord(parsed) ? parsed.result : parsed;
        if (!isRecord(message) || !isRecord(message.header)) {
          return {
            verdict: { retry: "host", error: notEtcd(response.status, contentType, text, context) },
          };
        }
        try {
          return { value: read(message) };
        } catch (error) {
          return { verdict: { retry: false, error: asError(error) } };
        }
      },
      options,
    );
    return value;
  }

  getPrefix(prefix: string): Promise<RangeResult> {
    if (prefix === "") return Promise.reject(new TypeError("prefix must not be empty"));
    const key = encoder.encode(prefix);
    return this.#unary(
      `reading the prefix ${JSON.stringify(prefix)}`,
      "/v3/kv/range",
      { key: toBase64(key), range_end: toBase64(prefixEnd(key)) },
      toRange,
    );
  }

  get(key: string): Promise<RangeResult> {
    return this.#unary(
      `reading ${JSON.stringify(key)}`,
      "/v3/kv/range",
      { key: toBase64(encoder.encode(key)) },
      toRange,
    );
  }

  put(key: string, value: string, lease?: string): Promise<number> {
    const leased = lease !== undefined && lease !== "0";
    return this.#unary(
      `writing ${JSON.stringify(key)}`,
      "/v3/kv/put",
      {
        key: toBase64(encoder.encode(key)),
        value: toBase64(encoder.encode(value)),
        lease: leased ? lease : undefined,
      },
      revisionOf,
      { lease: leased ? lease : undefined },
    );
  }

  delete(key: string): Promise<number> {
    return this.#unary(
      `deleting ${JSON.stringify(key)}`,
      "/v3/kv/deleterange",
      { key: toBase64(encoder.encode(key)) },
      revisionOf,
    );
  }

  grantLease(ttl: number): Promise<string> {
    return this.#unary("granting a lease", "/v3/lease/grant", { TTL: ttl }, (message) => {
      if (typeof message.error === "string" && message.error !== "") {
        throw new Error(`etcd refused a lease of ${ttl} s: ${message.error}`);
      }
      return String(message.ID);
    });
  }

  keepAlive(lease: string, options: { timeout?: number } = {}): Promise<number> {
    return this.#unary(
      `renewing lease ${lease}`,
      "/v3/lease/keepalive",
      { ID: lease },
      // An answer without a TTL: the lease is gone.
      (message) => Number(message.TTL ?? 0),
      { timeout: options.timeout, stream: true },
    );
  }

  async revokeLease(lease: string): Promise<void> {
    try {
      await this.#unary(`revoking lease ${lease}`, "/v3/lease/revoke", { ID: lease }, () => {}, {
        lease,
      });
    } catch (error) {
      if (!(error instanceof LeaseNotFoundError)) throw error;
    }
  }

  /**
   * Opens a watch on the first host that creates it (`first` first, when
   * given), and reads etcd's "created".
   */
  async #openWatch(
    operation: string,
    request: unknown,
    signal: AbortSignal,
    first?: Host,
  ): Promise<WatchStream> {
    const { value, host, controller } = await this.#run<OpenWatch>(
      operation,
      "/v3/watch",
      async ({ host, token, signal, context }) => {
        const response = await this.#post(host, "/v3/watch", request, token, signal);
        const contentType = response.headers.get("content-type");
        if (!response.ok) {
          const text = await response.text();
          return { verdict: judgeAnswer(response.status, contentType, text, context) };
        }
        const lines = new Lines(response.body);
        let open = false;
        try {
          const line = await lines.next() ?? "";
          const parsed = parseJson(line);
          const status = readStatus(parsed);
          if (status) return { verdict: judgeStatus(status, context) };
          const result = isRecord(parsed) ? parsed.result : undefined;
          if (!isRecord(result) || !isRecord(result.header) || result.created !== true) {
            return {
              verdict: {
                retry: "host",
                error: notEtcd(response.status, contentType, line, context),
              },
            };
          }
          if (result.canceled === true) {
            return {
              verdict: judgeCancel(
                Number(result.compact_revision ?? 0),
                String(result.cancel_reason ?? ""),
                context,
              ),
            };
          }
          open = true;
          return {
            value: { lines, created: { revision: revisionOf(result), events: [] }, token },
          };
        } finally {
          if (!open) await lines.cancel();
        }
      },
      { signal, keep: true, first },
    );
    return { ...value, host, controller, opened: Date.now() };
  }

  /** Ends a watch stream's request and body; its pump then returns quietly. */
  async #endStream(stream: WatchStream): Promise<void> {
    stream.controller.abort();
    this.#inflight.delete(stream.controller);
    await stream.lines.cancel();
  }

  /**
   * A cheap request to the host of a watch (a serializable count of the watched
   * key, answered by that member alone); resolves on any HTTP answer.
   */
  async #probe(host: Host, key: string, signal: AbortSignal): Promise<void> {
    const token = this.#token || undefined;
    try {
      const response = await this.#post(
        host,
        "/v3/kv/range",
        { key, count_only: true, serializable: true },
        token,
        signal,
      );
      await response.body?.cancel();
      this.#answered(token);
    } catch (error) {
      if (!signal.aborted) this.#unanswered(host, token);
      throw error;
    }
  }

  /** Whether `host` answers a {@linkcode #probe} within the dial timeout. */
  async #answers(host: Host, key: string, signal: AbortSignal): Promise<boolean> {
    const { controller, release } = this.#controller(this.#timeout);
    const stop = () => controller.abort();
    signal.addEventListener("abort", stop, { once: true });
    try {
      await this.#probe(host, key, controller.signal);
      return true;
    } catch {
      return false;
    } finally {
      signal.removeEventListener("abort", stop);
      release();
    }
  }

  /**
   * Watches over one HTTP stream at a time. The stream is replaced, where it
   * left off (the revision after the last event delivered, or `startRevision`),
   * without a word to the caller, when it stays silent for {@linkcode
   * QUIET_PERIODS} heartbeats (at most {@linkcode MAX_QUIET_MS}) while its
   * member answers the heartbeat, and when it ends or breaks by itself after
   * {@linkcode MIN_STREAM_MS} while its member still answers: an idle timeout of
   * the runtime, a proxy or a load balancer. A member that answers neither the
   * watch nor the heartbeat, a stream that ends otherwise, and a reopen that no
   * host serves (a compaction included) fail the iterator.
   */
  async *watch(prefix: string, options: WatchOptions): AsyncIterable<WatchBatch> {
    const { startRevision, signal, exact = false, heartbeat } = options;
    if (signal?.aborted) return;
    const bytes = encoder.encode(prefix);
    const key = toBase64(bytes);
    const rangeEnd = exact ? undefined : toBase64(prefixEnd(bytes));
    const operation = `watching ${JSON.stringify(prefix)}`;
    // Aborted once the watch is over, however it ends: stops reopening and probing.
    const over = new AbortController();
    const end = () => over.abort();
    signal?.addEventListener("abort", end, { once: true });
    const open = (from: number, first?: Host) =>
      this.#openWatch(
        operation,
        {
          create_request: {
            key,
            range_end: rangeEnd,
            start_revision: from > 0 ? String(from) : undefined,
          },
        },
        over.signal,
        first,
      );
    let stream: WatchStream;
    try {
      stream = await open(startRevision);
    } catch (error) {
      signal?.removeEventListener("abort", end);
      if (over.signal.aborted && !this.#closed) return;
      throw error;
    }
    if (over.signal.aborted) {
      signal?.removeEventListener("abort", end);
      await this.#endStream(stream);
      return;
    }
    const queue = new Queue<WatchBatch>();
    over.signal.addEventListener("abort", () => queue.end(), { once: true });
    const fail = (error: Error) => {
      queue.fail(error);
      over.abort();
    };
    queue.push(stream.created);
    /** The first revision not delivered yet: where a new stream starts. */
    let resume = startRevision > 0 ? startRevision : stream.created.revision + 1;
    /** When the current stream last sent a message, or opened. */
    let heard = Date.now();
    /** Whether a heartbeat went unanswered: no probe answer and no message since it was sent. */
    let waiting = false;
    let reopening: Promise<void> | undefined;

    const pump = async (current: WatchStream): Promise<void> => {
      const context: RequestContext = {
        host: current.host.name,
        path: "/v3/watch",
        operation,
        user: this.#auth?.username,
      };
      let broke: { error: unknown } | undefined;
      try {
        while (true) {
          const line = await current.lines.next();
          // Ended here (to reopen, or the watch is over): a line read now, maybe cut short by the
          // end, is dropped; a new stream starts before it.
          if (line === undefined || current.controller.signal.aborted) break;
          heard = Date.now();
          waiting = false;
          const parsed = parseJson(line);
          const status = readStatus(parsed);
          const result = isRecord(parsed) ? parsed.result : undefined;
          if (status || !isRecord(result) || result.canceled === true) {
            // etcd ended the watch: an error chunk, a cancellation, or something not etcd's.
            const verdict: Verdict = status
              ? judgeStatus(status, context)
              : !isRecord(result)
              ? { retry: "host", error: notEtcd(200, null, line, context) }
              : judgeCancel(
                Number(result.compact_revision ?? 0),
                String(result.cancel_reason ?? ""),
                context,
              );
            if (verdict.retry === "host") this.#avoid(current.host);
            if (verdict.retry === "token") {
              this.#forgetToken(current.token ?? "");
              fail(
                new Error(
                  `${verdict.error.message} (the auth token is renewed for the next attempt)`,
                  { cause: verdict.error },
                ),
              );
            } else {
              fail(verdict.error);
            }
            return;
          }
          const events = Array.isArray(result.events)
            ? result.events.filter(isRecord).map(toEvent)
            : [];
          for (const event of events) {
            const revision = event.type === "put" ? event.kv.modRevision : event.modRevision;
            if (revision >= resume) resume = revision + 1;
          }
          queue.push({ revision: revisionOf(result), events });
        }
      } catch (error) {
        broke = { error };
      }
      if (this.#closed) {
        fail(new ClientClosedError(broke && { cause: broke.error }));
      } else if (!current.controller.signal.aborted) {
        reopen(current, broke ?? {});
      }
    };

    /**
     * Replaces `old` with a stream from {@linkcode resume}: at once after a
     * silence (`ended` undefined), or, for a stream that ended by itself, when
     * it lasted and its member still answers; else the watch fails.
     */
    const reopen = (old: WatchStream, ended?: { error?: unknown }): void => {
      if (reopening || over.signal.aborted) return;
      reopening = (async () => {
        await this.#endStream(old);
        await old.pump; // every message it read is delivered before `resume` is read
        if (ended) {
          const routine = Date.now() - old.opened >= MIN_STREAM_MS &&
            await this.#answers(old.host, key, over.signal);
          if (over.signal.aborted) return;
          if (this.#closed) return fail(new ClientClosedError());
          if (!routine) {
            this.#avoid(old.host);
            return fail(
              "error" in ended
                ? new Error(
                  `the watch stream from etcd at ${old.host.name} broke while ${operation}: ${
                    describe(ended.error)
                  }`,
                  { cause: ended.error },
                )
                : new Error(`etcd at ${old.host.name} ended the watch stream while ${operation}`),
            );
          }
        }
        let next: WatchStream;
        try {
          next = await open(resume, old.host);
        } catch (error) {
          if (!over.signal.aborted) fail(asError(error));
          return;
        }
        if (over.signal.aborted) return await this.#endStream(next);
        stream = next;
        heard = Date.now();
        waiting = false;
        next.pump = pump(next);
      })().finally(() => reopening = undefined);
    };

    stream.pump = pump(stream);
    const quiet = heartbeat !== undefined && heartbeat > 0
      ? Math.min(QUIET_PERIODS * heartbeat, MAX_QUIET_MS)
      : undefined;
    let probe: { controller: AbortController; done: Promise<void> } | undefined;
    const timer = quiet === undefined ? undefined : setInterval(() => {
      if (reopening || over.signal.aborted) return;
      const current = stream;
      if (waiting) {
        this.#avoid(current.host);
        fail(
          new Error(
            `etcd at ${current.host.name} did not answer for ${heartbeat} ms while ${operation} ` +
              "(a frozen or unreachable member); watching again",
          ),
        );
        return;
      }
      if (Date.now() - heard >= quiet) {
        // The member answers, the stream has said nothing for long: its connection may be dead.
        reopen(current);
        return;
      }
      waiting = true;
      if (probe) return;
      const { controller: probing, release } = this.#controller();
      probe = {
        controller: probing,
        done: this.#probe(current.host, key, probing.signal).then(() => {
          waiting = false;
        }, () => {}).finally(() => {
          release();
          probe = undefined;
        }),
      };
    }, heartbeat);
    try {
      yield* queue;
    } finally {
      clearInterval(timer);
      signal?.removeEventListener("abort", end);
      over.abort();
      await reopening;
      await this.#endStream(stream);
      await stream.pump;
      if (probe) {
        probe.controller.abort();
        await probe.done;
      }
    }
  }

  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      for (const controller of this.#inflight) controller.abort(new ClientClosedError());
      this.#inflight.clear();
    }
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Connects to etcd over its JSON gateway (`/v3/…` on the client port, etcd
 * ≥ 3.4) with `fetch`: an {@linkcode EtcdClient} that needs nothing but
 * web-standard globals, for runtimes without `node:http2` (edge workers, Bun,
 * Deno without npm).
 *
 * Every request attempt is bounded by `dialTimeout`. A call that a host did not
 * answer (unreachable, hung, not etcd, or etcd without a leader there) moves on
 * to the next host with a fresh deadline, each host at most once; a host that
 * failed or hung goes to the back of the line for 5 s. Every call is retried
 * that way, writes included: a put repeated writes the same value again (one
 * more revision, one more put event of the same value), a delete repeated
 * deletes nothing, and a lease grant repeated may leave a lease without keys
 * that expires after its TTL. A watch with `heartbeat` sends a cheap read to
 * its member every period, since etcd's gateway takes one message per request
 * body and cannot carry a progress request on the watch; a member that answers
 * neither (frozen: TCP up, nothing answers) fails the watch within two periods,
 * and the next one goes elsewhere. That read proves the member alive, not the
 * watch's own connection, so a watch stream silent for 6 periods (at most 60 s)
 * while its member answers, or one that ends by itself after 1 s while its
 * member answers (an idle timeout of the runtime, a proxy or a load balancer),
 * is opened again from the revision after the last event delivered, without an
 * error. With `auth`, the token from
 * `/v3/auth/authenticate` goes in the `Authorization` header and is renewed
 * whenever etcd calls it invalid or expired.
 *
 * TLS: `https://` hosts go through the given `fetch` (default: the global
 * one). To trust a private CA or present a client certificate, pass a `fetch`
 * that does:
 * - Deno: `const client = Deno.createHttpClient({ caCerts: [ca], cert, key })`,
 *   then `fetch: (url, init) => fetch(url, { ...init, client })`;
 * - Node: `const dispatcher = new (await import("undici")).Agent({ connect: { ca, cert, key } })`,
 *   then `fetch: (url, init) => fetch(url, { ...init, dispatcher })`;
 * - Bun: `fetch: (url, init) => fetch(url, { ...init, tls: { ca, cert, key } })`.
 *
 * @example Reading through a `fetch` of one's own (here a stand-in that answers as etcd)
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectFetch } from "@seed/grpc-etcd/fetch";
 *
 * const asked: string[] = [];
 * await using client = connectFetch({
 *   hosts: "https://etcd.internal:2379",
 *   fetch: (url) => {
 *     asked.push(url);
 *     return Promise.resolve(Response.json({ header: { revision: "7" } }));
 *   },
 * });
 * const { revision, kvs } = await client.getPrefix("svc/echo/");
 * assert.deepEqual([revision, kvs], [7, []]);
 * assert.deepEqual(asked, ["https://etcd.internal:2379/v3/kv/range"]);
 * ```
 *
 * @example Registering and resolving on a real etcd
 * ```ts ignore
 * import { connectFetch } from "@seed/grpc-etcd/fetch";
 * import { register, resolve } from "@seed/grpc-etcd/core";
 *
 * await using client = connectFetch({ hosts: ["http://10.0.0.5:2379", "http://10.0.0.6:2379"] });
 * await using _reg = await register(client, "svc/echo", { addr: "10.0.0.9:50051" });
 * for await (const batch of resolve(client, "svc/echo")) console.log(batch);
 * ```
 *
 * @param options the hosts, credentials, `fetch` and per-attempt deadline
 * @returns the client; `close()` aborts every request and watch in flight
 * @throws {TypeError} when `hosts` is empty or malformed or mixes http and https,
 *   `auth` is not `{ username, password }`, or `fetch` is not a function
 * @throws {RangeError} when `dialTimeout` is not a positive number
 */
export function connectFetch(options: ConnectFetchOptions): EtcdClient {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`options must be { hosts, … }, got ${String(options)}`);
  }
  const hosts = checkHosts(options.hosts).hosts.map((host): Host => ({
    name: host.name,
    // `host:port` means plain HTTP here: TLS comes only with https:// (and the fetch given).
    origin: originOf(host, false),
    avoidUntil: 0,
  }));
  const dialTimeout = milliseconds(options.dialTimeout, "dialTimeout", 5000);
  const auth = checkAuth(options.auth);
  const given = options.fetch;
  if (given !== undefined && typeof given !== "function") {
    throw new TypeError(`options.fetch must be a function like fetch, got ${String(given)}`);
  }
  // The global fetch is called as a plain function: some runtimes refuse it bound to anything else.
  const fetcher: FetchFunction = given ?? ((url, init) => fetch(url, init));
  return new FetchClient(hosts, fetcher, dialTimeout, auth);
}
