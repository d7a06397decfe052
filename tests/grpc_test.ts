/**
 * serve() and dial() with real etcd and greeter servers in separate processes.
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { protoPath as healthProto } from "grpc-health-check";
import { type Balancer, connect, p2c, register, resolve, roundRobin } from "../mod.ts";
import { dial, registerEtcdResolver, serve } from "../grpc.ts";
import { memoryClient } from "../testing.ts";
import { passedOnStatus } from "../src/grpc/status.ts";
import { Greeter, sayHello, startGreeter } from "../harness/greeter.ts";
import { startEtcd, waitForMetric } from "../harness/etcd_server.ts";

const WATCHERS = "etcd_debugging_mvcc_watcher_total";
import { type GreeterProcess, spawnGreeter } from "../harness/greeter_process.ts";
import { Load, untilAllAnswer } from "../harness/load.ts";
import { sleep, until } from "../harness/wait.ts";

const SERVICE = "svc/greeter";

async function spawnMany(etcd: string, names: string[], ttl = 2): Promise<GreeterProcess[]> {
  return await Promise.all(names.map((name) => spawnGreeter(etcd, SERVICE, name, { ttl })));
}

Deno.test("grpc: 300 calls over three instances give each 100 ± 10", async () => {
  await using etcd = await startEtcd();
  const servers = await spawnMany(etcd.endpoint, ["a", "b", "c"]);
  try {
    await using client = connect({ hosts: etcd.endpoint });
    const greeter = dial(client, SERVICE, Greeter);
    try {
      // Wait until all three are connected, as a long-running client would be.
      await untilAllAnswer(greeter, 3);
      const counts = new Map<string, number>();
      for (let i = 0; i < 300; i++) {
        const { instance } = await sayHello(greeter, { name: "x" });
        counts.set(instance, (counts.get(instance) ?? 0) + 1);
      }
      console.log(Object.fromEntries(counts));
      assert.deepEqual([...counts.keys()].sort(), ["a", "b", "c"]);
      for (const [name, n] of counts) assert.ok(n >= 90 && n <= 110, `${name} served ${n}`);
    } finally {
      greeter.close();
    }
  } finally {
    for (const s of servers) await s[Symbol.asyncDispose]();
  }
});

Deno.test("grpc: a rolling restart under 100+ calls/s fails no call", async () => {
  await using etcd = await startEtcd();
  let servers = await spawnMany(etcd.endpoint, ["a1", "b1", "c1"]);
  const all = [...servers];
  try {
    await using client = connect({ hosts: etcd.endpoint });
    const greeter = dial(client, SERVICE, Greeter);
    try {
      await until(
        "warm",
        5000,
        async () => (await sayHello(greeter, { name: "w" })).instance !== "",
      );
      const load = new Load(greeter, { workers: 4, pauseMs: 20 });
      const started = Date.now();
      let exited = 0;
      for (const [i, old] of servers.entries()) {
        const fresh = await spawnGreeter(etcd.endpoint, SERVICE, old.name.replace("1", "2"));
        all.push(fresh);
        // The new instance takes calls before the old one stops.
        await until(`${fresh.name} answers`, 10_000, () => load.answeredBy(fresh.name) > 0);
        const stoppedAt = Date.now();
        old.kill("SIGTERM");
        const status = await old.status;
        assert.equal(status.code, 0, `${old.name} drained and exited cleanly`);
        exited = Date.now();
        // Under load: calls were answered while it drained.
        const during = load.records.filter((r) =>
          r.instance && r.at >= stoppedAt && r.at <= exited
        );
        assert.ok(during.length > 0, `no call answered while ${old.name} drained`);
        servers = servers.with(i, fresh);
      }
      // Calls go on after the last restart, to every new instance.
      await until(
        "every new instance answers after the last restart",
        10_000,
        () => ["a2", "b2", "c2"].every((name) => load.answeredBy(name, exited) > 0),
      );
      await load.stop();
      const seconds = (Date.now() - started) / 1000;
      const rate = load.records.length / seconds;
      console.log(
        `${load.records.length} calls in ${seconds.toFixed(1)} s (${
          rate.toFixed(0)
        }/s), ${load.failures.length} failed`,
      );
      assert.deepEqual(load.failures, []);
    } finally {
      greeter.close();
    }
  } finally {
    for (const s of all) await s[Symbol.asyncDispose]();
  }
});

Deno.test("grpc: a new instance receives calls within 1 s of registering", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  await using _a = await startGreeter(client, SERVICE, "a", { drainMs: 0 });
  const greeter = dial(client, SERVICE, Greeter);
  try {
    await sayHello(greeter, { name: "w" });
    const load = new Load(greeter, { workers: 2, pauseMs: 5 });
    const registeredAt = Date.now();
    await using _b = await startGreeter(client, SERVICE, "b", { drainMs: 0 });
    // The figure is printed; the bound only ends a test that waits in vain.
    const took = await until("b answers", 10_000, () => load.answeredBy("b") > 0);
    await load.stop();
    console.log(
      `first call to the new instance ${took} ms after it registered (${
        Date.now() - registeredAt
      } ms)`,
    );
    assert.deepEqual(load.failures, []);
  } finally {
    greeter.close();
  }
});

Deno.test("grpc: with no instance, waitForReady waits for one and a plain call fails fast", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const greeter = dial(client, SERVICE, Greeter);
  try {
    const { TRANSIENT_FAILURE } = grpc.connectivityState;
    const state = () => greeter.getChannel().getConnectivityState(false);
    await until(
      "the resolver has seen the empty service",
      5000,
      () => state() === TRANSIENT_FAILURE,
    );
    // Fails fast: UNAVAILABLE saying why, not DEADLINE_EXCEEDED after its (far) deadline.
    const start = Date.now();
    await assert.rejects(
      sayHello(greeter, { name: "x" }, { deadline: Date.now() + 30_000 }),
      (e: grpc.ServiceError) => {
        assert.equal(e.code, grpc.status.UNAVAILABLE);
        assert.match(e.details, /no ready instance of "svc\/greeter"/);
        return true;
      },
    );
    console.log(`the plain call failed after ${Date.now() - start} ms`);
    let settled = false;
    const waiting = sayHello(greeter, { name: "x" }, {
      deadline: Date.now() + 30_000,
      waitForReady: true,
    }).finally(() => settled = true);
    // The scenario: a while with no instance, during which the call keeps waiting.
    await sleep(500);
    assert.equal(settled, false, "the waitForReady call ended with no instance");
    await using _a = await startGreeter(client, SERVICE, "late", { drainMs: 0 });
    assert.equal((await waiting).instance, "late");
    await _a.close();
    await until("the channel has seen the instance go", 5000, () => state() === TRANSIENT_FAILURE);
    await assert.rejects(
      sayHello(greeter, { name: "x" }, { deadline: Date.now() + 500, waitForReady: true }),
      (e: grpc.ServiceError) => e.code === grpc.status.DEADLINE_EXCEEDED,
    );
  } finally {
    greeter.close();
  }
});

Deno.test("grpc: health answers SERVING while registered and NOT_SERVING during drain", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const serving = await startGreeter(client, SERVICE, "h", { drainMs: 1500 });
  const definition = protoLoader.loadSync(healthProto, { keepCase: true, enums: String });
  // deno-lint-ignore no-explicit-any
  const Health = (grpc.loadPackageDefinition(definition) as any).grpc.health.v1.Health;
  const health = new Health(serving.addr, grpc.credentials.createInsecure());
  const check = (service: string) =>
    new Promise<string>((resolve, reject) =>
      health.Check(
        { service },
        (e: Error | null, r: { status: string }) => e ? reject(e) : resolve(r.status),
      )
    );
  try {
    assert.equal(await check(SERVICE), "SERVING");
    assert.equal(await check(""), "SERVING");
    const closing = serving.close();
    assert.equal(await check(SERVICE), "NOT_SERVING");
    assert.equal(await check(""), "NOT_SERVING");
    await until(
      "deregistered",
      5000,
      async () => (await client.get(serving.registration.key)).kvs.length === 0,
    );
    // Deregistered before shutdown: the server still answers, NOT_SERVING, while it drains.
    assert.equal(await check(SERVICE), "NOT_SERVING");
    assert.equal(await check(""), "NOT_SERVING");
    await closing;
  } finally {
    health.close();
    await serving.close();
  }
});

Deno.test("grpc: bad input names the argument", async (t) => {
  await using client = connect({ hosts: "127.0.0.1:1" });
  const server = new grpc.Server();
  await t.step("bind", async () => {
    await assert.rejects(
      serve(server, client, SERVICE, { bind: "nope" }),
      /options.bind must be "host:port".*"nope"/,
    );
    await assert.rejects(
      serve(server, client, SERVICE, { bind: "127.0.0.1:99999" }),
      /options.bind/,
    );
  });
  await t.step("advertise", async () => {
    await assert.rejects(
      serve(server, client, SERVICE, { advertise: "host:0" }),
      /options.advertise must end in a port from 1 to 65535, got "host:0"/,
    );
  });
  await t.step("timings", async () => {
    await assert.rejects(
      serve(server, client, SERVICE, { timeout: 0 }),
      /options.timeout must be a positive number of ms up to 2147483647, got 0/,
    );
    await assert.rejects(
      serve(server, client, SERVICE, { timeout: -5 }),
      /options.timeout must be a positive number of ms up to 2147483647, got -5/,
    );
    await assert.rejects(
      serve(server, client, SERVICE, { ttl: 1 }),
      /options.ttl must be an integer number of seconds from 2 to 6442450, got 1/,
    );
    await assert.rejects(
      serve(server, client, SERVICE, { drainMs: -1 }),
      /options.drainMs must be a non-negative number of ms up to 2147483647, got -1/,
    );
  });
  await t.step("service", async () => {
    await assert.rejects(
      serve(server, client, "bad name", {}),
      /service must not contain whitespace/,
    );
    assert.throws(() => dial(client, "", Greeter), /service must be a non-empty string/);
  });
  await t.step("Ctor", () => {
    assert.throws(
      () => dial(client, SERVICE, class NotAClient {} as never),
      /Ctor must be a grpc-js client class/,
    );
    assert.throws(
      () => dial(client, SERVICE, undefined as never),
      /Ctor must be a grpc-js client class.*undefined/,
    );
  });
  await t.step("server", async () => {
    await assert.rejects(serve({} as never, client, SERVICE), /server must be a grpc-js Server/);
  });
});

Deno.test("grpc: dial() shares the resolve() watch and close() releases it", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  await using _a = await startGreeter(client, SERVICE, "a", { drainMs: 0 });
  const base = await waitForMetric(etcd, WATCHERS, 1); // the registration's key watch
  const it = resolve(client, SERVICE);
  await it.next();
  const g1 = dial(client, SERVICE, Greeter);
  const g2 = dial(client, SERVICE, Greeter);
  assert.equal((await sayHello(g1, { name: "x" })).instance, "a");
  assert.equal((await sayHello(g2, { name: "x" })).instance, "a");
  await waitForMetric(etcd, WATCHERS, base + 1);
  g1.close();
  g2.close();
  await it.return();
  await waitForMetric(etcd, WATCHERS, base); // released
});

Deno.test("grpc: the etcd:/// resolver feeds grpc-js round_robin and restarts after idle", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  using _binding = registerEtcdResolver(client);
  await using _a = await startGreeter(client, SERVICE, "a", { drainMs: 0 });
  await using _b = await startGreeter(client, SERVICE, "b", { drainMs: 0 });
  const base = await waitForMetric(etcd, WATCHERS, 2); // the registrations' key watches
  const greeter = new Greeter(`etcd:///${SERVICE}`, grpc.credentials.createInsecure(), {
    "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
    "grpc.client_idle_timeout_ms": 1000,
  });
  try {
    const counts = new Map<string, number>();
    await until("both instances answer", 5000, async () => {
      const { instance } = await sayHello(greeter, { name: "x" });
      counts.set(instance, (counts.get(instance) ?? 0) + 1);
      return counts.size === 2;
    });
    await waitForMetric(etcd, WATCHERS, base + 1); // one watch
    // Idle: grpc-js destroys the resolver, which releases the watch.
    await waitForMetric(etcd, WATCHERS, base, 5000);
    // The next call restarts it.
    await using _c = await startGreeter(client, SERVICE, "c", { drainMs: 0 });
    const seen = new Set<string>();
    await until("all three after restart", 5000, async () => {
      seen.add((await sayHello(greeter, { name: "y" })).instance);
      return seen.size === 3;
    });
    await waitForMetric(etcd, WATCHERS, base + 2); // watching again
  } finally {
    greeter.close();
  }
});

Deno.test("grpc: registerEtcdResolver() rejects a bad or taken scheme", () => {
  const client = { hosts: [] } as never;
  assert.throws(
    () => registerEtcdResolver(client, { scheme: "Bad Scheme" }),
    /options.scheme must be a lower-case URI scheme, got "Bad Scheme"/,
  );
  using _first = registerEtcdResolver(client, { scheme: "etcd-test" });
  assert.throws(() => registerEtcdResolver(client, { scheme: "etcd-test" }), /already bound/);
});

Deno.test("grpc: an etcd:/// target that cannot resolve fails its calls UNAVAILABLE, saying why", async () => {
  await using client = memoryClient();
  const binding = registerEtcdResolver(client, { scheme: "etcd-unbound" });
  const fails = async (target: string, details: RegExp) => {
    const greeter = new Greeter(target, grpc.credentials.createInsecure());
    try {
      await assert.rejects(
        sayHello(greeter, { name: "x" }, { deadline: Date.now() + 2000 }),
        (e: grpc.ServiceError) => {
          assert.equal(e.code, grpc.status.UNAVAILABLE);
          assert.match(e.details, details);
          return true;
        },
      );
    } finally {
      greeter.close();
    }
  };
  // A service name resolve() refuses.
  await fails("etcd-unbound:///bad name", /service must not contain whitespace/);
  // The scheme after its binding was disposed.
  binding[Symbol.dispose]();
  await fails(
    "etcd-unbound:///svc/greeter",
    /no etcd client is bound to the etcd-unbound: scheme \(see registerEtcdResolver\)/,
  );
});

Deno.test("grpc: p2c shifts load away from a slow instance; roundRobin does not", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  await using _fast = await startGreeter(client, SERVICE, "fast", { drainMs: 0 });
  // Slow enough that the fast instance stays far faster on a loaded machine, where its own
  // calls take several ms: p2c's share to the slow one is about fast latency / slow latency.
  await using _slow = await startGreeter(client, SERVICE, "slow", { drainMs: 0 }, {
    delayMs: 200,
  });
  const share = async (balancer: Balancer): Promise<number> => {
    const greeter = dial(client, SERVICE, Greeter, { balancer });
    try {
      await untilAllAnswer(greeter, 2);
      const load = new Load(greeter, { workers: 8, pauseMs: 0 });
      await sleep(1500);
      await load.stop();
      assert.deepEqual(load.failures, []);
      return load.answeredBy("slow") / load.records.length;
    } finally {
      greeter.close();
    }
  };
  const rr = await share(roundRobin);
  const twoChoices = await share(p2c);
  console.log(
    `share of calls to the slow instance: roundRobin ${rr.toFixed(2)}, p2c ${
      twoChoices.toFixed(2)
    }`,
  );
  assert.ok(rr > 0.4 && rr < 0.6, `roundRobin sent ${rr} to the slow instance`);
  assert.ok(twoChoices < 0.2, `p2c sent ${twoChoices} to the slow instance`);
});

Deno.test("grpc: a call cut off by a broken pipe is passed on as UNAVAILABLE, other statuses as they are", () => {
  const metadata = new grpc.Metadata();
  const broken = {
    code: grpc.status.INTERNAL,
    details: "Received RST_STREAM with code 2 triggered by internal client error: write EPIPE",
    metadata,
  };
  assert.deepEqual(passedOnStatus(broken), { ...broken, code: grpc.status.UNAVAILABLE });
  const ended = {
    ...broken,
    details:
      "Received RST_STREAM with code 2 triggered by internal client error: This socket has been ended by the other party",
  };
  assert.deepEqual(passedOnStatus(ended), { ...ended, code: grpc.status.UNAVAILABLE });
  for (
    const kept of [
      {
        code: grpc.status.INTERNAL,
        details: "Received RST_STREAM with code 2 (Internal server error)",
        metadata,
      },
      {
        code: grpc.status.INTERNAL,
        details: "the handler failed: write EPIPE to its log",
        metadata,
      },
      { code: grpc.status.UNAVAILABLE, details: "read ECONNRESET", metadata },
      { code: grpc.status.OK, details: "OK", metadata },
    ]
  ) {
    assert.equal(passedOnStatus(kept), kept);
  }
});

Deno.test("grpc: the etcd:/// resolver restarted after idle forgets an instance that left while it was idle", async () => {
  await using etcd = memoryClient();
  using _bound = registerEtcdResolver(etcd, { scheme: "idle-test" });
  const a = await register(etcd, "svc/r", { addr: "10.0.0.1:1" });
  await using _b = await register(etcd, "svc/r", { addr: "10.0.0.2:1" });
  let published: string[] = [];
  let updates = 0;
  const listener = (result: { value?: { addresses: { host: string; port: number }[] }[] }) => {
    updates++;
    published = (result.value ?? []).map((e) => `${e.addresses[0]!.host}:${e.addresses[0]!.port}`)
      .sort();
    return true;
  };
  const resolver = grpc.experimental.createResolver(
    { scheme: "idle-test", path: "/svc/r" },
    listener as unknown as Parameters<typeof grpc.experimental.createResolver>[1],
    {},
  );
  resolver.updateResolution();
  await until("both published", 5000, () => published.length === 2);
  resolver.destroy(); // as grpc-js does after grpc.client_idle_timeout_ms
  await a.close(); // 10.0.0.1 leaves while the resolver is idle
  const before = updates;
  resolver.updateResolution(); // the channel leaves idle
  await until("published again", 5000, () => updates > before);
  resolver.destroy();
  assert.deepEqual(published, ["10.0.0.2:1"]);
});

// The tests below leave grpc-js's subchannel backoff timers running after they end, and each
// timer may start one more when it fires: they run last, so that no sanitized test sees them.
// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "grpc: after SIGKILL no call goes to the dead instance within TTL + 1 s; failures are bounded",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  await using etcd = await startEtcd();
  const ttl = 2;
  const servers = await spawnMany(etcd.endpoint, ["a", "b", "c"], ttl);
  try {
    await using client = connect({ hosts: etcd.endpoint });
    const greeter = dial(client, SERVICE, Greeter);
    try {
      await untilAllAnswer(greeter, 3);
      const workers = 4;
      const load = new Load(greeter, { workers, pauseMs: 10 });
      // The instance to kill takes its share of the load when it dies.
      await until(
        "all three answer under load",
        5000,
        () => ["a", "b", "c"].every((name) => load.answeredBy(name) > 0),
      );
      const killedAt = Date.now();
      servers[0]!.kill("SIGKILL");
      await servers[0]!.status;
      await sleep((ttl + 1) * 1000 + 500);
      await load.stop();
      const late = load.answeredBy("a", killedAt + (ttl + 1) * 1000);
      console.log(
        `${load.records.length} calls, ${load.failures.length} failed:`,
        load.failures.map((f) => f.details),
      );
      assert.equal(late, 0, "no call answered by the dead instance");
      // Only calls in flight on the dead connection, or picked before it failed, may fail:
      // at most one per worker.
      assert.ok(load.failures.length <= workers, `${load.failures.length} failed calls`);
      // A connection that broke under a call is UNAVAILABLE (which callers retry), never INTERNAL.
      for (const f of load.failures) {
        assert.equal(f.code, grpc.status.UNAVAILABLE, `failed with ${f.code}: ${f.details}`);
      }
      assert.ok(
        load.answeredBy("b", killedAt + 1000) > 0 && load.answeredBy("c", killedAt + 1000) > 0,
      );
    } finally {
      greeter.close();
    }
  } finally {
    for (const s of servers) await s[Symbol.asyncDispose]();
  }
});
