import assert from "node:assert/strict";
import { decodeEndpoint, type EtcdClient, register, type RegistrationState } from "../mod.ts";
import { memoryClient, MemoryEtcd } from "../testing.ts";
import { fakeTime } from "./fake_time.ts";
import { withOverrides } from "./overrides.ts";

Deno.test("register() puts <service>/<addr> with a lease of the TTL and the Go value", async () => {
  await using client = memoryClient();
  await using reg = await register(client, "svc/a", { addr: "10.0.0.1:80", metadata: { w: 2 } }, {
    ttl: 3,
  });
  const { kvs } = await client.get("svc/a/10.0.0.1:80");
  assert.equal(kvs.length, 1);
  assert.equal(kvs[0]!.lease, reg.lease);
  assert.equal(
    new TextDecoder().decode(kvs[0]!.value),
    '{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"w":2}}',
  );
  assert.equal(await client.keepAlive(reg.lease), 3);
});

Deno.test("register() keeps the lease alive far past its TTL", async () => {
  using clock = fakeTime();
  await using client = memoryClient();
  await using reg = await register(client, "svc/a", { addr: "a:1" }, { ttl: 2 });
  const lease = reg.lease;
  await clock.tick(60_000);
  assert.equal(reg.lease, lease);
  assert.equal((await client.get(reg.key)).kvs.length, 1);
  assert.equal(reg.state, "registered");
});

Deno.test("register() puts the key back at once when someone deletes it", async () => {
  using _clock = fakeTime();
  await using etcd = new MemoryEtcd();
  await using client = etcd.client();
  await using other = etcd.client();
  await using reg = await register(client, "svc/a", { addr: "a:1" }, { ttl: 10 });
  const lease = reg.lease;
  await other.delete(reg.key);
  await _clock.settle();
  const { kvs } = await other.get(reg.key);
  assert.equal(kvs.length, 1, "key is back");
  assert.equal(kvs[0]!.lease, lease, "on the same lease, which is still alive");
});

Deno.test("register() grants a new lease when its lease is revoked from outside", async () => {
  using clock = fakeTime();
  await using etcd = new MemoryEtcd();
  await using client = etcd.client();
  await using other = etcd.client();
  const states: RegistrationState[] = [];
  await using reg = await register(client, "svc/a", { addr: "a:1" }, {
    ttl: 10,
    onStateChange: (s) => states.push(s),
    onError: () => {},
  });
  const old = reg.lease;
  await other.revokeLease(old);
  await clock.tick(3000); // backoff cap
  const { kvs } = await other.get(reg.key);
  assert.equal(kvs.length, 1);
  assert.notEqual(kvs[0]!.lease, old);
  assert.equal(kvs[0]!.lease, reg.lease);
  assert.deepEqual(states, ["registered", "recovering", "registered"]);
});

Deno.test("register() recovers when cut off longer than the TTL, within the backoff cap", async () => {
  using clock = fakeTime();
  await using etcd = new MemoryEtcd();
  await using client = etcd.client();
  await using observer = etcd.client();
  const errors: Error[] = [];
  await using reg = await register(client, "svc/a", { addr: "a:1" }, {
    ttl: 3,
    onError: (e) => errors.push(e),
  });
  client.disconnect();
  await clock.tick(10_000);
  assert.equal((await observer.get(reg.key)).kvs.length, 0, "lease expired on the server");
  assert.ok(errors.length > 0, "errors were reported while cut off");
  client.reconnect();
  await clock.tick(3000 + 1000);
  assert.equal((await observer.get(reg.key)).kvs.length, 1, "back within backoff cap + 1 s");
  assert.equal(reg.state, "registered");
});

Deno.test("close() revokes the lease: the key disappears at once and timers stop", async () => {
  await using client = memoryClient();
  const reg = await register(client, "svc/a", { addr: "a:1" });
  await reg.close();
  await reg.close(); // idempotent
  assert.equal((await client.get(reg.key)).kvs.length, 0);
  assert.equal(reg.state, "closed");
  assert.deepEqual(client.server.stats(), { watches: 0, leases: 0, clients: 1 });
});

Deno.test("aborting the signal closes the registration", async () => {
  await using client = memoryClient();
  const ac = new AbortController();
  const states: RegistrationState[] = [];
  const reg = await register(client, "svc/a", { addr: "a:1" }, {
    signal: ac.signal,
    onStateChange: (s) => states.push(s),
  });
  ac.abort();
  await reg.close(); // waits for the close the abort started
  assert.equal((await client.get(reg.key)).kvs.length, 0);
  assert.deepEqual(states, ["registered", "closed"]);
});

Deno.test("register() rejects an already aborted signal, and aborting during the first attempt", async () => {
  await using client = memoryClient();
  await assert.rejects(
    register(client, "svc/a", { addr: "a:1" }, { signal: AbortSignal.abort(new Error("stop")) }),
    /stop/,
  );
  client.disconnect();
  const ac = new AbortController();
  const pending = register(client, "svc/a", { addr: "a:1" }, { signal: ac.signal });
  setTimeout(() => ac.abort(new Error("gave up")), 10);
  await assert.rejects(pending, /gave up/);
});

Deno.test("register() with etcd unreachable rejects after `timeout`, naming the hosts", async () => {
  using clock = fakeTime();
  await using client = memoryClient();
  client.disconnect();
  const pending = register(client, "svc/a", { addr: "a:1" }, { timeout: 2000 });
  const check = assert.rejects(
    pending,
    /could not register "svc\/a\/a:1" on etcd at memory within 2000 ms: memory etcd: connection lost/,
  );
  await clock.tick(2000);
  await check;
  assert.deepEqual(client.server.stats().leases, 0);
});

Deno.test("register() keeps the last failure's reason when the timeout cuts an attempt short", async () => {
  using clock = fakeTime();
  await using client = memoryClient();
  client.disconnect();
  let grants = 0;
  // Refused at once, then no answer at all: the message still says why the first failed.
  const stalling = new Proxy(client, {
    get(target, name) {
      if (name === "grantLease") {
        return (ttl: number) =>
          grants++ === 0 ? target.grantLease(ttl) : new Promise<string>(() => {});
      }
      const value = Reflect.get(target, name, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  const pending = register(stalling, "svc/a", { addr: "a:1" }, { timeout: 2000 });
  const check = assert.rejects(
    pending,
    /^Error: register\(\): could not register "svc\/a\/a:1" on etcd at memory within 2000 ms: memory etcd: connection lost/,
  );
  await clock.tick(2000);
  await check;
  assert.equal(grants, 2);
});

Deno.test('register() says "no answer" when etcd never answered before the timeout', async () => {
  using clock = fakeTime();
  await using client = memoryClient();
  const silent = new Proxy(client, {
    get(target, name) {
      if (name === "grantLease") return () => new Promise<string>(() => {});
      const value = Reflect.get(target, name, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  const pending = register(silent, "svc/a", { addr: "a:1" }, { timeout: 2000 });
  const check = assert.rejects(
    pending,
    (e: Error) => e.message.endsWith("within 2000 ms: no answer"),
  );
  await clock.tick(2000);
  await check;
});

Deno.test("register() names the bad argument and value", async (t) => {
  await using client = memoryClient();
  const cases: [string, () => Promise<unknown>, ErrorConstructor, RegExp][] = [
    [
      "empty service",
      () => register(client, "", { addr: "a:1" }),
      TypeError,
      /service must be a non-empty string, got ""/,
    ],
    [
      "service with space",
      () => register(client, "a b", { addr: "a:1" }),
      TypeError,
      /service must not contain whitespace.*"a b"/,
    ],
    [
      "service ending in /",
      () => register(client, "svc/", { addr: "a:1" }),
      TypeError,
      /must not end with "\/"/,
    ],
    [
      "addr without port",
      () => register(client, "svc", { addr: "host" }),
      TypeError,
      /endpoint.addr must be host:port, got "host"/,
    ],
    [
      "port 0",
      () => register(client, "svc", { addr: "host:0" }),
      TypeError,
      /endpoint.addr must end in a port from 1 to 65535, got "host:0"/,
    ],
    [
      "port 70000",
      () => register(client, "svc", { addr: "host:70000" }),
      TypeError,
      /port from 1 to 65535, got "host:70000"/,
    ],
    [
      "ttl 1",
      () => register(client, "svc", { addr: "a:1" }, { ttl: 1 }),
      RangeError,
      /options.ttl must be an integer number of seconds from 2 to 6442450, got 1/,
    ],
    [
      "ttl whose renewal period overflows a timer",
      () => register(client, "svc", { addr: "a:1" }, { ttl: 6_442_451 }),
      RangeError,
      /options.ttl must be an integer number of seconds from 2 to 6442450, got 6442451/,
    ],
    [
      "timeout past a timer's range",
      () => register(client, "svc", { addr: "a:1" }, { timeout: 2 ** 31 }),
      RangeError,
      /options.timeout must be a positive number of ms up to 2147483647, got 2147483648/,
    ],
    [
      "ttl 2.5",
      () => register(client, "svc", { addr: "a:1" }, { ttl: 2.5 }),
      RangeError,
      /got 2.5/,
    ],
    [
      "key outside prefix",
      () => register(client, "svc", { addr: "a:1" }, { key: "other/x" }),
      TypeError,
      /options.key must start with "svc\/".*"other\/x"/,
    ],
    [
      "key equal to prefix",
      () => register(client, "svc", { addr: "a:1" }, { key: "svc/" }),
      TypeError,
      /options.key/,
    ],
    [
      "timeout 0",
      () => register(client, "svc", { addr: "a:1" }, { timeout: 0 }),
      RangeError,
      /options.timeout/,
    ],
  ];
  for (const [name, call, type, message] of cases) {
    await t.step(name, async () => {
      await assert.rejects(call(), (e: Error) => {
        assert.ok(e instanceof type, `${e.name}: ${e.message}`);
        assert.match(e.message, message);
        return true;
      });
    });
  }
  assert.equal(client.server.stats().leases, 0, "nothing was granted");
});

Deno.test("register() with a custom key under the prefix is found by its value", async () => {
  await using client = memoryClient();
  await using reg = await register(client, "svc", { addr: "a:1" }, { key: "svc/instance-7" });
  const { kvs } = await client.get("svc/instance-7");
  assert.deepEqual(decodeEndpoint(reg.key, kvs[0]!.value), { addr: "a:1" });
});

Deno.test("a registration whose client is closed stops and says so", async () => {
  using clock = fakeTime();
  await using etcd = new MemoryEtcd();
  const client = etcd.client();
  const errors: Error[] = [];
  const reg = await register(client, "svc/a", { addr: "a:1" }, {
    ttl: 3,
    onError: (e) => errors.push(e),
  });
  await client.close();
  await clock.tick(5000);
  assert.equal(reg.state, "closed");
  assert.match(errors[0]!.message, /client was closed; "svc\/a\/a:1" is no longer kept alive/);
  const count = errors.length;
  await clock.tick(60_000);
  assert.equal(errors.length, count, "no retry loop");
  await reg.close();
  await assert.rejects(register(client, "svc/a", { addr: "a:1" }), /the etcd client is closed/);
});

Deno.test("register() puts back a key deleted while its watch was cut off and the history compacted", async () => {
  using clock = fakeTime();
  await using etcd = new MemoryEtcd();
  await using client = etcd.client();
  await using other = etcd.client();
  const errors: Error[] = [];
  await using reg = await register(client, "svc/a", { addr: "a:1" }, {
    ttl: 30,
    onError: (e) => errors.push(e),
  });
  const lease = reg.lease;
  client.disconnect();
  await clock.tick(1000);
  await other.delete(reg.key);
  await other.put("unrelated", "x");
  etcd.compact(); // the delete is no longer in etcd's history
  client.reconnect();
  await clock.tick(3000 + 1000); // the watch's backoff cap, and a little
  const { kvs } = await other.get(reg.key);
  assert.equal(kvs.length, 1, "the key is back");
  assert.equal(kvs[0]!.lease, lease, "on the same lease, which outlived the cut-off");
  assert.equal(reg.state, "registered");
  assert.ok(errors.length > 0, "the cut-off was reported");
});

Deno.test("register() goes on when onError or onStateChange throws", async () => {
  using clock = fakeTime();
  await using etcd = new MemoryEtcd();
  await using client = etcd.client();
  await using other = etcd.client();
  let calls = 0;
  const boom = () => {
    calls++;
    throw new Error("handler bug");
  };
  await using reg = await register(client, "svc/a", { addr: "a:1" }, {
    ttl: 10,
    onError: boom,
    onStateChange: boom,
  });
  await other.revokeLease(reg.lease);
  await clock.tick(3000);
  assert.equal((await other.get(reg.key)).kvs.length, 1, "healed despite the handlers");
  assert.equal(reg.state, "registered");
  assert.ok(calls >= 3, `handlers called ${calls} times`);
});

Deno.test("register() leaves a value someone else wrote until it must put the key again, then writes its own", async () => {
  using clock = fakeTime();
  await using etcd = new MemoryEtcd();
  await using client = etcd.client();
  await using other = etcd.client();
  await using reg = await register(client, "svc/a", { addr: "a:1", metadata: { weight: 1 } }, {
    ttl: 10,
    onError: () => {},
  });
  const value = async () => new TextDecoder().decode((await other.get(reg.key)).kvs[0]!.value);
  const own = await value();
  const edited = '{"Op":0,"Addr":"a:1","Metadata":{"weight":3}}';
  await other.put(reg.key, edited, reg.lease);
  await clock.tick(30_000); // renewals go on; nothing puts the key
  assert.equal(await value(), edited);
  await other.revokeLease(reg.lease); // the key goes with the lease
  await clock.tick(3000);
  assert.equal(await value(), own);
});

Deno.test("register() puts the key again when a delete arrives while its put is in flight", async () => {
  using clock = fakeTime();
  await using etcd = new MemoryEtcd();
  await using real = etcd.client();
  await using other = etcd.client();
  let puts = 0;
  let deletesHandled = 0;
  let handled = Promise.withResolvers<void>();
  // The registration's client: its second put (the heal) sees the key deleted again by someone
  // else, and the registration handle that delete, before the put's answer arrives.
  const overrides: Partial<EtcdClient> = {
    put: async (key, value, lease) => {
      const revision = await real.put(key, value, lease);
      if (++puts === 2) {
        handled = Promise.withResolvers<void>();
        await other.delete(key);
        await handled.promise;
      }
      return revision;
    },
    watch: async function* (key, options) {
      for await (const batch of real.watch(key, options)) {
        yield batch;
        // Runs once the registration asks for more, i.e. after it handled this batch.
        if (batch.events.some((event) => event.type === "delete")) {
          deletesHandled++;
          handled.resolve();
        }
      }
    },
  };
  const client = withOverrides(real, overrides);
  await using reg = await register(client, "svc/a", { addr: "a:1" }, { ttl: 10 });
  await other.delete(reg.key);
  await clock.tick(100);
  assert.ok(puts >= 2 && deletesHandled >= 2, `${puts} puts, ${deletesHandled} deletes handled`);
  await clock.tick(5000);
  assert.equal((await other.get(reg.key)).kvs.length, 1, "the key is back after the second delete");
  assert.equal(reg.state, "registered");
});

Deno.test("register() with the longest TTL renews on time, not in a loop", async () => {
  using clock = fakeTime();
  await using client = memoryClient();
  let renewals = 0;
  const keepAlive = client.keepAlive.bind(client);
  client.keepAlive = (lease: string) => {
    renewals++;
    return keepAlive(lease);
  };
  await using reg = await register(client, "svc/a", { addr: "a:1" }, { ttl: 6_442_450 });
  await clock.tick(3_600_000);
  assert.equal(renewals, 0, "no renewal within the first hour of a 74-day lease");
  await clock.tick(6_442_450_000 / 3);
  assert.equal(renewals, 1, "one renewal after TTL/3");
  assert.equal((await client.get(reg.key)).kvs.length, 1);
});

Deno.test("register() backs off a key watch that opens and breaks at once", async () => {
  using clock = fakeTime();
  await using real = memoryClient();
  let opens = 0;
  const client = withOverrides(real, {
    watch: async function* () {
      opens++;
      yield { revision: real.server.revision, events: [] }; // "created", then the stream breaks
      throw new Error("the watch broke");
    },
  });
  await using _reg = await register(client, "svc/a", { addr: "a:1" }, { onError: () => {} });
  await clock.tick(60_000);
  assert.ok(opens > 10 && opens < 100, `${opens} key watch opens in 60 s`);
});
