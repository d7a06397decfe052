/**
 * Unary calls with 64 in flight over three greeter instances in separate
 * processes: `dial()` with `roundRobin` against a grpc-js client with grpc-js's
 * own `round_robin` over the same static addresses (baseline); and both again
 * with the same service config: a retry policy, retry throttling and
 * `outlier_detection` around round robin (nothing fails, so what is measured
 * is their cost on the way of every call).
 *
 * Each iteration runs a burst of the other client of its group first and times
 * only its own (`b.start()`/`b.end()`): the two clients alternate burst by
 * burst, so the servers' drift over the run (heap growth, GC, a loaded
 * machine) weighs on both alike instead of on whichever runs last.
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

/** The service config of the second group, for both clients. */
const SERVICE_CONFIG = JSON.stringify({
  methodConfig: [{
    name: [{ service: "helloworld.Greeter" }],
    retryPolicy: {
      maxAttempts: 3,
      initialBackoff: "0.05s",
      maxBackoff: "0.5s",
      backoffMultiplier: 2,
      retryableStatusCodes: ["UNAVAILABLE"],
    },
  }],
  retryThrottling: { maxTokens: 10, tokenRatio: 0.1 },
  loadBalancingConfig: [{
    outlier_detection: {
      interval: { seconds: 1, nanos: 0 },
      base_ejection_time: { seconds: 30, nanos: 0 },
      max_ejection_percent: 50,
      failure_percentage_ejection: {
        threshold: 50,
        enforcement_percentage: 100,
        minimum_hosts: 3,
        request_volume: 10,
      },
      child_policy: [{ round_robin: {} }],
    },
  }],
});
const oursConfigured = dial(etcd, "bench/greeter", Greeter, {
  channelOptions: { "grpc.service_config": SERVICE_CONFIG },
});
const theirsConfigured = new Greeter(
  `ipv4:${servers.map((s) => s.addr).join(",")}`,
  grpc.credentials.createInsecure(),
  { "grpc.service_config": SERVICE_CONFIG },
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
  await burst(oursConfigured);
  await burst(theirsConfigured);
}

Deno.bench({
  name: "baseline: grpc-js round_robin, static addresses",
  group: "640 unary calls, 64 in flight, 3 instances",
  baseline: true,
  async fn(b) {
    await burst(ours);
    b.start();
    await burst(theirs);
    b.end();
  },
});
Deno.bench({
  name: "dial() + roundRobin",
  group: "640 unary calls, 64 in flight, 3 instances",
  async fn(b) {
    await burst(theirs);
    b.start();
    await burst(ours);
    b.end();
  },
});

Deno.bench({
  name: "baseline: grpc-js, retry policy + outlier_detection(round_robin), static addresses",
  group: "640 unary calls, 64 in flight, 3 instances, retry policy + outlier detection",
  baseline: true,
  async fn(b) {
    await burst(oursConfigured);
    b.start();
    await burst(theirsConfigured);
    b.end();
  },
});
Deno.bench({
  name: "dial() + roundRobin, the same service config",
  group: "640 unary calls, 64 in flight, 3 instances, retry policy + outlier detection",
  async fn(b) {
    await burst(theirsConfigured);
    b.start();
    await burst(oursConfigured);
    b.end();
  },
});
