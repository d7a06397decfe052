/**
 * A call of a dialed client: it waits for a pick, then runs on the picked
 * instance's own channel.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { later, type Timer } from "../_async.ts";
import { MAX_TIMER_MS } from "../_options.ts";
import type { PickInfo } from "../balancers/balancer.ts";
import type { Instance } from "./instance.ts";
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
type Listener = Parameters<Call["start"]>[1];
type MessageContext = Parameters<Call["sendMessageWithContext"]>[0];
type CallCredentials = Parameters<Call["setCredentials"]>[0];

/** What a call asks of the channel that made it. */
export interface CallRouter {
  /** Picks an instance for the call (then calls `bind`), queues it, or fails it. */
  pick(call: PickedCall): void;
  /** Forgets a queued call that ended. */
  unqueue(call: PickedCall): void;
  /** A call on `instance` ended. */
  finished(instance: Instance): void;
}

let callNumbers = 0;

/** A call that waits for a pick, then runs on the picked endpoint's channel. */
export class PickedCall implements Call {
  readonly #owner: CallRouter;
  readonly #args: CreateCallArgs;
  readonly #number = ++callNumbers;
  #metadata: grpc.Metadata | undefined;
  #listener: Listener | undefined;
  #pending: Array<(call: Call) => void> = [];
  #call: Call | undefined;
  #done = false;
  #timer: Timer | undefined;

  constructor(owner: CallRouter, args: CreateCallArgs) {
    this.#owner = owner;
    this.#args = args;
  }

  get waitForReady(): boolean {
    return this.#metadata?.getOptions().waitForReady === true;
  }

  get info(): PickInfo {
    const metadata = this.#metadata;
    return {
      method: this.#args[0],
      header: (name) => {
        const value = metadata?.get(name)[0];
        return value === undefined ? undefined : String(value);
      },
    };
  }

  start(metadata: grpc.Metadata, listener: Listener): void {
    this.#metadata = metadata;
    this.#listener = listener;
    const deadline = this.#args[1];
    const ms = deadline instanceof Date ? deadline.getTime() : deadline;
    if (Number.isFinite(ms)) {
      this.#timer = later(ms - Date.now(), () => {
        this.fail(grpc.status.DEADLINE_EXCEEDED, "Deadline exceeded while waiting for an instance");
      });
    }
    this.#owner.pick(this);
  }

  /** Runs the call on the picked instance. */
  bind(instance: Instance): void {
    this.#timer?.clear();
    const [method, deadline, host, parent, flags] = this.#args;
    const ms = deadline instanceof Date ? deadline.getTime() : deadline;
    const call = instance.channel.createCall(
      method,
      Number.isFinite(ms) ? Math.min(ms, Date.now() + MAX_FORWARDED_TIMEOUT_MS) : deadline,
      host,
      parent,
      flags,
    );
    this.#call = call;
    instance.inflight++;
    const listener = this.#listener!;
    // Our layer did the waiting: the endpoint's channel should fail fast if it breaks now.
    const metadata = this.#metadata!.clone();
    metadata.setOptions({ ...metadata.getOptions(), waitForReady: false });
    call.start(metadata, {
      onReceiveMetadata: (m) => listener.onReceiveMetadata(m),
      onReceiveMessage: (m) => listener.onReceiveMessage(m),
      onReceiveStatus: (status) => {
        this.#done = true;
        this.#owner.finished(instance);
        listener.onReceiveStatus(passedOnStatus(status));
      },
    });
    for (const op of this.#pending) op(call);
    this.#pending = [];
  }

  /** Ends the call before it was bound. */
  fail(code: grpc.status, details: string): void {
    if (this.#done || this.#call) return;
    this.#done = true;
    this.#timer?.clear();
    this.#owner.unqueue(this);
    const listener = this.#listener;
    this.#pending = [];
    queueMicrotask(() =>
      listener?.onReceiveStatus({ code, details, metadata: new grpc.Metadata() })
    );
  }

  #op(op: (call: Call) => void): void {
    if (this.#call) op(this.#call);
    else if (!this.#done) this.#pending.push(op);
  }

  cancelWithStatus(status: grpc.status, details: string): void {
    if (this.#call) this.#call.cancelWithStatus(status, details);
    else this.fail(status, details);
  }

  getPeer(): string {
    return this.#call?.getPeer() ?? "";
  }

  sendMessageWithContext(
    context: MessageContext,
    message: Parameters<Call["sendMessageWithContext"]>[1],
  ): void {
    this.#op((call) => call.sendMessageWithContext(context, message));
  }

  startRead(): void {
    this.#op((call) => call.startRead());
  }

  halfClose(): void {
    this.#op((call) => call.halfClose());
  }

  getCallNumber(): number {
    return this.#number;
  }

  setCredentials(credentials: CallCredentials): void {
    this.#op((call) => call.setCredentials(credentials));
  }

  getAuthContext(): ReturnType<Call["getAuthContext"]> {
    return this.#call?.getAuthContext() ?? null;
  }
}
