/**
 * Harness: a `fetch` whose response bodies fail once they stay silent for a
 * while, as the runtime's own `fetch` does to a silent response after its idle
 * timeout, shortened here so that a test sees it in seconds: on Node undici's
 * `bodyTimeout` (300 s by default), through a dispatcher of its own; on Bun
 * the `timeout` option of its `fetch` (5 minutes by default by Bun's docs; an
 * idle watch on Bun 1.4.5 outlived 330 s; checked about every 8 s, so a body
 * fails up to 8 s after its timeout). Deno's `fetch` has no such
 * timeout: there a body that fails the way undici's does stands in.
 *
 * @module
 */
import { currentRuntime } from "./runtime.ts";

/** A `fetch` with a short idle timeout on response bodies, and what applies it. */
export interface IdleTimeoutFetch extends AsyncDisposable {
  /** The `fetch`, shaped as `connectFetch()`'s `options.fetch`. */
  readonly fetch: (url: string, init: RequestInit) => Promise<Response>;
  /** What ends a silent body, in words (for a scenario's result line). */
  readonly kind: string;
}

/** Where Node keeps the dispatcher of its global `fetch` (undici's own key). */
const NODE_DISPATCHER = Symbol.for("undici.globalDispatcher.1");

interface Dispatcher {
  close(): Promise<void>;
}

/**
 * A `fetch` whose response bodies fail after `ms` without a byte.
 *
 * @param ms the idle timeout, in ms
 * @returns the `fetch`; disposing it releases what it holds (Node: its dispatcher's sockets)
 */
export async function idleTimeoutFetch(ms: number): Promise<IdleTimeoutFetch> {
  switch (currentRuntime()) {
    case "node": {
      // Node's fetch is undici's: make an Agent like its global one, with a short bodyTimeout.
      await fetch("data:,").then((r) => r.text());
      const global = (globalThis as Record<symbol, unknown>)[NODE_DISPATCHER];
      if (typeof global !== "object" || global === null) {
        throw new Error(
          "Node's global fetch dispatcher is not at Symbol.for(undici.globalDispatcher.1)",
        );
      }
      const Agent = global.constructor as new (options: { bodyTimeout: number }) => Dispatcher;
      const dispatcher = new Agent({ bodyTimeout: ms });
      return {
        fetch: (url, init) => fetch(url, { ...init, dispatcher } as RequestInit),
        kind: `undici's bodyTimeout of ${ms} ms`,
        [Symbol.asyncDispose]: () => dispatcher.close(),
      };
    }
    case "bun":
      return {
        fetch: (url, init) => fetch(url, { ...init, timeout: ms } as RequestInit),
        kind: `Bun's fetch timeout of ${ms} ms`,
        [Symbol.asyncDispose]: () => Promise.resolve(),
      };
    case "deno":
      return {
        fetch: async (url, init) => silenceLimited(await fetch(url, init), ms),
        kind: `a body failing after ${ms} ms of silence (Deno's fetch has no idle timeout)`,
        [Symbol.asyncDispose]: () => Promise.resolve(),
      };
  }
}

/** `response` with a body that fails as undici's does after `ms` without a byte. */
function silenceLimited(response: Response, ms: number): Response {
  if (!response.body) return response;
  const reader = response.body.getReader();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      const silence = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new TypeError("terminated", { cause: new Error(`no byte for ${ms} ms`) })),
          ms,
        );
      });
      try {
        const { value, done } = await Promise.race([reader.read(), silence]);
        if (done) controller.close();
        else controller.enqueue(value);
      } catch (error) {
        controller.error(error);
        await reader.cancel(error).catch(() => {});
      } finally {
        clearTimeout(timer);
      }
    },
    async cancel(reason) {
      clearTimeout(timer);
      await reader.cancel(reason);
    },
  });
  return new Response(body, { status: response.status, headers: response.headers });
}
