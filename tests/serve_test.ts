/**
 * serve()'s edges in this process, against a real etcd: stopping by signal,
 * a call that outlasts the shutdown bound, and a start that fails (port taken,
 * etcd unreachable, signal aborted) leaving nothing behind: no key in etcd, no
 * server, no timer (the test sanitizers check the last two).
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { connect } from "../mod.ts";
import { serve } from "../grpc.ts";
import { Greeter, type GreeterClient, sayHello, startGreeter } from "../examples/greeter.ts";
import { freePort, startEtcd } from "./etcd_server.ts";
import { sleep } from "./wait.ts";

const SERVICE = "svc/served";

/** A plain grpc-js client of one address (no etcd in between). */
function direct(addr: string): GreeterClient {
  return new Greeter(addr, grpc.credentials.createInsecure());
}

Deno.test("serve: aborting the signal deregisters and stops the server", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const stop = new AbortController();
  const serving = await startGreeter(client, SERVICE, "a", { drainMs: 0, signal: stop.signal });
  const greeter = direct(serving.addr);
  try {
    assert.equal((await sayHello(greeter, { name: "x" })).instance, "a");
    assert.equal((await client.getPrefix(`${SERVICE}/`)).kvs.length, 1);
    assert.throws(
      () => serving.setHealth("DOWN" as never),
      /status must be "SERVING" or "NOT_SERVING", got DOWN/,
    );
    stop.abort();
    await serving.close(); // the close the signal started
    assert.deepEqual((await client.getPrefix(`${SERVICE}/`)).kvs, []);
    assert.equal(serving.registration.state, "closed");
    await assert.rejects(
      sayHello(greeter, { name: "x" }, { deadline: Date.now() + 1000 }),
      (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE,
    );
  } finally {
    greeter.close();
  }
});

Deno.test("serve: close() cuts off a call that outlasts drainMs + shutdownMs instead of waiting for it", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const serving = await startGreeter(client, SERVICE, "a", { drainMs: 100, shutdownMs: 300 });
  const greeter = direct(serving.addr);
  try {
    const slow = sayHello(greeter, { name: "slow", delay_ms: 10_000 }, {
      deadline: Date.now() + 20_000,
    });
    await sleep(200);
    const start = Date.now();
    await serving.close();
    const took = Date.now() - start;
    assert.ok(took >= 400 && took < 1500, `close() took ${took} ms (drain 100 + bound 300)`);
    await assert.rejects(slow, (e: grpc.ServiceError) => e.code !== grpc.status.OK);
  } finally {
    greeter.close();
  }
});

Deno.test("serve: a port already taken fails naming the address, with nothing registered", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  await using first = await startGreeter(client, SERVICE, "first", { drainMs: 0 });
  const server = new grpc.Server();
  await assert.rejects(
    serve(server, client, SERVICE, { bind: first.addr }),
    new RegExp(`serve\\(\\): could not bind ${first.addr.replace(/\./g, "\\.")}: `),
  );
  const keys = (await client.getPrefix(`${SERVICE}/`)).kvs.map((kv) => kv.key);
  assert.deepEqual(keys, [first.registration.key]);
});

Deno.test("serve: when etcd cannot be reached within timeout, the server is shut down and the error names etcd", async () => {
  const port = freePort();
  await using client = connect({ hosts: `http://127.0.0.1:${port}`, dialTimeout: 200 });
  const server = new grpc.Server();
  const start = Date.now();
  await assert.rejects(
    serve(server, client, SERVICE, { timeout: 600, onError: () => {} }),
    new RegExp(`could not register .* on etcd at http://127\\.0\\.0\\.1:${port} within 600 ms`),
  );
  assert.ok(Date.now() - start < 2000, `took ${Date.now() - start} ms`);
  // Shut down for good: grpc-js refuses to bind a server after shutdown.
  await assert.rejects(
    new Promise((resolve, reject) =>
      server.bindAsync(
        "127.0.0.1:0",
        grpc.ServerCredentials.createInsecure(),
        (e, p) => e ? reject(e) : resolve(p),
      )
    ),
    /bindAsync called after shutdown/,
  );
});

Deno.test("serve: a signal aborted while registering stops the start and leaves no key", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const reason = new Error("deploy cancelled");
  // Aborted before serve() is called: refused at once.
  await assert.rejects(
    serve(new grpc.Server(), client, SERVICE, { signal: AbortSignal.abort(reason) }),
    (e) => e === reason,
  );
  // Aborted while it binds and registers.
  const stop = new AbortController();
  const starting = serve(new grpc.Server(), client, SERVICE, { signal: stop.signal });
  stop.abort(reason);
  await assert.rejects(starting, (e) => e === reason);
  await sleep(100);
  assert.deepEqual((await client.getPrefix(`${SERVICE}/`)).kvs, []);
});
