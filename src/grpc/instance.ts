/**
 * One instance of a dialed service, as the balanced channel keeps it: its
 * endpoint, its own grpc-js channel, and what is known of its connection and
 * health.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import type { Endpoint } from "../endpoint.ts";
import { OutlierStats } from "./outlier_detection.ts";

const { IDLE, CONNECTING, READY, TRANSIENT_FAILURE } = grpc.connectivityState;

/**
 * What the instance's health service says: `unchecked` (no health checking, or
 * the instance does not implement it), `pending` (no answer yet), `serving`,
 * `not-serving`.
 */
export type Health = "unchecked" | "pending" | "serving" | "not-serving";

/** One instance: an etcd key, its endpoint, and the connection to it. */
export class Instance {
  /** The etcd key the instance is registered under. */
  readonly key: string;
  /** The endpoint, replaced when its value in etcd changes (same address). */
  endpoint: Endpoint;
  /** The instance's own grpc-js channel (pick_first to its address). */
  readonly channel: grpc.Channel;
  /** The channel's target: the peer of a call that got no stream on it. */
  readonly target: string;
  /** Outlier detection's counters and ejection. */
  readonly outlier: OutlierStats = new OutlierStats();
  /** Its connection's state, as last seen. */
  state: grpc.connectivityState = IDLE;
  /** Calls running on it. */
  inflight = 0;
  /** Gone from etcd: closed once its last call ends. */
  removed = false;
  /** Its channel is closed. */
  closed = false;
  /** What its health service says. */
  health: Health = "unchecked";

  /**
   * @param key the etcd key
   * @param endpoint the endpoint
   * @param channel the channel to its address
   */
  constructor(key: string, endpoint: Endpoint, channel: grpc.Channel) {
    this.key = key;
    this.endpoint = endpoint;
    this.channel = channel;
    this.target = channel.getTarget();
  }

  /** How reports name the instance: `instance 10.0.0.9:443 ("svc/10.0.0.9:443")`. */
  describe(): string {
    return `instance ${this.endpoint.addr} (${JSON.stringify(this.key)})`;
  }

  /**
   * The state the instance counts as for picking: its connection's, then its
   * health's; an instance ejected by outlier detection counts as failing.
   */
  effectiveState(): grpc.connectivityState {
    if (this.state !== READY) return this.state;
    if (this.outlier.ejectedAt >= 0) return TRANSIENT_FAILURE;
    if (this.health === "pending") return CONNECTING;
    if (this.health === "not-serving") return TRANSIENT_FAILURE;
    return READY;
  }
}
