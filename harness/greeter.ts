/**
 * Harness: the greeter service of the examples and tests: its client class,
 * a promise-returning call, and one instance served and registered in etcd
 * (or a lone server that no registration announces).
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { EtcdClient } from "@seed/grpc-etcd";
import { serve, type ServeOptions, type Serving } from "@seed/grpc-etcd/grpc";

/** The request of `helloworld.Greeter/SayHello`. */
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

const definition = protoLoader.loadSync(
  fileURLToPath(new URL("./greeter.proto", import.meta.url)),
  {
    keepCase: true,
    defaults: true,
  },
);
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

/** How a greeter behaves besides answering. */
export interface GreeterBehaviour {
  /** Added to every request's `delay_ms`. */
  delayMs?: number;
  /** Called on every call. */
  onCall?: () => void;
  /**
   * Asked on every call: a status code to fail the call with (details
   * `greeter <name> fails on purpose (call <n>)`, n counting the calls that
   * reached it), or `undefined` to answer. Its health service is untouched.
   */
  failWith?: () => grpc.status | undefined;
}

/**
 * The greeter's implementation answering as `name`, after the request's
 * `delay_ms` plus `delayMs`, counting calls with `onCall`, failing calls while
 * `failWith` says so.
 */
function greeterAs(
  name: string,
  behaviour: GreeterBehaviour = {},
): grpc.UntypedServiceImplementation {
  let calls = 0;
  return {
    SayHello(
      call: grpc.ServerUnaryCall<HelloRequest, HelloReply>,
      callback: grpc.sendUnaryData<HelloReply>,
    ) {
      calls++;
      behaviour.onCall?.();
      const code = behaviour.failWith?.();
      if (code !== undefined) {
        callback({ code, details: `greeter ${name} fails on purpose (call ${calls})` });
        return;
      }
      const reply = () => callback(null, { message: `hello ${call.request.name}`, instance: name });
      const delay = (call.request.delay_ms ?? 0) + (behaviour.delayMs ?? 0);
      if (delay > 0) {
        // A call cancelled (by its client, or by the server's shutdown) leaves no timer behind.
        const timer = setTimeout(reply, delay);
        call.once("cancelled", () => clearTimeout(timer));
      } else reply();
    },
  };
}

/** A greeter server on loopback that no registration announces. */
export interface LoneGreeter {
  /** Its `127.0.0.1:port`. */
  readonly addr: string;
  /** How many calls reached it. */
  readonly calls: number;
  /** Stops it at once. */
  close(): void;
}

/**
 * Starts a greeter server answering as `name` on a free loopback port, without
 * `serve()`: no health service, nothing in etcd. For tests that write its
 * entry themselves (a rogue one, say). `addServices` may add more services.
 */
export async function startLoneGreeter(
  name: string,
  options: {
    credentials?: grpc.ServerCredentials;
    addServices?: (server: grpc.Server) => void;
  } = {},
): Promise<LoneGreeter> {
  let calls = 0;
  const server = new grpc.Server();
  server.addService(Greeter.service, greeterAs(name, { onCall: () => calls++ }));
  options.addServices?.(server);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      "127.0.0.1:0",
      options.credentials ?? grpc.ServerCredentials.createInsecure(),
      (e, port) => e ? reject(e) : resolve(port),
    )
  );
  return {
    addr: `127.0.0.1:${port}`,
    get calls() {
      return calls;
    },
    close: () => server.forceShutdown(),
  };
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
  behaviour: GreeterBehaviour = {},
): Promise<Greeting> {
  const server = new grpc.Server();
  server.addService(Greeter.service, greeterAs(name, behaviour));
  const serving = await serve(server, client, service, { metadata: { name }, ...options });
  return {
    ...serving,
    crash() {
      server.forceShutdown();
    },
  };
}
