import assert from "node:assert/strict";
import {
  applyUpdates,
  ClientClosedError,
  CompactedError,
  encodeEndpoint,
  type Endpoint,
  EndpointDecodeError,
  register,
  resolve,
  type Update,
} from "../mod.ts";
import { memoryClient, MemoryEtcd, UnavailableError } from "../testing.ts";
import { fakeTime } from "./fake_time.ts";
import { withOverrides } from "./overrides.ts";
import { until } from "../harness/wait.ts";

const value = (addr: string, metadata?: unknown) => encodeEndpoint({ addr, metadata });

async function next(it: AsyncIterator<Update[]>): Promise<Update[]> {
  const result = await it.next();
  assert.equal(result.done, false, "the stream ended early");
  return result.value;
}

Deno.test("resolve() emits the snapshot as one add batch, then one batch per change", async () => {
  await using client = memoryClient();
  await client.put("svc/a/1.1.1.1:1", value("1.1.1.1:1"));
  await client.put("svc/a/2.2.2.2:1", value("2.2.2.2:1", { w: 1 }));
  await client.put("svc/ab/3.3.3.3:1", value("3.3.3.3:1")); // another service sharing the text prefix
  await using it = resolve(client, "svc/a");
  assert.deepEqual(await next(it), [
    { op: "add", key: "svc/a/1.1.1.1:1", endpoint: { addr: "1.1.1.1:1" } },
    { op: "add", key: "svc/a/2.2.2.2:1", endpoint: { addr: "2.2.2.2:1", metadata: { w: 1 } } },
  ]);
  await client.delete("svc/a/1.1.1.1:1");
  assert.deepEqual(await next(it), [{ op: "delete", key: "svc/a/1.1.1.1:1" }]);
  await client.put("svc/a/4.4.4.4:1", value("4.4.4.4:1"));
  assert.deepEqual(await next(it), [{
    op: "add",
    key: "svc/a/4.4.4.4:1",
    endpoint: { addr: "4.4.4.4:1" },
  }]);
});

Deno.test("resolve() emits an empty first batch for a service with no instances", async () => {
  await using client = memoryClient();
  await using it = resolve(client, "svc/none");
  assert.deepEqual(await next(it), []);
});

Deno.test("resolve() calls for one service on one client share one watch", async () => {
  await using client = memoryClient();
  const a = resolve(client, "svc/a");
  const b = resolve(client, "svc/a");
  const c = resolve(client, "svc/b");
  await Promise.all([next(a), next(b), next(c)]);
  assert.equal(client.server.stats().watches, 2);
  await client.put("svc/a/1.1.1.1:1", value("1.1.1.1:1"));
  assert.deepEqual(await next(a), await next(b));
  await a.return();
  assert.equal(client.server.stats().watches, 2, "b still holds the shared watch");
  const late = resolve(client, "svc/a");
  assert.deepEqual(
    (await next(late)).map((u) => u.key),
    ["svc/a/1.1.1.1:1"],
    "a late joiner gets the current view",
  );
  await b.return();
  await late.return();
  await c.return();
  assert.equal(client.server.stats().watches, 0);
});

Deno.test("break, return() and an aborted signal end the iterator and release the watch", async () => {
  await using client = memoryClient();
  for await (const _ of resolve(client, "svc/a")) break;
  assert.equal(client.server.stats().watches, 0, "break");
  const ac = new AbortController();
  const it = resolve(client, "svc/a", { signal: ac.signal });
  await next(it);
  const pending = it.next();
  ac.abort();
  assert.deepEqual(await pending, { value: undefined, done: true });
  assert.equal(client.server.stats().watches, 0, "abort");
  assert.equal((await it.next()).done, true);
  const dead = resolve(client, "svc/a", { signal: AbortSignal.abort() });
  assert.equal((await dead.next()).done, true, "an aborted signal yields nothing");
});

Deno.test("resolve() keeps the view while cut off, then resumes without missing or repeating a change", async () => {
  await using etcd = new MemoryEtcd();
  await using client = etcd.client();
  await using writer = etcd.client();
  await writer.put("svc/a/1.1.1.1:1", value("1.1.1.1:1"));
  const errors: Error[] = [];
  await using it = resolve(client, "svc/a", { onError: (e) => errors.push(e) });
  let view = applyUpdates(new Map(), await next(it));
  client.disconnect();
  await writer.put("svc/a/2.2.2.2:1", value("2.2.2.2:1"));
  await writer.delete("svc/a/1.1.1.1:1");
  await writer.put("svc/a/3.3.3.3:1", value("3.3.3.3:1"));
  await until(
    "the lost connection reported",
    5000,
    () => errors.some((e) => e instanceof UnavailableError),
  );
  client.reconnect();
  const seen: Update[] = [];
  while (seen.length < 3) seen.push(...await next(it));
  assert.deepEqual(seen.map((u) => `${u.op} ${u.key}`), [
    "add svc/a/2.2.2.2:1",
    "delete svc/a/1.1.1.1:1",
    "add svc/a/3.3.3.3:1",
  ]);
  view = applyUpdates(view, seen);
  assert.deepEqual([...view.keys()].sort(), ["svc/a/2.2.2.2:1", "svc/a/3.3.3.3:1"]);
  await writer.put("svc/a/4.4.4.4:1", value("4.4.4.4:1"));
  assert.deepEqual((await next(it)).map((u) => u.key), ["svc/a/4.4.4.4:1"], "nothing repeated");
});

Deno.test("after compaction cancels the watch, resolve() re-lists and emits the difference as one batch", async () => {
  await using etcd = new MemoryEtcd();
  await using client = etcd.client();
  await using writer = etcd.client();
  for (const n of [1, 2, 3]) await writer.put(`svc/a/1.1.1.${n}:1`, value(`1.1.1.${n}:1`));
  const errors: Error[] = [];
  await using it = resolve(client, "svc/a", { onError: (e) => errors.push(e) });
  let view: Map<string, Endpoint> = applyUpdates(new Map(), await next(it));
  client.disconnect();
  for (let i = 0; i < 100; i++) await writer.put("svc/a/1.1.1.1:1", value("1.1.1.1:1", { i }));
  await writer.delete("svc/a/1.1.1.2:1");
  await writer.put("svc/a/9.9.9.9:1", value("9.9.9.9:1"));
  etcd.compact();
  client.reconnect();
  const batch = await next(it);
  assert.ok(errors.some((e) => e instanceof CompactedError), "compaction reported");
  assert.deepEqual(batch.map((u) => `${u.op} ${u.key}`).sort(), [
    "add svc/a/1.1.1.1:1",
    "add svc/a/9.9.9.9:1",
    "delete svc/a/1.1.1.2:1",
  ]);
  view = applyUpdates(view, batch);
  const truth = new Map(
    (await writer.getPrefix("svc/a/")).kvs.map((
      kv,
    ) => [kv.key, JSON.parse(new TextDecoder().decode(kv.value)).Metadata]),
  );
  assert.deepEqual([...view.keys()].sort(), [...truth.keys()].sort());
  assert.deepEqual(view.get("svc/a/1.1.1.1:1")?.metadata, { i: 99 });
});

Deno.test("bad values are skipped and reported with their key, never hiding valid instances", async () => {
  await using client = memoryClient();
  await client.put("svc/a/bad1", "{not json");
  await client.put("svc/a/good:1", value("10.0.0.1:1"));
  await client.put("svc/a/bad2", '{"Addr":"no-port"}');
  const errors: Error[] = [];
  await using it = resolve(client, "svc/a", { onError: (e) => errors.push(e) });
  assert.deepEqual(await next(it), [{
    op: "add",
    key: "svc/a/good:1",
    endpoint: { addr: "10.0.0.1:1" },
  }]);
  assert.deepEqual(errors.map((e) => e instanceof EndpointDecodeError && e.key), [
    "svc/a/bad1",
    "svc/a/bad2",
  ]);
  // A valid instance overwritten with garbage no longer describes an endpoint: it leaves the view.
  await client.put("svc/a/good:1", "[]");
  assert.deepEqual(await next(it), [{ op: "delete", key: "svc/a/good:1" }]);
  await client.put("svc/a/bad3", "null");
  await client.put("svc/a/good:2", value("10.0.0.2:1"));
  assert.deepEqual((await next(it)).map((u) => u.key), ["svc/a/good:2"]);
  assert.equal(errors.length, 4);
});

Deno.test("a throwing onError does not break the stream", async () => {
  await using client = memoryClient();
  await client.put("svc/a/bad", "x");
  await using it = resolve(client, "svc/a", {
    onError: () => {
      throw new Error("handler bug");
    },
  });
  assert.deepEqual(await next(it), []);
  await client.put("svc/a/ok", value("1.2.3.4:5"));
  assert.equal((await next(it)).length, 1);
});

Deno.test("resolve() names a bad service argument", () => {
  assert.throws(
    () => resolve(memoryClient(), "bad name"),
    /service must not contain whitespace.*"bad name"/,
  );
  assert.throws(() => resolve({} as never, "svc"), /client must be an EtcdClient/);
});

Deno.test("closing the client ends every resolve() iterator instead of retrying forever", async () => {
  await using etcd = new MemoryEtcd();
  const client = etcd.client();
  const errors: Error[] = [];
  const a = resolve(client, "svc/a", { onError: (e) => errors.push(e) });
  const b = resolve(client, "svc/a", { onError: () => {} });
  await next(a);
  await next(b);
  await client.close();
  assert.deepEqual(await a.next(), { value: undefined, done: true });
  assert.deepEqual(await b.next(), { value: undefined, done: true });
  assert.ok(errors.some((e) => e instanceof ClientClosedError));
  const late = resolve(client, "svc/a", { onError: () => {} });
  assert.equal((await late.next()).done, true, "a resolver on a closed client ends at once");
  assert.equal(etcd.stats().watches, 0);
});

Deno.test("a slow resolve() consumer holds at most one pending entry per key and folds to etcd's state", async () => {
  await using client = memoryClient();
  await using fast = resolve(client, "svc/a");
  await using slow = resolve(client, "svc/a");
  assert.deepEqual(await next(fast), []);
  let view = new Map<string, Endpoint>();
  const changes = 20_000;
  for (let i = 0; i < changes; i++) {
    const key = `svc/a/10.0.0.${i % 4}:1`;
    if (i % 5 === 4) await client.delete(key);
    else await client.put(key, value(`10.0.0.${i % 4}:1`, { i }));
    // The fast reader keeps up: one batch per etcd change set.
    const batch = await next(fast);
    assert.equal(batch.length, 1);
    view = applyUpdates(view, batch);
  }
  // The slow reader read nothing so far: its snapshot and every change are merged per key.
  const pending = await next(slow);
  assert.ok(pending.length <= 4, `${pending.length} pending entries for 4 keys`);
  const slowView = applyUpdates(new Map(), pending);
  const etcd = new Map(
    (await client.getPrefix("svc/a/")).kvs.map((
      kv,
    ) => [kv.key, JSON.parse(new TextDecoder().decode(kv.value))]),
  );
  assert.deepEqual([...slowView.keys()].sort(), [...etcd.keys()].sort());
  assert.deepEqual(slowView, view);
  for (const [key, endpoint] of slowView) {
    assert.deepEqual(endpoint.metadata, etcd.get(key).Metadata);
  }
});

Deno.test("resolve() settles next() calls made in parallel in order, then done after return()", async () => {
  await using client = memoryClient();
  const it = resolve(client, "svc/a");
  const first = it.next();
  const second = it.next();
  const third = it.next();
  assert.deepEqual((await first).value, []);
  await client.put("svc/a/1.1.1.1:1", value("1.1.1.1:1"));
  assert.deepEqual((await second).value?.map((u) => u.key), ["svc/a/1.1.1.1:1"]);
  const fourth = it.next();
  const ended = it.return();
  assert.deepEqual(await third, { value: undefined, done: true });
  assert.deepEqual(await fourth, { value: undefined, done: true });
  await ended;
  assert.equal(client.server.stats().watches, 0);
});

Deno.test("resolve() backs off a watch that opens and breaks at once, instead of retrying every 100 ms", async () => {
  using clock = fakeTime();
  await using real = memoryClient();
  let opens = 0;
  const client = withOverrides(real, {
    watch: async function* () {
      opens++;
      yield { revision: real.server.revision, events: [] }; // "created", then the stream breaks
      throw new Error("the watch broke");
    },
  });
  await using it = resolve(client, "svc/a", { onError: () => {} });
  await next(it);
  await clock.tick(60_000);
  assert.ok(opens > 10 && opens < 100, `${opens} watch opens in 60 s`);
});

Deno.test("a resolver that reads late gets the current set as adds in its first batch", async () => {
  await using client = memoryClient();
  const a = await register(client, "svc/x", { addr: "10.0.0.1:1" });
  await using _b = await register(client, "svc/x", { addr: "10.0.0.2:1" });
  await using late = resolve(client, "svc/x");
  await using fast = resolve(client, "svc/x"); // keeps the shared watch loaded and running
  await next(fast);
  await a.close(); // deletes a key of the late reader's unread snapshot
  await next(fast);
  assert.deepEqual(await next(late), [
    { op: "add", key: "svc/x/10.0.0.2:1", endpoint: { addr: "10.0.0.2:1" } },
  ]);
});

Deno.test("resolve() settles next(), return() and next() in call order", async () => {
  await using client = memoryClient();
  const it = resolve(client, "svc/a");
  await next(it);
  const order: number[] = [];
  const first = it.next().then(() => order.push(1));
  const ended = it.return().then(() => order.push(2));
  const after = it.next().then(() => order.push(3));
  await Promise.all([first, ended, after]);
  assert.deepEqual(order, [1, 2, 3]);
});

Deno.test("resolve() resets its backoff after a watch that stayed up, even a quiet one", async () => {
  using clock = fakeTime();
  const random = Math.random;
  Math.random = () => 0.99; // each backoff at 99 % of its ceiling
  try {
    await using client = memoryClient();
    await using it = resolve(client, "svc/z", { onError: () => {} });
    await next(it);
    client.disconnect(); // an outage: attempts pile up to the cap
    await clock.tick(30_000);
    client.reconnect();
    await clock.tick(4_000);
    assert.equal(client.server.stats().watches, 1, "watching again after the outage");
    await clock.tick(60_000); // a minute of healthy, quiet watch (memoryClient sends no progress)
    client.disconnect();
    client.reconnect(); // a blip
    const start = clock.now;
    while (client.server.stats().watches === 0) await clock.tick(10);
    assert.ok(clock.now - start < 200, `watching again ${clock.now - start} ms after the blip`);
  } finally {
    Math.random = random;
  }
});
