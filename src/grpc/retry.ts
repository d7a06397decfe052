/**
 * The pure parts of gRFC A6's retries: the throttle's token bucket, the
 * server's pushback, and the shared limit on what calls may keep for
 * replaying.
 *
 * @module
 */
import type { RetryThrottling } from "./service_config.ts";

/** The trailer by which a server asks for a retry after a delay, or for none. */
export const PUSHBACK_KEY = "grpc-retry-pushback-ms";

/** The header that tells a server (and the caller) how many attempts came before. */
export const PREVIOUS_ATTEMPTS_KEY = "grpc-previous-rpc-attempts";

/**
 * Retry throttling (gRFC A6), one per client: every attempt that fails with a
 * retryable status takes a token, every attempt that succeeds gives back
 * `tokenRatio`; retries stop while the tokens are at or below half the maximum.
 */
export class RetryThrottle {
  readonly #max: number;
  readonly #ratio: number;
  #tokens: number;

  /** @param config `maxTokens` and `tokenRatio` of the service config */
  constructor(config: RetryThrottling) {
    this.#max = config.maxTokens;
    this.#ratio = config.tokenRatio;
    this.#tokens = config.maxTokens;
  }

  /** The tokens left. */
  get tokens(): number {
    return this.#tokens;
  }

  /** An attempt ended OK. */
  succeeded(): void {
    this.#tokens = Math.min(this.#tokens + this.#ratio, this.#max);
  }

  /** An attempt failed with a retryable status (or a pushback saying not to retry). */
  failed(): void {
    this.#tokens = Math.max(this.#tokens - 1, 0);
  }

  /** Whether a retry may be made now. */
  get allowsRetry(): boolean {
    return this.#tokens > this.#max / 2;
  }
}

/**
 * What a server's `grpc-retry-pushback-ms` trailer asks: `undefined` when
 * there is none, `"stop"` for a negative or unreadable value (gRFC A6: do not
 * retry), else the delay in ms.
 *
 * @param values the trailer's values
 */
export function pushbackOf(values: readonly unknown[]): number | "stop" | undefined {
  if (values.length === 0) return undefined;
  const text = String(values[0]);
  if (!/^-?\d+$/.test(text)) return "stop";
  const ms = Number(text);
  return ms < 0 || ms > 2 ** 31 - 1 ? "stop" : ms;
}

/**
 * What the retrying calls of one client may keep to replay their messages
 * (grpc-js's `grpc.retry_buffer_size` and `grpc.per_rpc_retry_buffer_size`).
 */
export class RetryBuffer {
  /** Bytes kept by all calls. */
  used = 0;
  /** The most all calls may keep. */
  readonly total: number;
  /** The most one call may keep. */
  readonly perCall: number;

  /**
   * @param total the most all calls may keep, in bytes
   * @param perCall the most one call may keep, in bytes
   */
  constructor(total: number, perCall: number) {
    this.total = total;
    this.perCall = perCall;
  }

  /** Takes `size` bytes for a call that keeps `kept` already, or says no. */
  take(size: number, kept: number): boolean {
    if (kept + size > this.perCall || this.used + size > this.total) return false;
    this.used += size;
    return true;
  }

  /** Gives back `size` bytes. */
  give(size: number): void {
    this.used -= size;
  }
}
