/**
 * gRPC service registration and discovery on etcd, for Deno and TypeScript.
 *
 * A service instance calls {@linkcode register}: its address appears in etcd
 * under a lease, kept alive, healed when lost, removed at once on close. A
 * client calls {@linkcode resolve}: an async iterator of update batches (first
 * the current set, then every change), folded with {@linkcode applyUpdates} and
 * balanced with pure pickers such as {@linkcode roundRobin}. Keys and values are
 * those of etcd's Go `client/v3/naming/endpoints`, so Go services and these
 * discover each other.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { applyUpdates, type Endpoint, register, resolve, roundRobin } from "@seed/grpc-etcd";
 * import { memoryClient } from "@seed/grpc-etcd/testing"; // or connect({ hosts: "127.0.0.1:2379" })
 *
 * await using client = memoryClient();
 * await using _a = await register(client, "svc/greeter", { addr: "10.0.0.1:50051" });
 * await using _b = await register(client, "svc/greeter", { addr: "10.0.0.2:50051" });
 *
 * let view = new Map<string, Endpoint>();
 * for await (const batch of resolve(client, "svc/greeter")) {
 *   view = applyUpdates(view, batch);
 *   if (view.size === 2) break;
 * }
 * const pick = roundRobin([...view.values()]);
 * assert.deepEqual([pick()?.addr, pick()?.addr], ["10.0.0.1:50051", "10.0.0.2:50051"]);
 * ```
 *
 * @module
 */
export * from "./core.ts";
export { connect, type ConnectOptions, type Etcd3Instance, type Pem } from "./src/etcd/etcd3.ts";
