/**
 * Small async helpers private to this module: a push-to-pull queue, an
 * abortable sleep, and racing a promise against a signal.
 *
 * @module
 */

/** An unbounded single-consumer queue that ends once, with or without an error. */
export class Queue<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #head = 0;
  #done = false;
  #error: unknown = undefined;
  #failed = false;
  #waiter: PromiseWithResolvers<void> | undefined;

  /** Whether the queue has ended. */
  get done(): boolean {
    return this.#done;
  }

  /** Adds a value; ignored after the queue ended. */
  push(item: T): void {
    if (this.#done) return;
    this.#items.push(item);
    this.#wake();
  }

  /** Ends the queue after the values already in it. */
  end(): void {
    if (this.#done) return;
    this.#done = true;
    this.#wake();
  }

  /** Ends the queue: the consumer gets the values already in it, then `error`. */
  fail(error: unknown): void {
    if (this.#done) return;
    this.#done = true;
    this.#failed = true;
    this.#error = error;
    this.#wake();
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.resolve();
  }

  /** Takes the next value, waiting for one; `undefined` with `done` when ended. */
  async next(): Promise<IteratorResult<T, undefined>> {
    while (true) {
      if (this.#head < this.#items.length) {
        const value = this.#items[this.#head] as T;
        this.#items[this.#head++] = undefined as T;
        if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
          this.#items = this.#items.slice(this.#head);
          this.#head = 0;
        }
        return { value, done: false };
      }
      if (this.#done) {
        if (this.#failed) {
          this.#failed = false;
          throw this.#error;
        }
        return { value: undefined, done: true };
      }
      this.#waiter = Promise.withResolvers<void>();
      await this.#waiter.promise;
    }
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    while (true) {
      const result = await this.next();
      if (result.done) return;
      yield result.value;
    }
  }
}

/**
 * Waits `ms` milliseconds, or less when `signal` aborts (then resolves early,
 * without throwing). Clears its timer either way.
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Rejects with `signal.reason` as soon as `signal` aborts, else settles as `promise` does. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Makes an `Error` of anything thrown. */
export function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
