/**
 * Small async helpers private to this module: push-to-pull streams, an
 * abortable sleep, and racing a promise against a signal.
 *
 * @module
 */
import { MAX_TIMER_MS } from "./_options.ts";

/**
 * The consumer side of a push-to-pull stream that ends once, with or without
 * an error. `next()` calls may overlap: they settle in call order, with values
 * first, then the error (once), then `done`. Subclasses decide how values wait.
 */
export abstract class Inbox<T> implements AsyncIterable<T> {
  #waiters: PromiseWithResolvers<IteratorResult<T, undefined>>[] = [];
  #done = false;
  #error: unknown = undefined;
  #failed = false;

  /** Whether a value waits to be taken. */
  protected abstract hasItem(): boolean;
  /** Takes the oldest waiting value; only called when {@linkcode hasItem}. */
  protected abstract takeItem(): T;
  /** Keeps a value that no `next()` call is waiting for. */
  protected abstract store(item: T): void;
  /** Called when a value went straight to a waiting `next()` call. */
  protected delivered(_item: T): void {}

  /** Whether the stream has ended. */
  get done(): boolean {
    return this.#done;
  }

  /** Adds a value: to the oldest waiting `next()`, else to the store; ignored after the end. */
  push(item: T): void {
    if (this.#done) return;
    const waiter = this.#waiters.shift();
    if (waiter) {
      this.delivered(item);
      waiter.resolve({ value: item, done: false });
    } else {
      this.store(item);
    }
  }

  /** Ends the stream after the values already in it. */
  end(): void {
    if (this.#done) return;
    this.#done = true;
    this.#settleWaiters();
  }

  /** Ends the stream: the consumer gets the values already in it, then `error`. */
  fail(error: unknown): void {
    if (this.#done) return;
    this.#done = true;
    this.#failed = true;
    this.#error = error;
    this.#settleWaiters();
  }

  /** Settles waiting `next()` calls once ended (no value can be waiting then). */
  #settleWaiters(): void {
    for (const waiter of this.#waiters.splice(0)) {
      if (this.#failed) {
        this.#failed = false;
        waiter.reject(this.#error);
      } else {
        waiter.resolve({ value: undefined, done: true });
      }
    }
  }

  /** Takes the next value, waiting for one; `undefined` with `done` when ended. */
  next(): Promise<IteratorResult<T, undefined>> {
    if (this.hasItem()) return Promise.resolve({ value: this.takeItem(), done: false });
    if (this.#done) {
      if (!this.#failed) return Promise.resolve({ value: undefined, done: true });
      this.#failed = false;
      return Promise.reject(this.#error);
    }
    const waiter = Promise.withResolvers<IteratorResult<T, undefined>>();
    this.#waiters.push(waiter);
    return waiter.promise;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    while (true) {
      const result = await this.next();
      if (result.done) return;
      yield result.value;
    }
  }
}

/** An unbounded first-in, first-out {@linkcode Inbox}. */
export class Queue<T> extends Inbox<T> {
  #items: T[] = [];
  #head = 0;

  protected hasItem(): boolean {
    return this.#head < this.#items.length;
  }

  protected takeItem(): T {
    const value = this.#items[this.#head] as T;
    this.#items[this.#head++] = undefined as T;
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return value;
  }

  protected store(item: T): void {
    this.#items.push(item);
  }
}

/** A timer from {@linkcode later}. */
export interface Timer {
  /** Cancels the timer; idempotent. */
  clear(): void;
}

/** The timer functions {@linkcode later} uses (injectable, as `MemoryEtcd`'s clock is). */
export interface TimerFunctions {
  /** Schedules `fn` after `ms`. */
  setTimeout(fn: () => void, ms: number): unknown;
  /** Cancels a scheduled call. */
  clearTimeout(id: unknown): void;
}

const globalTimers: TimerFunctions = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (id) => clearTimeout(id as number),
};

/**
 * Calls `fn` after `ms` milliseconds, however long: a delay past what one timer
 * keeps (2^31 − 1 ms, after which runtimes fire at once) is waited in steps.
 * `Infinity` never fires.
 */
export function later(ms: number, fn: () => void, timers: TimerFunctions = globalTimers): Timer {
  let id: unknown;
  let cleared = false;
  const arm = (left: number) => {
    if (left === Infinity) return;
    const step = Math.min(Math.max(0, left), MAX_TIMER_MS);
    id = timers.setTimeout(() => {
      if (cleared) return;
      if (left > step) arm(left - step);
      else fn();
    }, step);
  };
  arm(ms);
  return {
    clear() {
      cleared = true;
      timers.clearTimeout(id);
    },
  };
}

/**
 * Waits `ms` milliseconds, or less when `signal` aborts (then resolves early,
 * without throwing). Clears its timer either way.
 */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      timer.clear();
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = later(ms, done);
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
