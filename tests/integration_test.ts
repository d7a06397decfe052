/**
 * register() and resolve() against a real etcd process started by the test
 * (or ETCD_ENDPOINTS), with a TCP proxy to cut the client off.
 */
import assert from "node:assert/strict";
import { Etcd3 } from "etcd3";
import {
  applyUpdates,
  ClientClosedError,
  CompactedError,
  connect,
  type Endpoint,
  EndpointDecodeError,
  register,
  type RegistrationState,
  resolve,
  type Update,
} from "../mod.ts";
import { freePort, startEtcd, waitForMetric } from "../harness/etcd_server.ts";

const WATCHERS = "etcd_debugging_mvcc_watcher_total";
import { TcpProxy } from "../harness/tcp_proxy.ts";
import { sleep, until } from "../harness/wait.ts";
import { openChannels } from "../harness/grpcjs.ts";

/** An etcd3 client of its own, to check etcd's state independently of our adapter. */
function raw(endpoint: string): Etcd3 & AsyncDisposable {
  const etcd = new Etcd3({ hosts: endpoint }) as Etcd3 & AsyncDisposable;
  etcd[Symbol.asyncDispose] = () => Promise.resolve(etcd.close());
  return etcd;
}

async function next(it: AsyncIterator<Update[]>, ms = 10_000): Promise<Update[]> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const result = await Promise.race([
    it.next(),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no batch within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
  assert.equal(result.done, false, "the stream ended early");
  return result.value;
}

Deno.test("etcd: register() writes the Go layout under a lease and close() removes it at once", async () => {
  await using etcd = await startEtcd();
  await using check = raw(etcd.endpoint);
  await using client = connect({ hosts: etcd.endpoint });
  const reg = await register(client, "svc/echo", {
    addr: "127.0.0.1:50051",
    metadata: { zone: "z" },
  }, { ttl: 5 });
  assert.equal(reg.key, "svc/echo/127.0.0.1:50051");
  assert.equal(
    await check.get(reg.key).string(),
    '{"Op":0,"Addr":"127.0.0.1:50051","Metadata":{"zone":"z"}}',
  );
  const ttl = await check.leaseClient.leaseTimeToLive({ ID: reg.lease });
  assert.equal(ttl.grantedTTL, "5");
  await reg.close();
  assert.equal(await check.get(reg.key).string(), null, "gone right after close()");
  const revoked = await check.leaseClient.leaseTimeToLive({ ID: reg.lease });
  assert.equal(revoked.TTL, "-1", "lease revoked");
});

Deno.test("etcd: register() keeps a 2 s lease alive for 7 s", async () => {
  await using etcd = await startEtcd();
  await using check = raw(etcd.endpoint);
  await using client = connect({ hosts: etcd.endpoint });
  await using reg = await register(client, "svc/echo", { addr: "127.0.0.1:1" }, { ttl: 2 });
  const lease = reg.lease;
  await sleep(7000);
  assert.equal(reg.lease, lease);
  assert.notEqual(await check.get(reg.key).string(), null);
});

Deno.test("etcd: register() heals a key deleted and a lease revoked by someone else", async () => {
  await using etcd = await startEtcd();
  await using check = raw(etcd.endpoint);
  await using client = connect({ hosts: etcd.endpoint });
  const states: RegistrationState[] = [];
  await using reg = await register(client, "svc/echo", { addr: "127.0.0.1:2" }, {
    ttl: 10,
    onStateChange: (s) => states.push(s),
    onError: () => {},
  });
  await check.delete().key(reg.key);
  const healDelete = await until(
    "key back after delete",
    4000,
    async () => (await check.get(reg.key).string()) !== null,
  );
  const first = reg.lease;
  await check.leaseClient.leaseRevoke({ ID: first });
  const healRevoke = await until("key back after revoke", 4000, async () => {
    const kv = await check.get(reg.key).exec();
    return kv.kvs.length === 1 && kv.kvs[0]!.lease !== first;
  });
  assert.notEqual(reg.lease, first);
  // The put is visible in etcd just before its response reaches the registration.
  await until("state registered", 5000, () => Promise.resolve(reg.state === "registered"));
  assert.ok(states.includes("recovering"));
  console.log(`healed: delete in ${healDelete} ms, revoke in ${healRevoke} ms`);
});

Deno.test("etcd: resolve() streams the snapshot then each change, and resolvers share one watch", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  await using a = await register(client, "svc/echo", { addr: "127.0.0.1:10" });
  await using _other = await register(client, "svc/echoX", { addr: "127.0.0.1:11" }); // must not leak in
  const before = await waitForMetric(etcd, WATCHERS, 2); // the registrations' key watches
  const r1 = resolve(client, "svc/echo");
  const r2 = resolve(client, "svc/echo");
  const r3 = resolve(client, "svc/echo");
  const snapshot = [{ op: "add", key: a.key, endpoint: { addr: "127.0.0.1:10" } }];
  assert.deepEqual(await next(r1), snapshot);
  assert.deepEqual(await next(r2), snapshot);
  assert.deepEqual(await next(r3), snapshot);
  await waitForMetric(etcd, WATCHERS, before + 1); // one etcd watch for three resolvers
  const b = await register(client, "svc/echo", { addr: "127.0.0.1:12", metadata: 7 });
  for (const r of [r1, r2, r3]) {
    assert.deepEqual(await next(r), [{
      op: "add",
      key: b.key,
      endpoint: { addr: "127.0.0.1:12", metadata: 7 },
    }]);
  }
  await b.close();
  for (const r of [r1, r2, r3]) assert.deepEqual(await next(r), [{ op: "delete", key: b.key }]);
  await r1.return();
  await r2.return();
  await r3[Symbol.asyncDispose]();
  await waitForMetric(etcd, WATCHERS, before); // released
});

Deno.test("etcd: bad values are skipped and reported; Go-written values are read", async () => {
  await using etcd = await startEtcd();
  await using writer = raw(etcd.endpoint);
  await using client = connect({ hosts: etcd.endpoint });
  await writer.put("svc/echo/bad-json").value("{");
  await writer.put("svc/echo/huge").value(
    JSON.stringify({ Addr: "10.0.0.9:1", Metadata: "x".repeat(70_000) }),
  );
  await writer.put("svc/echo/10.0.0.1:1").value(
    '{"Op":0,"Addr":"10.0.0.1:1","Metadata":{"version":"v2"}}',
  );
  await writer.put("svc/echo/10.0.0.2:1").value('{"addr":"10.0.0.2:1"}');
  const errors: Error[] = [];
  await using it = resolve(client, "svc/echo", { onError: (e) => errors.push(e) });
  assert.deepEqual(await next(it), [
    {
      op: "add",
      key: "svc/echo/10.0.0.1:1",
      endpoint: { addr: "10.0.0.1:1", metadata: { version: "v2" } },
    },
    { op: "add", key: "svc/echo/10.0.0.2:1", endpoint: { addr: "10.0.0.2:1" } },
  ]);
  assert.deepEqual(errors.map((e) => e instanceof EndpointDecodeError && e.key).sort(), [
    "svc/echo/bad-json",
    "svc/echo/huge",
  ]);
});

async function closesConnectingChannels(): Promise<void> {
  await using etcd = await startEtcd();
  await using proxy = await TcpProxy.start(etcd.endpoint);
  proxy.blackhole(); // connections open, nothing answers: the channels stay connecting
  const before = new Set(openChannels().map((channel) => channel.id));
  const ours = () => openChannels().filter((channel) => !before.has(channel.id));
  const client = connect({ hosts: proxy.endpoint });
  const read = assert.rejects(client.get("a"), ClientClosedError);
  const watch = assert.rejects(
    client.watch("svc/", { startRevision: 1 })[Symbol.asyncIterator]().next(),
    ClientClosedError,
  );
  await until(
    "a connecting channel for the read and one for the watch",
    5000,
    () => ours().filter((channel) => channel.subchannels.length > 0).length === 2,
  );
  await client.close();
  assert.deepEqual(ours(), [], "channels left open after close()");
  await read;
  await watch;
}

Deno.test("etcd: closing a resolver then its client at once leaves grpc-js no connection to make after", async () => {
  // grpc-js 1.14 hands an IP target's address to a channel in a setImmediate, even to a channel
  // closed before it runs: that closed channel then connects and keeps the connection (and,
  // once etcd is gone, its reconnect timers). Deno's sanitizers fail this test if it does.
  await using etcd = await startEtcd();
  const client = connect({ hosts: etcd.endpoint });
  await client.put("svc/echo/10.0.0.1:1", JSON.stringify({ Addr: "10.0.0.1:1" }));
  const it = resolve(client, "svc/echo");
  assert.equal((await next(it)).length, 1);
  await it[Symbol.asyncDispose]();
  await client.close();
  assert.deepEqual(openChannels(), [], "channels left open after close()");
});

Deno.test("etcd: connect() wraps an existing Etcd3 without owning it", async () => {
  await using etcd = await startEtcd();
  await using mine = raw(etcd.endpoint);
  const client = connect(mine);
  assert.deepEqual(client.hosts, [etcd.endpoint]);
  await using reg = await register(client, "svc/wrapped", { addr: "127.0.0.1:30" });
  assert.notEqual(await mine.get(reg.key).string(), null);
  await reg.close();
  await client.close();
  await mine.put("still/usable").value("yes");
  assert.equal(
    await mine.get("still/usable").string(),
    "yes",
    "closing the wrapper left etcd3 open",
  );
  await assert.rejects(client.get("x"), ClientClosedError);
});

Deno.test("connect() names bad options", () => {
  assert.throws(() => connect({ hosts: [] }), /options.hosts must be a non-empty string or array/);
  assert.throws(
    () => connect({ hosts: "nope" }),
    /options.hosts entries must be "http\(s\):\/\/host\[:port\]" or "host:port", got "nope"/,
  );
  assert.throws(() => connect({ hosts: "127.0.0.1:0" }), /got "127.0.0.1:0"/);
  assert.throws(
    () => connect({ hosts: ["http://127.0.0.1:1", "https://127.0.0.1:2"] }),
    /options.hosts must be all https:\/\/ or all http:\/\//,
  );
  assert.throws(
    () => connect({ hosts: ["127.0.0.1:1", "https://127.0.0.1:2"] }),
    /options.hosts must be all https:\/\/ or all http:\/\//,
  );
  assert.throws(
    () => connect({ hosts: "http://127.0.0.1:1", tls: {} }),
    /options.tls needs https:\/\/ hosts/,
  );
  // host:port without a scheme takes TLS from options.tls.
  void connect({ hosts: ["127.0.0.1:1", "127.0.0.1:2"], tls: {} }).close();
  assert.throws(
    () => connect({ hosts: "127.0.0.1:1", dialTimeout: 0 }),
    /options.dialTimeout must be a positive number of ms up to 2147483647, got 0/,
  );
  assert.throws(
    () => connect(undefined as never),
    /options must be \{ hosts, … \} or an Etcd3 instance/,
  );
});

// The tests below leave grpc-js's subchannel backoff timers running after they end, and each
// timer may start one more when it fires: they run last, so that no sanitized test sees them.
// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "etcd: a registration cut off past its TTL comes back within the backoff cap + 1 s",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = await startEtcd();
  await using check = raw(etcd.endpoint);
  await using proxy = await TcpProxy.start(etcd.endpoint);
  await using client = connect({ hosts: proxy.endpoint, dialTimeout: 1000 });
  await using reg = await register(client, "svc/echo", { addr: "127.0.0.1:3" }, {
    ttl: 2,
    onError: () => {},
  });
  await proxy.cut();
  await until(
    "lease expired while cut off",
    6000,
    async () => (await check.get(reg.key).string()) === null,
  );
  proxy.restore();
  const took = await until(
    "registration back",
    4000 + 2000,
    async () => (await check.get(reg.key).string()) !== null,
  );
  console.log(`back ${took} ms after the proxy was restored`);
  // The put is visible in etcd just before its response reaches the registration.
  await until("state registered", 5000, () => Promise.resolve(reg.state === "registered"));
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "etcd: register() with etcd unreachable rejects within `timeout`, naming the hosts",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const port = await freePort();
  await using client = connect({ hosts: `127.0.0.1:${port}`, dialTimeout: 500 });
  const start = Date.now();
  const rejected = assert.rejects(
    register(client, "svc/echo", { addr: "127.0.0.1:4" }, { timeout: 1500 }),
    new RegExp(
      `could not register "svc/echo/127.0.0.1:4" on etcd at 127.0.0.1:${port} within 1500 ms`,
    ),
  );
  // It gave up at its timeout: not before it, and before a timer set for the default (5000 ms)
  // fires (an order of events, which a slow machine keeps).
  let timer: ReturnType<typeof setTimeout> | undefined;
  const first = await Promise.race([
    rejected.then(() => "rejected"),
    new Promise((resolve) => timer = setTimeout(() => resolve("the default timeout"), 5000)),
  ]);
  clearTimeout(timer);
  await rejected;
  const took = Date.now() - start;
  console.log(`rejected after ${took} ms`);
  assert.equal(first, "rejected", `still trying when the default timeout would have passed`);
  assert.ok(took >= 1400, `rejected after ${took} ms`);
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "etcd: register() with etcd unreachable rejects in about 5 s by default",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const port = await freePort();
  await using client = connect({ hosts: `http://127.0.0.1:${port}` });
  const start = Date.now();
  await assert.rejects(register(client, "svc/echo", { addr: "127.0.0.1:4" }), /within 5000 ms/);
  // It waited for the default (which the message names).
  const took = Date.now() - start;
  console.log(`rejected after ${took} ms`);
  assert.ok(took >= 4900, `rejected after ${took} ms`);
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "etcd: after a reconnect resolve() misses no change and repeats none",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = await startEtcd();
  await using writer = raw(etcd.endpoint);
  await using proxy = await TcpProxy.start(etcd.endpoint);
  await using client = connect({ hosts: proxy.endpoint, dialTimeout: 1000 });
  const errors: Error[] = [];
  await using it = resolve(client, "svc/echo", { onError: (e) => errors.push(e) });
  assert.deepEqual(await next(it), []);
  const put = (n: number) =>
    writer.put(`svc/echo/10.0.0.${n}:1`).value(`{"Op":0,"Addr":"10.0.0.${n}:1","Metadata":null}`);
  await put(1);
  assert.equal((await next(it)).length, 1);
  for (let round = 0; round < 3; round++) {
    const reported = errors.length;
    await proxy.cut();
    for (let n = 2; n < 12; n++) await put(n);
    for (let n = 2; n < 7; n++) await writer.delete().key(`svc/echo/10.0.0.${n}:1`);
    // The resolver has noticed the cut before the connection comes back.
    await until(`round ${round}: the cut reported`, 10_000, () => errors.length > reported);
    proxy.restore();
    const seen: Update[] = [];
    while (seen.length < 15) seen.push(...await next(it));
    assert.equal(seen.length, 15, `round ${round}: exactly the 15 changes`);
    assert.deepEqual(seen.slice(0, 10).map((u) => u.op), Array(10).fill("add"));
    assert.deepEqual(seen.slice(10).map((u) => u.op), Array(5).fill("delete"));
  }
  await put(99);
  assert.deepEqual(
    (await next(it)).map((u) => u.key),
    ["svc/echo/10.0.0.99:1"],
    "no repeated change",
  );
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "etcd: after compaction resolve() re-lists and emits the difference as one batch",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = await startEtcd();
  await using writer = raw(etcd.endpoint);
  await using proxy = await TcpProxy.start(etcd.endpoint);
  await using client = connect({ hosts: proxy.endpoint, dialTimeout: 1000 });
  const value = (n: number, m: unknown = null) =>
    JSON.stringify({ Op: 0, Addr: `10.0.0.${n}:1`, Metadata: m });
  for (const n of [1, 2, 3]) await writer.put(`svc/echo/${n}`).value(value(n));
  const errors: Error[] = [];
  await using it = resolve(client, "svc/echo", { onError: (e) => errors.push(e) });
  let view: Map<string, Endpoint> = applyUpdates(new Map(), await next(it));
  await proxy.cut();
  let revision = "0";
  for (let i = 0; i < 1200; i++) {
    revision = (await writer.put(`svc/echo/1`).value(value(1, { i }))).header.revision;
  }
  await writer.delete().key("svc/echo/2");
  await writer.put("svc/echo/4").value(value(4));
  await writer.kv.compact({ revision, physical: true });
  proxy.restore();
  const batch = await next(it);
  assert.deepEqual(batch.map((u) => `${u.op} ${u.key}`).sort(), [
    "add svc/echo/1",
    "add svc/echo/4",
    "delete svc/echo/2",
  ]);
  view = applyUpdates(view, batch);
  assert.deepEqual(view.get("svc/echo/1")?.metadata, { i: 1199 });
  assert.deepEqual([...view.keys()].sort(), ["svc/echo/1", "svc/echo/3", "svc/echo/4"]);
  assert.ok(errors.some((e) => e instanceof CompactedError), "compaction reported");
  await writer.delete().key("svc/echo/3");
  assert.deepEqual(
    await next(it),
    [{ op: "delete", key: "svc/echo/3" }],
    "watching again after re-list",
  );
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "etcd: while etcd is down resolve() keeps its view and reports errors",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint, dialTimeout: 1000 });
  await using reg = await register(client, "svc/echo", { addr: "127.0.0.1:20" }, {
    ttl: 5,
    onError: () => {},
  });
  const errors: Error[] = [];
  await using it = resolve(client, "svc/echo", { onError: (e) => errors.push(e) });
  assert.equal((await next(it)).length, 1);
  await etcd.stop({ kill: true });
  await until("error reported", 5000, () => Promise.resolve(errors.length > 0));
  const batches: Update[][] = [];
  const consumer = (async () => {
    for await (const batch of it) batches.push(batch);
  })();
  await sleep(2000);
  assert.deepEqual(batches, [], "no delete while etcd is down");
  await etcd.start();
  // The registration survives the restart (the new leader extends the lease); a new one shows up.
  await using b = await register(client, "svc/echo", { addr: "127.0.0.1:21" });
  await until("new instance seen", 10_000, () => Promise.resolve(batches.length > 0));
  assert.deepEqual(batches, [[{ op: "add", key: b.key, endpoint: { addr: "127.0.0.1:21" } }]]);
  await it.return();
  await consumer;
  assert.equal(reg.state, "registered");
});

Deno.test({
  name: "etcd: close() closes every grpc-js channel at once, even one still connecting",
  // Only grpc-js's timers leak here: a grpc-js 1.14 channel closed while it connects leaves its
  // pick_first connection-delay timer (tests/repro_grpcjs_backoff_timer.ts, third test).
  sanitizeOps: false,
  sanitizeResources: false,
  fn: closesConnectingChannels,
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "etcd: failed watch opens leave no listener on the caller's signal",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const port = await freePort();
  // With auth, etcd3 must authenticate before it opens a stream: with etcd unreachable, that
  // fails, and the open throws (without auth the stream opens and fails later, on its own).
  await using client = connect({
    hosts: `127.0.0.1:${port}`,
    dialTimeout: 500,
    auth: { username: "u", password: "p" },
  });
  const controller = new AbortController();
  const signal = controller.signal;
  let listeners = 0;
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = (...args: Parameters<AbortSignal["addEventListener"]>) => {
    listeners++;
    add(...args);
  };
  signal.removeEventListener = (...args: Parameters<AbortSignal["removeEventListener"]>) => {
    listeners--;
    remove(...args);
  };
  let failures = 0;
  for (let i = 0; i < 300; i++) {
    try {
      for await (const _ of client.watch("svc/a/", { startRevision: 1, signal })) break;
    } catch {
      failures++;
    }
  }
  assert.equal(failures, 300, "every open failed (nothing listens on the port)");
  assert.equal(listeners, 0, `${listeners} abort listeners left on the signal`);
  controller.abort();
});
