/**
 * A call of a dialed client, as its client sees it: it makes attempts
 * ({@linkcode PickedCall}) on picked instances and retries as gRFC A6 says.
 *
 * - A retry policy retries an attempt that ended with a retryable status,
 *   after a random wait in `[0, backoff)`, up to `maxAttempts` attempts in all,
 *   on another instance when one is ready; a server's `grpc-retry-pushback-ms`
 *   sets the wait (or stops retries); retry throttling stops retries while most
 *   attempts fail.
 * - An attempt that never reached a server (its instance's connection broke
 *   before a stream was opened) is retried once at once on another instance,
 *   with or without a policy; this retry counts neither as an attempt nor for
 *   the throttle.
 * - The call is committed to its attempt (no more retries) once the caller
 *   gets part of the response, or once the messages kept for replaying outgrow
 *   their limit. Without a retry policy, or before the caller has half-closed
 *   (a client or bidi stream still sending), that is at the response headers
 *   (gRFC A6). With a policy, headers that come after the half-close are held
 *   back: for a method whose response is a single message
 *   (`responseStream: false`), headers and message are passed on with the
 *   status, so a unary call is retried until its status; for a streamed
 *   response, the headers are passed on with the first message, or after
 *   {@linkcode HEADERS_HOLD_MS} without one. gRFC A6 commits at the headers,
 *   but servers on Deno's `node:http2` send the headers a few ms before the
 *   message: a server that dies in between would fail calls that the caller
 *   has seen nothing of. Before the half-close, holding the headers could
 *   deadlock a caller that waits for them before it sends.
 * - The method config's `timeout` shortens the deadline; its `waitForReady` is
 *   the default for calls that do not set their own.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import type { Buffer } from "node:buffer";
import { later, type Timer } from "../_async.ts";
import type { Instance } from "./instance.ts";
import {
  type AttemptListener,
  type Call,
  type CallCredentials,
  type CallRouter,
  type CreateCallArgs,
  PickedCall,
} from "./picked_call.ts";
import {
  PREVIOUS_ATTEMPTS_KEY,
  PUSHBACK_KEY,
  pushbackOf,
  type RetryBuffer,
  type RetryThrottle,
} from "./retry.ts";
import type { MethodPolicy } from "./service_config.ts";

type Listener = Parameters<Call["start"]>[1];
type MessageContext = Parameters<Call["sendMessageWithContext"]>[0];

const OK = grpc.status.OK;

/**
 * How long a streamed response's headers are held back, at most, waiting for
 * its first message (with a retry policy, once the caller has half-closed):
 * long enough for the gap Deno's `node:http2` servers leave between the
 * headers and the first message (30–45 ms), short enough for a stream whose
 * server sends its headers long before its first message.
 */
export const HEADERS_HOLD_MS = 100;

/** What a retrying call asks of its channel, besides picks. */
export interface RetryRouter extends CallRouter {
  /** The channel is closed: no more attempts. */
  readonly closed: boolean;
  /** `grpc.enable_retries` is not 0. */
  readonly retries: boolean;
  /** Retry throttling, when configured. */
  readonly throttle: RetryThrottle | undefined;
  /** What calls may keep to replay their messages. */
  readonly buffer: RetryBuffer;
  /** A source of numbers in [0, 1), for the backoff. */
  readonly random: () => number;
  /** The call waits to retry (`true`) or no longer does: `close()` ends the waiting ones. */
  backingOff(call: RetryingCall, waiting: boolean): void;
}

interface Kept {
  readonly message: Buffer;
  readonly flags: number | undefined;
  /** The caller's write callback, for a message not yet acknowledged to the caller. */
  readonly callback: (() => void) | undefined;
}

let callNumbers = 0;

/** A call that makes attempts and retries them (see the module doc). */
export class RetryingCall implements Call, AttemptListener {
  readonly #router: RetryRouter;
  readonly #policy: MethodPolicy;
  /** May hold the response back until the first message (see the module doc). */
  readonly #holding: boolean;
  /** The response is one message: it is held back until the status, too. */
  readonly #singleResponse: boolean;
  #heldMetadata: grpc.Metadata | undefined;
  /** Ends the hold of a stream's headers (see {@linkcode HEADERS_HOLD_MS}). */
  #holdTimer: Timer | undefined;
  #heldMessage: unknown;
  #messageHeld = false;
  readonly #method: string;
  readonly #host: CreateCallArgs[2];
  readonly #parent: CreateCallArgs[3];
  readonly #flags: CreateCallArgs[4];
  readonly #number = ++callNumbers;
  #deadline: number;
  #metadata: grpc.Metadata | undefined;
  #listener: Listener | undefined;
  #waitForReady = false;
  #credentials: CallCredentials | undefined;
  /** The latest attempt (kept after it ended, for `getPeer`). */
  #attempt: PickedCall | undefined;
  /** Attempts made, transparent retries not counted. */
  #attempts = 0;
  #transparentUsed = false;
  /** Messages kept to replay on a retry, until the call is committed. */
  #kept: Kept[] | undefined = [];
  #keptBytes = 0;
  /** A message outgrew the buffer while no attempt ran: the next attempt is the last. */
  #lastAttempt = false;
  #committed = false;
  #halfClosed = false;
  #readStarted = false;
  #done = false;
  /** The range of the next retry's random wait, in ms. */
  #backoffMs = 0;
  #timer: Timer | undefined;
  /** Instances earlier attempts failed on. */
  #tried: Instance[] | undefined;

  /**
   * @param router the channel
   * @param policy the method config of the call's method
   * @param singleResponse whether the method's response is one message (not a stream)
   * @param args the arguments of `createCall`
   */
  constructor(
    router: RetryRouter,
    policy: MethodPolicy,
    singleResponse: boolean,
    args: CreateCallArgs,
  ) {
    const [method, deadline, host, parent, flags] = args;
    this.#router = router;
    this.#policy = policy;
    this.#holding = policy.retry !== undefined && router.retries;
    this.#singleResponse = singleResponse;
    this.#method = method;
    this.#host = host;
    this.#parent = parent;
    this.#flags = flags;
    this.#deadline = deadline instanceof Date ? deadline.getTime() : deadline;
    this.#backoffMs = policy.retry?.initialBackoffMs ?? 0;
  }

  start(metadata: grpc.Metadata, listener: Listener): void {
    this.#metadata = metadata;
    this.#listener = listener;
    const policy = this.#policy;
    // A call's own waitForReady wins over the method config's.
    this.#waitForReady = metadata.getOptions().waitForReady ?? policy.waitForReady ?? false;
    if (policy.timeoutMs !== undefined) {
      this.#deadline = Math.min(this.#deadline, Date.now() + policy.timeoutMs);
    }
    this.#attempts = 1;
    this.#startAttempt();
  }

  #startAttempt(): void {
    const attempt = new PickedCall(
      this.#router,
      this.#method,
      this.#deadline,
      this.#host,
      this.#parent,
      this.#flags,
      {
        waitForReady: this.#waitForReady,
        previousAttempts: this.#attempts - 1,
        avoid: this.#tried,
        credentials: this.#credentials,
      },
    );
    this.#attempt = attempt;
    attempt.start(this.#metadata!, this);
    for (const kept of this.#kept ?? []) attempt.write(kept.message, kept.flags, kept.callback);
    if (this.#lastAttempt) this.#commit();
    if (this.#halfClosed) attempt.halfClose();
    if (this.#readStarted) attempt.startRead();
  }

  /** No more attempts: what was kept for them is given back. */
  #commit(): void {
    if (this.#committed) return;
    this.#committed = true;
    if (this.#done) {
      // Ended while waiting to retry: messages kept for the next attempt are acknowledged.
      const callbacks = this.#kept?.flatMap((kept) => kept.callback ?? []) ?? [];
      if (callbacks.length > 0) queueMicrotask(() => callbacks.forEach((callback) => callback()));
    }
    this.#kept = undefined;
    this.#router.buffer.give(this.#keptBytes);
    this.#keptBytes = 0;
  }

  onAttemptMetadata(metadata: grpc.Metadata, attempt: PickedCall): void {
    if (this.#done || attempt !== this.#attempt) return;
    if (this.#attempts > 1) metadata.set(PREVIOUS_ATTEMPTS_KEY, String(this.#attempts - 1));
    // Only once the request is complete: before, the server may wait for the caller, and the
    // caller for the headers.
    if (this.#holding && !this.#committed && this.#halfClosed) {
      this.#heldMetadata = metadata;
      if (!this.#singleResponse) {
        this.#holdTimer = later(HEADERS_HOLD_MS, () => {
          this.#holdTimer = undefined;
          if (this.#done || attempt !== this.#attempt) return;
          this.#commit();
          this.#passHeld();
        });
      }
      return;
    }
    this.#commit();
    this.#listener!.onReceiveMetadata(metadata);
  }

  onAttemptMessage(message: unknown, attempt: PickedCall): void {
    if (this.#done || attempt !== this.#attempt) return;
    if (this.#holding && !this.#committed && this.#singleResponse && !this.#messageHeld) {
      this.#heldMessage = message;
      this.#messageHeld = true;
      return;
    }
    this.#commit();
    this.#passHeld();
    this.#listener!.onReceiveMessage(message);
  }

  /** Passes on what was held back of the committed attempt's response. */
  #passHeld(): void {
    this.#clearHoldTimer();
    const listener = this.#listener!;
    const metadata = this.#heldMetadata;
    if (metadata) {
      this.#heldMetadata = undefined;
      listener.onReceiveMetadata(metadata);
    }
    if (this.#messageHeld) {
      const message = this.#heldMessage;
      this.#heldMessage = undefined;
      this.#messageHeld = false;
      listener.onReceiveMessage(message);
    }
  }

  #clearHoldTimer(): void {
    this.#holdTimer?.clear();
    this.#holdTimer = undefined;
  }

  /** Forgets what was held back of an attempt that is retried. */
  #dropHeld(): void {
    this.#clearHoldTimer();
    this.#heldMetadata = undefined;
    this.#heldMessage = undefined;
    this.#messageHeld = false;
  }

  onAttemptStatus(status: grpc.StatusObject, attempt: PickedCall): void {
    if (this.#done || attempt !== this.#attempt) return;
    const router = this.#router;
    const code = status.code;
    if (code === OK) {
      router.throttle?.succeeded();
      this.#finish(status);
      return;
    }
    if (this.#committed || !router.retries || router.closed) {
      this.#finish(status);
      return;
    }
    const instance = attempt.instance;
    if (instance && !attempt.reached && !this.#transparentUsed && Date.now() < this.#deadline) {
      // Picked, but its connection broke before the call left: safe to send elsewhere, once.
      this.#dropHeld();
      this.#transparentUsed = true;
      (this.#tried ??= []).push(instance);
      this.#startAttempt();
      return;
    }
    const retry = this.#policy.retry;
    if (!retry || (retry.retryableCodes & (1 << code)) === 0) {
      this.#finish(status);
      return;
    }
    router.throttle?.failed();
    const pushback = pushbackOf(status.metadata.get(PUSHBACK_KEY));
    if (
      pushback === "stop" || this.#attempts >= retry.maxAttempts ||
      router.throttle?.allowsRetry === false
    ) {
      this.#finish(status);
      return;
    }
    let delay: number;
    if (pushback === undefined) {
      delay = router.random() * this.#backoffMs;
      this.#backoffMs = Math.min(this.#backoffMs * retry.backoffMultiplier, retry.maxBackoffMs);
    } else {
      delay = pushback;
      this.#backoffMs = retry.initialBackoffMs;
    }
    if (Date.now() + delay >= this.#deadline) {
      this.#finish(status); // the deadline would pass before the retry: its failure is the answer
      return;
    }
    if (instance) (this.#tried ??= []).push(instance);
    this.#dropHeld();
    this.#attempts++;
    router.backingOff(this, true);
    this.#timer = later(delay, () => {
      this.#timer = undefined;
      router.backingOff(this, false);
      if (this.#done) return;
      if (router.closed) this.#end(grpc.status.UNAVAILABLE, "Channel closed");
      else this.#startAttempt();
    });
  }

  /** Stops waiting to retry, if the call was. */
  #stopWaiting(): void {
    if (!this.#timer) return;
    this.#timer.clear();
    this.#timer = undefined;
    this.#router.backingOff(this, false);
  }

  /** Passes the final status on (at most once) and lets go of everything. */
  #finish(status: grpc.StatusObject): void {
    if (this.#done) return;
    this.#done = true;
    this.#stopWaiting();
    this.#commit();
    this.#passHeld();
    if (this.#attempts > 1) status.metadata.set(PREVIOUS_ATTEMPTS_KEY, String(this.#attempts - 1));
    this.#listener?.onReceiveStatus(status);
  }

  /** Ends the call from this side (cancelled, closed channel) with `code`. */
  #end(code: grpc.status, details: string): void {
    if (this.#done) return;
    const attempt = this.#attempt;
    if (attempt && !attempt.ended) attempt.cancel(code, details);
    // Not from inside the caller's cancel(): as grpc-js does, the status comes a moment later.
    const status = { code, details, metadata: new grpc.Metadata() };
    this.#done = true;
    this.#stopWaiting();
    this.#commit();
    this.#dropHeld();
    queueMicrotask(() => this.#listener?.onReceiveStatus(status));
  }

  /** Ends a call waiting to retry (the channel is closing). */
  abort(code: grpc.status, details: string): void {
    this.#end(code, details);
  }

  cancelWithStatus(code: grpc.status, details: string): void {
    this.#end(code, details);
  }

  sendMessageWithContext(context: MessageContext, message: Buffer): void {
    if (this.#done) {
      // grpc-js acknowledges every write, even after the status: the caller's stream can end.
      const callback = context.callback;
      if (callback) queueMicrotask(callback);
      return;
    }
    const attempt = this.#attempt;
    const running = attempt !== undefined && !attempt.ended;
    if (this.#committed) {
      attempt?.write(message, context.flags, context.callback);
      return;
    }
    if (this.#router.buffer.take(message.length, this.#keptBytes)) {
      this.#keptBytes += message.length;
      this.#kept!.push({ message, flags: context.flags, callback: undefined });
      if (running) attempt.write(message, context.flags, undefined);
      // Kept for replaying: the caller may write the next one (grpc-js does the same).
      const callback = context.callback;
      if (callback) queueMicrotask(callback);
      return;
    }
    // Too much to keep (gRFC A6): the call is committed to its attempt.
    if (running) {
      this.#commit();
      attempt.write(message, context.flags, context.callback);
    } else {
      this.#lastAttempt = true;
      this.#kept!.push({ message, flags: context.flags, callback: context.callback });
    }
  }

  halfClose(): void {
    if (this.#done || this.#halfClosed) return;
    this.#halfClosed = true;
    const attempt = this.#attempt;
    if (attempt && !attempt.ended) attempt.halfClose();
  }

  startRead(): void {
    this.#readStarted = true;
    const attempt = this.#attempt;
    if (attempt && !attempt.ended) attempt.startRead();
  }

  setCredentials(credentials: CallCredentials): void {
    this.#credentials = credentials;
  }

  getPeer(): string {
    return this.#attempt?.getPeer() ?? "";
  }

  getCallNumber(): number {
    return this.#number;
  }

  getAuthContext(): ReturnType<Call["getAuthContext"]> {
    return this.#attempt?.getAuthContext() ?? null;
  }
}
