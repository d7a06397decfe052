/**
 * Client-side health checking of one instance, as gRPC's `healthCheckConfig`:
 * a `grpc.health.v1.Health/Watch` on the instance's own channel while it is
 * connected, retried with backoff when the stream breaks.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";
import { backoff } from "../backoff.ts";
import type { Instance } from "./instance.ts";

/** The generated client of the health service (grpc-health-check's own definition). */
const HealthClient = grpc.makeGenericClientConstructor(
  healthService as unknown as grpc.ServiceDefinition,
  "Health",
);

/** A `HealthCheckResponse` as grpc-health-check's definition decodes it (enums as names). */
interface HealthResponse {
  readonly status: string;
}

/** The health client's one method this file calls. */
type HealthStub = grpc.Client & {
  Watch(request: { service: string }): grpc.ClientReadableStream<HealthResponse>;
};

/** What a health watch tells its owner. */
export interface HealthEvents {
  /** The instance's `health` changed. */
  changed(): void;
  /** A problem worth telling the user. */
  report(error: Error): void;
}

/** Watches one instance's health for `serviceName` while started. */
export class HealthWatch {
  readonly #instance: Instance;
  readonly #serviceName: string;
  readonly #client: HealthStub;
  readonly #events: HealthEvents;
  #stream: grpc.ClientReadableStream<HealthResponse> | undefined;
  #retry: ReturnType<typeof setTimeout> | undefined;
  #attempt = 0;

  /**
   * @param instance the instance, whose `health` this watch keeps
   * @param serviceName the service name to watch (`""`: the server as a whole)
   * @param credentials the credentials of the instance's channel
   * @param events where changes and problems go
   */
  constructor(
    instance: Instance,
    serviceName: string,
    credentials: grpc.ChannelCredentials,
    events: HealthEvents,
  ) {
    this.#instance = instance;
    this.#serviceName = serviceName;
    this.#events = events;
    this.#client = new HealthClient(instance.endpoint.addr, credentials, {
      channelOverride: instance.channel,
    }) as unknown as HealthStub;
  }

  /** Starts watching (the instance just connected); no-op while watching or waiting to retry. */
  start(): void {
    const instance = this.#instance;
    if (instance.closed || this.#stream || this.#retry) return;
    instance.health = "pending";
    const stream = this.#client.Watch({ service: this.#serviceName });
    this.#stream = stream;
    stream.on("data", (response: HealthResponse) => {
      this.#attempt = 0;
      const health = response.status === "SERVING" ? "serving" : "not-serving";
      if (health === instance.health) return;
      instance.health = health;
      if (health === "not-serving") {
        this.#events.report(
          new Error(
            `${instance.describe()} gets no calls: its health service reports ${response.status} ` +
              `for ${JSON.stringify(this.#serviceName)}`,
          ),
        );
      }
      this.#events.changed();
    });
    const ended = (code: grpc.status) => {
      if (this.#stream !== stream) return; // cancelled by stop()
      this.#stream = undefined;
      if (code === grpc.status.UNIMPLEMENTED) {
        // As gRPC does: a server without the health service is used as if SERVING.
        instance.health = "unchecked";
        this.#events.report(
          new Error(
            `${instance.describe()} does not implement grpc.health.v1 Watch: ` +
              "used without health checks",
          ),
        );
        this.#events.changed();
        return;
      }
      // The stream broke or the server ended it: no calls until the instance answers again.
      instance.health = "pending";
      this.#events.changed();
      this.#retry = setTimeout(() => {
        this.#retry = undefined;
        if (instance.state === grpc.connectivityState.READY) this.start();
      }, backoff(this.#attempt++, { initial: 100, max: 5000 }));
    };
    stream.on("error", (error: grpc.ServiceError) => ended(error.code));
    // A server stream ended with status OK emits no "error".
    stream.on("status", (status: grpc.StatusObject) => {
      if (status.code === grpc.status.OK) ended(status.code);
    });
  }

  /** Stops watching (the instance's connection is not READY, or it is gone). */
  stop(): void {
    clearTimeout(this.#retry);
    this.#retry = undefined;
    const stream = this.#stream;
    this.#stream = undefined;
    stream?.cancel();
    if (this.#instance.health !== "unchecked") this.#instance.health = "pending";
  }
}
