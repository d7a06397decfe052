/**
 * `deno task example`: two instances register, a resolver prints every update
 * batch and the round-robin order, one instance goes away gracefully, the other
 * has its key deleted from outside and puts it back.
 *
 * etcd: ETCD_ENDPOINTS when set; otherwise a private etcd from PATH on free
 * loopback ports (removed on exit); otherwise the in-memory etcd, said plainly.
 */
import {
  applyUpdates,
  connect,
  type Endpoint,
  type EtcdClient,
  register,
  resolve,
  roundRobin,
} from "../mod.ts";
import { memoryClient } from "../testing.ts";
import { type EtcdServer, findEtcd, INSTALL_HINT, startEtcd } from "../tests/etcd_server.ts";

const SERVICE = "demo/greeter";
const start = Date.now();
const log = (what: string, text: string) =>
  console.log(`[${String(Date.now() - start).padStart(5)} ms] ${what.padEnd(9)} ${text}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function etcd(): Promise<{ client: EtcdClient; server?: EtcdServer }> {
  const endpoints = Deno.env.get("ETCD_ENDPOINTS");
  if (endpoints) {
    console.log(`etcd: ETCD_ENDPOINTS=${endpoints}`);
    return { client: connect({ hosts: endpoints.split(",") }) };
  }
  try {
    findEtcd();
  } catch {
    console.log(
      "etcd: not found, so this runs on the in-memory etcd (memoryClient()) in one process.",
    );
    console.log(`      ${INSTALL_HINT}`);
    return { client: memoryClient() };
  }
  const server = await startEtcd();
  console.log(`etcd: a private etcd at ${server.endpoint} (removed on exit)`);
  return { client: connect({ hosts: server.endpoint }), server };
}

const { client, server } = await etcd();
try {
  // The client side: fold every batch into a view and show the round-robin order.
  const updates = resolve(client, SERVICE, { onError: (e) => log("warning", e.message) });
  const watching = (async () => {
    let view = new Map<string, Endpoint>();
    for await (const batch of updates) {
      view = applyUpdates(view, batch);
      const changes = batch.map((u) => `${u.op === "add" ? "+" : "-"} ${u.key}`).join(", ");
      const pick = roundRobin([...view.values()]);
      const order = Array.from({ length: view.size * 2 }, () => pick()?.addr).join(" ");
      log("resolve", `${changes || "(empty snapshot)"}  → picks: ${order || "none"}`);
    }
  })();

  // The service side: two instances.
  const a = await register(client, SERVICE, { addr: "127.0.0.1:50051", metadata: { name: "a" } }, {
    ttl: 5,
    onStateChange: (s) => log("register", `a is ${s}`),
  });
  log("register", `a at ${a.key} (lease ${a.lease}, ttl 5 s)`);
  const b = await register(client, SERVICE, { addr: "127.0.0.1:50052", metadata: { name: "b" } }, {
    ttl: 5,
  });
  log("register", `b at ${b.key} (lease ${b.lease}, ttl 5 s)`);
  await sleep(500);

  log("shutdown", "b closes gracefully: its lease is revoked, its key leaves at once");
  await b.close();
  await sleep(500);

  log("fault", `someone deletes ${a.key} from outside`);
  await client.delete(a.key);
  await sleep(500);

  await a.close();
  await sleep(200);
  await updates.return();
  await watching;
  log("done", "all registrations closed, resolver released");
} finally {
  await client.close();
  await server?.close();
}
