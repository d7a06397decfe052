/**
 * Test helper: fake timers from `npm:@sinonjs/fake-timers`, uninstalled by `using`.
 *
 * @module
 */
import FakeTimers from "@sinonjs/fake-timers";

/** An installed fake clock; `using clock = fakeTime()` uninstalls it at scope end. */
export interface FakeTime extends Disposable {
  /** Current fake time in ms. */
  readonly now: number;
  /** Advances time, running timers and the microtasks they queue. */
  tick(ms: number): Promise<void>;
  /** Lets pending promise callbacks run without advancing time. */
  settle(): Promise<void>;
}

/** Fakes `setTimeout`, `clearTimeout`, `setInterval`, `clearInterval` and `Date`. */
export function fakeTime(): FakeTime {
  const clock = FakeTimers.install({
    now: 1_000_000,
    toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"],
  });
  return {
    get now() {
      return clock.now;
    },
    async tick(ms: number) {
      await clock.tickAsync(ms);
    },
    async settle() {
      await clock.tickAsync(0);
    },
    [Symbol.dispose]() {
      clock.uninstall();
    },
  };
}
