/**
 * Harness: a steady, bounded load of SayHello calls through one client,
 * recording which instance answered each call and which calls failed.
 *
 * @module
 */
import type * as grpc from "@grpc/grpc-js";
import { type GreeterClient, sayHello } from "./greeter.ts";

/** One finished call. */
export interface CallRecord {
  /** When it ended (ms since the epoch). */
  readonly at: number;
  /** The instance that answered, or undefined when it failed. */
  readonly instance?: string;
  /** The gRPC status code of a failure. */
  readonly code?: grpc.status;
  /** The failure text. */
  readonly details?: string;
}

/** Runs `workers` loops, each calling then pausing `pauseMs`, until stopped. */
export class Load {
  readonly records: CallRecord[] = [];
  readonly #client: GreeterClient;
  readonly #workers: Promise<void>[] = [];
  #stopped = false;

  constructor(client: GreeterClient, options: { workers?: number; pauseMs?: number } = {}) {
    this.#client = client;
    const { workers = 4, pauseMs = 20 } = options;
    for (let i = 0; i < workers; i++) this.#workers.push(this.#loop(pauseMs));
  }

  async #loop(pauseMs: number): Promise<void> {
    while (!this.#stopped) {
      try {
        const reply = await sayHello(this.#client, { name: "load" }, {
          deadline: Date.now() + 3000,
        });
        this.records.push({ at: Date.now(), instance: reply.instance });
      } catch (error) {
        const e = error as grpc.ServiceError;
        this.records.push({ at: Date.now(), code: e.code, details: e.details ?? e.message });
      }
      if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
    }
  }

  /** Calls that failed. */
  get failures(): CallRecord[] {
    return this.records.filter((r) => r.instance === undefined);
  }

  /** Calls answered by `instance` after `since` (ms since the epoch). */
  answeredBy(instance: string, since = 0): number {
    return this.records.filter((r) => r.instance === instance && r.at >= since).length;
  }

  /** Stops the loops and waits for the calls in flight. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all(this.#workers);
  }
}

/**
 * Calls until `count` different instances have answered within one round of
 * `2 × count` calls, as a long-running client would find them all connected.
 */
export async function untilAllAnswer(
  client: GreeterClient,
  count: number,
  ms = 5000,
): Promise<void> {
  const start = Date.now();
  while (true) {
    const seen = new Set<string>();
    for (let i = 0; i < 2 * count; i++) {
      seen.add((await sayHello(client, { name: "warm" })).instance);
    }
    if (seen.size === count) return;
    if (Date.now() - start > ms) {
      throw new Error(`${count} instances answering: not within ${ms} ms`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}
