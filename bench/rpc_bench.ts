/**
 * Unary calls with 64 in flight over three greeter instances in separate
 * processes: `dial()` with `roundRobin` against a grpc-js client with grpc-js's
 * own `round_robin` over the same static addresses (baseline).
 *
 *   deno task bench bench/rpc_bench.ts
 */
import * as grpc from "@grpc/grpc-js";
import { connect } from "../mod.ts";
import { dial } from "../grpc.ts";
import { Greeter, type GreeterClient, sayHello } from "../harness/greeter.ts";
import { startEtcd } from "../harness/etcd_server.ts";
import { spawnGreeter } from "../harness/greeter_process.ts";

const server = await startEtcd();
const servers = await Promise.all(
  ["a", "b", "c"].map((name) => spawnGreeter(server.endpoint, "bench/greeter", name, { ttl: 10 })),
);
// The harness stops etcd and the greeters and removes etcd's data when this process exits.
const etcd = connect({ hosts: server.endpoint });
const ours = dial(etcd, "bench/greeter", Greeter);
const theirs = new Greeter(
  `ipv4:${servers.map((s) => s.addr).join(",")}`,
  grpc.credentials.createInsecure(),
  { "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }) },
);

const IN_FLIGHT = 64;
const CALLS = 640;

/** Runs CALLS calls, keeping IN_FLIGHT of them in flight. */
async function burst(client: GreeterClient): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next++ < CALLS) await sayHello(client, { name: "bench" });
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
}

// Warm both up: every connection open, every code path compiled.
for (let i = 0; i < 5; i++) {
  await burst(ours);
  await burst(theirs);
}

Deno.bench({
  name: "baseline: grpc-js round_robin, static addresses",
  group: "640 unary calls, 64 in flight, 3 instances",
  baseline: true,
  async fn() {
    await burst(theirs);
  },
});
Deno.bench({
  name: "dial() + roundRobin",
  group: "640 unary calls, 64 in flight, 3 instances",
  async fn() {
    await burst(ours);
  },
});
