/**
 * The `ChannelInterface` under a dialed client: one grpc-js channel per
 * instance (kept connected, as gRPC's round_robin does), the instances folded
 * from `resolve()` (those `filter` accepts), outlier detection's sweeps, and a
 * picker over the READY ones (of the local zone, with `locality`) that every
 * call's attempts pick from.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { later, type Timer } from "../_async.ts";
import type { Balancer, Picker } from "../balancers/balancer.ts";
import { type Endpoint, EndpointDecodeError } from "../endpoint.ts";
import {
  AuthenticationError,
  ClientClosedError,
  type EtcdClient,
  PermissionDeniedError,
} from "../etcd/client.ts";
import { type Resolution, resolve } from "../resolve.ts";
import { explainFailure } from "./failure_probe.ts";
import { HealthWatch } from "./health_watch.ts";
import { Instance } from "./instance.ts";
import { OutlierDetector } from "./outlier_detection.ts";
import type { Call, CreateCallArgs, PickedCall } from "./picked_call.ts";
import { Reports } from "./reports.ts";
import { RetryBuffer, RetryThrottle } from "./retry.ts";
import { RetryingCall, type RetryRouter } from "./retrying_call.ts";
import { accepts, type Locality, preferZone, zoneOf } from "./selection.ts";
import type { ServiceConfig } from "./service_config.ts";

const { IDLE, CONNECTING, READY, TRANSIENT_FAILURE, SHUTDOWN } = grpc.connectivityState;
type State = grpc.connectivityState;

/** What the channel is made with (the options of `dial()`, checked and resolved). */
export interface ChannelSettings {
  /** Credentials for the connections to the instances. */
  readonly credentials: grpc.ChannelCredentials;
  /** grpc-js options of each instance's channel. */
  readonly channelOptions: grpc.ChannelOptions;
  /** Builds the picker over the READY instances. */
  readonly balancer: Balancer;
  /** The service name health checks watch, or `undefined` when they are off. */
  readonly healthService: string | undefined;
  /** Where problems are reported (muted per message for a while). */
  readonly onError: (error: Error) => void;
  /** Closes the channel when aborted. */
  readonly signal: AbortSignal | undefined;
  /** The service config (retries, timeouts, outlier detection). */
  readonly serviceConfig: ServiceConfig;
  /** Whether calls are retried at all (`grpc.enable_retries` is not 0). */
  readonly retries: boolean;
  /** What retrying calls may keep to replay, in all and per call, in bytes. */
  readonly retryBuffer: { readonly total: number; readonly perCall: number };
  /** Only endpoints it accepts become instances. */
  readonly filter: ((endpoint: Endpoint) => boolean) | undefined;
  /** The local zone to prefer. */
  readonly locality: Locality | undefined;
  /** The paths of the methods whose response is one message (from the client class). */
  readonly singleResponse: ReadonlySet<string>;
}

/** A `watchConnectivityState` caller waiting for a change. */
interface StateWatcher {
  readonly state: State;
  readonly callback: (error?: Error) => void;
  timer?: Timer;
}

/** The channel under a dialed client. */
export class BalancedChannel implements grpc.ChannelInterface, RetryRouter {
  readonly #target: string;
  readonly #service: string;
  readonly #settings: ChannelSettings;
  readonly #hosts: readonly string[];
  readonly #instances = new Map<string, Instance>();
  readonly #byEndpoint = new Map<Endpoint, Instance>();
  /** Instances by address, for pickers that return a copy of an endpoint. */
  readonly #byAddr = new Map<string, Set<Instance>>();
  readonly #health = new Map<Instance, HealthWatch>();
  readonly #queue = new Set<PickedCall>();
  readonly #reports: Reports;
  readonly #watchers = new Set<StateWatcher>();
  readonly #resolution: Resolution;
  #picker: Picker = () => undefined;
  /** Why the balancer could not build a picker for the current instances, if it could not. */
  #pickerError: Error | undefined;
  /** The instances the picker was built over. */
  #chosen: readonly Instance[] = [];
  /** Calls waiting to retry, ended by `close()`. */
  readonly #backingOff = new Set<RetryingCall>();
  readonly #detector: OutlierDetector | undefined;
  #sweepTimer: ReturnType<typeof setTimeout> | undefined;
  /** Whether calls stay in the local zone, as last reported (with `locality`). */
  #local: boolean | undefined;
  /** Keys whose endpoint `filter` left out. */
  readonly #leftOut = new Set<string>();
  readonly throttle: RetryThrottle | undefined;
  readonly buffer: RetryBuffer;
  readonly random: () => number = Math.random;
  #loaded = false;
  /** Why resolution failed, while it has never succeeded (gRPC: TRANSIENT_FAILURE then). */
  #resolverError: Error | undefined;
  /** The timer of a rebuild to come: rebuilds are coalesced, at most one per turn. */
  #rebuildTimer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;
  #state: State = CONNECTING;
  readonly #onAbort = () => this.close();

  /**
   * @param client the etcd client to resolve the service through
   * @param service the service name
   * @param settings credentials, channel options, balancer, health checks, reports
   */
  constructor(client: EtcdClient, service: string, settings: ChannelSettings) {
    this.#service = service;
    this.#target = `etcd:///${service}`;
    this.#settings = settings;
    this.#hosts = client.hosts;
    this.#reports = new Reports(settings.onError);
    // Through Reports, which ignores a handler that throws: dial() must not fail half-built.
    for (const note of settings.serviceConfig.notes) {
      this.#report(new Error(`options.channelOptions["grpc.service_config"]: ${note}`));
    }
    const { retryThrottling, outlierDetection } = settings.serviceConfig;
    this.throttle = retryThrottling ? new RetryThrottle(retryThrottling) : undefined;
    this.buffer = new RetryBuffer(settings.retryBuffer.total, settings.retryBuffer.perCall);
    if (outlierDetection) {
      const detector = new OutlierDetector(outlierDetection);
      // gRFC A50: without an ejection algorithm, nothing is counted and nothing swept.
      if (detector.counting) {
        this.#detector = detector;
        this.#armSweep();
      }
    }
    settings.signal?.addEventListener("abort", this.#onAbort, { once: true });
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
    const filter = this.#settings.filter;
    if (filter && !accepts(filter, endpoint, (error) => this.#report(error))) {
      // Left out: no instance, no connection (and one that no longer passes goes).
      this.#remove(key);
      this.#leftOut.add(key);
      return;
    }
    this.#leftOut.delete(key);
    const old = this.#instances.get(key);
    if (old && old.endpoint.addr === endpoint.addr) {
      this.#byEndpoint.delete(old.endpoint);
      old.endpoint = endpoint;
      this.#byEndpoint.set(endpoint, old);
      this.#scheduleRebuild();
      return;
    }
    if (old) this.#remove(key);
    const { credentials, channelOptions, healthService } = this.#settings;
    const instance = new Instance(
      key,
      endpoint,
      new grpc.Channel(endpoint.addr, credentials, channelOptions),
    );
    this.#instances.set(key, instance);
    this.#byEndpoint.set(endpoint, instance);
    let same = this.#byAddr.get(endpoint.addr);
    if (!same) this.#byAddr.set(endpoint.addr, same = new Set());
    same.add(instance);
    if (healthService !== undefined) {
      this.#health.set(
        instance,
        new HealthWatch(instance, healthService, credentials, {
          changed: () => this.#scheduleRebuild(),
          report: (error) => this.#report(error),
        }),
      );
    }
    this.#watch(instance);
  }

  #watch(instance: Instance): void {
    if (instance.closed) return;
    // Keep every instance connected (like gRPC's round_robin): an IDLE channel reconnects.
    let state = instance.channel.getConnectivityState(true);
    if (state === IDLE) state = instance.channel.getConnectivityState(true);
    if (state !== instance.state) {
      instance.state = state;
      if (state === TRANSIENT_FAILURE && this.#settings.credentials._isSecure()) {
        explainFailure(instance, (error) => this.#report(error));
      }
      if (state === READY) this.#health.get(instance)?.start();
      else this.#health.get(instance)?.stop();
      this.#scheduleRebuild();
    }
    if (state === SHUTDOWN) return;
    instance.channel.watchConnectivityState(state, Infinity, () => this.#watch(instance));
  }

  /** Reports a problem, each distinct one at most once a minute. */
  #report(error: Error): void {
    this.#reports.report(error);
  }

  #remove(key: string): void {
    this.#leftOut.delete(key);
    const instance = this.#instances.get(key);
    if (!instance) return;
    this.#instances.delete(key);
    this.#byEndpoint.delete(instance.endpoint);
    const same = this.#byAddr.get(instance.endpoint.addr);
    same?.delete(instance);
    if (same?.size === 0) this.#byAddr.delete(instance.endpoint.addr);
    instance.removed = true;
    this.#scheduleRebuild();
    if (instance.inflight === 0) this.#closeInstance(instance);
  }

  #closeInstance(instance: Instance): void {
    if (instance.closed) return;
    instance.closed = true;
    // Not READY any more for the pickers of this turn: #watch no longer follows its channel.
    instance.state = SHUTDOWN;
    this.#health.get(instance)?.stop();
    this.#health.delete(instance);
    instance.channel.close();
  }

  /** Called when an attempt on `instance` ended. */
  finished(instance: Instance, code: grpc.status, counted: boolean): void {
    instance.inflight--;
    if (counted && this.#detector) {
      if (code === grpc.status.OK) instance.outlier.ok++;
      else instance.outlier.failed++;
    }
    if (instance.removed && instance.inflight === 0) this.#closeInstance(instance);
  }

  /** The channel is closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether calls are retried at all. */
  get retries(): boolean {
    return this.#settings.retries;
  }

  backingOff(call: RetryingCall, waiting: boolean): void {
    if (waiting) this.#backingOff.add(call);
    else this.#backingOff.delete(call);
  }

  #armSweep(): void {
    const interval = this.#settings.serviceConfig.outlierDetection!.intervalMs;
    // An interval of 0 (which grpc-js accepts) sweeps once per millisecond, not in a busy loop.
    this.#sweepTimer = setTimeout(
      () => this.#sweep(),
      Math.min(Math.max(1, interval), 2 ** 31 - 1),
    );
  }

  /** gRFC A50's timer: one sweep over every instance, then the next in one interval. */
  #sweep(): void {
    if (this.#closed) return;
    const { ejected, returned } = this.#detector!.sweep([...this.#instances.values()], Date.now());
    for (const { target, by, calls, failed, forMs } of ejected) {
      this.#report(
        new Error(
          `${target.describe()} is ejected by outlier detection (${by}: ${failed} of ${calls} ` +
            `calls failed in the last interval); it gets no calls for ${forMs} ms`,
        ),
      );
    }
    for (const instance of returned) {
      this.#report(new Error(`${instance.describe()} is back from its outlier ejection`));
    }
    if (ejected.length > 0 || returned.length > 0) this.#scheduleRebuild();
    this.#armSweep();
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
    const all: Instance[] = [];
    for (const instance of this.#instances.values()) {
      if (instance.effectiveState() === READY) all.push(instance);
    }
    let ready: readonly Instance[] = all;
    const locality = this.#settings.locality;
    if (locality && all.length > 0) {
      const choice = preferZone(all, this.#instances.values(), locality);
      ready = choice.chosen;
      // At start-up, wait for the zone's instances to connect before reporting a choice.
      const settling = this.#local === undefined && !choice.local &&
        [...this.#instances.values()].some((instance) =>
          zoneOf(instance.endpoint) === locality.zone &&
          (instance.state === CONNECTING || instance.state === IDLE)
        );
      if (!settling && choice.local !== this.#local) {
        if (this.#local !== undefined || !choice.local) {
          const zone = JSON.stringify(locality.zone);
          // Every switch is told, not muted as a repeated problem would be.
          this.#reports.event(
            new Error(
              `locality: ${choice.localReady} of ${choice.localTotal} instances in zone ${zone} ` +
                `are ready (minReady ${choice.minReady}): ${
                  choice.local ? `calls stay in zone ${zone}` : "calls go to every zone"
                }`,
            ),
          );
        }
        this.#local = choice.local;
      }
    }
    this.#chosen = ready;
    try {
      this.#picker = this.#settings.balancer(ready.map((instance) => instance.endpoint), {
        inflight: (endpoint) => this.#byEndpoint.get(endpoint)?.inflight ?? 0,
        // By position in `ready`: no lookup by object on the per-call path.
        inflightAt: (index) => ready[index]?.inflight ?? 0,
        // Each distinct problem once in a while, not once per rebuild.
        report: (error) => this.#report(error),
      });
      this.#pickerError = undefined;
    } catch (thrown) {
      // A balancer that throws (a bug, or options that do not fit this many instances) must
      // not take the process down: calls fail with its reason until a later build succeeds.
      const error = thrown instanceof Error ? thrown : new Error(String(thrown));
      this.#picker = () => undefined;
      this.#pickerError = new Error(
        `the balancer could not build a picker over ${ready.length} ready instances: ${error.message}`,
        { cause: error },
      );
      this.#report(this.#pickerError);
    }
    this.#setState(this.#aggregate());
    for (const call of [...this.#queue]) this.pick(call);
  }

  #aggregate(): State {
    if (this.#closed) return SHUTDOWN;
    if (!this.#loaded) return this.#resolverError ? TRANSIENT_FAILURE : CONNECTING;
    let connecting = false;
    for (const instance of this.#instances.values()) {
      const state = instance.effectiveState();
      if (state === READY) return READY;
      if (state === CONNECTING || state === IDLE) connecting = true;
    }
    return connecting ? CONNECTING : TRANSIENT_FAILURE;
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

  /** Picks an instance for `call`, or queues it, or fails it, as gRPC's round_robin would. */
  pick(call: PickedCall): void {
    if (this.#closed) {
      call.fail(grpc.status.UNAVAILABLE, "Channel closed");
      return;
    }
    if (this.#pickerError && !this.#rebuildTimer) {
      this.#queue.delete(call);
      call.fail(grpc.status.INTERNAL, `grpc-etcd: ${this.#pickerError.message}`);
      return;
    }
    if (this.#chosen.length > 0) {
      const endpoint = this.#picker(call.info);
      let instance = endpoint && this.#instanceOf(endpoint);
      const avoid = call.avoid;
      if (avoid && instance && avoid.includes(instance)) {
        instance = this.#another(avoid) ?? instance;
      }
      if (instance && instance.effectiveState() === READY) {
        this.#queue.delete(call);
        call.bind(instance);
        return;
      }
      if (endpoint && !this.#rebuildTimer) {
        // The picker is current (every change of an instance schedules a rebuild), yet it
        // returned an endpoint that is not one of the ready instances it was given.
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
      call.fail(grpc.status.UNAVAILABLE, this.#unavailable());
      return;
    }
    this.#queue.add(call);
    call.waiting();
  }

  /** How many instances are known, ejected, left out: for the message of a call that fails fast. */
  #census(): string {
    let ejected = 0;
    for (const instance of this.#instances.values()) if (instance.outlier.ejected) ejected++;
    return [
      `${this.#instances.size} known`,
      ...(ejected > 0 ? [`${ejected} ejected by outlier detection`] : []),
      ...(this.#leftOut.size > 0 ? [`${this.#leftOut.size} left out by filter`] : []),
    ].join(", ");
  }

  /**
   * A ready instance not in `avoid`, for a retry (gRFC A6: a retry should go
   * to another instance when it can), or none: one of the picker's list if it
   * can, else one of every ready instance (with `locality`, the picker's list
   * may hold only the local zone's). The list was built at the last rebuild:
   * an instance gone since (removed from etcd, its channel closed) is skipped.
   */
  #another(avoid: readonly Instance[]): Instance | undefined {
    const chosen = this.#chosen;
    return this.#anyOf(chosen, avoid) ??
      (chosen.length < this.#instances.size
        ? this.#anyOf([...this.#instances.values()], avoid)
        : undefined);
  }

  /** A usable instance of `list` not in `avoid`, starting at a random place. */
  #anyOf(list: readonly Instance[], avoid: readonly Instance[]): Instance | undefined {
    const start = Math.floor(this.random() * list.length);
    for (let i = 0; i < list.length; i++) {
      const candidate = list[(start + i) % list.length]!;
      if (this.#usable(candidate) && !avoid.includes(candidate)) return candidate;
    }
    return undefined;
  }

  /** Whether `instance` is still one of the channel's instances and ready. */
  #usable(instance: Instance): boolean {
    return this.#instances.get(instance.key) === instance && instance.effectiveState() === READY;
  }

  /** Why a call cannot be picked an instance now (the channel is in TRANSIENT_FAILURE). */
  #unavailable(): string {
    const service = JSON.stringify(this.#service);
    const error = this.#resolverError;
    if (!error) {
      return `grpc-etcd: no ready instance of ${service} (${this.#census()})`;
    }
    const etcd = `etcd at ${this.#hosts.join(", ")}`;
    const why = error instanceof ClientClosedError
      ? "the etcd client is closed"
      : error instanceof PermissionDeniedError || error instanceof AuthenticationError
      ? `${etcd} refused`
      : `${etcd} did not answer`;
    return `grpc-etcd: cannot resolve ${service}: ${why}: ${error.message}`;
  }

  /**
   * The instance of a picked endpoint: the very object the picker was given, or
   * a copy of it (an endpoint with the address of a ready instance).
   */
  #instanceOf(endpoint: Endpoint): Instance | undefined {
    const instance = this.#byEndpoint.get(endpoint);
    if (instance) return instance;
    const same = this.#byAddr.get(endpoint.addr);
    if (!same) return undefined;
    for (const candidate of same) if (candidate.effectiveState() === READY) return candidate;
    return same.values().next().value;
  }

  /** Forgets a queued call that ended. */
  unqueue(call: PickedCall): void {
    this.#queue.delete(call);
  }

  createCall(...args: CreateCallArgs): Call {
    const settings = this.#settings;
    const method = args[0];
    return new RetryingCall(
      this,
      settings.serviceConfig.methodPolicy(method),
      settings.singleResponse.has(method),
      args,
    );
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
    const watcher: StateWatcher = { state: currentState, callback };
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
    this.#settings.signal?.removeEventListener("abort", this.#onAbort);
    void this.#resolution.return();
    for (const call of [...this.#queue]) call.fail(grpc.status.UNAVAILABLE, "Channel closed");
    this.#queue.clear();
    for (const instance of this.#instances.values()) this.#closeInstance(instance);
    this.#instances.clear();
    this.#byEndpoint.clear();
    this.#byAddr.clear();
    clearTimeout(this.#rebuildTimer);
    clearTimeout(this.#sweepTimer);
    for (const call of [...this.#backingOff]) call.abort(grpc.status.UNAVAILABLE, "Channel closed");
    this.#backingOff.clear();
    this.#setState(SHUTDOWN);
    for (const watcher of this.#watchers) watcher.timer?.clear();
    this.#watchers.clear();
  }
}
