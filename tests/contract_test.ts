/**
 * The contract of `EtcdClient`, one set of test bodies run against every
 * implementation: `memoryClient()`'s in-memory etcd, and `connect()` (npm:etcd3)
 * and `connectFetch()` on a real etcd. Each implementation's cases run as steps
 * of one test, on one store; each case works under a prefix of its own.
 * Deno's sanitizers stay on for every step.
 */
import assert from "node:assert/strict";
import {
  ClientClosedError,
  CompactedError,
  connect,
  type EtcdClient,
  LeaseNotFoundError,
  type WatchBatch,
  type WatchEvent,
} from "../mod.ts";
import { connectFetch } from "../fetch.ts";
import { MemoryEtcd } from "../testing.ts";
import { readMetric, startEtcd } from "../harness/etcd_server.ts";
import { until } from "../harness/wait.ts";

/** One implementation under test, on a store of its own. */
interface Harness extends AsyncDisposable {
  /** A new client of the store (the case closes it). */
  client(): EtcdClient;
  /** Compacts the store's history up to `revision`. */
  compact(revision: number): Promise<void>;
  /** How many watches the store serves now. */
  watchers(): Promise<number>;
}

/** A real etcd, with clients made by `make`. */
async function realEtcd(make: (endpoint: string) => EtcdClient): Promise<Harness> {
  const etcd = await startEtcd();
  return {
    client: () => make(etcd.endpoint),
    compact: async (revision) => {
      const response = await fetch(`${etcd.endpoint}/v3/kv/compaction`, {
        method: "POST",
        body: JSON.stringify({ revision: String(revision), physical: true }),
      });
      const body = await response.text();
      assert.equal(response.status, 200, body);
    },
    watchers: () => readMetric(etcd.endpoint, "etcd_debugging_mvcc_watcher_total"),
    [Symbol.asyncDispose]: () => etcd.close(),
  };
}

const IMPLEMENTATIONS: readonly { name: string; start(): Promise<Harness> }[] = [
  {
    name: "memoryClient()",
    start: () => {
      const etcd = new MemoryEtcd();
      return Promise.resolve({
        client: () => etcd.client(),
        compact: (revision) => Promise.resolve(etcd.compact(revision)),
        watchers: () => Promise.resolve(etcd.stats().watches),
        [Symbol.asyncDispose]: () => etcd.close(),
      });
    },
  },
  {
    name: "connect()",
    start: () => realEtcd((endpoint) => connect({ hosts: endpoint, dialTimeout: 2000 })),
  },
  {
    name: "connectFetch()",
    start: () => realEtcd((endpoint) => connectFetch({ hosts: endpoint, dialTimeout: 2000 })),
  },
];

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

/** An event as one line: `put k=v @rev`, `delete k @rev`. */
function show(event: WatchEvent): string {
  return event.type === "put"
    ? `put ${event.kv.key}=${text(event.kv.value)} @${event.kv.modRevision}`
    : `delete ${event.key} @${event.modRevision}`;
}

/** Reads batches until `count` events came (empty batches are signs of life), within 10 s. */
async function events(it: AsyncIterator<WatchBatch>, count: number): Promise<string[]> {
  const seen: string[] = [];
  const deadline = Date.now() + 10_000;
  while (seen.length < count) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const result = await Promise.race([
      it.next(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`saw ${JSON.stringify(seen)}, expected ${count} events`)),
          Math.max(0, deadline - Date.now()),
        );
      }),
    ]).finally(() => clearTimeout(timer));
    assert.equal(result.done, false, `the watch ended after ${JSON.stringify(seen)}`);
    seen.push(...result.value.events.map(show));
  }
  return seen;
}

/**
 * The store's watch count once the watches of earlier cases are gone (a server
 * releases a watch shortly after its client ends it): always 0, since every
 * case ends the watches it opens, which this checks too.
 */
async function settled(h: Harness): Promise<number> {
  await until("no watch left open by earlier cases", 5000, async () => await h.watchers() === 0);
  return 0;
}

type Case = (harness: Harness, prefix: string) => Promise<void>;

const CASES: readonly [string, Case][] = [
  [
    "getPrefix() reads every key under the prefix at one revision, in key order, and no other",
    async (h, p) => {
      await using c = h.client();
      await c.put(`${p}b`, "2");
      const a = await c.put(`${p}a`, "1");
      const last = await c.put(`${p.slice(0, -1)}X/c`, "sibling");
      const range = await c.getPrefix(p);
      assert.equal(range.revision, last);
      assert.deepEqual(range.kvs.map((kv) => `${kv.key}=${text(kv.value)}`), [
        `${p}a=1`,
        `${p}b=2`,
      ]);
      assert.deepEqual([range.kvs[0]!.modRevision, range.kvs[0]!.lease], [a, "0"]);
      await assert.rejects(c.getPrefix(""), TypeError);
    },
  ],
  [
    "get() reads one key, not the keys it is a prefix of; a missing key reads as none",
    async (h, p) => {
      await using c = h.client();
      await c.put(`${p}k`, "v");
      const last = await c.put(`${p}k2`, "w");
      const one = await c.get(`${p}k`);
      assert.deepEqual(one.kvs.map((kv) => kv.key), [`${p}k`]);
      assert.equal(one.revision, last);
      assert.deepEqual(await c.get(`${p}missing`), { revision: last, kvs: [] });
    },
  ],
  [
    "put() and delete() return the revision of the write; deleting nothing writes no revision",
    async (h, p) => {
      await using c = h.client();
      const first = await c.put(`${p}k`, "1");
      const second = await c.put(`${p}k`, "2");
      assert.equal(second, first + 1);
      assert.equal(await c.delete(`${p}k`), second + 1);
      assert.equal(await c.delete(`${p}k`), second + 1);
      assert.equal((await c.get(`${p}k`)).kvs.length, 0);
    },
  ],
  [
    "keys and values round-trip any UTF-8 text",
    async (h, p) => {
      await using c = h.client();
      const key = `${p}ключ/ü €`;
      const value = '{"Addr":"10.0.0.1:1","Metadata":"ü € 𝄞\\n"}\n';
      await c.put(key, value);
      const [kv] = (await c.getPrefix(`${p}ключ/`)).kvs;
      assert.deepEqual([kv?.key, text(kv!.value)], [key, value]);
      assert.deepEqual((await c.get(key)).kvs.map((k) => k.key), [key]);
    },
  ],
  [
    "a key put with a lease carries it; revoking the lease deletes its keys in one revision",
    async (h, p) => {
      await using c = h.client();
      const lease = await c.grantLease(30);
      assert.match(lease, /^[0-9]+$/);
      await c.put(`${p}a`, "1", lease);
      const put = await c.put(`${p}b`, "2", lease);
      assert.deepEqual((await c.getPrefix(p)).kvs.map((kv) => kv.lease), [lease, lease]);
      const stop = new AbortController();
      const it = c.watch(p, { startRevision: put + 1, signal: stop.signal })
        [Symbol.asyncIterator]();
      await c.revokeLease(lease);
      assert.deepEqual(await events(it, 2), [
        `delete ${p}a @${put + 1}`,
        `delete ${p}b @${put + 1}`,
      ]);
      stop.abort();
      assert.equal((await it.next()).done, true);
      assert.deepEqual((await c.getPrefix(p)).kvs, []);
    },
  ],
  [
    "keepAlive() renews a live lease and answers 0 once it is revoked; revoking it again succeeds",
    async (h, _p) => {
      await using c = h.client();
      const lease = await c.grantLease(30);
      const ttl = await c.keepAlive(lease);
      assert.ok(ttl >= 29 && ttl <= 30, `TTL ${ttl}`);
      assert.ok(await c.keepAlive(lease, { timeout: 2000 }) > 0);
      await c.revokeLease(lease);
      assert.equal(await c.keepAlive(lease), 0);
      await c.revokeLease(lease);
      assert.equal(await c.keepAlive(lease, { timeout: 2000 }), 0);
    },
  ],
  [
    "put() with a lease that is gone fails with LeaseNotFoundError naming it",
    async (h, p) => {
      await using c = h.client();
      const lease = await c.grantLease(30);
      await c.revokeLease(lease);
      await assert.rejects(
        c.put(`${p}k`, "v", lease),
        (e) => e instanceof LeaseNotFoundError && e.lease === lease,
      );
      assert.equal((await c.get(`${p}k`)).kvs.length, 0);
    },
  ],
  [
    "a watch from getPrefix()'s revision + 1 sees every later change once, in order",
    async (h, p) => {
      await using c = h.client();
      await using writer = h.client();
      await writer.put(`${p}1`, "a");
      const { revision } = await c.getPrefix(p);
      // Three changes before the watch starts (replayed from history), two after it runs.
      const r2 = await writer.put(`${p}2`, "b");
      await writer.delete(`${p}1`);
      await writer.put(`${p}2`, "c");
      const stop = new AbortController();
      const it = c.watch(p, { startRevision: revision + 1, signal: stop.signal })
        [Symbol.asyncIterator]();
      assert.deepEqual(await events(it, 3), [
        `put ${p}2=b @${r2}`,
        `delete ${p}1 @${r2 + 1}`,
        `put ${p}2=c @${r2 + 2}`,
      ]);
      await writer.put(`${p}3`, "d");
      await writer.delete(`${p}2`);
      assert.deepEqual(await events(it, 2), [`put ${p}3=d @${r2 + 3}`, `delete ${p}2 @${r2 + 4}`]);
      stop.abort();
      assert.equal((await it.next()).done, true);
    },
  ],
  [
    "an exact watch sees its key alone; a prefix watch sees every key under it",
    async (h, p) => {
      await using c = h.client();
      const { revision } = await c.get(`${p}k`);
      const stop = new AbortController();
      const options = { startRevision: revision + 1, signal: stop.signal };
      const exact = c.watch(`${p}k`, { ...options, exact: true })[Symbol.asyncIterator]();
      const prefix = c.watch(`${p}k`, options)[Symbol.asyncIterator]();
      const r = await c.put(`${p}k2`, "x");
      await c.put(`${p}k`, "y");
      await c.delete(`${p}k`);
      assert.deepEqual(await events(exact, 2), [`put ${p}k=y @${r + 1}`, `delete ${p}k @${r + 2}`]);
      assert.deepEqual(await events(prefix, 3), [
        `put ${p}k2=x @${r}`,
        `put ${p}k=y @${r + 1}`,
        `delete ${p}k @${r + 2}`,
      ]);
      stop.abort();
      assert.equal((await exact.next()).done, true);
      assert.equal((await prefix.next()).done, true);
    },
  ],
  [
    "a watch from a compacted revision fails with CompactedError; from the next one it runs",
    async (h, p) => {
      await using c = h.client();
      const from = await c.put(`${p}k`, "1");
      await c.put(`${p}k`, "2");
      const compacted = await c.put(`${p}k`, "3");
      await h.compact(compacted);
      const late = c.watch(p, { startRevision: from })[Symbol.asyncIterator]();
      await assert.rejects(
        (async () => {
          while (!(await late.next()).done);
        })(),
        (e) => e instanceof CompactedError && e.compactRevision === compacted,
      );
      const stop = new AbortController();
      const ok = c.watch(p, { startRevision: compacted + 1, signal: stop.signal })
        [Symbol.asyncIterator]();
      await c.put(`${p}k`, "4");
      assert.deepEqual(await events(ok, 1), [`put ${p}k=4 @${compacted + 1}`]);
      stop.abort();
      assert.equal((await ok.next()).done, true);
    },
  ],
  [
    "aborting the signal ends a watch without an error; an aborted signal opens none",
    async (h, p) => {
      await using c = h.client();
      const before = await settled(h);
      const stop = new AbortController();
      const it = c.watch(p, { startRevision: 0, signal: stop.signal })[Symbol.asyncIterator]();
      const first = await it.next();
      assert.deepEqual(first.done ? "ended" : first.value.events, []);
      stop.abort();
      assert.deepEqual(await it.next(), { done: true, value: undefined });
      await until("the watch released", 5000, async () => await h.watchers() === before);
      const never = c.watch(p, { startRevision: 0, signal: AbortSignal.abort() })
        [Symbol.asyncIterator]();
      assert.deepEqual(await never.next(), { done: true, value: undefined });
      assert.equal(await h.watchers(), before);
    },
  ],
  [
    "leaving a watch (break, return()) releases it on the server",
    async (h, p) => {
      await using c = h.client();
      const before = await settled(h);
      const a = c.watch(p, { startRevision: 0, heartbeat: 1000 })[Symbol.asyncIterator]();
      await a.next();
      for await (const _ of c.watch(`${p}x`, { startRevision: 0, exact: true })) {
        await until("two watches served", 5000, async () => await h.watchers() === before + 2);
        break;
      }
      await until("one released", 5000, async () => await h.watchers() === before + 1);
      await a.return?.();
      await until("both released", 5000, async () => await h.watchers() === before);
    },
  ],
  [
    "close() ends open watches with ClientClosedError, and every later call rejects with it",
    async (h, p) => {
      const c = h.client();
      const before = await settled(h);
      const it = c.watch(p, { startRevision: 0 })[Symbol.asyncIterator]();
      await it.next();
      let ended = false;
      const pending = it.next();
      pending.then(() => (ended = true), () => (ended = true));
      await c.close();
      // Ended by close() itself, not later by a timeout of the connection: settled by the time
      // close() has resolved and the callbacks it set off have run (one turn of the event loop).
      await new Promise((resolve) => setTimeout(resolve, 0));
      assert.ok(ended, "a watch read was still pending after close() resolved");
      await assert.rejects(pending, ClientClosedError);
      await until("the watch released", 5000, async () => await h.watchers() === before);
      const calls: [string, () => Promise<unknown>][] = [
        ["getPrefix", () => c.getPrefix(p)],
        ["get", () => c.get(`${p}k`)],
        ["put", () => c.put(`${p}k`, "v")],
        ["delete", () => c.delete(`${p}k`)],
        ["grantLease", () => c.grantLease(10)],
        ["keepAlive", () => c.keepAlive("1")],
        ["revokeLease", () => c.revokeLease("1")],
        ["watch", () => c.watch(p, { startRevision: 0 })[Symbol.asyncIterator]().next()],
      ];
      for (const [name, call] of calls) await assert.rejects(call(), ClientClosedError, name);
      await c.close();
    },
  ],
  [
    "hosts names where the client connects",
    (h, _p) => {
      const c = h.client();
      assert.ok(c.hosts.length > 0 && c.hosts.every((host) => typeof host === "string"));
      return c.close();
    },
  ],
];

for (const implementation of IMPLEMENTATIONS) {
  Deno.test(`contract: ${implementation.name} keeps the EtcdClient contract`, async (t) => {
    await using harness = await implementation.start();
    for (const [i, [name, body]] of CASES.entries()) {
      await t.step(name, () => body(harness, `contract${i}/`));
    }
  });
}
