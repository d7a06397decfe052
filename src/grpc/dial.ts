/**
 * `dial()`: a grpc-js client whose every call is balanced over the live
 * instances of a service, through a `channelOverride` channel.
 *
 * How it plugs in: grpc-js clients accept any `ChannelInterface` as
 * `channelOverride` (stable public API). Ours keeps one ordinary grpc-js
 * `Channel` per endpoint (eagerly connected, pick_first), folds `resolve()`
 * updates into the set, and on each call runs our picker over the endpoints
 * whose channel is READY, then starts the call on that endpoint's channel.
 * Calls that find no READY endpoint wait (while endpoints are connecting, or
 * with `waitForReady` until their deadline) or fail fast with UNAVAILABLE, as
 * gRPC's own round_robin does.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { checkService, type Endpoint } from "../endpoint.ts";
import type { EtcdClient } from "../etcd/client.ts";
import type { Balancer, Picker, PickInfo } from "../balancers/balancer.ts";
import { roundRobin } from "../balancers/round_robin.ts";
import { type Resolution, resolve } from "../resolve.ts";

const { IDLE, CONNECTING, READY, TRANSIENT_FAILURE, SHUTDOWN } = grpc.connectivityState;
type State = grpc.connectivityState;
type Call = ReturnType<grpc.ChannelInterface["createCall"]>;
type Listener = Parameters<Call["start"]>[1];
type MessageContext = Parameters<Call["sendMessageWithContext"]>[0];
type CallCredentials = Parameters<Call["setCredentials"]>[0];
type CreateCallArgs = Parameters<grpc.ChannelInterface["createCall"]>;

/** Options of {@linkcode dial}. */
export interface DialOptions {
  /** Credentials for the connections to the instances. Default: insecure. */
  readonly credentials?: grpc.ChannelCredentials;
  /**
   * With TLS credentials: the name every instance's certificate must carry, also
   * sent as the `:authority`. Default: the service name, which must then be a DNS
   * name. Never taken from etcd: a registry value chooses only the address, so an
   * entry pointing at a server without a certificate for this name gets no calls.
   */
  readonly serverName?: string;
  /** Builds the per-call picker over the READY instances. Default {@linkcode roundRobin}. */
  readonly balancer?: Balancer;
  /**
   * grpc-js options for each per-instance channel. With TLS credentials, the
   * server name options (`grpc.ssl_target_name_override`,
   * `grpc.default_authority`) are refused: use `serverName`.
   */
  readonly channelOptions?: grpc.ChannelOptions;
  /** Closes the client when aborted. */
  readonly signal?: AbortSignal;
  /**
   * Called with resolver problems (bad values in etcd, lost etcd connection) and,
   * with TLS credentials, with why an instance cannot be connected to.
   */
  readonly onError?: (error: Error) => void;
}

/** A constructor of grpc-js clients: generated, `makeGenericClientConstructor` or proto-loader. */
export type ClientConstructor<C extends grpc.Client> = new (
  address: string,
  credentials: grpc.ChannelCredentials,
  options?: grpc.ClientOptions,
) => C;

interface Entry {
  readonly key: string;
  endpoint: Endpoint;
  readonly channel: grpc.Channel;
  state: State;
  inflight: number;
  removed: boolean;
  closed: boolean;
}

let callNumbers = 0;

const DNS_NAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

/**
 * grpc-js reports a call cut off by a broken connection as UNAVAILABLE when the
 * socket error is ECONNRESET or ETIMEDOUT, but as INTERNAL ("Received RST_STREAM
 * with code 2 triggered by internal client error: write EPIPE", or "…: This socket
 * has been ended by the other party", the EPIPE of a write after the peer's FIN)
 * when the write lost the race with the peer's close. It is the same event, and
 * callers retry UNAVAILABLE: report it so, keeping grpc-js's details.
 */
const BROKEN_PIPE =
  /triggered by internal client error: (?:(?:read|write) EPIPE|This socket has been ended by the other party)$/;

/** The status to pass on for `status` (see {@linkcode BROKEN_PIPE}). */
export function passedOnStatus(status: grpc.StatusObject): grpc.StatusObject {
  return status.code === grpc.status.INTERNAL && BROKEN_PIPE.test(status.details)
    ? { ...status, code: grpc.status.UNAVAILABLE }
    : status;
}

/** A call that waits for a pick, then runs on the picked endpoint's channel. */
class PickedCall implements Call {
  readonly #owner: BalancedChannel;
  readonly #args: CreateCallArgs;
  readonly #number = ++callNumbers;
  #metadata: grpc.Metadata | undefined;
  #listener: Listener | undefined;
  #pending: Array<(call: Call) => void> = [];
  #call: Call | undefined;
  #done = false;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(owner: BalancedChannel, args: CreateCallArgs) {
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
      this.#timer = setTimeout(() => {
        this.fail(grpc.status.DEADLINE_EXCEEDED, "Deadline exceeded while waiting for an instance");
      }, Math.max(0, ms - Date.now()));
    }
    this.#owner.pick(this);
  }

  /** Runs the call on the picked endpoint. */
  bind(entry: Entry): void {
    clearTimeout(this.#timer);
    const [method, deadline, host, parent, flags] = this.#args;
    const call = entry.channel.createCall(method, deadline, host, parent, flags);
    this.#call = call;
    entry.inflight++;
    const listener = this.#listener!;
    // Our layer did the waiting: the endpoint's channel should fail fast if it breaks now.
    const metadata = this.#metadata!.clone();
    metadata.setOptions({ ...metadata.getOptions(), waitForReady: false });
    call.start(metadata, {
      onReceiveMetadata: (m) => listener.onReceiveMetadata(m),
      onReceiveMessage: (m) => listener.onReceiveMessage(m),
      onReceiveStatus: (status) => {
        this.#done = true;
        this.#owner.finished(entry);
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
    clearTimeout(this.#timer);
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

/** The `ChannelInterface` under a dialed client. */
class BalancedChannel implements grpc.ChannelInterface {
  readonly #target: string;
  readonly #service: string;
  readonly #credentials: grpc.ChannelCredentials;
  readonly #channelOptions: grpc.ChannelOptions;
  readonly #balancer: Balancer;
  readonly #secure: boolean;
  readonly #entries = new Map<string, Entry>();
  readonly #byEndpoint = new Map<Endpoint, Entry>();
  readonly #queue = new Set<PickedCall>();
  readonly #reported = new Set<string>();
  readonly #onError: (error: Error) => void;
  readonly #watchers = new Set<
    { state: State; callback: (error?: Error) => void; timer?: ReturnType<typeof setTimeout> }
  >();
  readonly #resolution: Resolution;
  #picker: Picker = () => undefined;
  #ready = 0;
  #loaded = false;
  #closed = false;
  #state: State = CONNECTING;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = () => this.close();

  constructor(client: EtcdClient, service: string, options: DialOptions) {
    this.#signal = options.signal;
    this.#signal?.addEventListener("abort", this.#onAbort, { once: true });
    this.#service = service;
    this.#target = `etcd:///${service}`;
    this.#credentials = options.credentials ?? grpc.credentials.createInsecure();
    this.#secure = this.#credentials._isSecure();
    this.#channelOptions = this.#secure
      ? {
        ...options.channelOptions,
        // The name to verify comes from the caller, never from the registry value (an address,
        // often an IP, which Deno's node:tls would refuse as a TLS server name anyway).
        "grpc.ssl_target_name_override": options.serverName ?? service,
        "grpc.default_authority": options.serverName ?? service,
      }
      : options.channelOptions ?? {};
    this.#balancer = options.balancer ?? roundRobin;
    this.#onError = options.onError ??
      ((error) => console.warn(`grpc-etcd dial(${JSON.stringify(service)}): ${error.message}`));
    this.#resolution = resolve(client, service, { onError: options.onError });
    void this.#follow();
  }

  async #follow(): Promise<void> {
    try {
      for await (const batch of this.#resolution) {
        for (const update of batch) {
          if (update.op === "add") this.#add(update.key, update.endpoint);
          else this.#remove(update.key);
        }
        this.#loaded = true;
        this.#rebuild();
      }
    } catch {
      // resolve() reports problems through onError and never throws here.
    }
  }

  #add(key: string, endpoint: Endpoint): void {
    const old = this.#entries.get(key);
    if (old && old.endpoint.addr === endpoint.addr) {
      this.#byEndpoint.delete(old.endpoint);
      old.endpoint = endpoint;
      this.#byEndpoint.set(endpoint, old);
      return;
    }
    if (old) this.#remove(key);
    const channel = new grpc.Channel(endpoint.addr, this.#credentials, this.#channelOptions);
    const entry: Entry = {
      key,
      endpoint,
      channel,
      state: IDLE,
      inflight: 0,
      removed: false,
      closed: false,
    };
    this.#entries.set(key, entry);
    this.#byEndpoint.set(endpoint, entry);
    this.#watch(entry);
  }

  #watch(entry: Entry): void {
    if (entry.closed) return;
    // Keep every instance connected (like gRPC's round_robin): an IDLE channel reconnects.
    let state = entry.channel.getConnectivityState(true);
    if (state === IDLE) state = entry.channel.getConnectivityState(true);
    if (state !== entry.state) {
      entry.state = state;
      if (state === TRANSIENT_FAILURE && this.#secure) this.#explainFailure(entry);
      this.#rebuild();
    }
    if (state === SHUTDOWN) return;
    entry.channel.watchConnectivityState(state, Infinity, () => this.#watch(entry));
  }

  /**
   * Reports why an instance cannot be connected to (a certificate for another name,
   * an untrusted CA, a refused connection). grpc-js keeps the reason inside the
   * channel; a call that is not `waitForReady` fails at once with it, before any
   * connection is made.
   */
  #explainFailure(entry: Entry): void {
    const call = entry.channel.createCall(
      "/grpc.health.v1.Health/Check",
      Date.now() + 1000,
      null,
      null,
      0,
    );
    call.start(new grpc.Metadata(), {
      onReceiveMetadata: () => {},
      onReceiveMessage: () => {},
      onReceiveStatus: (status) => {
        // A call failed fast for the channel's failure ends UNAVAILABLE. Any other status means
        // the channel connected in between and the server answered: nothing to report.
        if (status.code !== grpc.status.UNAVAILABLE || entry.removed) return;
        // grpc-js stamps the last error with its time: drop it so that one reason reports once.
        const why = status.details.replace(/ ?\(\d{4}-\d\d-\d\dT[^)]*\)/g, "")
          .replace(/\s*Resolution note:\s*$/, "");
        this.#report(
          new Error(
            `instance ${entry.endpoint.addr} (${JSON.stringify(entry.key)}) gets no calls: ${why}`,
          ),
        );
      },
    });
  }

  /** Reports each distinct problem once per client. */
  #report(error: Error): void {
    if (this.#reported.has(error.message) || this.#reported.size > 1000) return;
    this.#reported.add(error.message);
    try {
      this.#onError(error);
    } catch {
      // A throwing handler must not break the client.
    }
  }

  #remove(key: string): void {
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    this.#byEndpoint.delete(entry.endpoint);
    entry.removed = true;
    if (entry.inflight === 0) this.#closeEntry(entry);
  }

  #closeEntry(entry: Entry): void {
    if (entry.closed) return;
    entry.closed = true;
    entry.channel.close();
  }

  /** Called when a call on `entry` ended. */
  finished(entry: Entry): void {
    entry.inflight--;
    if (entry.removed && entry.inflight === 0) this.#closeEntry(entry);
  }

  #rebuild(): void {
    if (this.#closed) return;
    const entries: Entry[] = [];
    for (const entry of this.#entries.values()) if (entry.state === READY) entries.push(entry);
    const ready = entries.map((e) => e.endpoint);
    this.#ready = ready.length;
    this.#picker = this.#balancer(ready, {
      inflight: (endpoint) => this.#byEndpoint.get(endpoint)?.inflight ?? 0,
      // By position in `ready`: no lookup by object on the per-call path.
      inflightAt: (index) => entries[index]?.inflight ?? 0,
      // Each distinct problem once per client, not once per rebuild.
      report: (error) => this.#report(error),
    });
    this.#setState(this.#aggregate());
    for (const call of [...this.#queue]) this.pick(call);
  }

  #aggregate(): State {
    if (this.#closed) return SHUTDOWN;
    if (!this.#loaded) return CONNECTING;
    const states = [...this.#entries.values()].map((e) => e.state);
    if (states.includes(READY)) return READY;
    if (states.some((s) => s === CONNECTING || s === IDLE)) return CONNECTING;
    return TRANSIENT_FAILURE;
  }

  #setState(state: State): void {
    if (state === this.#state) return;
    this.#state = state;
    for (const watcher of [...this.#watchers]) {
      if (watcher.state !== state) {
        this.#watchers.delete(watcher);
        clearTimeout(watcher.timer);
        watcher.callback();
      }
    }
  }

  /** Picks an endpoint for `call`, or queues it, or fails it, as gRPC's round_robin would. */
  pick(call: PickedCall): void {
    if (this.#closed) {
      call.fail(grpc.status.UNAVAILABLE, "Channel closed");
      return;
    }
    if (this.#ready > 0) {
      const endpoint = this.#picker(call.info);
      const entry = endpoint && this.#byEndpoint.get(endpoint);
      if (entry && entry.state === READY) {
        this.#queue.delete(call);
        call.bind(entry);
        return;
      }
    }
    if (this.#state === TRANSIENT_FAILURE && !call.waitForReady) {
      this.#queue.delete(call);
      call.fail(
        grpc.status.UNAVAILABLE,
        `grpc-etcd: no ready instance of ${
          JSON.stringify(this.#service)
        } (${this.#entries.size} known)`,
      );
      return;
    }
    this.#queue.add(call);
  }

  unqueue(call: PickedCall): void {
    this.#queue.delete(call);
  }

  createCall(...args: CreateCallArgs): Call {
    return new PickedCall(this, args);
  }

  getTarget(): string {
    return this.#target;
  }

  getConnectivityState(_tryToConnect: boolean): State {
    return this.#state;
  }

  watchConnectivityState(
    currentState: State,
    deadline: Date | number,
    callback: (error?: Error) => void,
  ): void {
    if (this.#closed) throw new Error("Channel has been shut down");
    if (currentState !== this.#state) {
      queueMicrotask(() => callback());
      return;
    }
    const watcher: {
      state: State;
      callback: (error?: Error) => void;
      timer?: ReturnType<typeof setTimeout>;
    } = {
      state: currentState,
      callback,
    };
    const ms = deadline instanceof Date ? deadline.getTime() : deadline;
    if (Number.isFinite(ms)) {
      watcher.timer = setTimeout(() => {
        this.#watchers.delete(watcher);
        callback(new Error("Deadline passed without connectivity state change"));
      }, Math.max(0, ms - Date.now()));
    }
    this.#watchers.add(watcher);
  }

  getChannelzRef(): ReturnType<grpc.ChannelInterface["getChannelzRef"]> {
    return { kind: "channel", id: 0, name: this.#target } as ReturnType<
      grpc.ChannelInterface["getChannelzRef"]
    >;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#signal?.removeEventListener("abort", this.#onAbort);
    void this.#resolution.return();
    for (const call of [...this.#queue]) call.fail(grpc.status.UNAVAILABLE, "Channel closed");
    this.#queue.clear();
    for (const entry of this.#entries.values()) this.#closeEntry(entry);
    this.#entries.clear();
    this.#byEndpoint.clear();
    this.#setState(SHUTDOWN);
    for (const watcher of this.#watchers) clearTimeout(watcher.timer);
    this.#watchers.clear();
  }
}

/**
 * Makes a grpc-js client for a service registered in etcd. Every call picks
 * one of the service's READY instances with `balancer` (default
 * {@linkcode roundRobin}); instances come and go as `resolve()` reports them.
 * An instance whose connection fails is skipped while others are ready. With
 * no instance available, a call with `waitForReady` (set through
 * `new Metadata({ waitForReady: true })`) waits until its deadline and succeeds
 * if one appears; a call without it fails fast with UNAVAILABLE. A resolver
 * error keeps the last known instances. A call cut off by a broken connection
 * fails UNAVAILABLE. `client.close()` releases the watch and every connection.
 *
 * @example
 * ```ts ignore
 * import * as grpc from "@grpc/grpc-js";
 * import { connect } from "@seed/grpc-etcd";
 * import { dial } from "@seed/grpc-etcd/grpc";
 * const etcd = connect({ hosts: "http://127.0.0.1:2379" });
 * const Greeter = grpc.loadPackageDefinition(definition).helloworld.Greeter;
 * const greeter = dial(etcd, "svc/greeter", Greeter);
 * greeter.SayHello({ name: "etcd" }, (err, reply) => console.log(err ?? reply));
 * ```
 *
 * @param client the etcd client
 * @param service the service name the servers registered under
 * @param Ctor the grpc-js client class
 * @param options credentials, balancer, channel options, signal, error handler
 * @returns a client instance of `Ctor`
 * @throws {TypeError} when the service name or `Ctor` is unusable, or with TLS credentials
 *   when neither `serverName` nor the service name is a DNS name
 */
export function dial<C extends grpc.Client>(
  client: EtcdClient,
  service: string,
  Ctor: ClientConstructor<C>,
  options: DialOptions = {},
): C {
  checkService(service);
  if (typeof Ctor !== "function" || typeof Ctor.prototype?.makeUnaryRequest !== "function") {
    throw new TypeError(
      `Ctor must be a grpc-js client class (generated, makeGenericClientConstructor or loadPackageDefinition), got ${
        String(Ctor).slice(0, 80)
      }`,
    );
  }
  if (options.balancer !== undefined && typeof options.balancer !== "function") {
    throw new TypeError(`options.balancer must be a function, got ${String(options.balancer)}`);
  }
  if (options.serverName !== undefined && !DNS_NAME.test(String(options.serverName))) {
    throw new TypeError(
      `options.serverName must be a DNS name, got ${JSON.stringify(options.serverName)}`,
    );
  }
  if (
    options.credentials?._isSecure() && options.serverName === undefined && !DNS_NAME.test(service)
  ) {
    throw new TypeError(
      `options.serverName is needed with TLS credentials: the service name ${
        JSON.stringify(service)
      } is not a DNS name that the instances' certificates could carry`,
    );
  }
  if (options.credentials?._isSecure()) {
    for (const name of ["grpc.ssl_target_name_override", "grpc.default_authority"]) {
      if (options.channelOptions?.[name] !== undefined) {
        throw new TypeError(
          `options.channelOptions[${
            JSON.stringify(name)
          }] is set by dial() with TLS credentials; ` +
            `give options.serverName instead, got ${JSON.stringify(options.channelOptions[name])}`,
        );
      }
    }
  }
  options.signal?.throwIfAborted();
  const channel = new BalancedChannel(client, service, options);
  return new Ctor(channel.getTarget(), options.credentials ?? grpc.credentials.createInsecure(), {
    channelOverride: channel,
  });
}
