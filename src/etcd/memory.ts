/**
 * An in-memory etcd behind the {@linkcode EtcdClient} interface, for fast,
 * deterministic unit tests. It keeps etcd's semantics where this module relies
 * on them: one global revision, a history that watches replay from any
 * uncompacted revision, leases that expire by an injectable clock and delete
 * their keys in one revision, compaction, and per-client connection loss.
 *
 * @module
 */
import { later, Queue, type Timer } from "../_async.ts";
import {
  ClientClosedError,
  CompactedError,
  type EtcdClient,
  type KeyValue,
  LeaseNotFoundError,
  type RangeResult,
  type WatchBatch,
  type WatchEvent,
  type WatchOptions,
} from "./client.ts";

/** The timers a {@linkcode MemoryEtcd} uses for lease expiry. Defaults to the global ones. */
export interface Clock {
  /** Schedules `fn` after `ms`. */
  setTimeout(fn: () => void, ms: number): unknown;
  /** Cancels a scheduled call. */
  clearTimeout(id: unknown): void;
}

interface Lease {
  readonly id: string;
  readonly ttl: number;
  timer: Timer | undefined;
  readonly keys: Set<string>;
}

interface Watcher {
  readonly prefix: string;
  readonly exact: boolean;
  readonly queue: Queue<WatchBatch>;
}

interface Entry {
  readonly revision: number;
  readonly event: WatchEvent;
}

/** The error every call of a disconnected {@linkcode MemoryClient} rejects with. */
export class UnavailableError extends Error {
  /** Creates the error. */
  constructor() {
    super("memory etcd: connection lost (client disconnected)");
    this.name = "UnavailableError";
  }
}

const encoder = new TextEncoder();

/** The state and operations of one in-memory etcd; private to this file. */
class Store {
  #revision = 1;
  #compacted = 0;
  #nextLease = 1;
  readonly #store = new Map<string, KeyValue>();
  readonly #leases = new Map<string, Lease>();
  readonly #history: Entry[] = [];
  readonly #watchers = new Set<Watcher>();
  readonly #connections = new Set<Connection>();
  readonly #clock: Clock;

  constructor(clock?: Clock) {
    this.#clock = clock ?? {
      setTimeout: (fn, ms) => setTimeout(fn, ms),
      clearTimeout: (id) => clearTimeout(id as number),
    };
  }

  get revision(): number {
    return this.#revision;
  }

  stats(): { watches: number; leases: number; clients: number } {
    return {
      watches: this.#watchers.size,
      leases: this.#leases.size,
      clients: this.#connections.size,
    };
  }

  compact(revision: number = this.#revision): void {
    if (revision > this.#revision) {
      throw new RangeError(`revision ${revision} is in the future (current ${this.#revision})`);
    }
    this.#compacted = Math.max(this.#compacted, revision);
    let drop = 0;
    while (drop < this.#history.length && this.#history[drop]!.revision <= revision) drop++;
    this.#history.splice(0, drop);
  }

  close(): void {
    for (const lease of this.#leases.values()) lease.timer?.clear();
    this.#leases.clear();
    for (const connection of [...this.#connections]) connection.drop(new ClientClosedError(), true);
  }

  attach(connection: Connection): void {
    this.#connections.add(connection);
  }

  forget(connection: Connection): void {
    this.#connections.delete(connection);
  }

  range(start: string, prefix: boolean): RangeResult {
    const kvs = [...this.#store.values()]
      .filter((kv) => prefix ? kv.key.startsWith(start) : kv.key === start)
      .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return { revision: this.#revision, kvs };
  }

  put(key: string, value: string, lease = "0"): number {
    const holder = lease === "0" ? undefined : this.#leases.get(lease);
    if (lease !== "0" && !holder) throw new LeaseNotFoundError(lease);
    const old = this.#store.get(key);
    if (old && old.lease !== "0") this.#leases.get(old.lease)?.keys.delete(key);
    const revision = ++this.#revision;
    const kv: KeyValue = { key, value: encoder.encode(value), modRevision: revision, lease };
    this.#store.set(key, kv);
    holder?.keys.add(key);
    this.#commit(revision, [{ type: "put", kv }]);
    return revision;
  }

  delete(keys: Iterable<string>): number {
    const present = [...keys].filter((key) => this.#store.has(key));
    if (present.length === 0) return this.#revision;
    const revision = ++this.#revision;
    const events: WatchEvent[] = [];
    for (const key of present) {
      const kv = this.#store.get(key)!;
      if (kv.lease !== "0") this.#leases.get(kv.lease)?.keys.delete(key);
      this.#store.delete(key);
      events.push({ type: "delete", key, modRevision: revision });
    }
    this.#commit(revision, events);
    return revision;
  }

  grant(ttl: number): string {
    const id = String(this.#nextLease++);
    const lease: Lease = { id, ttl, timer: undefined, keys: new Set() };
    this.#leases.set(id, lease);
    this.#arm(lease);
    return id;
  }

  keepAlive(id: string): number {
    const lease = this.#leases.get(id);
    if (!lease) return 0;
    this.#arm(lease);
    return lease.ttl;
  }

  revoke(id: string): void {
    const lease = this.#leases.get(id);
    if (!lease) return;
    lease.timer?.clear();
    this.#leases.delete(id);
    this.delete(lease.keys);
  }

  watch(prefix: string, startRevision: number, exact: boolean): Watcher {
    if (startRevision > 0 && startRevision <= this.#compacted) {
      throw new CompactedError(this.#compacted);
    }
    const watcher: Watcher = { prefix, exact, queue: new Queue() };
    watcher.queue.push({ revision: this.#revision, events: [] });
    const from = startRevision > 0 ? startRevision : this.#revision + 1;
    const replay = this.#history
      .filter((entry) => entry.revision >= from && this.#matches(entry.event, watcher))
      .map((entry) => entry.event);
    if (replay.length > 0) watcher.queue.push({ revision: this.#revision, events: replay });
    this.#watchers.add(watcher);
    return watcher;
  }

  unwatch(watcher: Watcher): void {
    this.#watchers.delete(watcher);
  }

  #arm(lease: Lease): void {
    lease.timer?.clear();
    lease.timer = later(lease.ttl * 1000, () => this.revoke(lease.id), this.#clock);
  }

  #matches(event: WatchEvent, watcher: Watcher): boolean {
    const key = event.type === "put" ? event.kv.key : event.key;
    return watcher.exact ? key === watcher.prefix : key.startsWith(watcher.prefix);
  }

  #commit(revision: number, events: WatchEvent[]): void {
    for (const event of events) this.#history.push({ revision, event });
    for (const watcher of this.#watchers) {
      const mine = events.filter((event) => this.#matches(event, watcher));
      if (mine.length > 0) watcher.queue.push({ revision, events: mine });
    }
  }
}

const stores = new WeakMap<MemoryEtcd, Store>();

/** What the store needs of a client connection. */
interface Connection {
  drop(error: Error, close: boolean): void;
}

/**
 * An in-memory etcd server. Several clients made with {@linkcode MemoryEtcd.client}
 * share its state, as processes share one etcd cluster.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MemoryEtcd } from "@seed/grpc-etcd/testing";
 * await using etcd = new MemoryEtcd();
 * await using a = etcd.client();
 * await using b = etcd.client();
 * await a.put("k", "v");
 * assert.equal((await b.get("k")).kvs.length, 1);
 * ```
 */
export class MemoryEtcd implements AsyncDisposable {
  readonly #store: Store;

  /**
   * Creates an empty store at revision 1.
   *
   * @param options the clock that drives lease expiry (default: the global timers)
   */
  constructor(options: { clock?: Clock } = {}) {
    this.#store = new Store(options.clock);
    stores.set(this, this.#store);
  }

  /** The current store revision. */
  get revision(): number {
    return this.#store.revision;
  }

  /**
   * Counts what is held open, to check that nothing leaks.
   *
   * @returns open watches, live leases and connected clients
   */
  stats(): { watches: number; leases: number; clients: number } {
    return this.#store.stats();
  }

  /**
   * Makes a new client connection to this server.
   *
   * @returns the client; closing it does not stop the server
   */
  client(): MemoryClient {
    return new MemoryClient(this);
  }

  /**
   * Discards the history up to `revision` (default: the current one). Watches
   * asked for from a compacted revision fail with {@linkcode CompactedError}.
   *
   * @param revision the revision to compact up to
   * @throws {RangeError} when `revision` is in the future
   */
  compact(revision?: number): void {
    this.#store.compact(revision);
  }

  /**
   * Stops every lease timer and ends every client's watches.
   *
   * @returns when done
   */
  close(): Promise<void> {
    this.#store.close();
    return Promise.resolve();
  }

  /**
   * Same as {@linkcode MemoryEtcd.close}.
   *
   * @returns when done
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * One client connection to a {@linkcode MemoryEtcd}. `disconnect()` makes every
 * call reject and every watch fail until `reconnect()`, as a network partition
 * between this client and etcd would; the server and other clients carry on.
 */
export class MemoryClient implements EtcdClient {
  /** Always `["memory"]`. */
  readonly hosts: readonly string[] = ["memory"];
  readonly #server: MemoryEtcd;
  readonly #store: Store;
  readonly #ownsServer: boolean;
  readonly #watchers = new Set<Watcher>();
  readonly #connection: Connection = { drop: (error, close) => this.#drop(error, close) };
  #connected = true;
  #closed = false;

  /**
   * Connects a new client to a server.
   *
   * @param server the server this client talks to
   * @param options `ownsServer`: closing the client also closes the server
   */
  constructor(server: MemoryEtcd, options: { ownsServer?: boolean } = {}) {
    const store = stores.get(server);
    if (!store) throw new TypeError(`server must be a MemoryEtcd, got ${String(server)}`);
    this.#server = server;
    this.#store = store;
    this.#ownsServer = options.ownsServer ?? false;
    store.attach(this.#connection);
  }

  /** The server this client talks to. */
  get server(): MemoryEtcd {
    return this.#server;
  }

  /** Cuts this client off: calls reject, open watches fail. */
  disconnect(): void {
    this.#drop(new UnavailableError(), false);
  }

  /** Lets this client reach the server again. */
  reconnect(): void {
    if (!this.#closed) this.#connected = true;
  }

  #drop(error: Error, close: boolean): void {
    this.#connected = false;
    if (close) {
      this.#closed = true;
      this.#store.forget(this.#connection);
    }
    for (const watcher of this.#watchers) {
      this.#store.unwatch(watcher);
      watcher.queue.fail(error);
    }
    this.#watchers.clear();
  }

  #call<T>(fn: () => T): Promise<T> {
    if (this.#closed) return Promise.reject(new ClientClosedError());
    if (!this.#connected) return Promise.reject(new UnavailableError());
    try {
      return Promise.resolve(fn());
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** {@inheritDoc EtcdClient.getPrefix} */
  getPrefix(prefix: string): Promise<RangeResult> {
    if (prefix === "") return Promise.reject(new TypeError("prefix must not be empty"));
    return this.#call(() => this.#store.range(prefix, true));
  }

  /** {@inheritDoc EtcdClient.get} */
  get(key: string): Promise<RangeResult> {
    return this.#call(() => this.#store.range(key, false));
  }

  /** {@inheritDoc EtcdClient.put} */
  put(key: string, value: string, lease?: string): Promise<number> {
    return this.#call(() => this.#store.put(key, value, lease));
  }

  /** {@inheritDoc EtcdClient.delete} */
  delete(key: string): Promise<number> {
    return this.#call(() => this.#store.delete([key]));
  }

  /** {@inheritDoc EtcdClient.grantLease} */
  grantLease(ttl: number): Promise<string> {
    return this.#call(() => this.#store.grant(ttl));
  }

  /** {@inheritDoc EtcdClient.keepAlive} */
  keepAlive(lease: string): Promise<number> {
    return this.#call(() => this.#store.keepAlive(lease));
  }

  /** {@inheritDoc EtcdClient.revokeLease} */
  revokeLease(lease: string): Promise<void> {
    return this.#call(() => this.#store.revoke(lease));
  }

  /** {@inheritDoc EtcdClient.watch} */
  async *watch(prefix: string, options: WatchOptions): AsyncIterable<WatchBatch> {
    const { startRevision, signal, exact = false } = options;
    if (signal?.aborted) return;
    await this.#call(() => undefined);
    const watcher = this.#store.watch(prefix, startRevision, exact);
    this.#watchers.add(watcher);
    const stop = () => watcher.queue.end();
    signal?.addEventListener("abort", stop, { once: true });
    try {
      yield* watcher.queue;
    } finally {
      signal?.removeEventListener("abort", stop);
      this.#watchers.delete(watcher);
      this.#store.unwatch(watcher);
    }
  }

  /** {@inheritDoc EtcdClient.close} */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#drop(new ClientClosedError(), true);
    if (this.#ownsServer) await this.#server.close();
  }

  /**
   * Same as {@linkcode MemoryClient.close}.
   *
   * @returns when closed
   */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * A client of a new, private in-memory etcd. Closing the client stops the
 * server. For several clients on one server, use `new MemoryEtcd().client()`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { register, resolve } from "@seed/grpc-etcd";
 * import { memoryClient } from "@seed/grpc-etcd/testing";
 *
 * await using client = memoryClient();
 * await using _reg = await register(client, "svc/echo", { addr: "127.0.0.1:50051" });
 * for await (const batch of resolve(client, "svc/echo")) {
 *   assert.deepEqual(batch.map((u) => u.op), ["add"]);
 *   break;
 * }
 * ```
 *
 * @param options the clock that drives lease expiry (default: the global timers)
 * @returns the client, which also exposes its server as `client.server`
 */
export function memoryClient(options: { clock?: Clock } = {}): MemoryClient {
  return new MemoryClient(new MemoryEtcd(options), { ownsServer: true });
}
