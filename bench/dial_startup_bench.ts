/**
 * Start-up of `dial()` over a service of 10,000 instances: time from `dial()`
 * until every instance's connection has settled (nothing listens at these
 * loopback addresses, so each goes CONNECTING, then TRANSIENT_FAILURE) and a
 * call fails fast, against 10,000 bare grpc-js channels settling (baseline).
 * With one picker build per state change this was O(n²).
 *
 *   deno task bench bench/dial_startup_bench.ts
 */
import * as grpc from "@grpc/grpc-js";
import { type Balancer, consistentHash, encodeEndpoint, roundRobin } from "../mod.ts";
import { dial } from "../grpc.ts";
import { memoryClient } from "../testing.ts";
import { Greeter, sayHello } from "../harness/greeter.ts";

const INSTANCES = 10_000;
const SERVICE = "bench/startup";
const addr = (i: number) => `127.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}:1`;
const etcd = memoryClient();
for (let i = 0; i < INSTANCES; i++) {
  await etcd.put(`${SERVICE}/${addr(i)}`, encodeEndpoint({ addr: addr(i) }));
}
globalThis.addEventListener("unload", () => void etcd.close());

const group = `start-up over ${INSTANCES.toLocaleString("en")} unreachable instances`;
// One run of each: 10,000 channels take grpc-js tens of seconds to set up and tear down under
// Deno, whose cost grows faster than linearly (500: 0.2 s, 4,000: 1.9 s), and runs would add up.
const options = { n: 1, warmup: 0 };

Deno.bench({
  name: "baseline: 10,000 grpc-js channels connect and fail",
  group,
  baseline: true,
  ...options,
  async fn() {
    const channels = Array.from(
      { length: INSTANCES },
      (_, i) => new grpc.Channel(addr(i), grpc.credentials.createInsecure(), {}),
    );
    await Promise.all(channels.map((channel) =>
      new Promise<void>((resolve) => {
        const settle = () => {
          const state = channel.getConnectivityState(true);
          if (state === grpc.connectivityState.TRANSIENT_FAILURE) resolve();
          else channel.watchConnectivityState(state, Infinity, settle);
        };
        settle();
      })
    ));
    for (const channel of channels) channel.close();
  },
});

async function startUp(balancer: Balancer): Promise<void> {
  const client = dial(etcd, SERVICE, Greeter, { balancer });
  try {
    await sayHello(client, { name: "x" }, { deadline: Date.now() + 600_000 });
    throw new Error("a call was answered");
  } catch (error) {
    const details = (error as grpc.ServiceError).details ?? String(error);
    if (!details.includes(`(${INSTANCES} known)`)) throw error;
  } finally {
    client.close();
  }
}

Deno.bench({
  name: "dial() + roundRobin: until a call fails fast",
  group,
  ...options,
  fn: () => startUp(roundRobin),
});

Deno.bench({
  name: "dial() + consistentHash: until a call fails fast",
  group,
  ...options,
  fn: () => startUp(consistentHash),
});
