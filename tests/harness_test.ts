/**
 * The portable harness (harness/) under Deno's test sanitizers: what it starts
 * it stops, with no op or resource left behind, so that Deno tests can use it
 * as Node and Bun do in the conformance scenarios.
 */
import assert from "node:assert/strict";
import { connect } from "../mod.ts";
import { dial } from "../grpc.ts";
import { EtcdHttp } from "../harness/etcd_http.ts";
import { startEtcd } from "../harness/etcd_server.ts";
import { spawnGreeter } from "../harness/greeter_process.ts";
import { Greeter, sayHello } from "../harness/greeter.ts";
import { TcpProxy } from "../harness/tcp_proxy.ts";
import { until } from "../harness/wait.ts";

Deno.test("harness: etcd, a proxy that cuts and restores, and a greeter process, all released", async () => {
  await using etcd = await startEtcd({ private: true });
  const http = new EtcdHttp(etcd.endpoint);
  await using proxy = await TcpProxy.start(etcd.endpoint);
  const through = new EtcdHttp(proxy.endpoint);
  await through.put("k", "v");
  assert.equal((await http.get("k"))?.value, "v");
  await proxy.cut();
  await assert.rejects(through.get("k"));
  proxy.restore();
  assert.equal((await through.get("k"))?.value, "v");

  await using greeter = await spawnGreeter(etcd.endpoint, "svc/h", "a", { ttl: 2 });
  assert.equal((await http.get(`svc/h/${greeter.addr}`))?.value.includes(greeter.addr), true);
  await using client = connect({ hosts: etcd.endpoint });
  const stub = dial(client, "svc/h", Greeter);
  try {
    assert.equal((await sayHello(stub, { name: "x" })).instance, "a");
  } finally {
    stub.close();
  }
  greeter.kill("SIGTERM");
  assert.equal((await greeter.status).code, 0, "drained and exited 0");
  assert.equal(await http.get(`svc/h/${greeter.addr}`), undefined, "deregistered on the way out");

  await etcd.stop({ kill: true });
  await assert.rejects(http.get("k"));
  await etcd.start();
  await until("etcd back with its data", 5000, async () => (await http.get("k"))?.value === "v");
});
