/**
 * The parts of a dialed client that grpc-js users reach for besides plain
 * calls: `waitForReady`, cancelling, `getPeer`, header-keyed balancing and
 * metadata changes of a live instance. Real etcd, greeter servers in this
 * process on loopback.
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { connect, consistentHash, weightedRoundRobin } from "../mod.ts";
import { dial } from "../grpc.ts";
import {
  Greeter,
  type GreeterClient,
  type HelloReply,
  sayHello,
  startGreeter,
} from "../examples/greeter.ts";
import { startEtcd } from "./etcd_server.ts";
import { untilAllAnswer } from "./load.ts";
import { sleep } from "./wait.ts";

const SERVICE = "svc/dialed";

/** `client.waitForReady` as a promise. */
function waitForReady(client: grpc.Client, ms: number): Promise<void> {
  return new Promise((resolve, reject) =>
    client.waitForReady(Date.now() + ms, (error) => error ? reject(error) : resolve())
  );
}

/** Starts a SayHello call and returns it with the promise of its outcome. */
function startCall(
  greeter: GreeterClient,
  request: { name: string; delay_ms?: number },
  options: { waitForReady?: boolean; metadata?: Record<string, string> } = {},
): { call: grpc.ClientUnaryCall; outcome: Promise<HelloReply | grpc.ServiceError> } {
  const metadata = new grpc.Metadata({ waitForReady: options.waitForReady ?? false });
  for (const [name, value] of Object.entries(options.metadata ?? {})) metadata.set(name, value);
  let call!: grpc.ClientUnaryCall;
  const outcome = new Promise<HelloReply | grpc.ServiceError>((resolve) => {
    call = greeter.SayHello(
      request,
      metadata,
      { deadline: Date.now() + 10_000 },
      (error, reply) => resolve(error ?? reply!),
    );
  });
  return { call, outcome };
}

Deno.test("dial: client.waitForReady fails at its deadline with no instance and resolves once one is ready", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const greeter = dial(client, SERVICE, Greeter);
  try {
    const start = Date.now();
    await assert.rejects(waitForReady(greeter, 300), /Failed to connect before the deadline/);
    assert.ok(Date.now() - start >= 290, `gave up after ${Date.now() - start} ms`);
    const ready = waitForReady(greeter, 5000);
    await sleep(200);
    await using _a = await startGreeter(client, SERVICE, "a", { drainMs: 0 });
    await ready;
    assert.equal(greeter.getChannel().getConnectivityState(false), grpc.connectivityState.READY);
    // Ready means a call goes through without waiting.
    assert.equal((await sayHello(greeter, { name: "x" })).instance, "a");
  } finally {
    greeter.close();
  }
  assert.equal(greeter.getChannel().getConnectivityState(false), grpc.connectivityState.SHUTDOWN);
});

Deno.test("dial: cancelling a call ends it CANCELLED, whether it waits for an instance or runs on one", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const greeter = dial(client, SERVICE, Greeter);
  try {
    // Waiting for an instance (none registered): cancelled at once, and never sent later.
    const waiting = startCall(greeter, { name: "early" }, { waitForReady: true });
    await sleep(100);
    waiting.call.cancel();
    const early = await waiting.outcome;
    assert.ok(early instanceof Error, `answered: ${JSON.stringify(early)}`);
    assert.equal((early as grpc.ServiceError).code, grpc.status.CANCELLED);

    let handled = 0;
    await using _a = await startGreeter(client, SERVICE, "a", { drainMs: 0 }, {
      get delayMs() {
        handled++;
        return 0;
      },
    });
    await untilAllAnswer(greeter, 1);
    const answered = handled;

    // Running on an instance (the server takes 2 s): cancelled within the second.
    const running = startCall(greeter, { name: "slow", delay_ms: 2000 });
    await sleep(200);
    const start = Date.now();
    running.call.cancel();
    const slow = await running.outcome;
    assert.equal((slow as grpc.ServiceError).code, grpc.status.CANCELLED);
    assert.ok(Date.now() - start < 1000, `ended after ${Date.now() - start} ms`);
    assert.equal(handled, answered + 1, "the running call reached the instance, the early one not");
    // The channel goes on serving.
    assert.equal((await sayHello(greeter, { name: "after" })).instance, "a");
  } finally {
    greeter.close();
  }
});

Deno.test("dial: getPeer names the instance a call ran on", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  await using a = await startGreeter(client, SERVICE, "a", { drainMs: 0 });
  const greeter = dial(client, SERVICE, Greeter);
  try {
    await untilAllAnswer(greeter, 1);
    const { call, outcome } = startCall(greeter, { name: "x" });
    assert.equal((await outcome as HelloReply).instance, "a");
    assert.equal(call.getPeer(), a.addr);
  } finally {
    greeter.close();
  }
});

Deno.test("dial: consistentHash on a request header sends every key to one instance", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const instances = await Promise.all(
    ["a", "b", "c"].map((name) => startGreeter(client, SERVICE, name, { drainMs: 0 })),
  );
  const greeter = dial(client, SERVICE, Greeter, {
    balancer: (endpoints, context) => consistentHash(endpoints, context, { header: "x-user" }),
  });
  try {
    await untilAllAnswer(greeter, 3);
    const seen = new Map<string, Set<string>>();
    for (let round = 0; round < 4; round++) {
      // 31 keys: with a key-blind round robin over 3 instances, a key would move every round.
      for (let user = 0; user < 31; user++) {
        const { outcome } = startCall(greeter, { name: "x" }, {
          metadata: { "x-user": `user-${user}` },
        });
        const reply = await outcome;
        assert.ok(!(reply instanceof Error), String(reply));
        const instances = seen.get(`user-${user}`) ?? new Set();
        instances.add(reply.instance);
        seen.set(`user-${user}`, instances);
      }
    }
    for (const [user, instances] of seen) {
      assert.equal(instances.size, 1, `${user} went to ${[...instances]}`);
    }
    const used = new Set([...seen.values()].map((s) => [...s][0]));
    assert.ok(used.size >= 2, `31 keys all went to ${[...used]}`);
  } finally {
    greeter.close();
    await Promise.all(instances.map((i) => i.close()));
  }
});

Deno.test("dial: a weight changed in a live instance's metadata takes effect", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  await using a = await startGreeter(client, SERVICE, "a", { drainMs: 0 });
  await using _b = await startGreeter(client, SERVICE, "b", { drainMs: 0 });
  const greeter = dial(client, SERVICE, Greeter, { balancer: weightedRoundRobin });
  try {
    await untilAllAnswer(greeter, 2);
    const shares = async (calls: number) => {
      const counts: Record<string, number> = {};
      for (let i = 0; i < calls; i++) {
        const { instance } = await sayHello(greeter, { name: "x" });
        counts[instance] = (counts[instance] ?? 0) + 1;
      }
      return counts;
    };
    assert.deepEqual(await shares(20), { a: 10, b: 10 });
    // Same key, same address, new metadata (as Go's endpoints.Manager.Update writes it).
    const key = a.registration.key;
    await client.put(
      key,
      JSON.stringify({ Op: 0, Addr: a.addr, Metadata: { weight: 3 } }),
      a.registration.lease,
    );
    await sleep(200);
    // Smooth weighted round robin: exactly 3 of every 4 calls to a, from any starting point.
    assert.deepEqual(await shares(40), { a: 30, b: 10 });
  } finally {
    greeter.close();
  }
});
