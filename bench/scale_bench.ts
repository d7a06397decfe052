/**
 * A service with 10,000 instances on a real etcd started here: time to the
 * first batch of `resolve()` against a raw `etcd3` prefix read (baseline), and
 * the memory of 1,000 resolvers sharing one watch against one resolver.
 *
 *   deno task bench bench/scale_bench.ts
 */
import { Etcd3 } from "etcd3";
import { connect, encodeEndpoint, type Resolution, resolve } from "../mod.ts";
import { startEtcd } from "../harness/etcd_server.ts";

const INSTANCES = 10_000;
const server = await startEtcd();
// The harness stops etcd and removes its data when this process exits.
const raw = new Etcd3({ hosts: server.endpoint });
for (let start = 0; start < INSTANCES; start += 500) {
  await Promise.all(Array.from({ length: 500 }, (_, k) => {
    const i = start + k;
    const addr = `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}:50051`;
    return raw.put(`bench/big/${addr}`).value(
      encodeEndpoint({ addr, metadata: { zone: `z${i % 3}` } }),
    );
  }));
}

const client = connect({ hosts: server.endpoint });
const group = `first batch of a service with ${INSTANCES.toLocaleString("en")} instances`;
Deno.bench({
  name: "baseline: etcd3 getAll().prefix() of the raw values",
  group,
  baseline: true,
  async fn() {
    const values = await raw.getAll().prefix("bench/big/").strings();
    if (Object.keys(values).length !== INSTANCES) throw new Error("short read");
  },
});
Deno.bench({
  name: "resolve(): read, decode, first batch, release",
  group,
  async fn() {
    const updates = resolve(client, "bench/big");
    const first = await updates.next();
    if (first.value?.length !== INSTANCES) throw new Error("short batch");
    await updates.return();
  },
});

// Memory: heap growth of one resolver, then of 1,000 on the same service.
const gc = (globalThis as { gc?: () => void }).gc;
async function heapOf(count: number): Promise<number> {
  gc?.();
  const before = Deno.memoryUsage().heapUsed;
  const all: Resolution[] = [];
  for (let i = 0; i < count; i++) all.push(resolve(client, "bench/big"));
  await Promise.all(all.map((r) => r.next()));
  gc?.();
  const after = Deno.memoryUsage().heapUsed;
  await Promise.all(all.map((r) => r.return()));
  return after - before;
}
await heapOf(1); // warm up
const one = await heapOf(1);
const thousand = await heapOf(1000);
const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
console.log(
  `heap growth with ${INSTANCES} instances: 1 resolver ${mb(one)}, 1,000 resolvers ${
    mb(thousand)
  } ` +
    `(${(thousand / one).toFixed(2)}x; goal ≤ 2x)${
      gc ? "" : " [run with --v8-flags=--expose-gc for steadier numbers]"
    }`,
);
