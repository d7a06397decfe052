import assert from "node:assert/strict";
import { CompactedError, LeaseNotFoundError, type WatchBatch } from "../mod.ts";
import { MemoryEtcd, UnavailableError } from "../testing.ts";
import { fakeTime } from "./fake_time.ts";

async function take(it: AsyncIterator<WatchBatch>, n: number): Promise<WatchBatch[]> {
  const out: WatchBatch[] = [];
  while (out.length < n) {
    const r = await it.next();
    if (r.done) break;
    out.push(r.value);
  }
  return out;
}

Deno.test("MemoryEtcd keeps one global revision and reads a prefix at it", async () => {
  await using etcd = new MemoryEtcd();
  await using c = etcd.client();
  assert.equal(await c.put("a/1", "x"), 2);
  assert.equal(await c.put("b/1", "y"), 3);
  assert.equal(await c.delete("missing"), 3, "deleting nothing writes no revision");
  const range = await c.getPrefix("a/");
  assert.equal(range.revision, 3);
  assert.deepEqual(range.kvs.map((kv) => [kv.key, kv.modRevision]), [["a/1", 2]]);
});

Deno.test("MemoryEtcd expires leases by its clock and deletes their keys in one revision", async () => {
  using clock = fakeTime();
  await using etcd = new MemoryEtcd();
  await using c = etcd.client();
  const lease = await c.grantLease(5);
  await c.put("s/1", "a", lease);
  await c.put("s/2", "b", lease);
  const ac = new AbortController();
  const it = c.watch("s/", { startRevision: etcd.revision + 1, signal: ac.signal })
    [Symbol.asyncIterator]();
  await take(it, 1); // created
  await clock.tick(4000);
  assert.equal(await c.keepAlive(lease), 5);
  await clock.tick(4999);
  assert.equal((await c.getPrefix("s/")).kvs.length, 2);
  await clock.tick(1);
  const [batch] = await take(it, 1);
  assert.deepEqual(batch!.events.map((e) => e.type === "delete" && [e.key, e.modRevision]), [[
    "s/1",
    4,
  ], ["s/2", 4]]);
  assert.equal(await c.keepAlive(lease), 0);
  await assert.rejects(c.put("s/3", "c", lease), LeaseNotFoundError);
  ac.abort();
  assert.equal((await it.next()).done, true);
  assert.equal(etcd.stats().watches, 0);
});

Deno.test("MemoryEtcd replays history from a revision and refuses compacted ones", async () => {
  await using etcd = new MemoryEtcd();
  await using c = etcd.client();
  await c.put("p/a", "1"); // rev 2
  await c.put("q/x", "1"); // rev 3, other prefix
  await c.put("p/b", "1"); // rev 4
  const ac = new AbortController();
  const it = c.watch("p/", { startRevision: 2, signal: ac.signal })[Symbol.asyncIterator]();
  const [, replay] = await take(it, 2);
  assert.deepEqual(replay!.events.map((e) => e.type === "put" && e.kv.key), ["p/a", "p/b"]);
  ac.abort();
  await it.next();
  etcd.compact(3);
  const late = c.watch("p/", { startRevision: 3 })[Symbol.asyncIterator]();
  await assert.rejects(late.next(), (e) => e instanceof CompactedError && e.compactRevision === 3);
  const ok = c.watch("p/", { startRevision: 4, signal: AbortSignal.abort() })
    [Symbol.asyncIterator]();
  assert.equal((await ok.next()).done, true);
});

Deno.test("MemoryClient.disconnect() fails its watches and calls, not other clients'", async () => {
  await using etcd = new MemoryEtcd();
  await using a = etcd.client();
  await using b = etcd.client();
  const it = a.watch("p/", { startRevision: 0 })[Symbol.asyncIterator]();
  await it.next();
  a.disconnect();
  await assert.rejects(it.next(), UnavailableError);
  await assert.rejects(a.put("p/x", "1"), /connection lost/);
  assert.equal(await b.put("p/x", "1"), 2);
  a.reconnect();
  assert.equal((await a.get("p/x")).kvs.length, 1);
  assert.equal(etcd.stats().watches, 0);
});

Deno.test("MemoryEtcd.close() stops lease timers so nothing leaks", async () => {
  const etcd = new MemoryEtcd();
  const c = etcd.client();
  await c.grantLease(60);
  assert.equal(etcd.stats().leases, 1);
  await etcd.close();
  assert.deepEqual(etcd.stats(), { watches: 0, leases: 0, clients: 0 });
  await assert.rejects(c.get("x"), /closed/);
});

Deno.test("a lease longer than a timer keeps (2^31 ms) does not expire at once", async () => {
  using clock = fakeTime();
  await using etcd = new MemoryEtcd();
  await using client = etcd.client();
  const lease = await client.grantLease(3_000_000); // 3e9 ms: a plain timer would fire at once
  await client.put("k", "v", lease);
  await clock.tick(3_600_000);
  assert.equal((await client.get("k")).kvs.length, 1);
  await clock.tick(3_000_000_000);
  assert.equal((await client.get("k")).kvs.length, 0, "expired after its TTL");
});
