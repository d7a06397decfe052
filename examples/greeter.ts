/**
 * The greeter service used by the example and the tests: loading its client
 * class, and serving one instance registered in etcd.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { EtcdClient } from "../mod.ts";
import { serve, type ServeOptions, type Serving } from "../grpc.ts";

/** The request and reply shapes of `helloworld.Greeter/SayHello`. */
export interface HelloRequest {
  name: string;
  delay_ms?: number;
}
/** The reply of `SayHello`. */
export interface HelloReply {
  message: string;
  instance: string;
}

/** A grpc-js client of the greeter service. */
export interface GreeterClient extends grpc.Client {
  SayHello(
    request: HelloRequest,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, reply?: HelloReply) => void,
  ): grpc.ClientUnaryCall;
  SayHello(
    request: HelloRequest,
    callback: (error: grpc.ServiceError | null, reply?: HelloReply) => void,
  ): grpc.ClientUnaryCall;
}

const definition = protoLoader.loadSync(new URL("./greeter.proto", import.meta.url).pathname, {
  keepCase: true,
  defaults: true,
});
// deno-lint-ignore no-explicit-any
const helloworld = (grpc.loadPackageDefinition(definition) as any).helloworld;

/** The greeter client class, as proto-loader makes it. */
export const Greeter: {
  new (
    address: string,
    credentials: grpc.ChannelCredentials,
    options?: grpc.ClientOptions,
  ): GreeterClient;
  service: grpc.ServiceDefinition;
} = helloworld.Greeter;

/** Calls SayHello and resolves with the reply. */
export function sayHello(
  client: GreeterClient,
  request: HelloRequest,
  options: { deadline?: number; waitForReady?: boolean } = {},
): Promise<HelloReply> {
  return new Promise((resolve, reject) => {
    const metadata = new grpc.Metadata({ waitForReady: options.waitForReady ?? false });
    client.SayHello(
      request,
      metadata,
      { deadline: options.deadline ?? Date.now() + 5000 },
      (error, reply) => {
        if (error) reject(error);
        else resolve(reply!);
      },
    );
  });
}

/** A greeter instance in this process. */
export interface Greeting extends Serving {
  /** Stops the gRPC server abruptly, without draining or deregistering. */
  crash(): void;
}

/**
 * Starts one greeter instance: a grpc-js server answering as `name`, served and
 * registered under `service`.
 */
export async function startGreeter(
  client: EtcdClient,
  service: string,
  name: string,
  options: ServeOptions = {},
  behaviour: { delayMs?: number } = {},
): Promise<Greeting> {
  const server = new grpc.Server();
  server.addService(Greeter.service, {
    SayHello(
      call: grpc.ServerUnaryCall<HelloRequest, HelloReply>,
      callback: grpc.sendUnaryData<HelloReply>,
    ) {
      const reply = () => callback(null, { message: `hello ${call.request.name}`, instance: name });
      const delay = (call.request.delay_ms ?? 0) + (behaviour.delayMs ?? 0);
      if (delay > 0) setTimeout(reply, delay);
      else reply();
    },
  });
  const serving = await serve(server, client, service, { metadata: { name }, ...options });
  return {
    ...serving,
    crash() {
      server.forceShutdown();
    },
  };
}
