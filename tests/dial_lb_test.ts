/**
 * dial() as a load balancer: retries (gRFC A6), outlier ejection (gRFC A50),
 * filter and locality, against real etcd and greeter servers in separate
 * processes; and the deadline it forwards to an instance.
 */
import assert from "node:assert/strict";
import { createServer } from "node:net";
import * as grpc from "@grpc/grpc-js";
import {
  type Balancer,
  type BalancerContext,
  connect,
  encodeEndpoint,
  type Endpoint,
  endpointKey,
  register,
  roundRobin,
} from "../mod.ts";
import { dial } from "../grpc.ts";
import { memoryClient } from "../testing.ts";
import { EtcdHttp } from "../harness/etcd_http.ts";
import { startEtcd } from "../harness/etcd_server.ts";
import {
  Greeter,
  type GreeterClient,
  type HelloReply,
  sayHello,
  startGreeter,
  startLoneGreeter,
} from "../harness/greeter.ts";
import { type GreeterProcess, spawnGreeter } from "../harness/greeter_process.ts";
import { Load, untilAllAnswer } from "../harness/load.ts";
import { until } from "../harness/wait.ts";
import type { BalancedChannel } from "../src/grpc/balanced_channel.ts";
import type { Instance } from "../src/grpc/instance.ts";
import { PickedCall } from "../src/grpc/picked_call.ts";

const SERVICE = "svc/lb";
const RETRY_UNAVAILABLE = {
  maxAttempts: 3,
  initialBackoff: "0.05s",
  maxBackoff: "0.5s",
  backoffMultiplier: 2,
  retryableStatusCodes: ["UNAVAILABLE"],
};

/** Channel options carrying a service config. */
function serviceConfig(config: unknown): grpc.ChannelOptions {
  return { "grpc.service_config": JSON.stringify(config) };
}

/** An outlier_detection config with failure-percentage ejection; times in ms. */
function outlierDetection(
  { intervalMs, baseMs, maxPercent, minimumHosts = 3 }: {
    intervalMs: number;
    baseMs: number;
    maxPercent: number;
    minimumHosts?: number;
  },
): grpc.ChannelOptions {
  const duration = (ms: number) => ({ seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 });
  return serviceConfig({
    loadBalancingConfig: [{
      outlier_detection: {
        interval: duration(intervalMs),
        base_ejection_time: duration(baseMs),
        max_ejection_percent: maxPercent,
        failure_percentage_ejection: {
          threshold: 50,
          enforcement_percentage: 100,
          minimum_hosts: minimumHosts,
          request_volume: 10,
        },
        child_policy: [{ round_robin: {} }],
      },
    }],
  });
}

async function spawnMany(etcd: string, names: string[], service = SERVICE) {
  return await Promise.all(names.map((name) => spawnGreeter(etcd, service, name, { ttl: 2 })));
}

async function disposeAll(servers: GreeterProcess[]): Promise<void> {
  await Promise.all(servers.map((s) => s[Symbol.asyncDispose]()));
}

/** Reports passed to onError, with the time each arrived. */
function reports(): { list: { at: number; message: string }[]; onError: (e: Error) => void } {
  const list: { at: number; message: string }[] = [];
  return { list, onError: (e) => list.push({ at: Date.now(), message: e.message }) };
}

/** Whether a failed call's details say the greeter `name` failed it on purpose. */
const failedBy = (details: string | undefined, name: string) =>
  details?.startsWith(`greeter ${name} fails on purpose`) === true;

/**
 * roundRobin, keeping the latest list and context it was built with: the
 * context tells how many calls run on each instance (dial's own count).
 */
function probedRoundRobin(): { balancer: Balancer; inflightOn(addr: string): number } {
  let latest: { endpoints: readonly Endpoint[]; context?: BalancerContext } = { endpoints: [] };
  return {
    balancer: (endpoints, context) => {
      latest = { endpoints, context };
      return roundRobin(endpoints);
    },
    inflightOn(addr) {
      const endpoint = latest.endpoints.find((e) => e.addr === addr);
      return endpoint ? latest.context?.inflight?.(endpoint) ?? 0 : 0;
    },
  };
}

/** Loads a test started: its `finally` stops them before it closes their clients. */
const started = new Set<{ stop(): Promise<void> }>();

/** Registers loads as running and returns them. */
function running<T extends Record<string, { stop(): Promise<void> }>>(loads: T): T {
  for (const load of Object.values(loads)) started.add(load);
  return loads;
}

/** Stops every running load. */
async function stopLoads(): Promise<void> {
  await Promise.all([...started].map((load) => load.stop()));
  started.clear();
}

/** `workers` loops of SayHello calls that take `delayMs` on the server. */
class SlowLoad {
  readonly records: { at: number; instance?: string; code?: grpc.status; details?: string }[] = [];
  readonly #loops: Promise<void>[] = [];
  #stopped = false;

  constructor(client: GreeterClient, workers: number, delayMs: number) {
    for (let i = 0; i < workers; i++) this.#loops.push(this.#loop(client, delayMs));
  }

  async #loop(client: GreeterClient, delayMs: number): Promise<void> {
    while (!this.#stopped) {
      await new Promise<void>((resolve) => {
        client.SayHello(
          { name: "load", delay_ms: delayMs },
          new grpc.Metadata(),
          { deadline: Date.now() + 10_000 },
          (error: grpc.ServiceError | null, reply?: HelloReply) => {
            this.records.push(
              error
                ? { at: Date.now(), code: error.code, details: error.details }
                : { at: Date.now(), instance: reply!.instance },
            );
            // A failing call may end at once: pause, so a loop never starves the timers.
            if (error) setTimeout(resolve, 5);
            else resolve();
          },
        );
      });
    }
  }

  get failures() {
    return this.records.filter((r) => r.instance === undefined);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await Promise.all(this.#loops);
  }
}

Deno.test("dial: with outlier_detection, an instance failing every call while SERVING is ejected within two intervals, then gets under 2 % of 1,000 calls; without, it keeps a third", async () => {
  await using etcd = await startEtcd();
  const servers = await spawnMany(etcd.endpoint, ["a", "b", "c"]);
  const b = servers[1]!;
  await using client = connect({ hosts: etcd.endpoint });
  const intervalMs = 300;
  const seen = reports();
  const ejecting = dial(client, SERVICE, Greeter, {
    channelOptions: outlierDetection({ intervalMs, baseMs: 30_000, maxPercent: 50 }),
    onError: seen.onError,
  });
  const plain = dial(client, SERVICE, Greeter);
  try {
    await untilAllAnswer(ejecting, 3);
    await untilAllAnswer(plain, 3);
    const loads = running({
      ejecting: new Load(ejecting, { workers: 4, pauseMs: 5 }),
      plain: new Load(plain, { workers: 4, pauseMs: 5 }),
    });
    b.kill("SIGUSR2"); // b fails every call with UNAVAILABLE; its health still says SERVING
    await until(
      "b fails calls",
      5000,
      () => loads.ejecting.records.some((r) => failedBy(r.details, "b")),
    );
    const failingSince = loads.ejecting.records.find((r) => failedBy(r.details, "b"))!.at;
    const ejected = `instance ${b.addr} (`;
    await until(
      "b is ejected",
      10_000,
      () =>
        seen.list.some((r) => r.message.startsWith(ejected) && r.message.includes("is ejected")),
    );
    const ejection = seen.list.find((r) => r.message.startsWith(ejected))!;
    console.log(
      `b ejected ${
        ejection.at - failingSince
      } ms after its first failure (interval ${intervalMs} ms): ${ejection.message}`,
    );
    await until(
      "1,000 calls after the ejection",
      20_000,
      () => loads.ejecting.records.filter((r) => r.at > ejection.at).length >= 1000,
    );
    await stopLoads();
    const next = loads.ejecting.records.filter((r) => r.at > ejection.at).slice(0, 1000);
    const toB = next.filter((r) => r.instance === "b" || failedBy(r.details, "b")).length;
    const plainSince = loads.plain.records.filter((r) => r.at > failingSince);
    const plainToB = plainSince.filter((r) => failedBy(r.details, "b")).length / plainSince.length;
    console.log(
      `of the next 1,000 calls, ${toB} went to b; without outlier detection b failed ${
        (plainToB * 100).toFixed(1)
      } % of ${plainSince.length} calls`,
    );
    assert.ok(toB < 20, `${toB} of 1,000 calls went to b after its ejection`);
    assert.ok(plainToB > 0.25 && plainToB < 0.42, `without outlier detection: ${plainToB}`);
  } finally {
    await stopLoads();
    ejecting.close();
    plain.close();
    await disposeAll(servers);
  }
});

Deno.test("dial: an ejected instance that recovers gets calls again once base_ejection_time has passed, not before", async () => {
  await using etcd = await startEtcd();
  const servers = await spawnMany(etcd.endpoint, ["a", "b", "c"]);
  const b = servers[1]!;
  await using client = connect({ hosts: etcd.endpoint });
  const baseMs = 1000;
  const seen = reports();
  const ejecting = dial(client, SERVICE, Greeter, {
    channelOptions: outlierDetection({ intervalMs: 200, baseMs, maxPercent: 50 }),
    onError: seen.onError,
  });
  try {
    await untilAllAnswer(ejecting, 3);
    const { load } = running({ load: new Load(ejecting, { workers: 4, pauseMs: 5 }) });
    b.kill("SIGUSR2");
    const ejected = `instance ${b.addr} ("${SERVICE}/${b.addr}") is ejected`;
    await until("b is ejected", 10_000, () => seen.list.some((r) => r.message.startsWith(ejected)));
    const ejectedAt = seen.list.find((r) => r.message.startsWith(ejected))!.at;
    // The calls running on b when it was ejected end (failing) before it recovers.
    await until(
      "50 calls after the ejection",
      5000,
      () => load.records.filter((r) => r.at > ejectedAt).length >= 50,
    );
    const settled = Date.now();
    b.kill("SIGUSR2"); // b answers again
    await until("b answers again", 10_000, () => load.answeredBy("b", settled) > 0);
    await stopLoads();
    const back = load.records.find((r) => r.instance === "b" && r.at > settled)!.at;
    const touched = load.records.filter((r) =>
      r.at > settled && r.at < ejectedAt + baseMs &&
      (r.instance === "b" || failedBy(r.details, "b"))
    );
    console.log(
      `b answered again ${
        back - ejectedAt
      } ms after its ejection (base_ejection_time ${baseMs} ms)`,
    );
    assert.deepEqual(touched, [], "no call reached b during its ejection");
    assert.ok(back - ejectedAt >= baseMs - 10, `back after ${back - ejectedAt} ms`);
    assert.ok(
      seen.list.some((r) =>
        r.message ===
          `instance ${b.addr} ("${SERVICE}/${b.addr}") is back from its outlier ejection`
      ),
    );
  } finally {
    await stopLoads();
    ejecting.close();
    await disposeAll(servers);
  }
});

Deno.test("dial: max_ejection_percent holds: with every instance failing, at most that share is ejected (one of three at 50 %)", async () => {
  await using etcd = await startEtcd();
  const servers = await spawnMany(etcd.endpoint, ["a", "b", "c"]);
  await using client = connect({ hosts: etcd.endpoint });
  const seen = reports();
  const ejecting = dial(client, SERVICE, Greeter, {
    channelOptions: outlierDetection({ intervalMs: 200, baseMs: 30_000, maxPercent: 50 }),
    onError: seen.onError,
  });
  try {
    await untilAllAnswer(ejecting, 3);
    const { load } = running({ load: new Load(ejecting, { workers: 4, pauseMs: 5 }) });
    for (const s of servers) s.kill("SIGUSR2");
    const ejections = () => seen.list.filter((r) => r.message.includes("is ejected"));
    await until("an instance is ejected", 10_000, () => ejections().length > 0);
    const first = ejections()[0]!;
    const others = servers.filter((s) => !first.message.startsWith(`instance ${s.addr} (`));
    // Enough failed calls on the other two for many more sweeps to eject them if they could.
    const failuresOf = (name: string) =>
      load.records.filter((r) => r.at > first.at && failedBy(r.details, name)).length;
    await until(
      "100 failed calls on each of the other two",
      20_000,
      () => others.every((s) => failuresOf(s.name) >= 100),
    );
    await stopLoads();
    console.log(
      `ejected: ${ejections().map((r) => r.message).join("; ")}; calls still reach ${
        others.map((s) => s.name)
      }`,
    );
    assert.equal(ejections().length, 1);
    assert.equal(others.length, 2);
  } finally {
    await stopLoads();
    ejecting.close();
    await disposeAll(servers);
  }
});

Deno.test("dial: retry throttling stops retries while most calls fail, and lets them again after successes", async () => {
  await using etcd = await startEtcd();
  const servers = await spawnMany(etcd.endpoint, ["a", "b"]);
  await using client = connect({ hosts: etcd.endpoint });
  const retryPolicy = { ...RETRY_UNAVAILABLE, initialBackoff: "0.01s" };
  const methodConfig = [{ name: [{ service: "helloworld.Greeter" }], retryPolicy }];
  const throttled = dial(client, SERVICE, Greeter, {
    channelOptions: serviceConfig({
      methodConfig,
      retryThrottling: { maxTokens: 10, tokenRatio: 0.1 },
    }),
  });
  const unthrottled = dial(client, SERVICE, Greeter, {
    channelOptions: serviceConfig({ methodConfig }),
  });
  // Sees the servers' state without touching the throttled client's tokens.
  const observer = dial(client, SERVICE, Greeter);
  /** How many attempts came before the last one of a failing call, as its status says. */
  const previousAttempts = async (greeter: GreeterClient) => {
    const error = await sayHello(greeter, { name: "x" }).then(
      () => assert.fail("the call succeeded"),
      (e: grpc.ServiceError) => e,
    );
    assert.equal(error.code, grpc.status.UNAVAILABLE, error.details);
    return Number(error.metadata.get("grpc-previous-rpc-attempts")[0] ?? 0);
  };
  /** Switches both servers between answering and failing, and waits until both do. */
  const flip = async (failing: boolean) => {
    for (const s of servers) s.kill("SIGUSR2");
    await until(`both ${failing ? "fail" : "answer"}`, 5000, async () => {
      const outcomes = await Promise.all(
        [1, 2, 3, 4].map(() =>
          sayHello(observer, { name: "x" }).then(
            (reply) => `answer ${reply.instance}`,
            (e: grpc.ServiceError) => e.details,
          )
        ),
      );
      return ["a", "b"].every((name) =>
        outcomes.some((o) => failing ? failedBy(o, name) : o === `answer ${name}`)
      );
    });
  };
  try {
    await untilAllAnswer(throttled, 2);
    await untilAllAnswer(unthrottled, 2);
    await untilAllAnswer(observer, 2);
    await flip(true);
    // gRFC A6 with 10 tokens: 3 failed attempts leave 7, 2 more leave 5 (no retry at or below
    // half), then each failed call takes a token and is not retried.
    const attempts: number[] = [];
    for (let i = 0; i < 10; i++) attempts.push(await previousAttempts(throttled));
    const without: number[] = [];
    for (let i = 0; i < 3; i++) without.push(await previousAttempts(unthrottled));
    console.log(`retries of 10 failing calls: ${attempts}; without throttling: ${without}`);
    assert.deepEqual(attempts, [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual(without, [2, 2, 2]);
    // 100 successes at 0.1 token each fill the bucket again.
    await flip(false);
    for (let i = 0; i < 100; i++) await sayHello(throttled, { name: "x" });
    await flip(true);
    assert.equal(await previousAttempts(throttled), 2);
  } finally {
    throttled.close();
    unthrottled.close();
    observer.close();
    await disposeAll(servers);
  }
});

/** A TCP listener that counts the connections made to it and closes them. */
async function silentListener(): Promise<AsyncDisposable & { addr: string; connections: number }> {
  let connections = 0;
  const server = createServer((socket) => {
    connections++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return {
    addr: `127.0.0.1:${port}`,
    get connections() {
      return connections;
    },
    [Symbol.asyncDispose]: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Which instances answer `n` sequential calls, and how many calls failed. */
async function shares(greeter: GreeterClient, n: number) {
  const counts: Record<string, number> = {};
  let failed = 0;
  for (let i = 0; i < n; i++) {
    try {
      const { instance } = await sayHello(greeter, { name: "x" });
      counts[instance] = (counts[instance] ?? 0) + 1;
    } catch {
      failed++;
    }
  }
  return { counts, failed };
}

Deno.test("dial: a bad service config, filter or locality is refused at dial() naming the field and value; valid parts it does not act on are reported", async () => {
  await using etcd = memoryClient();
  const where = 'options.channelOptions["grpc.service_config"]';
  const refused: [unknown, RegExp][] = [
    [{
      channelOptions: serviceConfig({
        methodConfig: [{
          name: [{ service: "s" }],
          retryPolicy: { ...RETRY_UNAVAILABLE, maxAttempts: 1 },
        }],
      }),
    }, /methodConfig\[0\]\.retryPolicy\.maxAttempts must be an integer of at least 2, got 1/],
    [
      { channelOptions: outlierDetection({ intervalMs: 100, baseMs: 100, maxPercent: 120 }) },
      /outlier_detection\.max_ejection_percent must be a percentage from 0 to 100, got 120/,
    ],
    [{ channelOptions: { "grpc.service_config": "{" } }, /not JSON/],
    [
      { channelOptions: { "grpc-node.retry_max_attempts_limit": 0 } },
      /options\.channelOptions\["grpc-node\.retry_max_attempts_limit"\] must be a positive integer, got 0/,
    ],
    [
      { channelOptions: { "grpc.per_rpc_retry_buffer_size": -1 } },
      /options\.channelOptions\["grpc\.per_rpc_retry_buffer_size"\] must be an integer of at least 0, got -1/,
    ],
    [{ filter: "version 2" }, /options\.filter must be a function, got version 2/],
    [{ locality: { zone: 5 } }, /options\.locality\.zone must be a non-empty string, got 5/],
    [
      { locality: { zone: "a", minReady: 0 } },
      /options\.locality\.minReady must be an integer of at least 1, got 0/,
    ],
  ];
  for (const [options, message] of refused) {
    assert.throws(() => dial(etcd, SERVICE, Greeter, options as never), (error: Error) => {
      assert.match(error.message, message);
      if (error.message.includes("service_config")) assert.ok(error.message.startsWith(where));
      return error instanceof TypeError || error instanceof RangeError;
    });
  }
  const seen = reports();
  const hedged = dial(etcd, SERVICE, Greeter, {
    channelOptions: serviceConfig({
      methodConfig: [{ name: [{ service: "s" }], hedgingPolicy: { maxAttempts: 2 } }],
      loadBalancingConfig: [{ some_future_policy: {} }, { round_robin: {} }],
    }),
    onError: seen.onError,
  });
  hedged.close();
  assert.deepEqual(seen.list.map((r) => r.message), [
    `${where}: methodConfig[0].hedgingPolicy is valid but dial() does not hedge: those calls are sent once`,
    `${where}: loadBalancingConfig[0] names "some_future_policy", a policy grpc-js does not know: skipped`,
  ]);
});

Deno.test("dial: with its only instance ejected by outlier detection, a call fails fast saying so", async () => {
  await using etcd = memoryClient();
  await using _a = await startGreeter(etcd, "svc/alone", "a", { drainMs: 0 }, {
    failWith: () => grpc.status.UNAVAILABLE,
  });
  const seen = reports();
  const greeter = dial(etcd, "svc/alone", Greeter, {
    // A check every ~10 ms: an interval of 300 ms sees the 10 calls request_volume asks for.
    channelOptions: outlierDetection({
      intervalMs: 300,
      baseMs: 30_000,
      maxPercent: 10,
      minimumHosts: 1,
    }),
    onError: seen.onError,
  });
  try {
    const details = () =>
      sayHello(greeter, { name: "x" }).then(
        () => "answered",
        (e: grpc.ServiceError) => e.details,
      );
    await until(
      "a call fails fast",
      10_000,
      async () => (await details()).startsWith("grpc-etcd: no ready instance"),
    );
    assert.equal(
      await details(),
      'grpc-etcd: no ready instance of "svc/alone" (1 known, 1 ejected by outlier detection)',
    );
    assert.match(seen.list[0]!.message, /is ejected by outlier detection/);
  } finally {
    greeter.close();
  }
});

Deno.test("dial: a slow call with a deadline 30 days away is answered, not cut off by a wrapped grpc-timeout", async () => {
  await using etcd = memoryClient();
  await using _a = await startGreeter(etcd, "svc/slow", "a", { drainMs: 0 });
  const greeter = dial(etcd, "svc/slow", Greeter);
  try {
    const thirtyDays = Date.now() + 30 * 24 * 3600 * 1000;
    const outcome = await sayHello(greeter, { name: "x", delay_ms: 100 }, {
      deadline: thirtyDays,
      waitForReady: true,
    }).then(
      (reply) => reply.message,
      (error: grpc.ServiceError) => `${grpc.status[error.code]} ${error.details}`,
    );
    assert.equal(outcome, "hello x");
  } finally {
    greeter.close();
  }
});

Deno.test("dial: with locality, a retry goes to a ready instance of another zone rather than back to the local one that failed", async () => {
  await using etcd = memoryClient();
  const service = "svc/zones";
  let local = 0;
  await using _a = await startGreeter(
    etcd,
    service,
    "a",
    { drainMs: 0, metadata: { zone: "z1" } },
    {
      onCall: () => local++,
      failWith: () => grpc.status.UNAVAILABLE,
    },
  );
  await using _b = await startGreeter(etcd, service, "b", { drainMs: 0, metadata: { zone: "z2" } });
  const seen = reports();
  const greeter = dial(etcd, service, Greeter, {
    channelOptions: serviceConfig({
      methodConfig: [{
        name: [{ service: "helloworld.Greeter" }],
        retryPolicy: { ...RETRY_UNAVAILABLE, initialBackoff: "0.01s" },
      }],
    }),
    locality: { zone: "z1", minReady: 1 },
    onError: seen.onError,
  });
  try {
    // Until b is connected, the retries can only go back to a.
    await until(
      "a call answered by b",
      10_000,
      async () =>
        await sayHello(greeter, { name: "x" }).then(
          (reply) => reply.instance === "b",
          () => false,
        ),
    );
    const before = local;
    const answers = await shares(greeter, 20);
    console.log(
      `20 calls with a failing in zone z1 and b ready in z2: ${JSON.stringify(answers.counts)}, ` +
        `${local - before} attempts on a`,
    );
    assert.deepEqual(answers, { counts: { b: 20 }, failed: 0 });
    // Each call's first attempt stays in the zone (a is ready there), its retry leaves it.
    assert.equal(local - before, 20);
    assert.deepEqual(seen.list, [], "a ready in z1: calls stay in the zone");
  } finally {
    greeter.close();
  }
});

Deno.test("dial: an onError that throws on a note about the service config neither fails dial() nor leaves a half-built client running", async () => {
  await using etcd = memoryClient();
  await using _a = await startGreeter(etcd, "svc/noted", "a", { drainMs: 0 });
  const notes: string[] = [];
  const greeter = dial(etcd, "svc/noted", Greeter, {
    channelOptions: serviceConfig({
      methodConfig: [{ name: [{}], hedgingPolicy: { maxAttempts: 2 } }],
      // A sweep timer runs from dial() on: it must be stopped by close().
      loadBalancingConfig: [{
        outlier_detection: {
          failure_percentage_ejection: {},
          child_policy: [{ round_robin: {} }],
        },
      }],
    }),
    onError: (error) => {
      notes.push(error.message);
      throw new Error("this handler throws");
    },
  });
  try {
    assert.deepEqual(notes, [
      'options.channelOptions["grpc.service_config"]: methodConfig[0].hedgingPolicy is valid but dial() does not hedge: those calls are sent once',
    ]);
    assert.equal((await sayHello(greeter, { name: "x" }, { waitForReady: true })).instance, "a");
  } finally {
    greeter.close();
  }
});

Deno.test("dial: a retry buffer of 0 is accepted, as grpc-js accepts it: nothing is kept to replay, so calls are not retried", async () => {
  await using etcd = memoryClient();
  await using _a = await startGreeter(etcd, "svc/unbuffered", "a", { drainMs: 0 }, {
    failWith: () => grpc.status.UNAVAILABLE,
  });
  const retrying = {
    methodConfig: [{ name: [{ service: "helloworld.Greeter" }], retryPolicy: RETRY_UNAVAILABLE }],
  };
  const retriesOf = async (channelOptions: grpc.ChannelOptions) => {
    const greeter = dial(etcd, "svc/unbuffered", Greeter, {
      channelOptions: { ...serviceConfig(retrying), ...channelOptions },
    });
    try {
      const error = await sayHello(greeter, { name: "x" }, { waitForReady: true }).then(
        () => assert.fail("answered"),
        (e: grpc.ServiceError) => e,
      );
      assert.ok(failedBy(error.details, "a"), error.details);
      return Number(error.metadata.get("grpc-previous-rpc-attempts")[0] ?? 0);
    } finally {
      greeter.close();
    }
  };
  assert.equal(await retriesOf({}), 2);
  assert.equal(await retriesOf({ "grpc.per_rpc_retry_buffer_size": 0 }), 0);
  assert.equal(await retriesOf({ "grpc.retry_buffer_size": 0 }), 0);
});

// The tests below leave grpc-js's subchannel backoff timers running after they end, and each
// timer may start one more when it fires: they run last, so that no sanitized test sees them.
// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "dial: with a retryPolicy for UNAVAILABLE, a SIGKILL of one of 3 instances under 150 calls/s fails no call; without one, the calls it was running fail",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = await startEtcd();
  const servers = await spawnMany(etcd.endpoint, ["a", "b", "c"]);
  await using client = connect({ hosts: etcd.endpoint });
  const plainProbe = probedRoundRobin();
  const retryingProbe = probedRoundRobin();
  const plain = dial(client, SERVICE, Greeter, { balancer: plainProbe.balancer });
  const retrying = dial(client, SERVICE, Greeter, {
    balancer: retryingProbe.balancer,
    channelOptions: serviceConfig({
      methodConfig: [{ name: [{ service: "helloworld.Greeter" }], retryPolicy: RETRY_UNAVAILABLE }],
    }),
  });
  try {
    await untilAllAnswer(plain, 3);
    await untilAllAnswer(retrying, 3);
    // 15 calls of 100 ms in flight per client: about 150 calls/s each.
    const loads = running({
      plain: new SlowLoad(plain, 15, 100),
      retrying: new SlowLoad(retrying, 15, 100),
    });
    const victim = servers[0]!;
    // Killed while both clients have calls running on it.
    await until(
      "calls of both clients running on the instance to kill",
      10_000,
      () => plainProbe.inflightOn(victim.addr) >= 2 && retryingProbe.inflightOn(victim.addr) >= 2,
    );
    const running_ = [plainProbe.inflightOn(victim.addr), retryingProbe.inflightOn(victim.addr)];
    const killedAt = Date.now();
    victim.kill("SIGKILL");
    await victim.status;
    // Calls go on through its lease's expiry and its removal from every picker.
    const http = new EtcdHttp(etcd.endpoint);
    await until(
      "the dead instance's key expires",
      10_000,
      async () => (await http.range(`${SERVICE}/`)).kvs.length === 2,
    );
    const goneAt = Date.now();
    await until(
      "150 more calls per client after it is gone",
      10_000,
      () =>
        Object.values(loads).every((load) =>
          load.records.filter((r) => r.at > goneAt).length >= 150
        ),
    );
    await stopLoads();
    console.log(
      `calls running on the killed instance: plain ${running_[0]}, retrying ${running_[1]}`,
    );
    for (const [name, load] of Object.entries(loads)) {
      const seconds = (Date.now() - killedAt) / 1000;
      const during = load.records.filter((r) => r.at >= killedAt);
      console.log(
        `${name}: ${during.length} calls in the ${seconds.toFixed(1)} s after the kill (${
          (during.length / seconds).toFixed(0)
        }/s), ${load.failures.length} failed`,
        load.failures.map((f) => `${grpc.status[f.code!]}: ${f.details}`),
      );
    }
    assert.deepEqual(loads.retrying.failures, []);
    // Without a policy, the calls running on it when it died fail (UNAVAILABLE).
    assert.ok(loads.plain.failures.length >= 1, `${loads.plain.failures.length} failed`);
    for (const f of loads.plain.failures) {
      assert.equal(f.code, grpc.status.UNAVAILABLE, String(f.details));
    }
  } finally {
    await stopLoads();
    plain.close();
    retrying.close();
    await disposeAll(servers);
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "dial: filter leaves endpoints out (no calls, no connection); locality keeps calls in the zone, uses every zone while too few are ready there, and comes back",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = await startEtcd();
  const servers = await spawnMany(etcd.endpoint, ["a1", "a2", "b1"], "svc/raw");
  await using silent = await silentListener();
  await using client = connect({ hosts: etcd.endpoint });
  const zoned = "svc/zoned";
  const registrations = await Promise.all([
    ...servers.map((s) =>
      register(client, zoned, {
        addr: s.addr,
        metadata: { zone: s.name.slice(0, 1), version: "2" },
      }, { ttl: 2 })
    ),
    // An old version's endpoint, in zone a: nothing listens there but a connection counter.
    register(client, zoned, { addr: silent.addr, metadata: { zone: "a", version: "1" } }, {
      ttl: 2,
    }),
  ]);
  const version2 = (e: Endpoint) => (e.metadata as { version?: string }).version === "2";
  const seen = reports();
  const filtered = dial(client, zoned, Greeter, { filter: version2 });
  const local = dial(client, zoned, Greeter, {
    filter: version2,
    locality: { zone: "a", minReady: 2 },
    onError: seen.onError,
  });
  const extra: GreeterProcess[] = [];
  try {
    await untilAllAnswer(filtered, 3);
    const all = await shares(filtered, 60);
    console.log(
      "filter version 2:",
      all.counts,
      `; connections to the version 1 endpoint: ${silent.connections}`,
    );
    assert.deepEqual(all.counts, { a1: 20, a2: 20, b1: 20 });
    assert.equal(silent.connections, 0, "dial connected to an endpoint its filter leaves out");
    // b1's value changes to version 1 (same key, same lease): it is left out; back to 2: back in.
    const b1 = registrations[2]!;
    const rewrite = (version: string) =>
      client.put(
        b1.key,
        JSON.stringify({ Op: 0, Addr: servers[2]!.addr, Metadata: { zone: "b", version } }),
        b1.lease,
      );
    await rewrite("1");
    await until("b1 left out", 5000, async () => !("b1" in (await shares(filtered, 6)).counts));
    await rewrite("2");
    await until("b1 back", 5000, async () => "b1" in (await shares(filtered, 6)).counts);
    // A filter that leaves every endpoint out: calls fail fast, saying so.
    const none = dial(client, zoned, Greeter, { filter: () => false });
    try {
      await until(
        "a call fails fast, naming the filter",
        5000,
        async () =>
          await sayHello(none, { name: "x" }).then(
            () => assert.fail("answered"),
            (e: grpc.ServiceError) =>
              e.details ===
                'grpc-etcd: no ready instance of "svc/zoned" (0 known, 4 left out by filter)',
          ),
      );
    } finally {
      none.close();
    }
    // Without the filter, dial connects to it at once: the count above could have seen it.
    const unfiltered = dial(client, zoned, Greeter, { onError: () => {} });
    try {
      await until("a connection to the version 1 endpoint", 5000, () => silent.connections > 0);
    } finally {
      unfiltered.close();
    }

    await untilAllAnswer(local, 2);
    const inZone = await shares(local, 60);
    assert.deepEqual(inZone.counts, { a1: 30, a2: 30 });
    // One of the two in zone a dies: 1 ready < minReady 2, so calls go to every zone.
    servers[0]!.kill("SIGKILL");
    await servers[0]!.status;
    await until("calls reach zone b", 10_000, async () => "b1" in (await shares(local, 4)).counts);
    const panic = await shares(local, 60);
    // A new instance in zone a: 2 ready again, calls stay in the zone.
    const a3 = await spawnGreeter(etcd.endpoint, "svc/raw", "a3", { ttl: 2 });
    extra.push(a3);
    registrations.push(
      await register(client, zoned, { addr: a3.addr, metadata: { zone: "a", version: "2" } }, {
        ttl: 2,
      }),
    );
    await until("a3 answers", 10_000, async () => "a3" in (await shares(local, 4)).counts);
    const back = await shares(local, 60);
    console.log(
      "locality zone a, minReady 2:",
      inZone.counts,
      "a1 killed:",
      panic.counts,
      "a3 added:",
      back.counts,
    );
    console.log(seen.list.map((r) => r.message));
    assert.deepEqual(Object.keys(panic.counts).sort(), ["a2", "b1"]);
    assert.equal(panic.failed, 0);
    assert.deepEqual(back.counts, { a2: 30, a3: 30 });
    assert.deepEqual(seen.list.map((r) => r.message), [
      'locality: 1 of 2 instances in zone "a" are ready (minReady 2): calls go to every zone',
      'locality: 2 of 3 instances in zone "a" are ready (minReady 2): calls stay in zone "a"',
    ]);
  } finally {
    filtered.close();
    local.close();
    await Promise.all(registrations.map((r) => r.close()));
    await disposeAll([...servers, ...extra]);
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "dial: a retry picked between an instance's removal from etcd and the next picker rebuild never goes to its closed channel",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = memoryClient();
  const service = "svc/leaving";
  const a = await startLoneGreeter("a");
  const b = await startLoneGreeter("b");
  await etcd.put(endpointKey(service, a.addr), encodeEndpoint({ addr: a.addr }));
  await etcd.put(endpointKey(service, b.addr), encodeEndpoint({ addr: b.addr }));
  const greeter = dial(etcd, service, Greeter, { onError: () => {} });
  const channel = greeter.getChannel() as unknown as BalancedChannel;
  // Attempts made on the channel directly, as a RetryingCall makes them.
  const attempts: PickedCall[] = [];
  const ended = new Set<PickedCall>();
  const attempt = (avoid?: Instance[]) => {
    const made = new PickedCall(
      channel,
      "/helloworld.Greeter/SayHello",
      Date.now() + 10_000,
      undefined,
      null,
      0,
      { waitForReady: false, previousAttempts: avoid ? 1 : 0, avoid, credentials: undefined },
    );
    attempts.push(made);
    made.start(new grpc.Metadata(), {
      onAttemptMetadata() {},
      onAttemptMessage() {},
      onAttemptStatus: (_status, which) => void ended.add(which),
    });
    return made;
  };
  try {
    await untilAllAnswer(greeter, 2);
    // Round robin binds two attempts to the two instances: their Instance objects.
    const firstTwo = [attempt(), attempt()];
    const instanceOf = (addr: string) => firstTwo.find((x) => x.instance?.endpoint.addr === addr)!;
    const instanceA = instanceOf(a.addr).instance!;
    const instanceB = instanceOf(b.addr).instance!;
    for (const x of firstTwo) x.cancel(grpc.status.CANCELLED, "only wanted the instances");
    await until("both attempts ended", 5000, () => firstTwo.every((x) => ended.has(x)));
    // b leaves etcd: with no call running on it, its channel is closed at once, and the
    // picker is rebuilt on a timer. Retries that avoid a are picked in between, as a retry
    // timer due before the rebuild's would be.
    const retries: { on?: string; threw?: string }[] = [];
    const close = instanceB.channel.close.bind(instanceB.channel);
    instanceB.channel.close = () => {
      close();
      queueMicrotask(() => {
        for (let i = 0; i < 2; i++) {
          try {
            const retry = attempt([instanceA]);
            retries.push({ on: retry.instance?.endpoint.addr ?? "queued" });
          } catch (error) {
            retries.push({ threw: (error as Error).message });
          }
        }
      });
    };
    await etcd.delete(endpointKey(service, b.addr));
    await until("b's channel closed and two retries picked", 5000, () => retries.length === 2);
    assert.equal(instanceB.state, grpc.connectivityState.SHUTDOWN);
    for (const retry of retries) {
      assert.equal(retry.threw, undefined);
      assert.notEqual(retry.on, b.addr);
    }
    // Once the picker is rebuilt, the queued one goes to a, the only instance left.
    const [first, second] = attempts.slice(2);
    await until(
      "both retries bound to a",
      5000,
      () => first!.instance === instanceA && second!.instance === instanceA,
    );
    assert.ok(!ended.has(first!) && !ended.has(second!));
  } finally {
    for (const x of attempts) if (!ended.has(x)) x.cancel(grpc.status.CANCELLED, "test over");
    await until("every attempt ended", 5000, () => attempts.every((x) => ended.has(x)));
    greeter.close();
    a.close();
    b.close();
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "dial: calls retried with no backoff while an instance leaves etcd and comes back, again and again, all settle",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = memoryClient();
  const service = "svc/coming-going";
  await using _a = await startGreeter(etcd, service, "a", { drainMs: 0 }, {
    failWith: () => grpc.status.UNAVAILABLE,
  });
  const b = await startLoneGreeter("b");
  const retryPolicy = {
    ...RETRY_UNAVAILABLE,
    maxAttempts: 5,
    initialBackoff: "0s",
    maxBackoff: "0s",
    backoffMultiplier: 1,
  };
  const greeter = dial(etcd, service, Greeter, {
    channelOptions: serviceConfig({
      methodConfig: [{ name: [{ service: "helloworld.Greeter" }], retryPolicy }],
    }),
    onError: () => {},
  });
  const { load } = running({ load: new Load(greeter, { workers: 20, pauseMs: 0 }) });
  try {
    for (let cycle = 0; cycle < 30; cycle++) {
      await etcd.put(endpointKey(service, b.addr), encodeEndpoint({ addr: b.addr }));
      const before = b.calls;
      await until("b answers", 5000, () => b.calls > before + 5);
      const failed = load.failures.length;
      await etcd.delete(endpointKey(service, b.addr));
      await until("a call fails while b is away", 5000, () => load.failures.length > failed);
    }
    await stopLoads();
    const answered = load.records.length - load.failures.length;
    console.log(
      `${load.records.length} calls over 30 comings and goings of b: ${answered} answered by b, ` +
        `${load.failures.length} failed by a`,
    );
    // Every call settled (stop() waited for each), with b's answer or a's failure.
    for (const f of load.failures) assert.ok(failedBy(f.details, "a"), String(f.details));
    assert.ok(answered > 30 * 5, `${answered} answered`);
  } finally {
    await stopLoads();
    greeter.close();
    b.close();
  }
});
