/**
 * `dial()`: a grpc-js client whose every call is balanced over the live
 * instances of a service, through a `channelOverride` channel.
 *
 * How it plugs in: grpc-js clients accept any `ChannelInterface` as
 * `channelOverride` (stable public API). Ours keeps one ordinary grpc-js
 * `Channel` per endpoint (eagerly connected, pick_first), folds `resolve()`
 * updates into the set, and on each call runs our picker over the endpoints
 * whose channel is READY (and, with `healthCheck`, whose health service says
 * SERVING), then starts the call on that endpoint's channel.
 * Calls that find no READY endpoint wait (while endpoints are connecting, or
 * with `waitForReady` until their deadline) or fail fast with UNAVAILABLE, as
 * gRPC's own round_robin does.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import { later, type Timer } from "../_async.ts";
import { backoff } from "../backoff.ts";
import { checkService, type Endpoint, EndpointDecodeError } from "../endpoint.ts";
import type { EtcdClient } from "../etcd/client.ts";
import type { Balancer, Picker, PickInfo } from "../balancers/balancer.ts";
import { roundRobin } from "../balancers/round_robin.ts";
import { type Resolution, resolve } from "../resolve.ts";
import { Reports } from "./reports.ts";

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
  /**
   * Client-side health checking (as gRPC's `healthCheckConfig`): each connected
   * instance is watched through `grpc.health.v1.Health/Watch` for `serviceName`
   * (`""`: the server as a whole), and gets calls only while it reports
   * SERVING. An instance that does not implement the health service is used
   * as if it were SERVING, and reported to `onError`. Default: off.
   */
  readonly healthCheck?: { readonly serviceName: string };
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
   * Called with resolver problems (bad values in etcd, lost etcd connection),
   * balancer reports and, with TLS credentials, why an instance cannot be
   * connected to. Each distinct message at most once a minute. Default:
   * `console.warn`.
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
  /**
   * What the instance's health service says (`unchecked`: no health checking,
   * or the instance does not implement it; `pending`: no answer yet).
   */
  health: "unchecked" | "pending" | "serving" | "not-serving";
  /** The running health Watch, and the timer of its next attempt. */
  healthWatch?: grpc.ClientReadableStream<HealthResponse>;
  healthRetry?: ReturnType<typeof setTimeout>;
  healthAttempt: number;
}

/** How reports name an instance: `instance 10.0.0.9:443 ("svc/10.0.0.9:443")`. */
function instance(entry: Entry): string {
  return `instance ${entry.endpoint.addr} (${JSON.stringify(entry.key)})`;
}

/** A `grpc.health.v1.HealthCheckResponse`: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN. */
interface HealthResponse {
  readonly status: number;
}

/** Reads a protobuf varint at `at`; returns it and the offset after it. */
function varint(bytes: Uint8Array, at: number): [number, number] {
  let value = 0;
  for (let shift = 0; at < bytes.length && shift < 35; shift += 7) {
    const byte = bytes[at++]!;
    value += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) return [value, at];
  }
  throw new Error("malformed varint");
}

/**
 * The health service's two messages, encoded by hand (one string field out,
 * one enum field in) rather than loading its `.proto` for every client.
 */
export const healthCodec = {
  request(service: string): Buffer {
    const text = Buffer.from(service, "utf8");
    if (text.length === 0) return Buffer.alloc(0);
    const length: number[] = [];
    for (let n = text.length;; n = Math.floor(n / 128)) {
      if (n < 128) {
        length.push(n);
        break;
      }
      length.push((n % 128) | 0x80);
    }
    return Buffer.concat([Buffer.from([0x0a, ...length]), text]);
  },
  response(bytes: Uint8Array): HealthResponse {
    let status = 0;
    for (let at = 0; at < bytes.length;) {
      const [tag, next] = varint(bytes, at);
      at = next;
      const wire = tag & 7;
      if (wire === 0) {
        const [value, after] = varint(bytes, at);
        if (tag >>> 3 === 1) status = value;
        at = after;
      } else if (wire === 2) {
        const [length, after] = varint(bytes, at);
        at = after + length;
      } else if (wire === 1) at += 8;
      else if (wire === 5) at += 4;
      else throw new Error(`unsupported wire type ${wire}`);
    }
    return { status };
  },
};

const HealthClient = grpc.makeGenericClientConstructor({
  Watch: {
    path: "/grpc.health.v1.Health/Watch",
    requestStream: false,
    responseStream: true,
    requestSerialize: (service: string) => healthCodec.request(service),
    requestDeserialize: (bytes: Buffer) => bytes.toString(),
    responseSerialize: () => Buffer.alloc(0),
    responseDeserialize: (bytes: Buffer) => healthCodec.response(bytes),
  },
}, "Health");

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
  #timer: Timer | undefined;

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
      this.#timer = later(ms - Date.now(), () => {
        this.fail(grpc.status.DEADLINE_EXCEEDED, "Deadline exceeded while waiting for an instance");
      });
    }
    this.#owner.pick(this);
  }

  /** Runs the call on the picked endpoint. */
  bind(entry: Entry): void {
    this.#timer?.clear();
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
  /** Entries by address, for pickers that return a copy of an endpoint. */
  readonly #byAddr = new Map<string, Set<Entry>>();
  readonly #queue = new Set<PickedCall>();
  readonly #reports: Reports;
  readonly #hosts: readonly string[];
  readonly #watchers = new Set<
    { state: State; callback: (error?: Error) => void; timer?: Timer }
  >();
  readonly #resolution: Resolution;
  #picker: Picker = () => undefined;
  #ready = 0;
  #loaded = false;
  /** Why resolution failed, while it has never succeeded (gRPC: TRANSIENT_FAILURE then). */
  #resolverError: Error | undefined;
  /** The timer of a rebuild to come: rebuilds are coalesced, at most one per turn. */
  #rebuildTimer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #state: State = CONNECTING;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = () => this.close();
  /** The service name health checks watch, or `undefined` when they are off. */
  readonly #healthService: string | undefined;

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
    this.#healthService = options.healthCheck?.serviceName;
    this.#balancer = options.balancer ?? roundRobin;
    this.#reports = new Reports(
      options.onError ??
        ((error) => console.warn(`grpc-etcd dial(${JSON.stringify(service)}): ${error.message}`)),
    );
    this.#hosts = client.hosts;
    this.#resolution = resolve(client, service, {
      onError: (error) => {
        if (!this.#loaded && !(error instanceof EndpointDecodeError)) {
          // No instance list yet: calls fail fast with this reason, as gRPC does.
          this.#resolverError = error;
          this.#scheduleRebuild();
        }
        this.#report(error);
      },
    });
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
        this.#resolverError = undefined;
        this.#scheduleRebuild();
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
      this.#scheduleRebuild();
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
      health: "unchecked",
      healthAttempt: 0,
    };
    this.#entries.set(key, entry);
    this.#byEndpoint.set(endpoint, entry);
    let same = this.#byAddr.get(endpoint.addr);
    if (!same) this.#byAddr.set(endpoint.addr, same = new Set());
    same.add(entry);
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
      if (state === READY) this.#startHealth(entry);
      else this.#stopHealth(entry);
      this.#scheduleRebuild();
    }
    if (state === SHUTDOWN) return;
    entry.channel.watchConnectivityState(state, Infinity, () => this.#watch(entry));
  }

  /** Starts watching a connected instance's health, when health checking is on. */
  #startHealth(entry: Entry): void {
    const service = this.#healthService;
    if (service === undefined || entry.closed || entry.healthWatch || entry.healthRetry) return;
    entry.health = "pending";
    const client = new HealthClient(entry.endpoint.addr, this.#credentials, {
      channelOverride: entry.channel,
    });
    const watch = client.Watch(service) as grpc.ClientReadableStream<HealthResponse>;
    entry.healthWatch = watch;
    watch.on("data", (response: HealthResponse) => {
      entry.healthAttempt = 0;
      const health = response.status === 1 ? "serving" : "not-serving";
      if (health === entry.health) return;
      entry.health = health;
      if (health === "not-serving") {
        this.#report(
          new Error(
            `${instance(entry)} gets no calls: its health service reports ${
              ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"][response.status] ??
                response.status
            } for ${JSON.stringify(service)}`,
          ),
        );
      }
      this.#scheduleRebuild();
    });
    const ended = (code: grpc.status) => {
      if (entry.healthWatch !== watch) return; // cancelled by #stopHealth
      entry.healthWatch = undefined;
      if (code === grpc.status.UNIMPLEMENTED) {
        // As gRPC does: a server without the health service is used as if SERVING.
        entry.health = "unchecked";
        this.#report(
          new Error(
            `${
              instance(entry)
            } does not implement grpc.health.v1 Watch: used without health checks`,
          ),
        );
        this.#scheduleRebuild();
        return;
      }
      // The stream broke or the server ended it: no calls until the instance answers again.
      entry.health = "pending";
      this.#scheduleRebuild();
      entry.healthRetry = setTimeout(() => {
        entry.healthRetry = undefined;
        if (entry.state === READY) this.#startHealth(entry);
      }, backoff(entry.healthAttempt++, { initial: 100, max: 5000 }));
    };
    watch.on("error", (error: grpc.ServiceError) => ended(error.code));
    // A server stream ended with status OK emits no "error".
    watch.on("status", (status: grpc.StatusObject) => {
      if (status.code === grpc.status.OK) ended(status.code);
    });
  }

  /** Stops watching an instance's health (its connection is not READY, or it is gone). */
  #stopHealth(entry: Entry): void {
    clearTimeout(entry.healthRetry);
    entry.healthRetry = undefined;
    const watch = entry.healthWatch;
    entry.healthWatch = undefined;
    watch?.cancel();
    if (entry.health !== "unchecked") entry.health = "pending";
  }

  /** The state an instance counts as for picking: its connection's, then its health's. */
  #effective(entry: Entry): State {
    if (entry.state !== READY) return entry.state;
    if (entry.health === "pending") return CONNECTING;
    if (entry.health === "not-serving") return TRANSIENT_FAILURE;
    return READY;
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
            `${instance(entry)} gets no calls: ${why}`,
          ),
        );
      },
    });
  }

  /** Reports a problem, each distinct one at most once a minute. */
  #report(error: Error): void {
    this.#reports.report(error);
  }

  #remove(key: string): void {
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    this.#byEndpoint.delete(entry.endpoint);
    const same = this.#byAddr.get(entry.endpoint.addr);
    same?.delete(entry);
    if (same?.size === 0) this.#byAddr.delete(entry.endpoint.addr);
    entry.removed = true;
    this.#scheduleRebuild();
    if (entry.inflight === 0) this.#closeEntry(entry);
  }

  #closeEntry(entry: Entry): void {
    if (entry.closed) return;
    entry.closed = true;
    this.#stopHealth(entry);
    entry.channel.close();
  }

  /** Called when a call on `entry` ended. */
  finished(entry: Entry): void {
    entry.inflight--;
    if (entry.removed && entry.inflight === 0) this.#closeEntry(entry);
  }

  /**
   * Rebuilds the picker once the current turn's changes are in: a start-up that
   * connects many instances rebuilds a few times, not once per state change.
   */
  #scheduleRebuild(): void {
    if (this.#closed || this.#rebuildTimer !== undefined) return;
    this.#rebuildTimer = setTimeout(() => {
      this.#rebuildTimer = undefined;
      this.#rebuild();
    }, 0);
  }

  #rebuild(): void {
    if (this.#closed) return;
    const entries: Entry[] = [];
    for (const entry of this.#entries.values()) {
      if (this.#effective(entry) === READY) entries.push(entry);
    }
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
    if (!this.#loaded) return this.#resolverError ? TRANSIENT_FAILURE : CONNECTING;
    const states = [...this.#entries.values()].map((e) => this.#effective(e));
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
        watcher.timer?.clear();
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
      const entry = endpoint && this.#entryOf(endpoint);
      if (entry && this.#effective(entry) === READY) {
        this.#queue.delete(call);
        call.bind(entry);
        return;
      }
      if (endpoint && !entry && !this.#rebuildTimer) {
        // The picker is current, yet it returned an endpoint it was not given.
        const error = new Error(
          `the balancer returned an endpoint that is not one of the ready instances it was ` +
            `given (addr ${JSON.stringify(endpoint.addr)}): a picker must return one of them`,
        );
        this.#report(error);
        this.#queue.delete(call);
        call.fail(grpc.status.INTERNAL, `grpc-etcd: ${error.message}`);
        return;
      }
    }
    // A rebuild to come may change the state: the call waits for it, then is picked again.
    if (this.#state === TRANSIENT_FAILURE && !call.waitForReady && !this.#rebuildTimer) {
      this.#queue.delete(call);
      const resolverError = this.#resolverError;
      call.fail(
        grpc.status.UNAVAILABLE,
        resolverError
          ? `grpc-etcd: cannot resolve ${JSON.stringify(this.#service)}: etcd at ${
            this.#hosts.join(", ")
          } did not answer: ${resolverError.message}`
          : `grpc-etcd: no ready instance of ${
            JSON.stringify(this.#service)
          } (${this.#entries.size} known)`,
      );
      return;
    }
    this.#queue.add(call);
  }

  /**
   * The entry of a picked endpoint: the very object the picker was given, or a
   * copy of it (an endpoint with the address of a ready instance).
   */
  #entryOf(endpoint: Endpoint): Entry | undefined {
    const entry = this.#byEndpoint.get(endpoint);
    if (entry) return entry;
    const same = this.#byAddr.get(endpoint.addr);
    if (!same) return undefined;
    for (const candidate of same) if (this.#effective(candidate) === READY) return candidate;
    return same.values().next().value;
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
      timer?: Timer;
    } = {
      state: currentState,
      callback,
    };
    const ms = deadline instanceof Date ? deadline.getTime() : deadline;
    if (Number.isFinite(ms)) {
      watcher.timer = later(ms - Date.now(), () => {
        this.#watchers.delete(watcher);
        callback(new Error("Deadline passed without connectivity state change"));
      });
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
    this.#byAddr.clear();
    clearTimeout(this.#rebuildTimer);
    this.#setState(SHUTDOWN);
    for (const watcher of this.#watchers) watcher.timer?.clear();
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
 * if one appears; a call without it fails fast with UNAVAILABLE. Before the
 * first successful read of the service from etcd, a resolver error (etcd
 * unreachable, say) fails such calls at once with UNAVAILABLE naming etcd's
 * hosts and the reason; after it, a resolver error keeps the last known
 * instances. A call cut off by a broken connection fails UNAVAILABLE.
 * `client.close()` releases the watch and every connection.
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
  if (
    options.healthCheck !== undefined &&
    (typeof options.healthCheck !== "object" || options.healthCheck === null ||
      typeof options.healthCheck.serviceName !== "string")
  ) {
    throw new TypeError(
      `options.healthCheck must be { serviceName: string }, got ${
        JSON.stringify(options.healthCheck)
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
