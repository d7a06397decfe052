/**
 * gRPC by service name, on top of the core module: {@linkcode serve} runs a
 * grpc-js server that appears in etcd under a service name (with the standard
 * health service, and a drain on close); {@linkcode dial} makes a grpc-js
 * client whose every call is balanced over the live instances.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Buffer } from "node:buffer";
 * import * as grpc from "@grpc/grpc-js";
 * import { dial, serve } from "@seed/grpc-etcd/grpc";
 * import { memoryClient } from "@seed/grpc-etcd/testing";
 *
 * // A tiny JSON-coded service, so the example needs no .proto file.
 * const json = { serialize: (v: unknown) => Buffer.from(JSON.stringify(v)), deserialize: (b: Buffer) => JSON.parse(b.toString()) };
 * const definition = {
 *   Echo: { path: "/demo.Echo/Echo", requestStream: false, responseStream: false,
 *     requestSerialize: json.serialize, requestDeserialize: json.deserialize,
 *     responseSerialize: json.serialize, responseDeserialize: json.deserialize },
 * };
 * const Echo = grpc.makeGenericClientConstructor(definition, "Echo");
 *
 * await using etcd = memoryClient();
 * const server = new grpc.Server();
 * server.addService(definition, { Echo: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => cb(null, call.request) });
 * await using _serving = await serve(server, etcd, "svc/echo", { drainMs: 0 });
 *
 * const echo = dial(etcd, "svc/echo", Echo);
 * const reply = await new Promise((resolve, reject) =>
 *   echo.Echo({ hi: 1 }, (err: Error | null, res: unknown) => err ? reject(err) : resolve(res)));
 * assert.deepEqual(reply, { hi: 1 });
 * echo.close();
 * ```
 *
 * @module
 */
export { type ClientConstructor, dial, type DialOptions } from "./src/grpc/dial.ts";
export type { Locality } from "./src/grpc/selection.ts";
export { serve, type ServeOptions, type Serving } from "./src/grpc/serve.ts";
export { registerEtcdResolver } from "./src/grpc/resolver.ts";
