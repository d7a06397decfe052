/**
 * Fault injection on real etcd processes: members killed, frozen and
 * restarted, clients cut off, history compacted, garbage written. Each scenario
 * ends with the oracle: every resolver's view equals what etcd holds. Each runs
 * over `connect()` (npm:etcd3, gRPC) and over `connectFetch()` (etcd's JSON
 * gateway over `fetch`): every etcd client of a scenario is made by the adapter
 * it runs over.
 *
 * `deno task test` runs the short version; `FAULTS_FULL=1` (`deno task
 * test:faults`) the full durations. `FAULTS_SEED` fixes the random choices,
 * `FAULTS_REPEAT` runs every scenario that many times.
 */
import assert from "node:assert/strict";
import {
  applyUpdates,
  connect as connectGrpc,
  decodeEndpoint,
  type Endpoint,
  EndpointDecodeError,
  type EtcdClient,
  register,
  type Registration,
  type Resolution,
  resolve,
  type Update,
} from "../mod.ts";
import { dial } from "../grpc.ts";
import { connectFetch } from "../fetch.ts";
import { memoryClient } from "../testing.ts";
import { Greeter, startGreeter } from "../harness/greeter.ts";
import { EtcdCluster } from "../harness/etcd_cluster.ts";
import { Load, untilAllAnswer } from "../harness/load.ts";
import { readMetric, startEtcd } from "../harness/etcd_server.ts";
import { TcpProxy } from "../harness/tcp_proxy.ts";
import { sleep, until } from "../harness/wait.ts";

const FULL = Deno.env.get("FAULTS_FULL") === "1";
const SEED = Number(Deno.env.get("FAULTS_SEED") ?? 1);
const REPEAT = Number(Deno.env.get("FAULTS_REPEAT") ?? 1);

/** How a scenario makes its etcd clients: the adapter under test. */
type Connect = (options: { hosts: string | string[]; dialTimeout?: number }) => EtcdClient;

/** The adapters every scenario runs over. */
const ADAPTERS: readonly { readonly label: string; readonly connect: Connect }[] = [
  { label: "connect()", connect: connectGrpc },
  { label: "connectFetch()", connect: connectFetch },
];

/**
 * The adapter of the scenario running now: scenario bodies and their helpers
 * make every etcd client with it. {@linkcode scenario} sets it for each run
 * (Deno runs the tests of a file one at a time); outside a run it throws.
 */
let connect: Connect = () => {
  throw new Error("faults_test: connect() called outside a scenario");
};

/**
 * Registers a scenario once per adapter, FAULTS_REPEAT times each (each run is
 * a test of its own), with {@linkcode connect} set to the adapter. Over
 * `connect()` the test has the name given; over `connectFetch()` the name ends
 * with "(over connectFetch())", so that e.g. `--filter "/faults 10.*over
 * connectFetch/"` picks one. `fullOnly` scenarios run only with FAULTS_FULL=1
 * (the full suite, `deno task test:faults`); `fetchFullOnly` does that for the run over
 * `connectFetch()` alone. `grpcjsBackoffTimer` turns Deno's op and resource
 * sanitizers off for the run over `connect()` alone: grpc-js leaves its
 * subchannel backoff timer after closing a channel whose connection failed
 * (tests/repro_grpcjs_backoff_timer.ts), which such a scenario does.
 */
function scenario(
  name: string,
  fn: () => Promise<void>,
  options: { fullOnly?: boolean; fetchFullOnly?: boolean; grpcjsBackoffTimer?: boolean } = {},
): void {
  for (const adapter of ADAPTERS) {
    const overFetch = adapter.connect === connectFetch;
    const fullOnly = options.fullOnly === true || (overFetch && options.fetchFullOnly === true);
    const named = overFetch ? `${name} (over ${adapter.label})` : name;
    // The full suite's own runs are not part of the short one at all (not "ignored" there).
    if (fullOnly && !FULL) continue;
    for (let run = 1; run <= REPEAT; run++) {
      Deno.test({
        name: REPEAT > 1 ? `${named} (run ${run} of ${REPEAT}, seed ${SEED})` : named,
        ...(options.grpcjsBackoffTimer && !overFetch
          ? { sanitizeOps: false, sanitizeResources: false }
          : {}),
        async fn() {
          const outside = connect;
          connect = adapter.connect;
          try {
            await fn();
          } finally {
            connect = outside;
          }
        },
      });
    }
  }
}

/** A seeded generator, so that a failing run can be repeated. */
function seeded(seed: number): () => number {
  let state = seed % 2147483647 || 1;
  return () => (state = (state * 48271) % 2147483647) / 2147483647;
}

/** A resolver whose batches are recorded and folded as they arrive. */
class Observer {
  view = new Map<string, Endpoint>();
  readonly batches: { at: number; updates: Update[] }[] = [];
  readonly errors: Error[] = [];
  /** etcd's revision read just after the first batch: every later change must be seen. */
  firstRevision = Infinity;
  readonly #updates: Resolution;
  readonly #done: Promise<void>;
  #first: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(client: EtcdClient, service: string) {
    const updates = resolve(client, service, { onError: (e) => this.errors.push(e) });
    this.#updates = updates;
    this.#done = (async () => {
      for await (const batch of updates) {
        if (this.batches.length === 0) this.#first = this.#readRevision(client, service);
        this.batches.push({ at: Date.now(), updates: batch });
        this.view = applyUpdates(this.view, batch);
      }
    })();
  }

  /** Reads etcd's revision once it can (the client may be cut off right after its first batch). */
  async #readRevision(client: EtcdClient, service: string): Promise<void> {
    while (!this.#closed) {
      try {
        this.firstRevision = (await client.getPrefix(`${service}/`)).revision;
        return;
      } catch {
        await sleep(50);
      }
    }
  }

  /** Deletes this observer saw for `key` at or after `since`. */
  deletesOf(key: string, since: number): number {
    return this.batches.filter((b) => b.at >= since)
      .flatMap((b) => b.updates)
      .filter((u) => u.op === "delete" && u.key === key).length;
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#updates.return();
    await this.#done;
    await this.#first;
  }
}

/** What etcd holds under the service, decoded as resolvers decode it. */
async function truth(client: EtcdClient, service: string): Promise<Map<string, Endpoint>> {
  const { kvs } = await client.getPrefix(`${service}/`);
  const view = new Map<string, Endpoint>();
  for (const kv of kvs) {
    const endpoint = decodeEndpoint(kv.key, kv.value);
    if (!(endpoint instanceof EndpointDecodeError)) view.set(kv.key, endpoint);
  }
  return view;
}

/** The oracle: every observer's view equals etcd's state, within `ms`. */
async function converge(
  observers: Observer[],
  client: EtcdClient,
  service: string,
  ms: number,
): Promise<number> {
  return await until("views converge with etcd", ms, async () => {
    const expected = JSON.stringify([...(await truth(client, service))].sort());
    return observers.every((o) => JSON.stringify([...o.view].sort()) === expected);
  });
}

/**
 * The history oracle: each observer's updates for each key, replayed, are exactly
 * what etcd's history says happened to that key after the observer's first read
 * (no change missing, none repeated, none out of order). etcd's history is read by
 * watching the prefix from revision 1 up to a sentinel key written now; it must
 * not be compacted. Call after `converge`. Waits until every observer has seen the
 * sentinel, so it also shows that each observer's watch is live.
 */
async function assertHistory(
  observers: Observer[],
  client: EtcdClient,
  service: string,
): Promise<void> {
  const sentinel = `${service}/~history-sentinel`;
  await client.put(sentinel, JSON.stringify({ Op: 0, Addr: "127.0.0.1:1" }));
  // A view can equal etcd's state while changes that cancel out are still on their way:
  // wait until every observer has seen the sentinel, which comes after all of them.
  await until(
    "observers caught up with the sentinel",
    10_000,
    () => observers.every((o) => o.view.has(sentinel)),
  );
  // Each observer's updates up to the sentinel: etcd's history below stops there too, and a
  // registration may heal its key just after it, before the wait above notices the sentinel.
  const seen = observers.map((o) => {
    const updates = o.batches.flatMap((b) => b.updates);
    return updates.slice(0, updates.findIndex((u) => u.key === sentinel));
  });
  // What a resolver emits for each event (bad values leave the view, deletes of absent keys
  // emit nothing), per key.
  const expected = new Map<string, { op: string; revision: number }[]>();
  const present = new Set<string>();
  const stop = new AbortController();
  try {
    for await (
      const batch of client.watch(`${service}/`, { startRevision: 1, signal: stop.signal })
    ) {
      for (const event of batch.events) {
        const key = event.type === "put" ? event.kv.key : event.key;
        if (key === sentinel) stop.abort();
        if (stop.signal.aborted) break;
        const ops = expected.get(key) ?? [];
        expected.set(key, ops);
        if (event.type === "put") {
          const endpoint = decodeEndpoint(key, event.kv.value);
          const revision = event.kv.modRevision;
          if (endpoint instanceof EndpointDecodeError) {
            if (present.delete(key)) ops.push({ op: "delete", revision });
          } else {
            present.add(key);
            ops.push({ op: `add ${JSON.stringify(endpoint)}`, revision });
          }
        } else if (present.delete(key)) {
          ops.push({ op: "delete", revision: event.modRevision });
        }
      }
    }
  } finally {
    stop.abort();
  }
  observers.forEach((observer, n) => {
    const got = new Map<string, string[]>();
    for (const u of seen[n]!) {
      const ops = got.get(u.key) ?? [];
      got.set(u.key, ops);
      ops.push(u.op === "add" ? `add ${JSON.stringify(u.endpoint)}` : "delete");
    }
    for (const key of expected.keys()) if (!got.has(key) && key !== sentinel) got.set(key, []);
    for (const [key, ops] of got) {
      const history = expected.get(key) ?? [];
      // The observer's first read saw the key as it stood after history[0..i); from there on
      // it must have seen every change, in order: ops = [state at i, if present] + history[i..],
      // and i comes before every change made after the observer's first batch had arrived.
      const last = history.findIndex((e) => e.revision > observer.firstRevision);
      const latest = last === -1 ? history.length : last;
      const fits = (i: number): boolean => {
        const rest = history.slice(i).map((e) => e.op);
        const before = history[i - 1]?.op;
        const start = before?.startsWith("add ") ? [before] : [];
        return JSON.stringify([...start, ...rest]) === JSON.stringify(ops);
      };
      let ok = false;
      for (let i = 0; i <= latest && !ok; i++) ok = fits(i);
      assert.ok(
        ok,
        `observer ${n}, key ${key}: saw ${JSON.stringify(ops)}; etcd's history is ${
          JSON.stringify(history)
        } (first read by revision ${observer.firstRevision})`,
      );
    }
  });
  await client.delete(sentinel);
}

Deno.test("faults oracle: the history check catches a missing, repeated or reordered change", async (t) => {
  const service = "oracle/svc";
  const value = (n: number) => JSON.stringify({ Op: 0, Addr: `10.9.0.${n}:1` });
  const tamperings: [string, (updates: Update[]) => void][] = [
    ["missing", (u) => void u.splice(1, 1)],
    ["repeated", (u) => void u.splice(1, 0, u[1]!)],
    ["reordered", (u) => void u.splice(0, 2, u[1]!, u[0]!)],
  ];
  for (const [name, tamper] of [["none", () => {}] as const, ...tamperings]) {
    await t.step(name, async () => {
      await using client = memoryClient();
      await client.put(`${service}/a`, value(1));
      const observer = new Observer(client, service);
      try {
        await until("first batch", 1000, () => observer.firstRevision < Infinity);
        // Three changes to one key after the first read, each its own batch.
        await client.put(`${service}/b`, value(2));
        await until("b seen", 1000, () => observer.view.has(`${service}/b`));
        await client.put(`${service}/b`, value(3));
        await until(
          "b changed",
          1000,
          () => observer.view.get(`${service}/b`)?.addr === "10.9.0.3:1",
        );
        await client.delete(`${service}/b`);
        await converge([observer], client, service, 1000);
        const after = observer.batches.slice(1).flatMap((b) => b.updates);
        tamper(after);
        observer.batches.splice(1, observer.batches.length - 1, { at: Date.now(), updates: after });
        if (name === "none") await assertHistory([observer], client, service);
        else {await assert.rejects(
            assertHistory([observer], client, service),
            /key oracle\/svc\/b: saw/,
          );}
      } finally {
        await observer.close();
      }
    });
  }
});

async function registerMany(
  hosts: string[],
  service: string,
  count: number,
  ttl: number,
): Promise<{ clients: EtcdClient[]; registrations: Registration[] }> {
  const clients = Array.from({ length: count }, () => connect({ hosts, dialTimeout: 1000 }));
  const registrations = await Promise.all(
    clients.map((client, i) =>
      register(client, service, { addr: `10.0.0.${i + 1}:50051` }, { ttl, onError: () => {} })
    ),
  );
  return { clients, registrations };
}

async function closeAll(
  group: { clients: EtcdClient[]; registrations: Registration[] },
): Promise<void> {
  await Promise.all(group.registrations.map((r) => r.close()));
  await Promise.all(group.clients.map((c) => c.close()));
}

const TEN =
  "faults 10: repeated cut-offs leave watches and leases equal to what is live, and memory flat";
// In the full run scenario 10 goes first: its criterion is resident memory growth relative to
// the process's size when it starts, and the scenarios before it inflate that size (a run that
// started at 476 MiB grew 7.3 %; scenario 10 alone, from 210 MiB, grew 21.5 %). Its quick check
// (heap, 40 cycles) keeps its place.
if (FULL) scenario(TEN, tenCutOffs, { grpcjsBackoffTimer: true });

scenario("faults 1: 3 members, kill -9 a follower then the leader, restart both", async () => {
  await using cluster = await EtcdCluster.start(3);
  const service = "faults/one";
  const group = await registerMany(cluster.endpoints, service, 3, 5);
  const reader = connect({ hosts: cluster.endpoints, dialTimeout: 1000 });
  const observers = [new Observer(reader, service), new Observer(reader, service)];
  try {
    await converge(observers, reader, service, 5000);
    const follower = await cluster.follower();
    await follower.stop({ kill: true });
    await sleep(1000);
    const leader = await cluster.leader();
    await leader.stop({ kill: true });
    await sleep(2000); // no quorum
    follower.spawn();
    leader.spawn();
    await cluster.healthy();
    const healthyAt = Date.now();
    await until("every registration back in etcd", 3000 + 1000, async () => {
      const keys = new Set((await truth(reader, service)).keys());
      return group.registrations.every((r) => keys.has(r.key));
    });
    const took = await converge(observers, reader, service, 5000);
    await assertHistory(observers, reader, service);
    console.log(
      `registrations back and views converged ${
        Date.now() - healthyAt
      } ms after quorum (${took} ms)`,
    );
    assert.ok(group.registrations.every((r) => r.state === "registered"));
  } finally {
    await Promise.all(observers.map((o) => o.close()));
    await closeAll(group);
    await reader.close();
  }
}, { grpcjsBackoffTimer: true });

scenario("faults 2: the leader frozen (SIGSTOP) for 3x the election timeout", async () => {
  await using cluster = await EtcdCluster.start(3);
  const service = "faults/two";
  const group = await registerMany(cluster.endpoints, service, 3, 5);
  const reader = connect({ hosts: cluster.endpoints, dialTimeout: 1000 });
  const observers = [new Observer(reader, service)];
  try {
    await converge(observers, reader, service, 5000);
    const leader = await cluster.leader();
    const frozenAt = Date.now();
    leader.pause();
    await sleep(3000); // etcd's default election timeout is 1 s
    leader.resume();
    await cluster.healthy();
    const took = await converge(observers, reader, service, 5000);
    await assertHistory(observers, reader, service);
    const keys = new Set((await truth(reader, service)).keys());
    assert.ok(group.registrations.every((r) => keys.has(r.key)), "every registration in etcd");
    for (const r of group.registrations) {
      assert.equal(observers[0]!.deletesOf(r.key, frozenAt), 0, `no delete of live ${r.key}`);
    }
    console.log(`converged ${took} ms after the leader was thawed`);
  } finally {
    await Promise.all(observers.map((o) => o.close()));
    await closeAll(group);
    await reader.close();
  }
});

scenario(
  "faults 3: all members down past the TTL, then restarted; calls keep succeeding",
  async () => {
    const downMs = FULL ? 10_000 : 4000;
    const ttl = FULL ? 5 : 3;
    await using cluster = await EtcdCluster.start(3);
    const service = "faults/three";
    const group = await registerMany(cluster.endpoints, service, 3, ttl);
    const reader = connect({ hosts: cluster.endpoints, dialTimeout: 1000 });
    const observers = [new Observer(reader, service), new Observer(reader, service)];
    // Two real gRPC instances under their own service, and a client calling them through the outage.
    const serverClients = [0, 1].map(() =>
      connect({ hosts: cluster.endpoints, dialTimeout: 1000 })
    );
    const greeters = await Promise.all(
      serverClients.map((c, i) =>
        startGreeter(c, `${service}-grpc`, `g${i}`, { ttl, drainMs: 0, onError: () => {} })
      ),
    );
    const greeter = dial(reader, `${service}-grpc`, Greeter, { onError: () => {} });
    let load: Load | undefined;
    try {
      await converge(observers, reader, service, 5000);
      await untilAllAnswer(greeter, 2);
      load = new Load(greeter, { workers: 4, pauseMs: 10 });
      const downAt = Date.now();
      await Promise.all(cluster.members.map((m) => m.stop({ kill: true })));
      await sleep(downMs);
      for (const m of cluster.members) m.spawn();
      await cluster.healthy();
      const healthyAt = Date.now();
      const back = await until("every registration back", 3000 + 1000, async () => {
        const keys = new Set((await truth(reader, service)).keys());
        return group.registrations.every((r) => keys.has(r.key));
      });
      await converge(observers, reader, service, 5000);
      await assertHistory(observers, reader, service);
      await load.stop();
      for (const o of observers) {
        for (const r of group.registrations) {
          assert.equal(
            o.deletesOf(r.key, downAt),
            0,
            `a resolver deleted live ${r.key} while etcd was down`,
          );
        }
        assert.ok(o.errors.length > 0, "the outage was reported");
      }
      const calls = load.records.length;
      const ok = calls - load.failures.length;
      console.log(
        `down ${downMs} ms (TTL ${ttl} s): registrations back ${back} ms after quorum at ${
          healthyAt - downAt
        } ms; ` +
          `${ok} of ${calls} calls succeeded (${((ok / calls) * 100).toFixed(2)} %)`,
      );
      assert.ok(ok / calls >= 0.999, `${load.failures.length} of ${calls} calls failed`);
    } finally {
      await load?.stop();
      greeter.close();
      await Promise.all(greeters.map((g) => g.close()));
      await Promise.all(serverClients.map((c) => c.close()));
      await Promise.all(observers.map((o) => o.close()));
      await closeAll(group);
      await reader.close();
    }
  },
  // Over connectFetch() in the full run only, to keep the default run short (see docs/faults.md).
  { fetchFullOnly: true, grpcjsBackoffTimer: true },
);

scenario(
  "faults 5: a client cut off over 1,000+ revisions and a compaction converges to the net change",
  async () => {
    await using etcd = await startEtcd();
    await using proxy = await TcpProxy.start(etcd.endpoint);
    const service = "faults/five";
    const direct = connect({ hosts: etcd.endpoint });
    const cutOff = connect({ hosts: proxy.endpoint, dialTimeout: 1000 });
    const random = seeded(SEED);
    const value = (i: number) =>
      JSON.stringify({ Op: 0, Addr: `10.1.${i >> 8}.${i & 255}:1`, Metadata: { i } });
    for (let i = 0; i < 50; i++) await direct.put(`${service}/k${i}`, value(i));
    const observer = new Observer(cutOff, service);
    try {
      await converge([observer], direct, service, 5000);
      await proxy.cut();
      const cutAt = Date.now();
      const writes = FULL ? 5000 : 1200;
      let revision = 0;
      for (let n = 0; n < writes; n++) {
        const i = Math.floor(random() * 80);
        revision = random() < 0.3
          ? await direct.delete(`${service}/k${i}`)
          : await direct.put(`${service}/k${i}`, value(n));
      }
      await compact(etcd.endpoint, revision);
      const errorsWhileCut = observer.errors.length;
      proxy.restore();
      const took = await converge([observer], direct, service, 10_000);
      const cutFor = Date.now() - cutAt;
      console.log(
        `${writes} writes and a compaction while cut off for ${cutFor} ms: converged ${took} ms after restore; ${errorsWhileCut} errors reported while cut`,
      );
      // No hot loop: retries back off (cap 3 s), so a few per second at most.
      assert.ok(
        errorsWhileCut < (cutFor / 1000) * 12 + 10,
        `${errorsWhileCut} errors in ${cutFor} ms`,
      );
    } finally {
      await observer.close();
      await cutOff.close();
      await direct.close();
    }
  },
);

/** Compacts etcd's history up to `revision` through the JSON gateway. */
async function compact(endpoint: string, revision: number): Promise<void> {
  const res = await fetch(`${endpoint}/v3/kv/compaction`, {
    method: "POST",
    body: JSON.stringify({ revision: String(revision), physical: true }),
  });
  const text = await res.text(); // read even when it succeeded: an unread body is a leak
  if (!res.ok) throw new Error(`compaction failed: ${res.status} ${text}`);
}

scenario("faults 6: the connection reset during catch-up skips no change", async () => {
  await using etcd = await startEtcd();
  await using proxy = await TcpProxy.start(etcd.endpoint);
  const service = "faults/six";
  const direct = connect({ hosts: etcd.endpoint });
  const cutOff = connect({ hosts: proxy.endpoint, dialTimeout: 1000 });
  const observer = new Observer(cutOff, service);
  try {
    await until("first batch", 5000, () => observer.batches.length > 0);
    const writes = FULL ? 5000 : 2000;
    for (let round = 0; round < (FULL ? 5 : 2); round++) {
      await proxy.cut();
      const before = observer.batches.flatMap((b) => b.updates).length;
      for (let n = 0; n < writes; n++) {
        await direct.put(
          `${service}/r${round}-${n}`,
          JSON.stringify({ Addr: `10.2.${n >> 8}.${n & 255}:1` }),
        );
      }
      proxy.restore();
      // Cut again as soon as the catch-up has started, and again once more.
      await until(
        "catch-up started",
        10_000,
        () => observer.batches.flatMap((b) => b.updates).length > before,
      );
      await proxy.cut();
      await sleep(300);
      proxy.restore();
      await until(
        "all changes seen",
        20_000,
        () => observer.batches.flatMap((b) => b.updates).length >= before + writes,
      );
      const seen = observer.batches.flatMap((b) => b.updates).slice(before);
      assert.equal(seen.length, writes, "no change repeated");
      assert.deepEqual(
        seen.map((u) => u.key),
        Array.from({ length: writes }, (_, n) => `${service}/r${round}-${n}`),
        "every change, once, in order",
      );
    }
    await converge([observer], direct, service, 5000);
    await assertHistory([observer], direct, service);
  } finally {
    await observer.close();
    await cutOff.close();
    await direct.close();
  }
}, { grpcjsBackoffTimer: true });

scenario(
  "faults 11: 10,000 malformed values never crash, never hide valid instances, each is reported",
  async () => {
    await using etcd = await startEtcd();
    const service = "faults/eleven";
    const client = connect({ hosts: etcd.endpoint });
    const random = seeded(SEED + 11);
    const valid = Array.from({ length: 5 }, (_, i) => `10.3.0.${i + 1}:50051`);
    for (const addr of valid) {
      await client.put(`${service}/${addr}`, JSON.stringify({ Op: 0, Addr: addr, Metadata: null }));
    }
    const observer = new Observer(client, service);
    const count = FULL ? 10_000 : 2000;
    const hostile = (n: number): string => {
      switch (n % 10) {
        case 0:
          return "{";
        case 1:
          return JSON.stringify({ Addr: 12345 });
        case 2:
          return JSON.stringify({ Addr: "no-port" });
        case 3:
          return JSON.stringify({ Addr: `10.0.0.1:${70000 + n}` });
        case 4:
          return JSON.stringify({ Addr: "../../etc/passwd:80" });
        case 5:
          return JSON.stringify({ Addr: "host:80", Metadata: "x".repeat(70_000) });
        case 6:
          return JSON.stringify([1, 2, 3]);
        case 7:
          return "null";
        case 8:
          return JSON.stringify({ Addr: "a b:80" });
        default:
          return String.fromCharCode(
            ...Array.from({ length: 20 }, () => Math.floor(random() * 256)),
          );
      }
    };
    try {
      await until("first batch", 5000, () => observer.batches.length > 0);
      for (let n = 0; n < count; n += 100) {
        await Promise.all(
          Array.from(
            { length: 100 },
            (_, k) => client.put(`${service}/bad-${n + k}`, hostile(n + k)),
          ),
        );
      }
      await until("every bad key reported", 20_000, () => observer.errors.length >= count).catch(
        (e) => {
          const seen = new Set(
            observer.errors.map((x) => x instanceof EndpointDecodeError ? x.key : x.message),
          );
          const missing = Array.from({ length: count }, (_, i) => `${service}/bad-${i}`).filter((
            k,
          ) => !seen.has(k));
          console.log(
            observer.errors.length,
            missing.slice(0, 5),
            [...seen].filter((k) => !k.startsWith(service)).slice(0, 3),
            [...observer.view.keys()].slice(0, 8),
          );
          throw e;
        },
      );
      const reported = new Set(
        observer.errors.map((e) => e instanceof EndpointDecodeError ? e.key : ""),
      );
      assert.equal(reported.size, count, "each bad key reported");
      assert.deepEqual(
        [...observer.view.values()].map((e) => e.addr).sort(),
        valid.sort(),
        "only the valid instances",
      );
      // A late joiner reads the same garbage at once and still sees exactly the valid ones.
      const other = connect({ hosts: etcd.endpoint });
      const late = new Observer(other, service);
      await until("late first batch", 10_000, () => late.batches.length > 0);
      assert.deepEqual([...late.view.values()].map((e) => e.addr).sort(), valid.sort());
      assert.equal(late.errors.length, count, "the late reader reports each bad key too");
      await late.close();
      await other.close();
    } finally {
      await observer.close();
      await client.close();
    }
  },
);

scenario(
  "faults 4: the member holding a client's calls is frozen; the registration recovers through another",
  async () => {
    const ttl = 3;
    await using cluster = await EtcdCluster.start(3);
    const service = "faults/four";
    // The client knows the two followers (freezing the leader is scenario 2).
    const leader = await cluster.leader();
    const followers = cluster.members.filter((m) => m !== leader);
    const client = connect({ hosts: followers.map((m) => m.clientUrl), dialTimeout: 1000 });
    const errors: Error[] = [];
    const reportedAt: number[] = [];
    const log: string[] = [];
    const t0 = Date.now();
    const registration = await register(client, service, { addr: "10.4.0.1:50051" }, {
      ttl,
      onError: (e) => {
        errors.push(e);
        reportedAt.push(Date.now());
        log.push(`${Date.now() - t0} ms: ${e.message.slice(0, 160)}`);
      },
      onStateChange: (state) => log.push(`${Date.now() - t0} ms: ${state}`),
    });
    // Freeze the follower that holds the registration's key watch (etcd's watcher gauge says
    // which), so that a delete of the key would go unseen until the registration notices.
    let frozen: (typeof followers)[number] | undefined;
    await until("the registration's watch on a follower", 5000, async () => {
      for (const m of followers) {
        if (await readMetric(m.clientUrl, "etcd_debugging_mvcc_watcher_total") > 0) frozen = m;
      }
      return frozen !== undefined;
    });
    const healthy = followers.find((m) => m !== frozen)!;
    const checker = connect({ hosts: [healthy.clientUrl], dialTimeout: 1000 });
    try {
      frozen!.pause();
      const frozenAt = Date.now();
      const end = frozenAt + 4 * ttl * 1000;
      let gone: number | undefined;
      let longest = 0;
      while (Date.now() < end) {
        const present = (await checker.get(registration.key)).kvs.length === 1;
        if (!present) gone ??= Date.now();
        else if (gone !== undefined) {
          longest = Math.max(longest, Date.now() - gone);
          gone = undefined;
        }
        await sleep(100);
      }
      const stillGone = gone !== undefined;
      // Still frozen: the key watch has moved to the healthy member and sees a delete there.
      await until(
        "the key watch re-created on the healthy member",
        3000,
        async () => await readMetric(healthy.clientUrl, "etcd_debugging_mvcc_watcher_total") > 0,
      );
      await checker.delete(registration.key);
      const healed = await until(
        "the deleted key back while the member is frozen",
        3000 + 1000,
        async () => (await checker.get(registration.key)).kvs.length === 1,
      );
      frozen!.resume();
      if (stillGone || longest > 0) console.log(`frozen at ${frozenAt - t0} ms\n${log.join("\n")}`);
      const noticed = reportedAt.length > 0 ? reportedAt[0]! - frozenAt : Infinity;
      console.log(
        `member frozen ${
          4 * ttl
        } s (TTL ${ttl} s): noticed after ${noticed} ms; ${errors.length} ` +
          `errors reported; key gone at most ${longest} ms at a time; a delete healed in ${healed} ms`,
      );
      assert.ok(
        noticed < ttl * 1000,
        `the registration noticed the frozen member after ${noticed} ms`,
      );
      // Renewals that hung on the frozen member move to the healthy one before the lease lapses.
      assert.ok(!stillGone && longest === 0, `the key was gone for ${longest} ms`);
      // The put is visible in etcd just before its answer reaches the registration.
      await until("the registration registered", 1000, () => registration.state === "registered");
      // The heal's grant and put skip the member its streams found frozen: they do not wait
      // out a dial timeout (1 s) there first.
      assert.ok(healed < 1000, `a delete healed in ${healed} ms`);
    } finally {
      frozen!.resume();
      await registration.close();
      await client.close();
      await checker.close();
    }
  },
);

/** An EtcdClient that timestamps every lease grant, to see how grants spread. */
function countingGrants(inner: EtcdClient, grants: number[]): EtcdClient {
  return new Proxy(inner, {
    get(target, property, receiver) {
      if (property === "grantLease") {
        return (ttl: number) => {
          grants.push(Date.now());
          return target.grantLease(ttl);
        };
      }
      const value = Reflect.get(target, property, receiver);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

scenario(
  "faults 9: 50 registrations through an etcd outage do not storm it with lease grants",
  async () => {
    const outageMs = FULL ? 30_000 : 6000;
    const ttl = 3;
    await using etcd = await startEtcd();
    const grants: number[] = [];
    const clients = Array.from(
      { length: 50 },
      () => connect({ hosts: etcd.endpoint, dialTimeout: 1000 }),
    );
    const registrations = await Promise.all(
      clients.map((c, i) =>
        register(countingGrants(c, grants), "faults/nine", { addr: `10.9.0.${i + 1}:50051` }, {
          ttl,
          onError: () => {},
        })
      ),
    );
    const checker = connect({ hosts: etcd.endpoint });
    try {
      const before = grants.length;
      await etcd.stop({ kill: true });
      await sleep(outageMs);
      await etcd.start();
      const healthyAt = Date.now();
      await until(
        "all 50 registered",
        3000 + 1000,
        async () =>
          (await checker.getPrefix("faults/nine/")).kvs.length === 50 &&
          registrations.every((r) => r.state === "registered"),
      );
      await sleep(ttl * 1000); // let any late re-grant happen
      const after = grants.slice(before);
      let worst = 0;
      for (const t of after) {
        worst = Math.max(
          worst,
          after.filter((u) => u >= t && u < t + 1000).length,
        );
      }
      console.log(
        `outage ${outageMs} ms: ${after.length} lease grants after it, at most ${worst} in one second; all back ${
          Date.now() - healthyAt - ttl * 1000
        } ms after etcd was healthy`,
      );
      assert.ok(worst <= 25, `${worst} lease grants in one second`);
    } finally {
      await Promise.all(registrations.map((r) => r.close()));
      await Promise.all(clients.map((c) => c.close()));
      await checker.close();
    }
  },
  // Over connectFetch() in the full run only, to keep the default run short (see docs/faults.md).
  { fetchFullOnly: true },
);

if (!FULL) scenario(TEN, tenCutOffs, { grpcjsBackoffTimer: true });

async function tenCutOffs(): Promise<void> {
  const cycles = FULL ? 1000 : 40;
  await using etcd = await startEtcd();
  await using proxy = await TcpProxy.start(etcd.endpoint);
  const service = "faults/ten";
  const client = connect({ hosts: proxy.endpoint, dialTimeout: 500 });
  const direct = connect({ hosts: etcd.endpoint });
  const registrations = await Promise.all(
    [1, 2, 3].map((i) =>
      register(client, service, { addr: `10.10.0.${i}:50051` }, { ttl: 5, onError: () => {} })
    ),
  );
  const observers = [new Observer(client, service), new Observer(client, `${service}-other`)];
  const leasesHeld = async () => {
    const res = await fetch(`${etcd.endpoint}/v3/lease/leases`, { method: "POST", body: "{}" });
    return ((await res.json()).leases ?? []).length as number;
  };
  const memory = () => {
    (globalThis as { gc?: () => void }).gc?.();
    return Deno.memoryUsage();
  };
  try {
    await converge([observers[0]!], direct, service, 5000);
    const random = seeded(SEED + 10);
    // Measured after a warm-up (a tenth of the cycles), so that JIT and pools are settled.
    let start = memory();
    // Resident memory at each quarter: a leak grows linearly, allocator slack levels off.
    const quarters: number[] = [];
    for (let cycle = 0; cycle < cycles; cycle++) {
      if (cycle === Math.floor(cycles / 10)) start = memory();
      if (cycle > 0 && cycle % Math.floor(cycles / 4) === 0) quarters.push(memory().rss);
      await proxy.cut();
      await sleep(20 + Math.floor(random() * 80));
      proxy.restore();
      await sleep(50 + Math.floor(random() * 100));
    }
    await converge([observers[0]!], direct, service, 10_000);
    await assertHistory([observers[0]!], direct, service);
    // One watch per live resolver service, one key watch per registration; one lease each.
    await until(
      "watches settle",
      10_000,
      async () =>
        (await etcd.metric("etcd_debugging_mvcc_watcher_total")) ===
          registrations.length + observers.length,
    );
    await until(
      "leases settle",
      10_000,
      async () => (await leasesHeld()) === registrations.length,
    );
    const end = memory();
    const rss = (end.rss - start.rss) / start.rss;
    const heap = (end.heapUsed - start.heapUsed) / start.heapUsed;
    console.log(
      `${cycles} cut-offs: watches and leases equal the live ones; resident memory grew ` +
        `${(rss * 100).toFixed(1)} %, heap ${(heap * 100).toFixed(1)} %; resident by quarter: ${
          [...quarters, end.rss].map((r) => `${(r / 2 ** 20).toFixed(0)} MiB`).join(", ")
        } (start ${(start.rss / 2 ** 20).toFixed(0)} MiB)`,
    );
    if (FULL) {
      // The criterion. Open on Deno 2.9.3 over connect(): docs/faults.md, "Open problem".
      assert.ok(rss < 0.10, `resident memory grew ${(rss * 100).toFixed(1)} %`);
    } else {
      // Over 40 cycles resident memory is too noisy (4–11 %); the JS heap is not.
      assert.ok(heap < 0.10, `heap grew ${(heap * 100).toFixed(1)} %`);
    }
  } finally {
    await Promise.all(observers.map((o) => o.close()));
    await Promise.all(registrations.map((r) => r.close()));
    await client.close();
    await direct.close();
  }
}

scenario(
  "faults 4b: a client's connection blackholed past the TTL recovers once traffic flows",
  async () => {
    const ttl = 2;
    await using etcd = await startEtcd();
    await using proxy = await TcpProxy.start(etcd.endpoint);
    const service = "faults/four-b";
    const client = connect({ hosts: proxy.endpoint, dialTimeout: 1000 });
    const direct = connect({ hosts: etcd.endpoint });
    const errors: Error[] = [];
    const registration = await register(client, service, { addr: "10.4.1.1:50051" }, {
      ttl,
      onError: (e) => errors.push(e),
    });
    const observer = new Observer(client, service);
    try {
      await converge([observer], direct, service, 5000);
      proxy.blackhole();
      const holedAt = Date.now();
      await until(
        "the lease expired in etcd",
        10_000,
        async () => (await direct.get(registration.key)).kvs.length === 0,
      );
      assert.ok(errors.length > 0, "the registration noticed");
      const noticed = errors.length;
      await direct.put(
        `${service}/10.4.1.2:50051`,
        JSON.stringify({ Op: 0, Addr: "10.4.1.2:50051", Metadata: null }),
      );
      proxy.restore();
      const restoredAt = Date.now();
      await until(
        "registration back",
        15_000,
        async () =>
          (await direct.get(registration.key)).kvs.length === 1 &&
          registration.state === "registered",
      );
      const took = await converge([observer], direct, service, 15_000);
      await assertHistory([observer], direct, service);
      console.log(
        `blackholed ${restoredAt - holedAt} ms (TTL ${ttl} s): ${noticed} errors while holed; ` +
          `registered again and converged ${
            Date.now() - restoredAt
          } ms after traffic flowed (${took} ms)`,
      );
    } finally {
      proxy.restore();
      await observer.close();
      await registration.close();
      await client.close();
      await direct.close();
    }
  },
);
