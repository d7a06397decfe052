/**
 * The conformance scenarios: the same behaviour, checked on whichever runtime
 * runs this file (Deno on the sources; Node and Bun on the npm build), against
 * a real etcd that each scenario starts and removes. Instances run as separate
 * processes of the same runtime. Each scenario throws on a failure and
 * otherwise returns what it measured, in one line.
 *
 * @module
 */
import assert from "node:assert/strict";
import { pathToFileURL } from "node:url";
import * as grpc from "@grpc/grpc-js";
import {
  applyUpdates,
  CompactedError,
  connect,
  type Endpoint,
  type EtcdClient,
  register,
  type RegistrationState,
  resolve,
  roundRobin,
  type Update,
  type WatchBatch,
} from "@seed/grpc-etcd";
import { connectFetch } from "@seed/grpc-etcd/fetch";
import { dial } from "@seed/grpc-etcd/grpc";
import { readLines, spawnChild } from "../child.ts";
import { EtcdHttp } from "../etcd_http.ts";
import { idleTimeoutFetch } from "../idle_fetch.ts";
import { startEtcd } from "../etcd_server.ts";
import { type GreeterProcess, spawnGreeter } from "../greeter_process.ts";
import { Greeter, sayHello, startLoneGreeter } from "../greeter.ts";
import { describeOutcome, probeAuthority } from "../http2_probe.ts";
import { TcpProxy } from "../tcp_proxy.ts";
import { makePki, ROOT_PASSWORD, startSecureEtcd, type TestPki } from "../tls.ts";
import { Load, untilAllAnswer } from "../load.ts";
import { currentRuntime, type RuntimeName, scriptCommand } from "../runtime.ts";
import { until } from "../wait.ts";

/** One scenario: resolves with what it measured, throws what went wrong. */
export type Scenario = (args: readonly string[]) => Promise<string>;

const SERVICE = "svc/greeter";

/** The next batch of a resolver, failing after `ms`. */
async function next(it: AsyncIterator<Update[]>, ms = 10_000): Promise<Update[]> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const result = await Promise.race([
    it.next(),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no batch within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
  assert.equal(result.done, false, "the stream ended early");
  return result.value;
}

/** `count` greeter processes named a, b, c, … registered under {@linkcode SERVICE}. */
async function greeters(etcd: string, count: number, ttl = 2): Promise<GreeterProcess[]> {
  const names = ["a", "b", "c", "d"].slice(0, count);
  const started = await Promise.allSettled(
    names.map((name) => spawnGreeter(etcd, SERVICE, name, { ttl })),
  );
  const running = started.flatMap((s) => s.status === "fulfilled" ? [s.value] : []);
  const failed = started.find((s) => s.status === "rejected");
  if (failed) {
    for (const g of running) await g[Symbol.asyncDispose]();
    throw (failed as PromiseRejectedResult).reason;
  }
  return running;
}

/** Disposes every greeter, for `await using`. */
function all(processes: GreeterProcess[]): AsyncDisposable {
  return {
    async [Symbol.asyncDispose]() {
      await Promise.all(processes.map((p) => p[Symbol.asyncDispose]()));
    },
  };
}

/** A grpc-js client closed by `using`. */
function closing<T extends grpc.Client>(client: T): T & Disposable {
  return Object.assign(client, { [Symbol.dispose]: () => client.close() });
}

/**
 * The README tour: register, resolve into a view, pick round robin; close
 * removes the key. Over the client `open` makes for etcd's endpoint.
 */
async function tour(open: (endpoint: string) => EtcdClient): Promise<string> {
  await using etcd = await startEtcd({ private: true });
  const http = new EtcdHttp(etcd.endpoint);
  await using client = open(etcd.endpoint);
  await using a = await register(client, SERVICE, {
    addr: "10.0.0.1:50051",
    metadata: { zone: "eu-1" },
  }, { ttl: 10 });
  const stored = await http.get("svc/greeter/10.0.0.1:50051");
  assert.equal(stored?.value, '{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"zone":"eu-1"}}');
  assert.equal(stored?.lease, a.lease, "the key is under the registration's lease");
  assert.ok((await http.leaseTtl(a.lease)) > 0, "the lease is alive");

  await using it = resolve(client, SERVICE);
  let view = applyUpdates(new Map<string, Endpoint>(), await next(it));
  assert.deepEqual([...view.values()], [{ addr: "10.0.0.1:50051", metadata: { zone: "eu-1" } }]);
  const b = await register(client, SERVICE, { addr: "10.0.0.2:50051" }, { ttl: 10 });
  view = applyUpdates(view, await next(it));
  const pick = roundRobin([...view.values()]);
  const picks = [pick()?.addr, pick()?.addr, pick()?.addr, pick()?.addr];
  assert.deepEqual(new Set(picks.slice(0, 2)), new Set(["10.0.0.1:50051", "10.0.0.2:50051"]));
  assert.deepEqual(picks.slice(2), picks.slice(0, 2), "round robin repeats in turn");
  await b.close();
  assert.equal(await http.get(b.key), undefined, "close() removes the key at once");
  assert.deepEqual(await next(it), [{ op: "delete", key: b.key }]);
  return `picks ${picks.join(" ")}; close() removed the key and the resolver saw it`;
}

/**
 * Idle watches over connectFetch() on this runtime: one with a 200 ms
 * heartbeat has its stream reopened after six quiet periods; one without a
 * heartbeat whose body the runtime's own idle timeout ends (shortened, see
 * `harness/idle_fetch.ts`) is reopened too. Neither says a word to the caller;
 * each new stream starts where the last left off; a change made afterwards
 * arrives once.
 */
async function idleWatch(): Promise<string> {
  await using etcd = await startEtcd({ private: true });
  const http = new EtcdHttp(etcd.endpoint);
  await using idle = await idleTimeoutFetch(1500);
  const run = async (
    prefix: string,
    inner: (url: string, init: RequestInit) => Promise<Response>,
    heartbeat: number | undefined,
  ) => {
    const asked: unknown[] = [];
    await using client = connectFetch({
      hosts: etcd.endpoint,
      fetch: (url, init) => {
        if (url.endsWith("/v3/watch")) asked.push(JSON.parse(String(init.body)));
        return inner(url, init);
      },
    });
    const start = (await http.range(prefix)).revision + 1;
    const stop = new AbortController();
    const it = client.watch(prefix, { startRevision: start, signal: stop.signal, heartbeat })
      [Symbol.asyncIterator]();
    const shown = (r: IteratorResult<WatchBatch>) =>
      r.done ? "done" : r.value.events.map((e) => e.type === "put" ? e.kv.key : e.key).join();
    assert.equal(shown(await it.next()), "", "created");
    let settled = false;
    const pending = it.next().finally(() => settled = true);
    pending.catch(() => {}); // awaited below
    const began = Date.now();
    await until("the stream reopened twice", 40_000, () => asked.length >= 3);
    const took = Date.now() - began;
    assert.equal(settled, false, "the reopens reached the caller");
    for (const body of asked) {
      const request = (body as { create_request: { start_revision?: string } }).create_request;
      assert.equal(request.start_revision, String(start), "each stream starts where it began");
    }
    await http.put(`${prefix}a`, "1");
    assert.equal(shown(await pending), `${prefix}a`);
    await http.put(`${prefix}b`, "2");
    assert.equal(shown(await it.next()), `${prefix}b`, "nothing repeated");
    stop.abort();
    assert.equal(shown(await it.next()), "done");
    return `reopened twice in ${took} ms`;
  };
  const quiet = await run("quiet/", fetch, 200);
  const timedOut = await run("timeout/", idle.fetch, undefined);
  return `heartbeat 200 ms: ${quiet}; ended by ${idle.kind}: ${timedOut}; no error, ` +
    "later puts arrived once";
}

/** A key deleted and a lease revoked by someone else: both healed. */
async function heal(): Promise<string> {
  await using etcd = await startEtcd({ private: true });
  const http = new EtcdHttp(etcd.endpoint);
  await using client = connect({ hosts: etcd.endpoint });
  const states: RegistrationState[] = [];
  await using reg = await register(client, SERVICE, { addr: "127.0.0.1:2" }, {
    ttl: 10,
    onStateChange: (s) => states.push(s),
    onError: () => {},
  });
  assert.equal(await http.delete(reg.key), 1);
  const deleted = await until("key back after delete", 4000, async () => !!await http.get(reg.key));
  const first = reg.lease;
  await http.revoke(first);
  const revoked = await until("key back under a new lease after revoke", 4000, async () => {
    const kv = await http.get(reg.key);
    return kv !== undefined && kv.lease !== first;
  });
  assert.notEqual(reg.lease, first);
  // The put is visible in etcd just before its response reaches the registration.
  await until("state registered", 1000, () => reg.state === "registered");
  assert.ok(states.includes("recovering"), `states: ${states.join(", ")}`);
  return `key back ${deleted} ms after the delete, ${revoked} ms after the revoke`;
}

/** etcd killed and restarted: the resolver's view stands, the registration is back. */
async function etcdRestart(): Promise<string> {
  await using etcd = await startEtcd({ private: true });
  const http = new EtcdHttp(etcd.endpoint);
  await using client = connect({ hosts: etcd.endpoint, dialTimeout: 1000 });
  await using reg = await register(client, SERVICE, { addr: "127.0.0.1:20" }, {
    ttl: 5,
    onError: () => {},
  });
  const errors: Error[] = [];
  await using it = resolve(client, SERVICE, { onError: (e) => errors.push(e) });
  assert.deepEqual((await next(it)).map((u) => u.op), ["add"]);
  const batches: Update[][] = [];
  const consumer = (async () => {
    for await (const batch of it) batches.push(batch);
  })();
  await etcd.stop({ kill: true });
  const noticed = await until("the resolver reports etcd gone", 10_000, () => errors.length > 0);
  const restartedAt = Date.now();
  await etcd.start();
  await using other = connect({ hosts: etcd.endpoint });
  await using b = await register(other, SERVICE, { addr: "127.0.0.1:21" });
  await until("the new instance seen after the restart", 10_000, () => batches.length > 0);
  assert.deepEqual(batches, [[{ op: "add", key: b.key, endpoint: { addr: "127.0.0.1:21" } }]]);
  await until("the registration back in etcd", 10_000, async () => {
    const kv = await http.get(reg.key);
    return reg.state === "registered" && kv?.lease === reg.lease &&
      (await http.leaseTtl(reg.lease)) > 0;
  });
  const back = Date.now() - restartedAt;
  await it.return?.();
  await consumer;
  return `error reported ${noticed} ms after the kill; view kept (no delete); ` +
    `registration in etcd ${back} ms after the restart began`;
}

/** Compaction while the client is cut off: one re-listed batch with exactly the net change. */
async function compaction(): Promise<string> {
  await using etcd = await startEtcd({ private: true });
  const http = new EtcdHttp(etcd.endpoint);
  await using proxy = await TcpProxy.start(etcd.endpoint);
  await using client = connect({ hosts: proxy.endpoint, dialTimeout: 1000 });
  const value = (n: number, m: unknown = null) =>
    JSON.stringify({ Op: 0, Addr: `10.0.0.${n}:1`, Metadata: m });
  for (const n of [1, 2, 3]) await http.put(`svc/echo/${n}`, value(n));
  const errors: Error[] = [];
  await using it = resolve(client, "svc/echo", { onError: (e) => errors.push(e) });
  let view = applyUpdates(new Map<string, Endpoint>(), await next(it));
  assert.equal(view.size, 3);
  await proxy.cut();
  let revision = 0;
  for (let i = 0; i < 20; i++) revision = await http.put("svc/echo/1", value(1, { i }));
  await http.delete("svc/echo/2");
  revision = await http.put("svc/echo/4", value(4));
  await http.compact(revision);
  proxy.restore();
  const batch = await next(it);
  assert.deepEqual(batch.map((u) => `${u.op} ${u.key}`).sort(), [
    "add svc/echo/1",
    "add svc/echo/4",
    "delete svc/echo/2",
  ]);
  view = applyUpdates(view, batch);
  assert.deepEqual(view.get("svc/echo/1")?.metadata, { i: 19 });
  assert.deepEqual([...view.keys()].sort(), ["svc/echo/1", "svc/echo/3", "svc/echo/4"]);
  assert.ok(errors.some((e) => e instanceof CompactedError), "the compaction was reported");
  await http.delete("svc/echo/3");
  assert.deepEqual(await next(it), [{ op: "delete", key: "svc/echo/3" }], "watching again");
  return `one batch of 3 changes after compacting to revision ${revision}; watching again`;
}

/** `serve` in 3 processes + `dial`: 300 calls spread evenly. */
async function spread(): Promise<string> {
  await using etcd = await startEtcd({ private: true });
  await using _greeters = all(await greeters(etcd.endpoint, 3));
  await using client = connect({ hosts: etcd.endpoint });
  using greeter = closing(dial(client, SERVICE, Greeter));
  await untilAllAnswer(greeter, 3);
  const counts = new Map<string, number>();
  for (let i = 0; i < 300; i++) {
    const { instance } = await sayHello(greeter, { name: "x" });
    counts.set(instance, (counts.get(instance) ?? 0) + 1);
  }
  assert.deepEqual([...counts.keys()].sort(), ["a", "b", "c"]);
  for (const [name, n] of counts) assert.ok(n >= 90 && n <= 110, `${name} served ${n} of 300`);
  return `300 calls: ${JSON.stringify(Object.fromEntries([...counts].sort()))}`;
}

/** One of 3 instances stops gracefully (SIGTERM → `close()`) under load: no call fails. */
async function gracefulClose(): Promise<string> {
  await using etcd = await startEtcd({ private: true });
  const processes = await greeters(etcd.endpoint, 3);
  await using _greeters = all(processes);
  await using client = connect({ hosts: etcd.endpoint });
  using greeter = closing(dial(client, SERVICE, Greeter));
  await untilAllAnswer(greeter, 3);
  const load = new Load(greeter, { workers: 4, pauseMs: 10 });
  try {
    await until("load running", 5000, () => load.records.length >= 40);
    const b = processes[1]!;
    b.kill("SIGTERM");
    const status = await b.status;
    assert.equal(status.code, 0, `b exited with ${status.code ?? status.signal}`);
    const exitedAt = Date.now();
    await until(
      "a and c answering after b left",
      5000,
      () => load.answeredBy("a", exitedAt) >= 20 && load.answeredBy("c", exitedAt) >= 20,
    );
  } finally {
    await load.stop();
  }
  assert.deepEqual(load.failures, [], "no call failed");
  assert.ok(load.answeredBy("b") > 0, "b took calls before it stopped");
  return `${load.records.length} calls, 0 failed; b answered ${load.answeredBy("b")} before ` +
    `it drained and exited 0`;
}

/** One of 3 instances SIGKILLed under load: its key leaves etcd within TTL + 1 s. */
async function sigkill(): Promise<string> {
  const ttl = 2;
  await using etcd = await startEtcd({ private: true });
  const http = new EtcdHttp(etcd.endpoint);
  const processes = await greeters(etcd.endpoint, 3, ttl);
  await using _greeters = all(processes);
  await using client = connect({ hosts: etcd.endpoint });
  using greeter = closing(dial(client, SERVICE, Greeter));
  await untilAllAnswer(greeter, 3);
  const workers = 4;
  const load = new Load(greeter, { workers, pauseMs: 10 });
  const a = processes[0]!;
  let gone: number;
  let killedAt: number;
  try {
    await until("load running", 5000, () => load.records.length >= 40);
    killedAt = Date.now();
    a.kill("SIGKILL");
    await a.status;
    const key = `${SERVICE}/${a.addr}`;
    const bound = (ttl + 1) * 1000 - (Date.now() - killedAt);
    await until(`a's key gone from etcd within TTL + 1 s`, bound, async () => !await http.get(key));
    gone = Date.now() - killedAt;
    await until(
      "b and c answering after the kill",
      5000,
      () => load.answeredBy("b", killedAt) >= 20 && load.answeredBy("c", killedAt) >= 20,
    );
  } finally {
    await load.stop();
  }
  // Only calls in flight on the dead connection, or picked before it failed, may fail.
  assert.ok(load.failures.length <= workers, `${load.failures.length} failed calls`);
  for (const f of load.failures) {
    assert.equal(f.code, grpc.status.UNAVAILABLE, `failed with ${f.code}: ${f.details}`);
  }
  return `key gone ${gone} ms after SIGKILL (TTL ${ttl} s); ${load.records.length} calls, ` +
    `${load.failures.length} failed (UNAVAILABLE)`;
}

/**
 * What a plain grpc-js server does with an `:authority` holding a slash, as
 * grpc-go before 1.57 sends for `etcd:///svc/greeter`, on each runtime. A
 * change in a runtime fails this scenario, so that the docs get updated.
 */
export const AUTHORITY_EXPECTED: Record<RuntimeName, Record<string, string>> = {
  deno: {
    "svc/greeter":
      "connection dropped (GOAWAY PROTOCOL_ERROR); next call: connection dropped (GOAWAY PROTOCOL_ERROR)",
    "svc%2Fgreeter": "answered; next call: answered",
    "svc.greeter": "answered; next call: answered",
  },
  node: {
    "svc/greeter": "stream reset (PROTOCOL_ERROR); next call: answered",
    "svc%2Fgreeter": "answered; next call: answered",
    "svc.greeter": "answered; next call: answered",
  },
  bun: {
    "svc/greeter": "stream reset (PROTOCOL_ERROR); next call: answered",
    "svc%2Fgreeter": "answered; next call: answered",
    "svc.greeter": "answered; next call: answered",
  },
};

/** A raw HTTP/2 call with `:authority` `svc/greeter`, `svc%2Fgreeter`, `svc.greeter`. */
async function authority(): Promise<string> {
  const server = await startLoneGreeter("probe-target");
  const seen: Record<string, string> = {};
  try {
    for (const value of Object.keys(AUTHORITY_EXPECTED[currentRuntime()])) {
      const { first, next } = await probeAuthority(server.addr, value);
      if (first.kind === "answered") assert.match(first.reply, /probe-target/);
      seen[value] = `${describeOutcome(first)}; next call: ${describeOutcome(next)}`;
    }
  } finally {
    server.close();
  }
  assert.deepEqual(seen, AUTHORITY_EXPECTED[currentRuntime()]);
  return Object.entries(seen).map(([k, v]) => `${k}: ${v}`).join(" | ");
}

/**
 * Runs a script (the tour of docs/runtimes.md) on this runtime against a
 * private etcd given as `ETCD_ENDPOINTS`, and checks it printed `expected`.
 *
 * @param args the script's path, then the lines it must print
 */
async function script(args: readonly string[]): Promise<string> {
  const [path, ...expected] = args;
  if (!path) throw new TypeError("script: the path of the script to run is missing");
  await using etcd = await startEtcd({ private: true });
  const { command, args: argv } = scriptCommand(pathToFileURL(path), []);
  const child = spawnChild(command, argv, {
    stdout: "pipe",
    stderr: "tail",
    env: { ETCD_ENDPOINTS: etcd.endpoint },
  });
  const lines: string[] = [];
  const output = readLines(child.stdout!, (line) => lines.push(line));
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const status = await child.exited.finally(() => clearTimeout(timer));
  await output;
  assert.equal(
    status.code,
    0,
    `exit ${status.code ?? status.signal}; stdout:\n${
      lines.join("\n")
    }\nstderr:\n${child.stderrTail()}`,
  );
  assert.deepEqual(lines, expected);
  return `printed ${lines.length} line(s) as documented`;
}

/** A TLS set-up that an etcd with `--client-cert-auth` refuses, and the hint it must get. */
interface Refusal {
  readonly name: string;
  readonly tls: (pki: TestPki, other: TestPki) => { ca: string; cert?: string; key?: string };
  readonly hint: string;
}

/**
 * The TLS set-ups that an etcd with `--client-cert-auth` refuses, and the
 * hint that the error of `register()` must carry: the same on every runtime,
 * with auth on or off.
 */
export const TLS_REFUSALS: readonly Refusal[] = [
  {
    name: "no client certificate",
    tls: (pki) => ({ ca: pki.ca }),
    hint: "etcd closed the TLS connection; it may require a client certificate " +
      "(tls.cert and tls.key were not given)",
  },
  {
    name: "a client certificate from another CA",
    tls: (pki, other) => ({ ca: pki.ca, cert: other.clientCert, key: other.clientKey }),
    hint: "etcd rejected the client certificate: the one in tls.cert (CN=client) was not " +
      "issued by the CA in tls.ca; etcd must trust its issuer (--trusted-ca-file)",
  },
  {
    name: "a CA that did not sign etcd's certificate",
    tls: (pki, other) => ({ ca: other.ca, cert: pki.clientCert, key: pki.clientKey }),
    hint: "etcd's server certificate is not signed by the CA given in tls.ca",
  },
];

/**
 * An etcd with `--client-cert-auth` (and auth on, with `"auth"`) refuses each
 * of {@linkcode TLS_REFUSALS}: `register()` gives up at its timeout, on the
 * connection's failure (UNAVAILABLE; not a deadline: calls have 30 s), with
 * the case's hint. Returns what the runtime said in each case.
 */
function tlsRefusals(mode: "plain" | "auth"): Scenario {
  return async () => {
    const timeout = 2000;
    const pki = await makePki();
    const other = await makePki();
    const seen: string[] = [];
    const wrong: string[] = [];
    try {
      await using etcd = await startSecureEtcd({ pki, auth: mode === "auth" });
      const prefix = `register(): could not register "tls/svc/10.0.0.1:50051" on etcd at ` +
        `${etcd.endpoint} within ${timeout} ms: `;
      for (const refusal of TLS_REFUSALS) {
        await using client = connect({
          hosts: etcd.endpoint,
          tls: refusal.tls(pki, other),
          auth: mode === "auth" ? { username: "root", password: ROOT_PASSWORD } : undefined,
          dialTimeout: 30_000,
        });
        const start = Date.now();
        const message = await register(client, "tls/svc", { addr: "10.0.0.1:50051" }, {
          timeout,
          onError: () => {},
        }).then(
          async (registration) => {
            await registration.close();
            return "registered";
          },
          (e: Error) => e.message,
        );
        const ms = Date.now() - start;
        const expected = `${prefix}${refusal.hint}: `;
        if (!message.startsWith(expected) || !/\bUNAVAILABLE\b/.test(message)) {
          wrong.push(`${refusal.name}: expected "${expected}… UNAVAILABLE …", got "${message}"`);
        }
        seen.push(`${refusal.name} (${ms} ms): ${message.replace(expected, "")}`);
      }
    } finally {
      await pki.close();
      await other.close();
    }
    if (wrong.length > 0) throw new Error(wrong.join("\n"));
    return seen.join(" | ");
  };
}

/** The prefix of the result line that `main.ts` prints for a scenario. */
export const RESULT_PREFIX = "CONFORMANCE ";

/** Every scenario by name, in the order the matrix runs them. */
export const SCENARIOS: Readonly<Record<string, Scenario>> = {
  "tour": () => tour((endpoint) => connect({ hosts: endpoint })),
  "tour-fetch": () => tour((endpoint) => connectFetch({ hosts: endpoint })),
  "idle-watch-fetch": idleWatch,
  "heal": heal,
  "etcd-restart": etcdRestart,
  "compaction": compaction,
  "spread": spread,
  "graceful-close": gracefulClose,
  "sigkill": sigkill,
  "authority": authority,
  "tls-refused": tlsRefusals("plain"),
  "tls-refused-auth": tlsRefusals("auth"),
  "script": script,
};
