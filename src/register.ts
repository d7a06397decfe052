/**
 * `register()`: an endpoint's key in etcd under a lease, kept alive and healed
 * until closed.
 *
 * @module
 */
import { abortable, asError, later, sleep } from "./_async.ts";
import { MAX_TIMER_MS, milliseconds } from "./_options.ts";
import { backoff } from "./backoff.ts";
import { checkEndpoint, checkService, encodeEndpoint, type Endpoint } from "./endpoint.ts";
import {
  AuthenticationError,
  ClientClosedError,
  CompactedError,
  type EtcdClient,
  LeaseNotFoundError,
  PermissionDeniedError,
} from "./etcd/client.ts";

/**
 * Where a registration stands: `registered` (key and lease in place),
 * `recovering` (lease or key lost, putting them back with backoff), `closed`.
 */
export type RegistrationState = "registered" | "recovering" | "closed";

/** Options of {@linkcode register}. */
export interface RegisterOptions {
  /**
   * Lease TTL in whole seconds, from 2 to 6,442,450 (about 74 days: TTL/3, the
   * renewal period, must fit a timer). Default 10. Renewed every TTL/3.
   */
  readonly ttl?: number;
  /** The etcd key; must start with `<service>/`. Default `<service>/<addr>`. */
  readonly key?: string;
  /** Closes the registration (revoking its lease) when aborted. */
  readonly signal?: AbortSignal;
  /** How long the first registration may take, in ms, before `register` rejects. Default 5000. */
  readonly timeout?: number;
  /** Called with problems that the registration recovers from by itself. Default: `console.warn`. */
  readonly onError?: (error: Error) => void;
  /** Called on every change of {@linkcode Registration.state}. */
  readonly onStateChange?: (state: RegistrationState) => void;
}

/** A live registration. Closing it revokes the lease, so the key disappears at once. */
export interface Registration extends AsyncDisposable {
  /** The etcd key holding the endpoint. */
  readonly key: string;
  /** The current lease ID; it changes when a lost lease is replaced. */
  readonly lease: string;
  /** Where the registration stands. */
  readonly state: RegistrationState;
  /** Revokes the lease and stops every timer and watch. Never rejects; idempotent. */
  close(): Promise<void>;
}

const BACKOFF = { initial: 200, max: 3000 } as const;
/** How long a key watch must stay open, without events, to count as progress. */
const STEADY_MS = BACKOFF.max;

/**
 * The longest lease TTL `register` accepts, in seconds (about 74 days): its
 * renewal period, TTL/3, must fit a timer ({@linkcode MAX_TIMER_MS}); etcd's own
 * limit is higher.
 */
const MAX_TTL: number = Math.floor((MAX_TIMER_MS * 3) / 1000);

class RegistrationImpl implements Registration {
  readonly key: string;
  readonly #client: EtcdClient;
  readonly #value: string;
  readonly #ttl: number;
  readonly #onError: (error: Error) => void;
  readonly #onStateChange: ((state: RegistrationState) => void) | undefined;
  readonly #userSignal: AbortSignal | undefined;
  readonly #controller = new AbortController();
  #lease = "0";
  #leaseValid = false;
  #revision = 0;
  /** The revision of the latest delete of the key seen by its watch. */
  #deletedAt = 0;
  #state: RegistrationState = "recovering";
  #needPut = true;
  #nap: AbortController | undefined;
  #loops: Promise<unknown> = Promise.resolve();
  #closing: Promise<void> | undefined;
  readonly #onAbort = () => void this.close();

  constructor(
    client: EtcdClient,
    key: string,
    value: string,
    ttl: number,
    options: RegisterOptions,
  ) {
    this.#client = client;
    this.key = key;
    this.#value = value;
    this.#ttl = ttl;
    this.#onError = options.onError ??
      ((error) => console.warn(`grpc-etcd register(${JSON.stringify(key)}): ${error.message}`));
    this.#onStateChange = options.onStateChange;
    this.#userSignal = options.signal;
  }

  get lease(): string {
    return this.#lease;
  }

  get state(): RegistrationState {
    return this.#state;
  }

  #setState(state: RegistrationState): void {
    if (this.#state === state || this.#state === "closed") return;
    this.#state = state;
    try {
      this.#onStateChange?.(state);
    } catch (error) {
      this.#report(asError(error));
    }
  }

  #report(error: Error): void {
    try {
      this.#onError(error);
    } catch {
      // A throwing handler must not stop the registration.
    }
  }

  /** Stops every loop when the client was closed under the registration. */
  #stopIfClosed(error: unknown): boolean {
    if (!(error instanceof ClientClosedError)) return false;
    this.#report(
      new Error(`the etcd client was closed; ${JSON.stringify(this.key)} is no longer kept alive`, {
        cause: error,
      }),
    );
    this.#controller.abort();
    this.#wake();
    this.#setState("closed");
    return true;
  }

  /** Wakes the supervisor loop early (a key or lease was lost, or closing). */
  #wake(): void {
    this.#nap?.abort();
  }

  /** Grants a lease when needed and puts the key. Throws on failure. */
  async #putOnce(signal: AbortSignal): Promise<void> {
    if (!this.#leaseValid) {
      const old = this.#lease;
      this.#lease = await abortable(this.#client.grantLease(this.#ttl), signal);
      this.#leaseValid = true;
      if (old !== "0") {
        // The old lease may still exist if it was lost only to us: let it go.
        this.#client.revokeLease(old).catch(() => {});
      }
    }
    let revision: number;
    try {
      revision = await abortable(this.#client.put(this.key, this.#value, this.#lease), signal);
    } catch (error) {
      if (error instanceof LeaseNotFoundError) this.#leaseValid = false;
      throw error;
    }
    this.#revision = Math.max(this.#revision, revision);
    // A delete that the watch saw while the put was in flight may have come after it.
    this.#needPut = this.#deletedAt > revision;
  }

  /** The first registration: retries until it succeeds or `timeout` passes. */
  async start(timeout: number): Promise<void> {
    const deadline = new AbortController();
    const timer = later(timeout, () => deadline.abort());
    const signals = [deadline.signal, this.#controller.signal];
    if (this.#userSignal) signals.push(this.#userSignal);
    const signal = AbortSignal.any(signals);
    let lastError: unknown;
    try {
      for (let attempt = 0; !signal.aborted; attempt++) {
        try {
          await this.#putOnce(signal);
          break;
        } catch (error) {
          // An attempt cut short by the deadline says nothing new: keep why the previous one failed.
          if (!deadline.signal.aborted || lastError === undefined) lastError = error;
          // Retrying cannot help these: fail now rather than at the timeout.
          if (
            error instanceof ClientClosedError || error instanceof PermissionDeniedError ||
            error instanceof AuthenticationError
          ) break;
          if (!signal.aborted) await sleep(backoff(attempt, BACKOFF), signal);
        }
      }
    } finally {
      timer.clear();
    }
    if (this.#needPut) {
      await this.#shutdown(false);
      if (this.#userSignal?.aborted) throw this.#userSignal.reason;
      const refused = lastError instanceof PermissionDeniedError ||
        lastError instanceof AuthenticationError;
      const reason = lastError === deadline.signal.reason
        ? "no answer"
        : asError(lastError).message;
      throw new Error(
        `register(): could not register ${JSON.stringify(this.key)} on etcd at ${
          this.#client.hosts.join(", ")
        }${refused ? "" : ` within ${timeout} ms`}: ${reason}`,
        { cause: lastError },
      );
    }
    this.#setState("registered");
    this.#userSignal?.addEventListener("abort", this.#onAbort, { once: true });
    this.#loops = Promise.all([this.#supervise(), this.#watchKey()]);
  }

  /** Renews the lease every TTL/3 and puts the key back whenever it is lost. */
  async #supervise(): Promise<void> {
    const signal = this.#controller.signal;
    let attempt = 0;
    while (!signal.aborted) {
      if (this.#needPut) {
        this.#setState("recovering");
        try {
          await this.#putOnce(signal);
          attempt = 0;
          this.#setState("registered");
          continue;
        } catch (error) {
          if (signal.aborted || this.#stopIfClosed(error)) break;
          this.#report(asError(error));
          await this.#sleep(backoff(attempt++, BACKOFF));
          continue;
        }
      }
      const interval = (this.#ttl * 1000) / 3;
      const hung = Math.min(interval, Math.max(250, this.#ttl * 100));
      await this.#sleep(attempt === 0 ? interval : Math.min(interval, backoff(attempt, BACKOFF)));
      if (signal.aborted || this.#needPut) continue;
      try {
        // A renewal that takes longer than a tenth of the TTL (at least 250 ms) is taken as
        // hung (a frozen member): give up on it and try again, so that several attempts, and
        // other hosts, fit before the lease can expire. etcd answers one in milliseconds.
        const remaining = await abortable(
          this.#client.keepAlive(this.#lease, { timeout: hung }),
          signal,
        );
        attempt = 0;
        if (remaining <= 0) {
          this.#leaseValid = false;
          this.#needPut = true;
          this.#report(new LeaseNotFoundError(this.#lease));
        }
      } catch (error) {
        if (signal.aborted || this.#stopIfClosed(error)) break;
        attempt++;
        this.#report(asError(error));
      }
    }
  }

  /** Watches the key: a delete by anyone (or by lease expiry) triggers a new put. */
  async #watchKey(): Promise<void> {
    const signal = this.#controller.signal;
    let attempt = 0;
    while (!signal.aborted) {
      /** When the watch first answered: one that stayed up long enough counts as progress. */
      let opened: number | undefined;
      try {
        const batches = this.#client.watch(this.key, {
          startRevision: this.#revision + 1,
          signal,
          exact: true,
          // A key watch on a frozen member would miss a delete: notice within one TTL.
          heartbeat: (this.#ttl * 1000) / 3,
        });
        for await (const batch of batches) {
          opened ??= Date.now();
          // Progress (events, or a watch that stayed up) resets the backoff; "created" does not.
          if (batch.events.length > 0) attempt = 0;
          for (const event of batch.events) {
            if (event.type === "delete") {
              this.#revision = Math.max(this.#revision, event.modRevision);
              this.#deletedAt = Math.max(this.#deletedAt, event.modRevision);
              this.#needPut = true;
              this.#wake();
            } else {
              this.#revision = Math.max(this.#revision, event.kv.modRevision);
            }
          }
        }
      } catch (thrown) {
        let error = thrown;
        if (signal.aborted) break;
        if (error instanceof CompactedError) {
          // History is gone: read the key now and watch on from there.
          try {
            const current = await abortable(this.#client.get(this.key), signal);
            this.#revision = current.revision;
            if (current.kvs.length === 0) {
              this.#deletedAt = Math.max(this.#deletedAt, current.revision);
              this.#needPut = true;
              this.#wake();
            }
            continue;
          } catch (inner) {
            error = inner;
          }
        }
        if (signal.aborted || this.#stopIfClosed(error)) break;
        this.#report(asError(error));
        if (opened !== undefined && Date.now() - opened >= STEADY_MS) attempt = 0;
        await sleep(backoff(attempt++, BACKOFF), signal);
      }
    }
  }

  /**
   * Sleeps until `ms` pass, {@linkcode #wake} is called, or the registration
   * stops. (Not `AbortSignal.any` with the long-lived stop signal: each call
   * would leave a dependent signal behind on it.)
   */
  #sleep(ms: number): Promise<void> {
    if (this.#controller.signal.aborted) return Promise.resolve();
    const nap = new AbortController();
    this.#nap = nap;
    return sleep(ms, nap.signal).finally(() => {
      if (this.#nap === nap) this.#nap = undefined;
    });
  }

  async #shutdown(revoke: boolean): Promise<void> {
    this.#userSignal?.removeEventListener("abort", this.#onAbort);
    this.#controller.abort();
    this.#wake();
    await this.#loops;
    if (revoke && this.#leaseValid) {
      try {
        await this.#client.revokeLease(this.#lease);
      } catch (error) {
        this.#report(
          new Error(
            `could not revoke lease ${this.#lease}; ${
              JSON.stringify(this.key)
            } expires within ${this.#ttl} s`,
            { cause: error },
          ),
        );
      }
    } else if (this.#leaseValid) {
      this.#client.revokeLease(this.#lease).catch(() => {});
    }
    this.#setState("closed");
  }

  close(): Promise<void> {
    this.#closing ??= this.#shutdown(true);
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * `options.ttl` and `options.timeout` with their defaults, or a RangeError
 * naming the bad one (also for `serve()`, which checks them before it binds).
 */
export function checkTimings(
  options: { readonly ttl?: number; readonly timeout?: number },
): { ttl: number; timeout: number } {
  const { ttl = 10 } = options;
  if (typeof ttl !== "number" || !Number.isInteger(ttl) || ttl < 2 || ttl > MAX_TTL) {
    throw new RangeError(
      `options.ttl must be an integer number of seconds from 2 to ${MAX_TTL}, got ${ttl}`,
    );
  }
  return { ttl, timeout: milliseconds(options.timeout, "timeout", 5000) };
}

/**
 * Registers an endpoint of a service: grants a lease of `ttl` seconds, puts
 * `<service>/<addr>` → `{"Op":0,"Addr":…,"Metadata":…}` (the layout of etcd's Go
 * `naming/endpoints`) with it, and keeps it alive every TTL/3. When the lease is
 * lost (expired, revoked) or the key is deleted by someone else, it grants a new
 * lease and puts the key again, with jittered exponential backoff capped at 3 s,
 * until closed. `close()`, `await using`, or aborting `signal` revokes the lease,
 * so the key disappears at once.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { register } from "@seed/grpc-etcd";
 * import { memoryClient } from "@seed/grpc-etcd/testing";
 *
 * await using client = memoryClient();
 * const reg = await register(client, "svc/echo", { addr: "127.0.0.1:50051" }, { ttl: 5 });
 * assert.equal(reg.key, "svc/echo/127.0.0.1:50051");
 * assert.equal(reg.state, "registered");
 * await reg.close();
 * assert.equal((await client.get(reg.key)).kvs.length, 0);
 * ```
 *
 * @param client the etcd client
 * @param service the service name
 * @param endpoint the address (`host:port`) and optional JSON metadata
 * @param options TTL, key, signal, first-registration timeout and handlers
 * @returns the registration, once the key is in etcd
 * @throws {TypeError} for an unusable service, endpoint or key
 * @throws {RangeError} for a TTL that is not an integer from 2 to 6,442,450, or a bad timeout
 * @throws {Error} naming the etcd hosts when etcd does not answer within `timeout`, or at
 *   once when etcd rejects the credentials or denies the write (RBAC); the cause is then an
 *   {@linkcode AuthenticationError} or {@linkcode PermissionDeniedError}
 */
export async function register(
  client: EtcdClient,
  service: string,
  endpoint: Endpoint,
  options: RegisterOptions = {},
): Promise<Registration> {
  checkService(service);
  checkEndpoint(endpoint);
  if (typeof client?.grantLease !== "function" || typeof client?.put !== "function") {
    throw new TypeError(`client must be an EtcdClient (see connect()), got ${String(client)}`);
  }
  const { ttl, timeout } = checkTimings(options);
  const { signal } = options;
  const prefix = `${service}/`;
  const key = options.key ?? `${prefix}${endpoint.addr}`;
  if (typeof key !== "string" || !key.startsWith(prefix) || key.length === prefix.length) {
    throw new TypeError(
      `options.key must start with ${JSON.stringify(prefix)} and name an endpoint, got ${
        JSON.stringify(key)
      }`,
    );
  }
  signal?.throwIfAborted();
  const registration = new RegistrationImpl(client, key, encodeEndpoint(endpoint), ttl, options);
  await registration.start(timeout);
  return registration;
}
