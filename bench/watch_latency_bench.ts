/**
 * From a write in etcd to the update a reader sees, on a real etcd started
 * here: a raw `etcd3` prefix watcher (baseline) against `resolve()` over
 * `connect()` (gRPC) and over `connectFetch()` (etcd's JSON gateway, a watch
 * read as a streamed HTTP response), for a put, a delete, and a registration by
 * another client. Every write goes through the same raw `etcd3` client.
 *
 *   deno task bench bench/watch_latency_bench.ts
 */
import { Etcd3 } from "etcd3";
import { connect, encodeEndpoint, register, resolve } from "../mod.ts";
import { connectFetch } from "../fetch.ts";
import { startEtcd } from "../harness/etcd_server.ts";

const server = await startEtcd();
// The harness stops etcd and removes its data when this process exits.
const raw = new Etcd3({ hosts: server.endpoint });
const reader = connect({ hosts: server.endpoint });
const writer = connect({ hosts: server.endpoint });
const fetchReader = connectFetch({ hosts: server.endpoint });
const fetchWriter = connectFetch({ hosts: server.endpoint });

// Baseline: a raw etcd3 watcher on a prefix of its own.
let rawSeen: (() => void) | undefined;
const watcher = await raw.watch().prefix("bench/raw/").create();
watcher.on("put", () => rawSeen?.());
watcher.on("delete", () => rawSeen?.());
const rawEvent = () => new Promise<void>((r) => (rawSeen = r));

// Ours: one resolver, its first batch consumed.
const updates = resolve(reader, "bench/ours", { onError: () => {} });
await updates.next();
// The same over connectFetch(), on a prefix of its own.
const overFetch = resolve(fetchReader, "bench/fetch", { onError: () => {} });
await overFetch.next();
const value = encodeEndpoint({ addr: "10.0.0.1:50051" });
let n = 0;

Deno.bench({
  name: "baseline: etcd3 watcher, put → event",
  group: "put → seen",
  baseline: true,
  async fn() {
    const seen = rawEvent();
    await raw.put(`bench/raw/${n++ % 100}`).value(value);
    await seen;
  },
});
Deno.bench({
  name: "resolve(), put → batch",
  group: "put → seen",
  async fn() {
    await raw.put(`bench/ours/${n++ % 100}`).value(value);
    await updates.next();
  },
});
Deno.bench({
  name: "resolve() over connectFetch(), put → batch",
  group: "put → seen",
  async fn() {
    await raw.put(`bench/fetch/${n++ % 100}`).value(value);
    await overFetch.next();
  },
});

Deno.bench({
  name: "baseline: etcd3 watcher, delete → event",
  group: "delete → seen",
  baseline: true,
  async fn(b) {
    const key = `bench/raw/d${n++}`;
    let seen = rawEvent();
    await raw.put(key).value(value);
    await seen;
    seen = rawEvent();
    b.start();
    await raw.delete().key(key);
    await seen;
    b.end();
  },
});
Deno.bench({
  name: "resolve(), delete → batch",
  group: "delete → seen",
  async fn(b) {
    const key = `bench/ours/d${n++}`;
    await raw.put(key).value(value);
    await updates.next();
    b.start();
    await raw.delete().key(key);
    await updates.next();
    b.end();
  },
});
Deno.bench({
  name: "resolve() over connectFetch(), delete → batch",
  group: "delete → seen",
  async fn(b) {
    const key = `bench/fetch/d${n++}`;
    await raw.put(key).value(value);
    await overFetch.next();
    b.start();
    await raw.delete().key(key);
    await overFetch.next();
    b.end();
  },
});

Deno.bench({
  name: "baseline: etcd3 lease grant + put → event",
  group: "registration → discovered",
  baseline: true,
  async fn(b) {
    const seen = rawEvent();
    b.start();
    const lease = raw.lease(10, { autoKeepAlive: false });
    await lease.put(`bench/raw/r${n++}`).value(value);
    await seen;
    b.end();
    rawSeen = undefined;
    await lease.revoke();
  },
});
Deno.bench({
  name: "register() in one client → resolve() in another",
  group: "registration → discovered",
  async fn(b) {
    b.start();
    const registration = await register(
      writer,
      "bench/ours",
      { addr: `10.1.0.${n++ % 250}:50051` },
      {
        key: `bench/ours/r${n}`,
      },
    );
    await updates.next();
    b.end();
    await registration.close();
    await updates.next();
  },
});
Deno.bench({
  name: "register() → resolve(), both over connectFetch()",
  group: "registration → discovered",
  async fn(b) {
    b.start();
    const registration = await register(
      fetchWriter,
      "bench/fetch",
      { addr: `10.1.0.${n++ % 250}:50051` },
      { key: `bench/fetch/r${n}` },
    );
    await overFetch.next();
    b.end();
    await registration.close();
    await overFetch.next();
  },
});
