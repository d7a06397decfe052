/**
 * Start-up of `dial()` over a service of 10,000 instances: time from `dial()`
 * until every instance's connection has settled (nothing listens at these
 * loopback addresses, so each goes CONNECTING, then TRANSIENT_FAILURE) and a
 * call fails fast, against 10,000 bare grpc-js channels settling (baseline).
 * Only the start-up is timed; closing comes after `b.end()`. Every channel has
 * a subchannel pool of its own (`dial` sets `grpc.use_local_subchannel_pool`,
 * the baseline too), so closing costs O(n) on both sides.
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
/**
 * Instance `i`'s address. Each bench has a port of its own (nothing listens on any): grpc-js keeps
 * a closed channel's subchannels in its global pool, still retrying with backoff, and a later
 * bench on the same addresses would take them over instead of starting afresh.
 */
const addr = (i: number, port: number) =>
  `127.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}:${port}`;
const etcd = memoryClient();
for (const port of [2, 3]) {
  for (let i = 0; i < INSTANCES; i++) {
    const key = `${SERVICE}${port}/${addr(i, port)}`;
    await etcd.put(key, encodeEndpoint({ addr: addr(i, port) }));
  }
}
globalThis.addEventListener("unload", () => void etcd.close());

const group = `start-up over ${INSTANCES.toLocaleString("en")} unreachable instances`;
// Few runs: 10,000 channels take grpc-js seconds to set up and tear down.
const options = { n: 1, warmup: 0 };

Deno.bench({
  name: "baseline: 10,000 grpc-js channels connect and fail",
  group,
  baseline: true,
  ...options,
  async fn(b) {
    b.start();
    const channels = Array.from(
      { length: INSTANCES },
      (_, i) =>
        new grpc.Channel(addr(i, 1), grpc.credentials.createInsecure(), {
          "grpc.use_local_subchannel_pool": 1,
        }),
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
    b.end();
    for (const channel of channels) channel.close();
  },
});

async function startUp(b: Deno.BenchContext, balancer: Balancer, port: number): Promise<void> {
  b.start();
  const client = dial(etcd, `${SERVICE}${port}`, Greeter, { balancer });
  try {
    await sayHello(client, { name: "x" }, { deadline: Date.now() + 600_000 });
    throw new Error("a call was answered");
  } catch (error) {
    b.end();
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
  // An async function, not an arrow returning a promise: Deno.bench awaits only the former.
  async fn(b) {
    await startUp(b, roundRobin, 2);
  },
});

Deno.bench({
  name: "dial() + consistentHash: until a call fails fast",
  group,
  ...options,
  async fn(b) {
    await startUp(b, consistentHash, 3);
  },
});
