/**
 * Test helper: a registration and a resolver run through auth-token expiry
 * and connection resets, over any client factory.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type EtcdClient, register, resolve, type Update } from "../mod.ts";
import { ROOT_PASSWORD, type SecureEtcd } from "../harness/tls.ts";
import { TcpProxy } from "../harness/tcp_proxy.ts";
import { sleep, until } from "../harness/wait.ts";

/**
 * Runs a registration and a resolver for `seconds` through auth-token expiry:
 * their clients go through proxies whose connections are reset every 12 s,
 * after the tokens have lapsed, so that every new stream starts with an
 * expired token. Asserts that the registration never dropped and that the
 * resolver saw every change, in order. `connectAs` makes the clients (e.g.
 * `connect` or `connectFetch`).
 */
export async function runThroughTokenExpiry(
  etcd: SecureEtcd,
  seconds: number,
  connectAs: (options: {
    hosts: string;
    auth: { username: string; password: string };
  }) => EtcdClient,
): Promise<void> {
  const auth = { username: "root", password: ROOT_PASSWORD };
  const target = etcd.endpoint.replace("localhost", "127.0.0.1");
  await using proxyA = await TcpProxy.start(target);
  await using proxyB = await TcpProxy.start(target);
  await using a = connectAs({ hosts: proxyA.endpoint, auth });
  await using b = connectAs({ hosts: proxyB.endpoint, auth });
  await using writer = connectAs({ hosts: etcd.endpoint, auth });
  await using observer = connectAs({ hosts: etcd.endpoint, auth });
  const quiet = { onError: () => {} };
  // TTL 30: renewals 10 s apart, so the registering client's token lapses between them.
  await using reg = await register(a, "a", { addr: "10.0.0.1:1" }, { ...quiet, ttl: 30 });
  const dropped: Update[] = [];
  await using watchReg = resolve(observer, "a", quiet);
  const readReg = (async () => {
    for await (const batch of watchReg) dropped.push(...batch.filter((u) => u.op === "delete"));
  })();
  const seen: string[] = [];
  await using updates = resolve(b, "w", quiet);
  const read = (async () => {
    for await (const batch of updates) for (const u of batch) seen.push(`${u.op} ${u.key}`);
  })();
  const written: string[] = [];
  const start = Date.now();
  for (let i = 0; Date.now() - start < seconds * 1000; i++) {
    const key = `w/${String(i).padStart(3, "0")}`;
    if (i % 3 === 2) {
      await writer.delete(`w/${String(i - 1).padStart(3, "0")}`);
      written.push(`delete w/${String(i - 1).padStart(3, "0")}`);
    } else {
      await writer.put(key, JSON.stringify({ Op: 0, Addr: `10.1.0.${i % 250}:1` }));
      written.push(`add ${key}`);
    }
    if (i % 12 === 11) {
      await proxyA.cut();
      await proxyB.cut();
      proxyA.restore();
      proxyB.restore();
    }
    await sleep(1000);
  }
  await until("the resolver catching up", 10_000, () => seen.length >= written.length);
  assert.deepEqual(seen, written);
  assert.deepEqual(dropped, [], "the registration was never deleted");
  assert.equal(reg.state, "registered");
  assert.equal((await observer.get(reg.key)).kvs.length, 1);
  await updates.return();
  await watchReg.return();
  await Promise.all([read, readReg]);
}
