/**
 * Figure: resident memory over repeated cut-offs from etcd (fault scenario
 * 10's loop, `tests/faults_test.ts`), in this process, on the runtime running
 * it. A client with 3 registrations and 2 resolvers talks to etcd through a
 * TCP proxy in this process that cuts every connection again and again:
 * 20–100 ms cut, 50–150 ms apart, from a seeded generator. Resident memory
 * is sampled (after a garbage collection, when the runtime exposes `gc`) at
 * the end of each quarter of the cycles; the figure is the growth from the
 * first quarter's sample to the last's: a leak keeps growing, allocator slack
 * levels off after the first quarter. The run must end as scenario 10 does:
 * the first resolver's view holds the 3 registrations, and etcd holds
 * exactly the live watches (5) and leases (3).
 *
 *   cut-offs <connect|fetch> <cycles> [seed]
 *
 * @module
 */
import process from "node:process";
import {
  applyUpdates,
  connect,
  type Endpoint,
  type EtcdClient,
  register,
  resolve,
} from "@seed/grpc-etcd";
import { connectFetch } from "@seed/grpc-etcd/fetch";
import { EtcdHttp } from "../etcd_http.ts";
import { startEtcd } from "../etcd_server.ts";
import { TcpProxy } from "../tcp_proxy.ts";
import { sleep, until } from "../wait.ts";

/** The adapters the loop runs over, by the name the command line gives. */
export const ADAPTERS: Readonly<
  Record<string, (options: { hosts: string; dialTimeout?: number }) => EtcdClient>
> = {
  connect: connect,
  fetch: connectFetch,
};

/** What one run of the loop measured. */
export interface MemoryFigure {
  readonly adapter: string;
  readonly cycles: number;
  readonly seed: number;
  /** Whether `gc()` was exposed, so that each sample follows a full collection. */
  readonly gc: boolean;
  /** Resident memory (bytes) at the end of each quarter of the cycles. */
  readonly rssByQuarter: number[];
  /** JavaScript heap in use (bytes) at the end of each quarter of the cycles. */
  readonly heapByQuarter: number[];
  /** Resident memory before the first cut. */
  readonly rssBefore: number;
  /** `(last quarter − first quarter) / first quarter` of resident memory. */
  readonly rssGrowth: number;
  /** The same of the heap in use. */
  readonly heapGrowth: number;
  /** How long the cycles took, in ms. */
  readonly loopMs: number;
}

/** A seeded generator in [0, 1), the one of `tests/faults_test.ts`, so that runs repeat. */
function seeded(seed: number): () => number {
  let state = seed % 2147483647 || 1;
  return () => (state = (state * 48271) % 2147483647) / 2147483647;
}

/** A resolver folding its batches into a view. */
function follow(client: EtcdClient, service: string) {
  const updates = resolve(client, service, { onError: () => {} });
  let view = new Map<string, Endpoint>();
  const done = (async () => {
    for await (const batch of updates) view = applyUpdates(view, batch);
  })();
  return {
    get view() {
      return view;
    },
    async close() {
      await updates.return();
      await done;
    },
  };
}

/** Resident memory and heap in use, after a full collection when `gc` is exposed. */
function sample(): { rss: number; heap: number } {
  (globalThis as { gc?: () => void }).gc?.();
  const usage = process.memoryUsage();
  return { rss: usage.rss, heap: usage.heapUsed };
}

/** Parses a whole number argument of at least `min`. */
export function wholeArg(name: string, value: string | undefined, min: number): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min) {
    throw new RangeError(`${name} must be a whole number of at least ${min}, got "${value}"`);
  }
  return n;
}

/** Runs the loop; see the module's documentation. */
export async function memoryFigure(args: readonly string[]): Promise<MemoryFigure> {
  const [adapter = "", cyclesArg, seedArg = "1"] = args;
  const open = ADAPTERS[adapter];
  if (!open) {
    throw new RangeError(
      `adapter must be one of ${Object.keys(ADAPTERS).join(", ")}, got "${adapter}"`,
    );
  }
  const cycles = wholeArg("cycles", cyclesArg, 4);
  const seed = wholeArg("seed", seedArg, 0);
  await using etcd = await startEtcd({ private: true });
  const http = new EtcdHttp(etcd.endpoint);
  await using proxy = await TcpProxy.start(etcd.endpoint);
  const service = "figures/ten";
  const client = open({ hosts: proxy.endpoint, dialTimeout: 500 });
  const direct = open({ hosts: etcd.endpoint });
  const registrations = await Promise.all(
    [1, 2, 3].map((i) =>
      register(client, service, { addr: `10.10.0.${i}:50051` }, { ttl: 5, onError: () => {} })
    ),
  );
  const followers = [follow(client, service), follow(client, `${service}-other`)];
  const keys = registrations.map((r) => r.key).sort();
  const viewHoldsAll = () =>
    JSON.stringify([...followers[0]!.view.keys()].sort()) === JSON.stringify(keys);
  try {
    await until("the resolver sees the 3 registrations", 10_000, viewHoldsAll);
    // A read through the direct client, as scenario 10 reads etcd's state through it.
    await direct.getPrefix(`${service}/`);
    const random = seeded(seed + 10);
    const before = sample();
    const quarter = Math.floor(cycles / 4);
    const samples: { rss: number; heap: number }[] = [];
    const started = Date.now();
    for (let cycle = 1; cycle <= cycles; cycle++) {
      await proxy.cut();
      await sleep(20 + Math.floor(random() * 80));
      proxy.restore();
      await sleep(50 + Math.floor(random() * 100));
      if (cycle % quarter === 0 && samples.length < 4) samples.push(sample());
    }
    const loopMs = Date.now() - started;
    await until("the resolver's view back to the 3 registrations", 10_000, viewHoldsAll);
    const watchers = registrations.length + followers.length;
    await until(
      `etcd holds ${watchers} watches (one per resolved service and registration)`,
      10_000,
      async () => (await etcd.metric("etcd_debugging_mvcc_watcher_total")) === watchers,
    );
    await until(`etcd holds ${registrations.length} leases`, 10_000, async () => {
      const { leases } = await http.call("lease/leases", {}) as { leases?: unknown[] };
      return (leases ?? []).length === registrations.length;
    });
    const growth = (key: "rss" | "heap") =>
      (samples.at(-1)![key] - samples[0]![key]) / samples[0]![key];
    return {
      adapter,
      cycles,
      seed,
      gc: typeof (globalThis as { gc?: unknown }).gc === "function",
      rssByQuarter: samples.map((s) => s.rss),
      heapByQuarter: samples.map((s) => s.heap),
      rssBefore: before.rss,
      rssGrowth: growth("rss"),
      heapGrowth: growth("heap"),
      loopMs,
    };
  } finally {
    await Promise.all(followers.map((f) => f.close()));
    await Promise.all(registrations.map((r) => r.close()));
    await client.close();
    await direct.close();
  }
}
