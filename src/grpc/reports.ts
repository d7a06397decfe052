/**
 * Reports of a dialed client's problems, each distinct one at most once per
 * window. Pure (the clock is passed in).
 *
 * @module
 */

/** How long a report stays muted after it was made, in ms. */
export const REPORT_WINDOW_MS = 60_000;

/**
 * Passes each error to `onError` unless one with the same message was passed
 * within the window: an instance that keeps failing is reported once a minute,
 * not on every retry, and one that flaps is reported again later. Memory is
 * bounded by the distinct messages of one window.
 */
export class Reports {
  readonly #onError: (error: Error) => void;
  readonly #windowMs: number;
  readonly #now: () => number;
  /** When each message was last reported, oldest first. */
  readonly #last = new Map<string, number>();

  /**
   * @param onError where reports go; a throwing handler is ignored
   * @param windowMs how long a message stays muted
   * @param now the clock: a monotonic one, so that a wall clock set back mutes nothing
   */
  constructor(
    onError: (error: Error) => void,
    windowMs: number = REPORT_WINDOW_MS,
    now: () => number = () => performance.now(),
  ) {
    this.#onError = onError;
    this.#windowMs = windowMs;
    this.#now = now;
  }

  /** Reports an event (a switch of state, say) at once, however recently it was reported. */
  event(error: Error): void {
    try {
      this.#onError(error);
    } catch {
      // A throwing handler must not break the client.
    }
  }

  /** Reports `error` unless its message was reported within the window. */
  report(error: Error): void {
    const now = this.#now();
    // Forget what the window has passed (the map is in report order).
    for (const [message, at] of this.#last) {
      if (now - at < this.#windowMs) break;
      this.#last.delete(message);
    }
    if (this.#last.has(error.message)) return;
    this.#last.set(error.message, now);
    try {
      this.#onError(error);
    } catch {
      // A throwing handler must not break the client.
    }
  }
}
