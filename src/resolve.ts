/**
 * `resolve()`: a service's endpoints as a stream of update batches. All
 * resolvers of one service on one client share one etcd watch.
 *
 * @module
 */
import { abortable, asError, Inbox, sleep } from "./_async.ts";
import { backoff } from "./backoff.ts";
import {
  checkService,
  decodeEndpoint,
  type Endpoint,
  EndpointDecodeError,
  type Update,
} from "./endpoint.ts";
import { ClientClosedError, CompactedError, type EtcdClient } from "./etcd/client.ts";
import { diffViews } from "./view.ts";

/**
 * How often the shared watch checks that etcd still answers: a member frozen under
 * it would otherwise leave the view stale until gRPC keepalive notices (~15 s).
 */
const HEARTBEAT_MS = 5000;
const BACKOFF = { initial: 100, max: 3000 } as const;
/** How long a watch must stay open, without events, to count as progress. */
const STEADY_MS = BACKOFF.max;
/** Options of {@linkcode resolve}. */
export interface ResolveOptions {
  /** Ends the iterator and releases its share of the watch. */
  readonly signal?: AbortSignal;
  /**
   * Called with every problem that does not end the stream: a value under the
   * prefix that is not an endpoint ({@linkcode EndpointDecodeError}, with its
   * key), a lost connection (the view is kept and the watch resumes), or a
   * compaction (the view is re-read). Default: `console.warn`.
   */
  readonly onError?: (error: Error) => void;
}

/** The iterator that {@linkcode resolve} returns; `await using` ends it. */
export interface Resolution extends AsyncIterableIterator<Update[]>, AsyncDisposable {
  /** Waits for the next batch; `done` once the stream ended. */
  next(): Promise<IteratorResult<Update[], undefined>>;
  /** Ends the stream and releases its share of the watch. */
  return(): Promise<IteratorResult<Update[], undefined>>;
}

interface Subscriber {
  push(batch: Update[]): void;
  report(error: Error): void;
  end(): void;
}

/** One etcd watch of one service's prefix, fanned out to every subscriber. */
class SharedWatch {
  readonly #client: EtcdClient;
  readonly #prefix: string;
  readonly #subscribers = new Set<Subscriber>();
  readonly #controller = new AbortController();
  #view = new Map<string, Endpoint>();
  #loaded = false;
  readonly done: Promise<void>;

  constructor(client: EtcdClient, service: string, onEnd: () => void) {
    this.#client = client;
    this.#prefix = `${service}/`;
    this.done = this.#run().finally(onEnd);
  }

  add(subscriber: Subscriber): void {
    this.#subscribers.add(subscriber);
    if (this.#loaded) subscriber.push(this.#snapshot());
  }

  /** Removes a subscriber; returns true when it was the last one and the watch stopped. */
  remove(subscriber: Subscriber): boolean {
    this.#subscribers.delete(subscriber);
    if (this.#subscribers.size > 0) return false;
    this.#controller.abort();
    return true;
  }

  #snapshot(): Update[] {
    return [...this.#view].map(([key, endpoint]) => ({ op: "add", key, endpoint }));
  }

  #emit(batch: Update[]): void {
    for (const subscriber of this.#subscribers) subscriber.push(batch);
  }

  #report(error: Error): void {
    for (const subscriber of this.#subscribers) subscriber.report(error);
  }

  #decodeAll(kvs: Iterable<{ key: string; value: Uint8Array }>): Map<string, Endpoint> {
    const view = new Map<string, Endpoint>();
    for (const { key, value } of kvs) {
      const endpoint = decodeEndpoint(key, value);
      if (endpoint instanceof EndpointDecodeError) this.#report(endpoint);
      else view.set(key, endpoint);
    }
    return view;
  }

  async #run(): Promise<void> {
    const signal = this.#controller.signal;
    let revision = 0;
    let relist = true;
    let attempt = 0;
    while (!signal.aborted) {
      /** When the watch first answered: one that stayed up long enough counts as progress. */
      let opened: number | undefined;
      try {
        if (relist) {
          const result = await abortable(this.#client.getPrefix(this.#prefix), signal);
          const next = this.#decodeAll(result.kvs);
          if (this.#loaded) {
            const diff = diffViews(this.#view, next);
            this.#view = next;
            if (diff.length > 0) this.#emit(diff);
          } else {
            this.#view = next;
            this.#loaded = true;
            this.#emit(this.#snapshot());
          }
          revision = result.revision;
          relist = false;
        }
        const batches = this.#client.watch(this.#prefix, {
          startRevision: revision + 1,
          signal,
          heartbeat: HEARTBEAT_MS,
        });
        for await (const batch of batches) {
          opened ??= Date.now();
          // Progress (events, or a watch that stayed up) resets the backoff; "created" does not.
          if (batch.events.length > 0) attempt = 0;
          const updates: Update[] = [];
          for (const event of batch.events) {
            if (event.type === "put") {
              revision = Math.max(revision, event.kv.modRevision);
              const endpoint = decodeEndpoint(event.kv.key, event.kv.value);
              if (endpoint instanceof EndpointDecodeError) {
                this.#report(endpoint);
                if (this.#view.delete(event.kv.key)) {
                  updates.push({ op: "delete", key: event.kv.key });
                }
              } else {
                this.#view.set(event.kv.key, endpoint);
                updates.push({ op: "add", key: event.kv.key, endpoint });
              }
            } else {
              revision = Math.max(revision, event.modRevision);
              if (this.#view.delete(event.key)) updates.push({ op: "delete", key: event.key });
            }
          }
          if (updates.length > 0) this.#emit(updates);
        }
        if (!signal.aborted) throw new Error(`the watch on ${this.#prefix} ended`);
      } catch (error) {
        if (signal.aborted) break;
        if (error instanceof ClientClosedError) {
          // Nothing can be watched on a closed client: end every iterator.
          this.#report(error);
          for (const subscriber of this.#subscribers) subscriber.end();
          break;
        }
        if (error instanceof CompactedError) relist = true;
        this.#report(asError(error));
        if (opened !== undefined && Date.now() - opened >= STEADY_MS) attempt = 0;
        await sleep(backoff(attempt++, BACKOFF), signal);
      }
    }
  }
}

const watches = new WeakMap<EtcdClient, Map<string, SharedWatch>>();

function share(client: EtcdClient, service: string): SharedWatch {
  let byService = watches.get(client);
  if (!byService) watches.set(client, byService = new Map());
  let watch = byService.get(service);
  if (!watch) {
    const created: SharedWatch = new SharedWatch(
      client,
      service,
      () => unshare(client, service, created),
    );
    byService.set(service, watch = created);
  }
  return watch;
}

function unshare(client: EtcdClient, service: string, watch: SharedWatch): void {
  const byService = watches.get(client);
  if (byService?.get(service) === watch) byService.delete(service);
}

/**
 * What one resolver has not read yet. A reader that keeps up gets one batch per
 * etcd change set. For one that falls behind, the batches waiting are merged per
 * key (the latest add or delete wins): it holds at most one entry per key, and
 * still folds to etcd's current state when it reads. Until the reader has its
 * first batch (the snapshot, all adds), a delete merged into it drops the key,
 * so that the first batch stays the current set as adds.
 */
class PendingUpdates extends Inbox<Update[]> {
  #batch: Update[] | undefined;
  #merged: Map<string, Update> | undefined;
  /** Whether the reader has had its first batch. */
  #started = false;

  protected hasItem(): boolean {
    return this.#batch !== undefined || this.#merged !== undefined;
  }

  protected takeItem(): Update[] {
    this.#started = true;
    const batch = this.#merged ? [...this.#merged.values()] : this.#batch!;
    this.#batch = this.#merged = undefined;
    return batch;
  }

  protected override delivered(): void {
    this.#started = true;
  }

  protected store(batch: Update[]): void {
    if (!this.hasItem()) {
      this.#batch = batch;
      return;
    }
    if (!this.#merged) {
      this.#merged = new Map();
      for (const update of this.#batch!) this.#merged.set(update.key, update);
      this.#batch = undefined;
    }
    for (const update of batch) {
      if (update.op === "delete" && !this.#started) this.#merged.delete(update.key);
      else this.#merged.set(update.key, update);
    }
  }
}

class ResolutionImpl implements Resolution {
  readonly #queue = new PendingUpdates();
  readonly #client: EtcdClient;
  readonly #service: string;
  readonly #signal: AbortSignal | undefined;
  readonly #onError: (error: Error) => void;
  #watch: SharedWatch | undefined;
  #subscriber: Subscriber | undefined;
  #released: Promise<void> | undefined;
  /** The last `next()` or `return()` called, settled or not (see `#inOrder`). */
  #tail: Promise<void> = Promise.resolve();
  readonly #onAbort = () => void this.#release();

  constructor(client: EtcdClient, service: string, options: ResolveOptions) {
    this.#client = client;
    this.#service = service;
    this.#signal = options.signal;
    this.#onError = options.onError ??
      ((error) => console.warn(`grpc-etcd resolve(${JSON.stringify(service)}): ${error.message}`));
    if (this.#signal?.aborted) {
      this.#released = Promise.resolve();
      this.#queue.end();
      return;
    }
    this.#signal?.addEventListener("abort", this.#onAbort, { once: true });
    this.#watch = share(client, service);
    this.#subscriber = {
      push: (batch) => this.#queue.push(batch),
      end: () => this.#queue.end(),
      report: (error) => {
        try {
          this.#onError(error);
        } catch {
          // A throwing handler must not break the shared watch.
        }
      },
    };
    this.#watch.add(this.#subscriber);
  }

  #release(): Promise<void> {
    if (this.#released) return this.#released;
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#queue.end();
    const watch = this.#watch!;
    const last = watch.remove(this.#subscriber!);
    if (last) unshare(this.#client, this.#service, watch);
    this.#released = last ? watch.done : Promise.resolve();
    return this.#released;
  }

  /**
   * Settles after every `next()` and `return()` called before it, so that calls
   * settle in call order (a pending `next()` settles `done` before a later
   * `return()` does).
   */
  #inOrder<T>(call: Promise<T>): Promise<T> {
    const settled = this.#tail.then(() => call);
    this.#tail = settled.then(() => {}, () => {});
    return settled;
  }

  next(): Promise<IteratorResult<Update[], undefined>> {
    return this.#inOrder(this.#next());
  }

  async #next(): Promise<IteratorResult<Update[], undefined>> {
    if (this.#released) {
      await this.#released;
      return { value: undefined, done: true };
    }
    const result = await this.#queue.next();
    if (result.done || this.#released) {
      await this.#release();
      return { value: undefined, done: true };
    }
    return result;
  }

  return(): Promise<IteratorResult<Update[], undefined>> {
    // Release at once (a pending next() then ends), settle after the calls before.
    return this.#inOrder(this.#release().then(() => ({ value: undefined, done: true })));
  }

  [Symbol.asyncIterator](): Resolution {
    return this;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#release();
  }
}

/**
 * Streams a service's endpoints. The first batch is the current set as adds
 * (possibly empty), read at one revision; then one batch per etcd change set,
 * from the next revision on, with no change missed or repeated across
 * reconnects. After a compaction the set is re-read and the difference is
 * emitted as one batch. While etcd is unreachable the last view stands (no
 * deletes) and errors go to `onError`. Values that are not endpoints are
 * skipped and reported, never thrown.
 *
 * Resolvers of one service on one client share one etcd watch. Ending the
 * iterator (`break`, `return()`, `await using`, or `signal`) releases its share.
 *
 * A consumer that reads more slowly than etcd changes does not make anything
 * pile up: the batches it has not read yet are merged per key (the latest add
 * or delete wins), so it holds at most one pending update per key and folds to
 * etcd's current state when it reads; only its batch boundaries merge.
 * Overlapping `next()` calls settle in call order.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { applyUpdates, register, resolve, roundRobin } from "@seed/grpc-etcd";
 * import { memoryClient } from "@seed/grpc-etcd/testing";
 *
 * await using client = memoryClient();
 * await using _a = await register(client, "svc/echo", { addr: "10.0.0.1:50051" });
 * let view = new Map();
 * for await (const batch of resolve(client, "svc/echo")) {
 *   view = applyUpdates(view, batch);
 *   break;
 * }
 * assert.equal(roundRobin([...view.values()])()?.addr, "10.0.0.1:50051");
 * ```
 *
 * @param client the etcd client
 * @param service the service name; endpoints live under `<service>/`
 * @param options the signal that ends the stream, and the error handler
 * @returns an async iterator of update batches
 * @throws {TypeError} when the service name is unusable
 */
export function resolve(
  client: EtcdClient,
  service: string,
  options: ResolveOptions = {},
): Resolution {
  checkService(service);
  if (typeof client?.watch !== "function" || typeof client?.getPrefix !== "function") {
    throw new TypeError(`client must be an EtcdClient (see connect()), got ${String(client)}`);
  }
  return new ResolutionImpl(client, service, options);
}
