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
import { Greeter, type GreeterClient, sayHello, startGreeter } from "../harness/greeter.ts";
import { freePort, startEtcd } from "../harness/etcd_server.ts";
import { sleep, until } from "../harness/wait.ts";

const SERVICE = "svc/served";

/** A plain grpc-js client of one address (no etcd in between). */
function direct(addr: string): GreeterClient {
  return new Greeter(addr, grpc.credentials.createInsecure());
}

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

// The tests below leave grpc-js's subchannel backoff timers running after they end, and each
// timer may start one more when it fires: they run last, so that no sanitized test sees them.
// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "serve: aborting the signal deregisters and stops the server",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
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

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "serve: close() cuts off a call that outlasts drainMs + shutdownMs instead of waiting for it",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  let calls = 0;
  const serving = await startGreeter(client, SERVICE, "a", { drainMs: 100, shutdownMs: 300 }, {
    onCall: () => calls++,
  });
  const greeter = direct(serving.addr);
  try {
    const slow = sayHello(greeter, { name: "slow", delay_ms: 10_000 }, {
      deadline: Date.now() + 20_000,
    });
    await until("the slow call on the server", 5000, () => calls === 1);
    const start = Date.now();
    await serving.close();
    const took = Date.now() - start;
    console.log(`close() took ${took} ms (drain 100 + bound 300)`);
    // It waited out the drain and the shutdown bound, then cut the call off: the call ends
    // without its answer (which comes 10 s after it started).
    assert.ok(took >= 400, `close() took ${took} ms (drain 100 + bound 300)`);
    await assert.rejects(slow, (e: grpc.ServiceError) => e.code !== grpc.status.OK);
  } finally {
    greeter.close();
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "serve: when etcd cannot be reached within timeout, the server is shut down and the error names etcd",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const port = await freePort();
  await using client = connect({ hosts: `http://127.0.0.1:${port}`, dialTimeout: 200 });
  const server = new grpc.Server();
  const start = Date.now();
  const rejected = assert.rejects(
    serve(server, client, SERVICE, { timeout: 600, onError: () => {} }),
    new RegExp(`could not register .* on etcd at http://127\\.0\\.0\\.1:${port} within 600 ms`),
  );
  // It gave up at its timeout: before a timer set for the default (5000 ms) fires.
  let timer: ReturnType<typeof setTimeout> | undefined;
  const first = await Promise.race([
    rejected.then(() => "rejected"),
    new Promise((resolve) => timer = setTimeout(() => resolve("the default timeout"), 5000)),
  ]);
  clearTimeout(timer);
  await rejected;
  console.log(`rejected after ${Date.now() - start} ms`);
  assert.equal(first, "rejected", "still trying when the default timeout would have passed");
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

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "serve: a signal aborted while registering stops the start and leaves no key",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
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
  // A while after the rejection, for a late put to show (there is no event to wait for).
  await sleep(100);
  assert.deepEqual((await client.getPrefix(`${SERVICE}/`)).kvs, []);
});
