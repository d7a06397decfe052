/**
 * Soak: many resolvers of one service, a third of them reading slowly, while a
 * writer churns instances through a real etcd. Nothing may grow without bound,
 * and every resolver must fold to etcd's final state.
 *
 * `deno task test` runs a short version (5 s, 150 resolvers, 1,000 instances);
 * `FAULTS_FULL=1` (`deno task test:faults`) the full one (60 s, 1,000 resolvers,
 * 10,000 instances).
 */
import assert from "node:assert/strict";
import {
  applyUpdates,
  connect,
  decodeEndpoint,
  encodeEndpoint,
  type Endpoint,
  EndpointDecodeError,
  resolve,
} from "../mod.ts";
import { startEtcd } from "../harness/etcd_server.ts";
import { sleep, until } from "../harness/wait.ts";

const FULL = Deno.env.get("FAULTS_FULL") === "1";
const SECONDS = FULL ? 60 : 5;
const RESOLVERS = FULL ? 1000 : 150;
const INSTANCES = FULL ? 10_000 : 1000;
/** Instances live at once: the writer adds the next and deletes the oldest. */
const LIVE = 100;
const WRITERS = 10;
const SERVICE = "svc/soak";

function heapMiB(): number {
  (globalThis as { gc?: () => void }).gc?.();
  return Deno.memoryUsage().heapUsed / 2 ** 20;
}

Deno.test(`soak: ${RESOLVERS} resolvers (a third slow) through ${INSTANCES} instances churned for ${SECONDS} s`, async () => {
  assert.ok("gc" in globalThis, "run with --v8-flags=--expose-gc (deno task test does)");
  await using etcd = await startEtcd();
  await using writer = connect({ hosts: etcd.endpoint });
  await using reader = connect({ hosts: etcd.endpoint });
  const controller = new AbortController();
  const views = Array.from({ length: RESOLVERS }, () => new Map<string, Endpoint>());
  const errors: Error[] = [];
  const consumers = views.map(async (_, i) => {
    const slow = i % 3 === 0;
    for await (
      const batch of resolve(reader, SERVICE, {
        signal: controller.signal,
        onError: (error) => errors.push(error),
      })
    ) {
      views[i] = applyUpdates(views[i]!, batch);
      if (slow) await sleep(20 + (i % 10) * 20);
    }
  });

  const key = (n: number) => `${SERVICE}/10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}:50051`;
  const addr = (n: number) => key(n).slice(SERVICE.length + 1);
  let written = 0;
  const heap: number[] = [];
  const deadline = Date.now() + SECONDS * 1000;
  const quarter = (SECONDS * 1000) / 4;
  let nextSample = Date.now() + quarter / 2;
  // WRITERS loops, each churning its own share of the instances: etcd commits concurrent
  // writes together, so this writes several times faster than one loop.
  const churn = async (w: number) => {
    for (let c = 0; Date.now() < deadline; c++) {
      const n = (c * WRITERS + w) % INSTANCES;
      await writer.put(key(n), encodeEndpoint({ addr: addr(n), metadata: { c } }));
      const old = c - LIVE / WRITERS;
      if (old >= 0) await writer.delete(key((old * WRITERS + w) % INSTANCES));
      written++;
      if (Date.now() >= nextSample) {
        nextSample += quarter;
        heap.push(heapMiB());
      }
    }
  };
  await Promise.all(Array.from({ length: WRITERS }, (_, w) => churn(w)));
  heap.push(heapMiB());

  const final = new Map<string, Endpoint>();
  for (const kv of (await writer.getPrefix(`${SERVICE}/`)).kvs) {
    const endpoint = decodeEndpoint(kv.key, kv.value);
    if (!(endpoint instanceof EndpointDecodeError)) final.set(kv.key, endpoint);
  }
  assert.equal(final.size, LIVE);
  const same = (view: Map<string, Endpoint>) =>
    view.size === final.size &&
    [...final].every(([k, e]) => JSON.stringify(view.get(k)) === JSON.stringify(e));
  await until("every resolver folds to etcd's final state", 30_000, () => views.every(same));
  controller.abort();
  await Promise.all(consumers);

  const growth = heap.at(-1)! / heap[0]! - 1;
  console.log(
    `${written} writes (${Math.round(written / SECONDS)}/s); heap after GC by quarter: ${
      heap.map((h) => h.toFixed(1)).join(", ")
    } MiB (${(growth * 100).toFixed(1)} % from the first); ${errors.length} errors reported`,
  );
  assert.deepEqual(errors.map((e) => e.message), [], "no errors on a healthy etcd");
  assert.ok(growth < 0.25, `heap grew ${(growth * 100).toFixed(1)} % while churning`);
});
