/**
 * One attempt of a dialed call: it waits for a pick, then runs on the picked
 * instance's own channel. The call the client sees is a `RetryingCall`, which
 * makes one attempt, and more when its retry policy says so.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import type { Buffer } from "node:buffer";
import { later, type Timer } from "../_async.ts";
import { MAX_TIMER_MS } from "../_options.ts";
import type { PickInfo } from "../balancers/balancer.ts";
import type { Instance } from "./instance.ts";
import { PREVIOUS_ATTEMPTS_KEY } from "./retry.ts";
import { passedOnStatus } from "./status.ts";

/**
 * The furthest deadline forwarded to an instance, in ms from now. grpc-js
 * servers read `grpc-timeout` with `| 0`, a 32-bit count of ms: a timeout past
 * 2^31 - 1 ms would wrap negative there and end the call after 1 ms. grpc-js
 * clients send a timeout of 10^8 ms or more in whole seconds, rounded up: so
 * whole seconds below 2^31 ms (about 24.8 days). No gRPC server keeps a
 * longer one anyway.
 */
export const MAX_FORWARDED_TIMEOUT_MS: number = Math.floor(MAX_TIMER_MS / 1000) * 1000;

/** A call as grpc-js's `ChannelInterface` makes them. */
export type Call = ReturnType<grpc.ChannelInterface["createCall"]>;
/** The arguments of `ChannelInterface.createCall`. */
export type CreateCallArgs = Parameters<grpc.ChannelInterface["createCall"]>;
/** Call credentials, as `Call.setCredentials` takes them. */
export type CallCredentials = Parameters<Call["setCredentials"]>[0];

/** What an attempt asks of the channel that runs it. */
export interface CallRouter {
  /** Picks an instance for the attempt (then calls `bind`), queues it (then `waiting`), or fails it. */
  pick(attempt: PickedCall): void;
  /** Forgets a queued attempt that ended. */
  unqueue(attempt: PickedCall): void;
  /**
   * An attempt on `instance` ended with `code`; `counted` when it reached the
   * server and was not cancelled here (outlier detection counts those).
   */
  finished(instance: Instance, code: grpc.status, counted: boolean): void;
}

/** What an attempt tells the call it belongs to. */
export interface AttemptListener {
  /** The server's response headers. */
  onAttemptMetadata(metadata: grpc.Metadata, attempt: PickedCall): void;
  /** A response message. */
  onAttemptMessage(message: unknown, attempt: PickedCall): void;
  /** The attempt ended; `attempt.reached` says whether it got to a server. */
  onAttemptStatus(status: grpc.StatusObject, attempt: PickedCall): void;
}

/** How an attempt is made. */
export interface AttemptOptions {
  /** Wait for an instance (until the deadline) rather than fail when none is ready. */
  readonly waitForReady: boolean;
  /** The attempts of the same call before this one (sent as `grpc-previous-rpc-attempts`). */
  readonly previousAttempts: number;
  /** Instances earlier attempts of the call failed on: another is picked when one is ready. */
  readonly avoid: readonly Instance[] | undefined;
  /** Call credentials to add. */
  readonly credentials: CallCredentials | undefined;
}

interface Write {
  readonly message: Buffer;
  readonly flags: number | undefined;
  /** The caller's write callback, until it is called (once). */
  callback: (() => void) | undefined;
}

/** Calls a write's callback, if it has one not yet called. */
function ack(write: Write): void {
  const callback = write.callback;
  write.callback = undefined;
  callback?.();
}

/** One attempt: waits for a pick, then runs on the picked instance's channel. */
export class PickedCall {
  readonly #owner: CallRouter;
  readonly #method: string;
  /** The call's deadline in ms since the epoch (`Infinity`: none). */
  readonly #deadline: number;
  readonly #host: CreateCallArgs[2];
  readonly #parent: CreateCallArgs[3];
  readonly #flags: CreateCallArgs[4];
  readonly #options: AttemptOptions;
  #metadata: grpc.Metadata | undefined;
  #listener: AttemptListener | undefined;
  #call: Call | undefined;
  /** Messages not yet handed to the instance's call (it takes one at a time). */
  readonly #writes: Write[] = [];
  /** The message handed over whose write has not completed. */
  #writing: Write | undefined;
  #halfClose = false;
  #halfClosed = false;
  #readStarted = false;
  #done = false;
  #cancelled = false;
  #timer: Timer | undefined;
  /** The instance the attempt runs on, once picked. */
  instance: Instance | undefined;
  /** Whether the attempt got to a server (a stream was opened); known once it ended. */
  reached = false;

  /**
   * @param owner the channel that picks for the attempt
   * @param method the full method path
   * @param deadline the call's deadline in ms since the epoch (`Infinity`: none)
   * @param host the `host` argument of `createCall`
   * @param parent the parent call of `createCall`
   * @param flags the propagation flags of `createCall`
   * @param options wait for ready, earlier attempts, instances to avoid, credentials
   */
  constructor(
    owner: CallRouter,
    method: string,
    deadline: number,
    host: CreateCallArgs[2],
    parent: CreateCallArgs[3],
    flags: CreateCallArgs[4],
    options: AttemptOptions,
  ) {
    this.#owner = owner;
    this.#method = method;
    this.#deadline = deadline;
    this.#host = host;
    this.#parent = parent;
    this.#flags = flags;
    this.#options = options;
  }

  /** Whether it waits for an instance rather than fail when none is ready. */
  get waitForReady(): boolean {
    return this.#options.waitForReady;
  }

  /** Instances to avoid (see {@linkcode AttemptOptions.avoid}). */
  get avoid(): readonly Instance[] | undefined {
    return this.#options.avoid;
  }

  /** Whether the attempt has ended. */
  get ended(): boolean {
    return this.#done;
  }

  /** What the picker may see of the call. */
  get info(): PickInfo {
    const metadata = this.#metadata;
    return {
      method: this.#method,
      header: (name) => {
        const value = metadata?.get(name)[0];
        return value === undefined ? undefined : String(value);
      },
    };
  }

  /** Starts the attempt: asks the channel for a pick. */
  start(metadata: grpc.Metadata, listener: AttemptListener): void {
    this.#metadata = metadata;
    this.#listener = listener;
    this.#owner.pick(this);
  }

  /** The attempt waits in the channel's queue: its deadline starts to count here. */
  waiting(): void {
    if (this.#timer || this.#done || !Number.isFinite(this.#deadline)) return;
    this.#timer = later(this.#deadline - Date.now(), () => {
      this.fail(grpc.status.DEADLINE_EXCEEDED, "Deadline exceeded while waiting for an instance");
    });
  }

  /** Runs the attempt on the picked instance. */
  bind(instance: Instance): void {
    this.#timer?.clear();
    this.#timer = undefined;
    const deadline = Number.isFinite(this.#deadline)
      ? Math.min(this.#deadline, Date.now() + MAX_FORWARDED_TIMEOUT_MS)
      : this.#deadline;
    let call: Call;
    try {
      call = instance.channel.createCall(
        this.#method,
        deadline,
        this.#host,
        this.#parent,
        this.#flags,
      );
    } catch (thrown) {
      // A closed channel throws ("Channel has been shut down"); bind runs in timers and in
      // grpc-js callbacks, where a throw would be uncaught: the attempt ends, not reached.
      this.instance = instance;
      const why = thrown instanceof Error ? thrown.message : String(thrown);
      this.fail(
        grpc.status.UNAVAILABLE,
        `grpc-etcd: could not start a call on ${instance.describe()}: ${why}`,
      );
      return;
    }
    this.#call = call;
    this.instance = instance;
    instance.inflight++;
    if (this.#options.credentials) call.setCredentials(this.#options.credentials);
    const listener = this.#listener!;
    // Our layer did the waiting: the instance's channel should fail fast if it breaks now.
    const metadata = this.#metadata!.clone();
    metadata.setOptions({ ...metadata.getOptions(), waitForReady: false });
    const previous = this.#options.previousAttempts;
    if (previous > 0) metadata.set(PREVIOUS_ATTEMPTS_KEY, String(previous));
    call.start(metadata, {
      onReceiveMetadata: (m) => listener.onAttemptMetadata(m, this),
      onReceiveMessage: (m) => listener.onAttemptMessage(m, this),
      onReceiveStatus: (status) => {
        this.#done = true;
        this.#ackAll();
        // A call that never got a stream ends with the channel's target as its peer (the
        // address of a connection otherwise): it did not reach the server.
        this.reached = status.code === grpc.status.OK || call.getPeer() !== instance.target;
        this.#owner.finished(instance, status.code, this.reached && !this.#cancelled);
        listener.onAttemptStatus(passedOnStatus(status), this);
      },
    });
    this.#pump();
    if (this.#readStarted) call.startRead();
  }

  /** Ends the attempt before it was bound (no instance, deadline, closed channel). */
  fail(code: grpc.status, details: string): void {
    if (this.#done || this.#call) return;
    this.#done = true;
    this.#timer?.clear();
    this.#owner.unqueue(this);
    const listener = this.#listener;
    this.#ackAll();
    queueMicrotask(() =>
      listener?.onAttemptStatus({ code, details, metadata: new grpc.Metadata() }, this)
    );
  }

  /**
   * Sends a message (after the ones before it have been written). Its callback
   * is called once it is written, or once the attempt has ended (as grpc-js
   * calls a write's callback after a call ended: the caller's stream can end).
   */
  write(message: Buffer, flags: number | undefined, callback: (() => void) | undefined): void {
    if (this.#done) {
      if (callback) queueMicrotask(callback);
      return;
    }
    this.#writes.push({ message, flags, callback });
    this.#pump();
  }

  /** The attempt ended: the callbacks of the writes it will never complete are called. */
  #ackAll(): void {
    if (!this.#writing && this.#writes.length === 0) return;
    const pending = this.#writing ? [this.#writing, ...this.#writes] : [...this.#writes];
    this.#writes.length = 0;
    if (pending.some((write) => write.callback)) {
      queueMicrotask(() => {
        for (const write of pending) ack(write);
      });
    }
  }

  /** Hands the next message to the instance's call, once it took the one before. */
  #pump(): void {
    const call = this.#call;
    if (!call || this.#writing || this.#done) return;
    const next = this.#writes.shift();
    if (next) {
      this.#writing = next;
      call.sendMessageWithContext({
        flags: next.flags,
        callback: () => {
          if (this.#writing === next) this.#writing = undefined;
          ack(next);
          this.#pump();
        },
      }, next.message);
    }
    // grpc-js takes a half-close right after the last message (it sends it behind the message).
    if (this.#writes.length === 0 && this.#halfClose && !this.#halfClosed) {
      this.#halfClosed = true;
      call.halfClose();
    }
  }

  /** Half-closes once every message is sent. */
  halfClose(): void {
    this.#halfClose = true;
    this.#pump();
  }

  /** Starts reading responses. */
  startRead(): void {
    this.#readStarted = true;
    this.#call?.startRead();
  }

  /** Cancels the attempt; a running one ends with its own status, later. */
  cancel(code: grpc.status, details: string): void {
    this.#cancelled = true;
    if (this.#call) this.#call.cancelWithStatus(code, details);
    else this.fail(code, details);
  }

  /** The peer the attempt runs on (`""` before it is picked). */
  getPeer(): string {
    return this.#call?.getPeer() ?? "";
  }

  /** The auth context of its connection, once picked. */
  getAuthContext(): ReturnType<Call["getAuthContext"]> {
    return this.#call?.getAuthContext() ?? null;
  }
}
