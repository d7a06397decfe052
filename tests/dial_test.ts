/**
 * The parts of a dialed client that grpc-js users reach for besides plain
 * unary calls: `waitForReady`, cancelling, `getPeer`, header-keyed balancing,
 * metadata changes of a live instance, and streaming calls. Real etcd, servers
 * in this process on loopback.
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";
import {
  connect,
  consistentHash,
  type Endpoint,
  type EtcdClient,
  PermissionDeniedError,
  register,
  roundRobin,
  weightedRoundRobin,
} from "../mod.ts";
import { dial, serve, type Serving } from "../grpc.ts";
import { memoryClient } from "../testing.ts";
import {
  Greeter,
  type GreeterClient,
  type HelloReply,
  sayHello,
  startGreeter,
  startLoneGreeter,
} from "../harness/greeter.ts";
import { freePort, startEtcd } from "../harness/etcd_server.ts";
import { untilAllAnswer } from "../harness/load.ts";
import { withOverrides } from "./overrides.ts";
import { sleep, until } from "../harness/wait.ts";
import { openChannels } from "../harness/grpcjs.ts";

const SERVICE = "svc/dialed";

/** `client.waitForReady` as a promise. */
function waitForReady(client: grpc.Client, ms: number): Promise<void> {
  return new Promise((resolve, reject) =>
    client.waitForReady(Date.now() + ms, (error) => error ? reject(error) : resolve())
  );
}

/** Tracks whether `promise` has settled, for checks that a call is still waiting. */
function tracked<T>(promise: Promise<T>): { promise: Promise<T>; readonly settled: boolean } {
  const state = { promise, settled: false };
  promise.then(() => state.settled = true, () => state.settled = true);
  return state;
}

/** The dialed client's channel state. */
function stateOf(client: grpc.Client): grpc.connectivityState {
  return client.getChannel().getConnectivityState(false);
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
    const ready = tracked(waitForReady(greeter, 30_000));
    // etcd has answered with no instance: the channel says so, and the wait goes on.
    await until(
      "the channel in TRANSIENT_FAILURE",
      5000,
      () => stateOf(greeter) === grpc.connectivityState.TRANSIENT_FAILURE,
    );
    await Promise.resolve();
    assert.equal(ready.settled, false, "waitForReady settled with no instance");
    await using _a = await startGreeter(client, SERVICE, "a", { drainMs: 0 });
    await ready.promise;
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
    // etcd has answered with no instance: the call is queued, waiting for one.
    await until(
      "the channel in TRANSIENT_FAILURE",
      5000,
      () => stateOf(greeter) === grpc.connectivityState.TRANSIENT_FAILURE,
    );
    waiting.call.cancel();
    const early = await waiting.outcome;
    assert.ok(early instanceof Error, `answered: ${JSON.stringify(early)}`);
    assert.equal((early as grpc.ServiceError).code, grpc.status.CANCELLED);

    let handled = 0;
    await using _a = await startGreeter(client, SERVICE, "a", { drainMs: 0 }, {
      onCall: () => handled++,
    });
    await untilAllAnswer(greeter, 1);
    const answered = handled;

    // Running on an instance (the server answers after 2 s): cancelled, not answered.
    const running = startCall(greeter, { name: "slow", delay_ms: 2000 });
    await until("the slow call on the instance", 5000, () => handled === answered + 1);
    const start = Date.now();
    running.call.cancel();
    const slow = await running.outcome;
    assert.equal(
      (slow as grpc.ServiceError).code,
      grpc.status.CANCELLED,
      `answered: ${JSON.stringify(slow)}`,
    );
    console.log(`the running call ended ${Date.now() - start} ms after cancel()`);
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

Deno.test("dial: each instance's channel has a subchannel pool of its own: two clients of one service share no connection", async () => {
  // grpc-js's global pool makes every channel's close() walk every subchannel of the process, so
  // closing n instances cost O(n²) (10,000: over a minute with the event loop blocked). In that
  // pool, two dial() clients of one service would share their instances' subchannels.
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  await using a = await startGreeter(client, SERVICE, "a", { drainMs: 0 });
  const before = new Set(openChannels().map((channel) => channel.id));
  const first = dial(client, SERVICE, Greeter);
  const second = dial(client, SERVICE, Greeter);
  try {
    await untilAllAnswer(first, 1);
    await untilAllAnswer(second, 1);
    const toA = () =>
      openChannels().filter((channel) =>
        !before.has(channel.id) && channel.target.replace(/^[a-z]+:(\/\/\/)?/, "") === a.addr
      );
    await until(
      "both clients' channels to a have a subchannel",
      5000,
      () => toA().length === 2 && toA().every((channel) => channel.subchannels.length > 0),
    );
    const [one, two] = toA();
    assert.deepEqual(
      one!.subchannels.filter((id) => two!.subchannels.includes(id)),
      [],
      "the two clients' channels to a share a subchannel",
    );
  } finally {
    first.close();
    second.close();
  }
});

Deno.test("dial: consistentHash on a request header sends every key to one instance", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const instances = await Promise.all(
    ["a", "b", "c"].map((name) => startGreeter(client, SERVICE, name, { drainMs: 0 })),
  );
  const greeter = dial(client, SERVICE, Greeter, {
    balancer: consistentHash({ header: "x-user" }),
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
  // The endpoints each picker was built over: the update is in once one carries the weight.
  let built: readonly Endpoint[] = [];
  const greeter = dial(client, SERVICE, Greeter, {
    balancer: (endpoints, context) => {
      built = endpoints;
      return weightedRoundRobin(endpoints, context);
    },
  });
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
    await until(
      "a picker built over the new weight",
      5000,
      () =>
        built.some((e) =>
          e.addr === a.addr && (e.metadata as { weight?: number } | undefined)?.weight === 3
        ),
    );
    // Smooth weighted round robin: exactly 3 of every 4 calls to a, from any starting point.
    assert.deepEqual(await shares(40), { a: 30, b: 10 });
  } finally {
    greeter.close();
  }
});

/** A bidi echo service and a server-streaming counter, JSON on the wire. */
const json = {
  serialize: (value: unknown) => Buffer.from(JSON.stringify(value)),
  deserialize: (bytes: Buffer) => JSON.parse(bytes.toString()),
};
const Streams = grpc.makeGenericClientConstructor({
  Echo: {
    path: "/test.Streams/Echo",
    requestStream: true,
    responseStream: true,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
  Count: {
    path: "/test.Streams/Count",
    requestStream: false,
    responseStream: true,
    requestSerialize: json.serialize,
    requestDeserialize: json.deserialize,
    responseSerialize: json.serialize,
    responseDeserialize: json.deserialize,
  },
}, "Streams");

async function startStreams(
  client: EtcdClient,
  name: string,
): Promise<Serving> {
  const server = new grpc.Server();
  server.addService(Streams.service, {
    Echo(call: grpc.ServerDuplexStream<{ n: number }, { n: number; by: string }>) {
      call.on("data", (message) => call.write({ n: message.n, by: name }));
      call.on("end", () => call.end());
    },
    Count(call: grpc.ServerWritableStream<{ to: number }, { n: number; by: string }>) {
      for (let n = 1; n <= call.request.to; n++) call.write({ n, by: name });
      call.end();
    },
  });
  return await serve(server, client, "svc/streams", { drainMs: 0, metadata: { name } });
}

Deno.test("dial: server-streaming and bidi calls run whole on the instance picked for them", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const instances = [await startStreams(client, "a"), await startStreams(client, "b")];
  // How many instances the latest picker was built over (the READY ones).
  let ready = 0;
  const streams = dial(client, "svc/streams", Streams, {
    balancer: (endpoints) => {
      ready = endpoints.length;
      return roundRobin(endpoints);
    },
    // deno-lint-ignore no-explicit-any
  }) as any;
  try {
    await waitForReady(streams, 5000);
    await until("both instances connected", 5000, () => ready === 2);
    const by = new Set<string>();
    for (let call = 0; call < 4; call++) {
      // Server streaming: 50 messages, in order, all from one instance.
      const counted: { n: number; by: string }[] = [];
      await new Promise<void>((resolve, reject) => {
        const stream = streams.Count({ to: 50 });
        stream.on("data", (m: { n: number; by: string }) => counted.push(m));
        stream.on("error", reject);
        stream.on("end", resolve);
      });
      assert.deepEqual(counted.map((m) => m.n), Array.from({ length: 50 }, (_, i) => i + 1));
      assert.equal(new Set(counted.map((m) => m.by)).size, 1);
      by.add(counted[0]!.by);

      // Bidi: each message answered in turn, then a clean end, on one instance.
      const echoed: { n: number; by: string }[] = [];
      const stream = streams.Echo();
      const ended = new Promise<void>((resolve, reject) => {
        stream.on("data", (m: { n: number; by: string }) => echoed.push(m));
        stream.on("error", reject);
        stream.on("end", resolve);
      });
      for (let n = 0; n < 20; n++) {
        stream.write({ n });
        if (n % 5 === 0) await sleep(5); // interleave writes with replies
      }
      stream.end();
      await ended;
      assert.deepEqual(echoed.map((m) => m.n), Array.from({ length: 20 }, (_, i) => i));
      assert.equal(new Set(echoed.map((m) => m.by)).size, 1);
      by.add(echoed[0]!.by);
    }
    assert.deepEqual([...by].sort(), ["a", "b"], "calls were balanced over both instances");
  } finally {
    streams.close();
    await Promise.all(instances.map((i) => i.close()));
  }
});

/** Raw bytes on the wire. */
const bytes = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };
/** A client-streaming upload, a bidi chat and a server-streaming subscription, as raw bytes. */
const Session = grpc.makeGenericClientConstructor({
  Upload: {
    path: "/test.Session/Upload",
    requestStream: true,
    responseStream: false,
    requestSerialize: bytes.serialize,
    requestDeserialize: bytes.deserialize,
    responseSerialize: bytes.serialize,
    responseDeserialize: bytes.deserialize,
  },
  Chat: {
    path: "/test.Session/Chat",
    requestStream: true,
    responseStream: true,
    requestSerialize: bytes.serialize,
    requestDeserialize: bytes.deserialize,
    responseSerialize: bytes.serialize,
    responseDeserialize: bytes.deserialize,
  },
  Subscribe: {
    path: "/test.Session/Subscribe",
    requestStream: false,
    responseStream: true,
    requestSerialize: bytes.serialize,
    requestDeserialize: bytes.deserialize,
    responseSerialize: bytes.serialize,
    responseDeserialize: bytes.deserialize,
  },
}, "Session");
type SessionClient = grpc.Client & {
  Upload(
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: grpc.requestCallback<Buffer>,
  ): grpc.ClientWritableStream<Buffer>;
  Chat(metadata: grpc.Metadata, options: grpc.CallOptions): grpc.ClientDuplexStream<Buffer, Buffer>;
  Subscribe(
    request: Buffer,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
  ): grpc.ClientReadableStream<Buffer>;
};

/**
 * A Session server registered under `service`: Upload refuses at the first
 * message; Chat sends its headers (`session: s1`) at once, then echoes;
 * Subscribe sends its headers at once, then its messages when `publish()` is
 * called.
 */
async function startSession(etcd: EtcdClient, service: string) {
  const server = new grpc.Server();
  const subscribers = new Set<grpc.ServerWritableStream<Buffer, Buffer>>();
  const session = () => {
    const metadata = new grpc.Metadata();
    metadata.set("session", "s1");
    return metadata;
  };
  server.addService(Session.service, {
    Upload(call: grpc.ServerReadableStream<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) {
      call.once("data", () => callback({ code: grpc.status.PERMISSION_DENIED, details: "no" }));
    },
    Chat(call: grpc.ServerDuplexStream<Buffer, Buffer>) {
      call.sendMetadata(session());
      call.on("data", (message: Buffer) => call.write(message));
      call.on("end", () => call.end());
    },
    Subscribe(call: grpc.ServerWritableStream<Buffer, Buffer>) {
      call.sendMetadata(session());
      subscribers.add(call);
      call.on("cancelled", () => subscribers.delete(call));
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      "127.0.0.1:0",
      grpc.ServerCredentials.createInsecure(),
      (e, port) => e ? reject(e) : resolve(port),
    )
  );
  const addr = `127.0.0.1:${port}`;
  const registration = await register(etcd, service, { addr });
  return {
    addr,
    publish(message: string) {
      for (const call of subscribers) call.write(Buffer.from(message));
    },
    async [Symbol.asyncDispose]() {
      await registration.close();
      server.forceShutdown();
    },
  };
}

/** The clients the Session tests compare: dial() without and with a retry policy, and grpc-js's own channel. */
function sessionClients(etcd: EtcdClient, service: string, addr: string) {
  const retrying = {
    "grpc.service_config": JSON.stringify({
      methodConfig: [{
        name: [{ service: "test.Session" }],
        retryPolicy: {
          maxAttempts: 3,
          initialBackoff: "0.1s",
          maxBackoff: "1s",
          backoffMultiplier: 2,
          retryableStatusCodes: ["UNAVAILABLE"],
        },
      }],
    }),
  };
  return {
    "dial()": dial(etcd, service, Session) as unknown as SessionClient,
    "dial() with a retry policy": dial(etcd, service, Session, {
      channelOptions: retrying,
    }) as unknown as SessionClient,
    "grpc-js's own channel with a retry policy": new Session(
      addr,
      grpc.credentials.createInsecure(),
      retrying,
    ) as unknown as SessionClient,
  };
}

Deno.test("dial: after a client-streaming call's server answered early, later writes are acknowledged and end() finishes, as on grpc-js's own channel", async () => {
  await using etcd = memoryClient();
  await using server = await startSession(etcd, "svc/session");
  const clients = sessionClients(etcd, "svc/session", server.addr);
  try {
    const outcomes: Record<string, unknown> = {};
    for (const [name, client] of Object.entries(clients)) {
      let status: string | undefined;
      const call = client.Upload(
        new grpc.Metadata({ waitForReady: true }),
        { deadline: Date.now() + 10_000 },
        (error) => status = error ? `${grpc.status[error.code]} ${error.details}` : "OK",
      );
      let acked = 0;
      call.write(Buffer.from("first"), () => acked++);
      await until(`${name}: the server's answer`, 5000, () => status !== undefined);
      for (let i = 0; i < 5; i++) call.write(Buffer.from("more"), () => acked++);
      let finished = false;
      call.once("finish", () => finished = true);
      call.end();
      await until(`${name}: every write acknowledged and the stream finished`, 5000, () => {
        return acked === 6 && finished;
      }).catch((error) =>
        outcomes[name] = `${error.message} (acked ${acked}, finished ${finished})`
      );
      outcomes[name] ??= { status, acked, finished };
    }
    const expected = { status: "PERMISSION_DENIED no", acked: 6, finished: true };
    assert.deepEqual(outcomes, {
      "dial()": expected,
      "dial() with a retry policy": expected,
      "grpc-js's own channel with a retry policy": expected,
    });
  } finally {
    for (const client of Object.values(clients)) client.close();
  }
});

/** A call's events, each awaited until the call fails (its error, whenever it came). */
function events(call: grpc.ClientDuplexStream<Buffer, Buffer> | grpc.ClientReadableStream<Buffer>) {
  const failed = new Promise<never>((_, reject) => call.on("error", reject));
  failed.catch(() => {}); // awaited through next() and ended()
  return {
    next: <T>(event: string) =>
      Promise.race([new Promise<T>((resolve) => call.once(event, resolve)), failed]),
    /** The code it ended with. */
    ended: () =>
      Promise.race([
        new Promise<grpc.status>((resolve) => call.once("end", () => resolve(grpc.status.OK))),
        failed,
      ]).catch((error: grpc.ServiceError) => error.code),
  };
}

Deno.test("dial: a bidi caller that waits for the server's headers before it sends gets them, with a retry policy too, as on grpc-js's own channel", async () => {
  await using etcd = memoryClient();
  await using server = await startSession(etcd, "svc/session");
  const clients = sessionClients(etcd, "svc/session", server.addr);
  try {
    const outcomes: Record<string, unknown> = {};
    for (const [name, client] of Object.entries(clients)) {
      const call = client.Chat(new grpc.Metadata({ waitForReady: true }), {
        deadline: Date.now() + 3000,
      });
      const { next, ended } = events(call);
      outcomes[name] = await next<grpc.Metadata>("metadata").then(async (headers) => {
        const echo = next<Buffer>("data");
        call.write(Buffer.from("hi"));
        const echoed = String(await echo);
        call.end();
        return { session: headers.get("session")[0], echoed, end: grpc.status[await ended()] };
      }).catch((error: grpc.ServiceError) => `${grpc.status[error.code]}: ${error.details}`);
    }
    const expected = { session: "s1", echoed: "hi", end: "OK" };
    assert.deepEqual(outcomes, {
      "dial()": expected,
      "dial() with a retry policy": expected,
      "grpc-js's own channel with a retry policy": expected,
    });
  } finally {
    for (const client of Object.values(clients)) client.close();
  }
});

Deno.test("dial: a subscription whose server sends its headers long before its first message gets them before the message, with a retry policy too", async () => {
  await using etcd = memoryClient();
  await using server = await startSession(etcd, "svc/session");
  const clients = sessionClients(etcd, "svc/session", server.addr);
  try {
    const outcomes: Record<string, unknown> = {};
    for (const [name, client] of Object.entries(clients)) {
      const call = client.Subscribe(
        Buffer.from("news"),
        new grpc.Metadata({ waitForReady: true }),
        {
          deadline: Date.now() + 3000,
        },
      );
      const { next, ended } = events(call);
      // The server publishes nothing until the caller has seen the headers.
      outcomes[name] = await next<grpc.Metadata>("metadata").then(async (headers) => {
        const message = next<Buffer>("data");
        server.publish("m1");
        const received = String(await message);
        call.cancel();
        return { session: headers.get("session")[0], received, end: grpc.status[await ended()] };
      }).catch((error: grpc.ServiceError) => `${grpc.status[error.code]}: ${error.details}`);
    }
    const expected = { session: "s1", received: "m1", end: "CANCELLED" };
    assert.deepEqual(outcomes, {
      "dial()": expected,
      "dial() with a retry policy": expected,
      "grpc-js's own channel with a retry policy": expected,
    });
  } finally {
    for (const client of Object.values(clients)) client.close();
  }
});

/** Which instances answer `calls` calls, and how often. */
async function answers(greeter: GreeterClient, calls: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (let i = 0; i < calls; i++) {
    const { instance } = await sayHello(greeter, { name: "x" });
    counts[instance] = (counts[instance] ?? 0) + 1;
  }
  return counts;
}

Deno.test("dial: with healthCheck, an instance reporting NOT_SERVING gets no calls until it serves again", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  await using a = await startGreeter(client, SERVICE, "a", { drainMs: 0 });
  await using b = await startGreeter(client, SERVICE, "b", { drainMs: 0 });
  const errors: string[] = [];
  const checked = dial(client, SERVICE, Greeter, {
    healthCheck: { serviceName: SERVICE },
    onError: (e) => errors.push(e.message),
  });
  const unchecked = dial(client, SERVICE, Greeter);
  try {
    await untilAllAnswer(checked, 2);
    await untilAllAnswer(unchecked, 2);

    a.setHealth("NOT_SERVING");
    await until("the report on a", 2000, () => errors.some((e) => e.includes(a.addr)));
    assert.deepEqual(await answers(checked, 20), { b: 20 });
    assert.deepEqual(await answers(unchecked, 20), { a: 10, b: 10 }, "without the option");
    assert.match(
      errors.find((e) => e.includes(a.addr))!,
      new RegExp(`gets no calls: its health service reports NOT_SERVING for "svc/dialed"`),
    );

    a.setHealth("SERVING");
    await untilAllAnswer(checked, 2, 2000);

    // None serving: a plain call fails fast, a waitForReady call waits for one to serve again.
    a.setHealth("NOT_SERVING");
    b.setHealth("NOT_SERVING");
    await until(
      "neither instance serving, as the channel sees it",
      5000,
      () => stateOf(checked) === grpc.connectivityState.TRANSIENT_FAILURE,
    );
    await assert.rejects(
      sayHello(checked, { name: "x" }, { deadline: Date.now() + 30_000 }),
      (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE,
    );
    const waiting = tracked(
      sayHello(checked, { name: "x" }, { waitForReady: true, deadline: Date.now() + 30_000 }),
    );
    // The scenario: a while with nothing serving, during which the call keeps waiting.
    await sleep(300);
    assert.equal(waiting.settled, false, "the waitForReady call ended with nothing serving");
    b.setHealth("SERVING");
    assert.equal((await waiting.promise).instance, "b");
  } finally {
    checked.close();
    unchecked.close();
  }
});

Deno.test("dial: with healthCheck, an instance without the health service is used, and reported once", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  // A bare grpc-js server: the greeter only, no grpc.health.v1.
  const bare = await startLoneGreeter("bare");
  await using _registration = await register(client, SERVICE, { addr: bare.addr });
  const errors: string[] = [];
  const greeter = dial(client, SERVICE, Greeter, {
    healthCheck: { serviceName: "" },
    onError: (e) => errors.push(e.message),
  });
  try {
    assert.deepEqual(await answers(greeter, 5), { bare: 5 });
    await until("the report", 2000, () => errors.length > 0);
    assert.deepEqual(errors, [
      `instance ${bare.addr} ("${SERVICE}/${bare.addr}") does not implement grpc.health.v1 Watch: used without health checks`,
    ]);
  } finally {
    greeter.close();
    bare.close();
  }
});

Deno.test("dial: with healthCheck, a health stream that breaks is watched again and calls resume", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  // A server whose health Watch breaks once, 100 ms after saying SERVING, then holds.
  let watches = 0;
  const flaky = await startLoneGreeter("flaky", {
    addServices: (server) =>
      server.addService({
        Watch: {
          path: "/grpc.health.v1.Health/Watch",
          requestStream: false,
          responseStream: true,
          requestSerialize: (b: Buffer) => b,
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (status: number) => Buffer.from([0x08, status]),
          responseDeserialize: (b: Buffer) => b,
        },
      }, {
        Watch(call: grpc.ServerWritableStream<Buffer, number>) {
          watches++;
          call.write(1);
          if (watches === 1) {
            // How a grpc-js server handler ends a stream with a status other than OK.
            setTimeout(
              () => call.emit("error", { code: grpc.status.INTERNAL, details: "boom" }),
              100,
            );
          }
        },
      }),
  });
  await using _registration = await register(client, SERVICE, { addr: flaky.addr });
  const greeter = dial(client, SERVICE, Greeter, { healthCheck: { serviceName: "" } });
  try {
    assert.deepEqual(await answers(greeter, 3), { flaky: 3 });
    await until("the second Watch", 3000, () => watches === 2);
    // Answered again once the new Watch says SERVING (waitForReady rides out the gap).
    const reply = await sayHello(greeter, { name: "x" }, { waitForReady: true });
    assert.equal(reply.instance, "flaky");
  } finally {
    greeter.close();
    flaky.close();
  }
});

Deno.test("dial: a call whose deadline is past a timer's range waits for an instance instead of failing at once", async () => {
  await using etcd = memoryClient();
  const greeter = dial(etcd, SERVICE, Greeter);
  try {
    const thirtyDays = Date.now() + 30 * 24 * 3600 * 1000;
    const outcome = sayHello(greeter, { name: "x" }, { deadline: thirtyDays, waitForReady: true })
      .then(
        (reply) => reply.message,
        (error: grpc.ServiceError) => `${error.code} ${error.details}`,
      );
    const settled = await Promise.race([outcome, sleep(200).then(() => "waiting")]);
    assert.equal(settled, "waiting", "the call is still waiting for an instance");
    await using _a = await startGreeter(etcd, SERVICE, "a", { drainMs: 0 });
    assert.equal(await outcome, "hello x");
  } finally {
    greeter.close();
  }
});

Deno.test("dial: reports are muted per message for a while, never for good", async () => {
  await using etcd = memoryClient();
  await using _a = await startGreeter(etcd, SERVICE, "a", { drainMs: 0 });
  const seen = new Set<string>();
  let round = 0;
  const greeter = dial(etcd, SERVICE, Greeter, {
    onError: (error) => seen.add(error.message),
    // A balancer that reports 1,500 distinct problems, twice each, whenever it is built.
    balancer: (endpoints, context) => {
      round++;
      for (let i = 0; i < 1500; i++) context?.report?.(new Error(`problem ${i}`));
      for (let i = 0; i < 1500; i++) context?.report?.(new Error(`problem ${i}`));
      return roundRobin(endpoints);
    },
  });
  try {
    await sayHello(greeter, { name: "x" }, { waitForReady: true });
    assert.ok(round > 0);
    assert.equal(seen.size, 1500, "every distinct problem is reported");
  } finally {
    greeter.close();
  }
});

Deno.test("dial: a picker may return a copy of an endpoint; one it was not given fails the call at once", async () => {
  await using etcd = memoryClient();
  await using _a = await startGreeter(etcd, SERVICE, "a", { drainMs: 0 });
  const copies = dial(etcd, SERVICE, Greeter, {
    balancer: (endpoints) => () => endpoints[0] && { ...endpoints[0] },
  });
  const errors: string[] = [];
  const strangers = dial(etcd, SERVICE, Greeter, {
    onError: (error) => errors.push(error.message),
    balancer: (endpoints) => () => endpoints.length > 0 ? { addr: "10.9.9.9:1" } : undefined,
  });
  try {
    assert.equal((await sayHello(copies, { name: "x" }, { waitForReady: true })).instance, "a");
    const failed = await sayHello(strangers, { name: "x" }, { waitForReady: true }).catch((
      error: grpc.ServiceError,
    ) => error);
    assert.equal((failed as grpc.ServiceError).code, grpc.status.INTERNAL);
    assert.match(
      (failed as grpc.ServiceError).details,
      /not one of the ready instances.*10\.9\.9\.9:1/,
    );
    assert.equal(errors.filter((m) => m.includes("10.9.9.9:1")).length, 1);
  } finally {
    copies.close();
    strangers.close();
  }
});

Deno.test("dial: a balancer that throws fails calls with its reason instead of crashing", async () => {
  await using etcd = memoryClient();
  await using _a = await startGreeter(etcd, SERVICE, "a", { drainMs: 0 });
  const reports: string[] = [];
  const greeter = dial(etcd, SERVICE, Greeter, {
    onError: (error) => reports.push(error.message),
    balancer: (endpoints) => {
      if (endpoints.length > 0) throw new RangeError("too many ring points");
      return () => undefined;
    },
  });
  try {
    const failed = await sayHello(greeter, { name: "x" }, {
      waitForReady: true,
      deadline: Date.now() + 60_000,
    }).catch((error: grpc.ServiceError) => error);
    assert.equal((failed as grpc.ServiceError).code, grpc.status.INTERNAL);
    assert.match(
      (failed as grpc.ServiceError).details,
      /the balancer could not build a picker over 1 ready instances: too many ring points/,
    );
    assert.ok(reports.some((m) => m.includes("too many ring points")));
  } finally {
    greeter.close();
  }
});

Deno.test("dial: before any resolution, a fail-fast call says whether etcd refused or did not answer", async () => {
  await using etcd = memoryClient();
  const refusing = withOverrides(etcd, {
    getPrefix: () =>
      Promise.reject(new PermissionDeniedError('reading the prefix "svc/e/"', "bob")),
  });
  const greeter = dial(refusing, "svc/e", Greeter, { onError: () => {} });
  try {
    const failed = await new Promise<grpc.ServiceError | null>((resolve) =>
      greeter.SayHello({ name: "x" }, (error) => resolve(error))
    );
    assert.equal(failed?.code, grpc.status.UNAVAILABLE);
    assert.match(failed!.details, /cannot resolve "svc\/e": etcd at memory refused: etcd denied/);
  } finally {
    greeter.close();
  }
});

// The tests below leave grpc-js's subchannel backoff timers running after they end, and each
// timer may start one more when it fires: they run last, so that no sanitized test sees them.
// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "dial: with etcd unreachable from the start, a plain call fails UNAVAILABLE naming etcd; a waitForReady call waits until its deadline",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const port = await freePort();
  await using client = connect({ hosts: `http://127.0.0.1:${port}`, dialTimeout: 500 });
  const greeter = dial(client, SERVICE, Greeter, { onError: () => {} });
  try {
    // No deadline at all: before any resolution succeeded, a resolver error fails it at once.
    const plain = await new Promise<grpc.ServiceError | undefined>((resolve) => {
      greeter.SayHello({ name: "x" }, (error) => resolve(error ?? undefined));
    });
    assert.equal(plain?.code, grpc.status.UNAVAILABLE);
    assert.match(
      plain.details,
      new RegExp(`cannot resolve "svc/dialed": etcd at http://127.0.0.1:${port} did not answer`),
    );
    const waiting = await sayHello(greeter, { name: "x" }, {
      waitForReady: true,
      deadline: Date.now() + 1000,
    }).catch((error: grpc.ServiceError) => error);
    assert.equal((waiting as grpc.ServiceError).code, grpc.status.DEADLINE_EXCEEDED);
  } finally {
    greeter.close();
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "dial: picker rebuilds are coalesced while many instances change state",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = memoryClient();
  const count = 200;
  for (let i = 0; i < count; i++) {
    // Nothing listens on these: each channel goes CONNECTING, then TRANSIENT_FAILURE.
    await etcd.put(`${SERVICE}/${i}`, JSON.stringify({ Addr: `127.0.0.1:${await freePort()}` }));
  }
  let builds = 0;
  const greeter = dial(etcd, SERVICE, Greeter, {
    balancer: (endpoints) => {
      builds++;
      return roundRobin(endpoints);
    },
  });
  try {
    const failed = await sayHello(greeter, { name: "x" }).catch((error: grpc.ServiceError) =>
      error
    );
    assert.equal((failed as grpc.ServiceError).code, grpc.status.UNAVAILABLE);
    assert.match(
      (failed as grpc.ServiceError).details,
      /no ready instance of "svc\/dialed" \(200 known\)/,
    );
    // One build per state change would be at least 2 per instance (CONNECTING, then failed).
    assert.ok(builds < count, `${builds} picker builds for ${count} instances`);
  } finally {
    greeter.close();
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "dial: a picker that returns a copy of an instance that is not ready fails the call at once",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = memoryClient();
  const a = await startLoneGreeter("a");
  const b = await startLoneGreeter("b");
  await using _ra = await register(etcd, SERVICE, { addr: a.addr });
  await using _rb = await register(etcd, SERVICE, { addr: b.addr });
  const reports: string[] = [];
  let builds = 0;
  // A buggy balancer: always a copy of a's endpoint, whatever it was given.
  const greeter = dial(etcd, SERVICE, Greeter, {
    onError: (error) => reports.push(error.message),
    balancer: (endpoints) => {
      builds++;
      return () => endpoints.length > 0 ? { addr: a.addr } : undefined;
    },
  });
  try {
    assert.equal((await sayHello(greeter, { name: "x" }, { waitForReady: true })).instance, "a");
    const before = builds;
    a.close(); // a stays registered but cannot be reached; b is ready
    await until("a picker built without a", 10_000, () => builds > before);
    const failed = await sayHello(greeter, { name: "x" }, { deadline: Date.now() + 60_000 }).catch((
      error: grpc.ServiceError,
    ) => error);
    assert.equal((failed as grpc.ServiceError).code, grpc.status.INTERNAL);
    assert.ok(reports.some((m) => m.includes(`not one of the ready instances`)), String(reports));
  } finally {
    greeter.close();
    b.close();
  }
});
