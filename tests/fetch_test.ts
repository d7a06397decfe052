/**
 * `connectFetch()`: its pure parts (etcd's error bodies of 3.4 and 3.6, base64,
 * prefix ranges, bad options), its request logic against a stand-in `fetch`
 * (failover, deadlines, token renewal, close), and `register()`/`resolve()`
 * over it against real etcd processes: healing, failover, a frozen member,
 * cut-offs, compaction, restarts, auth, RBAC, TLS and hosts that are not etcd.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  AuthenticationError,
  ClientClosedError,
  CompactedError,
  connectFetch,
  type FetchFunction,
  LeaseNotFoundError,
  PermissionDeniedError,
  type WatchBatch,
} from "../fetch.ts";
import {
  applyUpdates,
  type Endpoint,
  register,
  type RegistrationState,
  resolve,
  type Update,
} from "../core.ts";
import {
  fromBase64,
  judgeAnswer,
  judgeCancel,
  judgeStatus,
  prefixEnd,
  readStatus,
  type RequestContext,
  textToBase64,
  toBase64,
} from "../src/etcd/gateway.ts";
import { idleTimeoutFetch } from "../harness/idle_fetch.ts";
import { EtcdCluster } from "../harness/etcd_cluster.ts";
import { freePort, readMetric, startEtcd } from "../harness/etcd_server.ts";
import { TcpProxy } from "../harness/tcp_proxy.ts";
import {
  grantService,
  makePki,
  ROOT_PASSWORD,
  startSecureEtcd,
  startTlsEtcd,
} from "../harness/tls.ts";
import { runThroughTokenExpiry } from "./token_expiry.ts";
import { fakeTime } from "./fake_time.ts";
import { sleep, until } from "../harness/wait.ts";

const WATCHERS = "etcd_debugging_mvcc_watcher_total";
const quiet = { onError: () => {} };

/** The next batch of a resolver or a watch, failing after `ms`. */
async function next<T>(it: AsyncIterator<T>, ms = 15_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const pending = it.next();
  // When the bound wins, the read may still fail later (as the test ends): that is no news.
  pending.catch(() => {});
  const result = await Promise.race([
    pending,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no batch within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
  assert.equal(result.done, false, "the stream ended early");
  return result.value;
}

const value = (addr: string, metadata: unknown = null) =>
  JSON.stringify({ Op: 0, Addr: addr, Metadata: metadata });

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

Deno.test("fetch: base64 and prefix ranges are etcd's", () => {
  assert.equal(textToBase64("svc/echo/"), "c3ZjL2VjaG8v");
  assert.equal(toBase64(new Uint8Array([0, 255, 128])), "AP+A");
  assert.deepEqual(fromBase64("AP+A"), new Uint8Array([0, 255, 128]));
  assert.deepEqual(fromBase64(undefined), new Uint8Array(0));
  const big = new Uint8Array(100_000).map((_, i) => i % 251);
  assert.deepEqual(fromBase64(toBase64(big)), big);
  const end = (text: string) => new TextDecoder().decode(prefixEnd(new TextEncoder().encode(text)));
  assert.equal(end("svc/echo/"), "svc/echo0");
  assert.deepEqual(prefixEnd(new Uint8Array([0x61, 0xff, 0xff])), new Uint8Array([0x62]));
  assert.deepEqual(prefixEnd(new Uint8Array([0xff])), new Uint8Array([0]));
  // A Buffer's slice() is a view: the prefix itself must stay as it was.
  const prefix = Buffer.from("svc/a/");
  assert.equal(Buffer.from(prefixEnd(prefix)).toString(), "svc/a0");
  assert.equal(prefix.toString(), "svc/a/");
});

/**
 * Error bodies recorded from etcd 3.4.23 with curl (`curl -s -X POST
 * http://127.0.0.1:2379/v3/<path> -d '<body>'`), and the same errors as etcd
 * 3.6 sends them: its gateway is grpc-gateway v2, whose errors are a
 * `google.rpc.Status` (`{"code","message","details"}`, runtime/errors.go
 * DefaultHTTPErrorHandler) and whose stream errors are `{"error": Status}`
 * (errorChunk).
 */
const RECORDED: readonly {
  name: string;
  status: number;
  v34: string;
  v36: string;
  context?: Partial<RequestContext>;
  expect: (verdict: ReturnType<typeof judgeAnswer>) => void;
}[] = [
  {
    name: "a put with a revoked lease (404 with a JSON body: etcd's own, not a missing page)",
    status: 404,
    v34:
      '{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}',
    v36: '{"code":5,"message":"etcdserver: requested lease not found","details":[]}',
    context: { operation: 'writing "svc/a/1"', lease: "7587862072908030986" },
    expect: (v) => {
      assert.equal(v.retry, false);
      assert.ok(v.error instanceof LeaseNotFoundError);
      assert.equal(v.error.lease, "7587862072908030986");
    },
  },
  {
    name: "no user name while auth is on",
    status: 400,
    v34:
      '{"error":"etcdserver: user name is empty","message":"etcdserver: user name is empty","code":3}',
    v36: '{"code":3,"message":"etcdserver: user name is empty"}',
    expect: (v) => {
      assert.equal(v.retry, false);
      assert.ok(v.error instanceof AuthenticationError);
      assert.match(v.error.message, /give them as options\.auth to connectFetch\(\)$/);
    },
  },
  {
    name: "a wrong password",
    status: 400,
    v34:
      '{"error":"etcdserver: authentication failed, invalid user ID or password","message":"etcdserver: authentication failed, invalid user ID or password","code":3}',
    v36:
      '{"code":3,"message":"etcdserver: authentication failed, invalid user ID or password","details":[]}',
    context: { user: "svc-a" },
    expect: (v) => {
      assert.equal(v.retry, false);
      assert.ok(v.error instanceof AuthenticationError);
      assert.match(v.error.message, /rejected the user name or password \(user "svc-a"\)/);
    },
  },
  {
    name: "RBAC refusing a write",
    status: 403,
    v34:
      '{"error":"etcdserver: permission denied","message":"etcdserver: permission denied","code":7}',
    v36: '{"code":7,"message":"etcdserver: permission denied","details":[]}',
    context: { operation: 'writing "b/10.0.0.1:1"', user: "svc-a" },
    expect: (v) => {
      assert.equal(v.retry, false);
      assert.ok(v.error instanceof PermissionDeniedError);
      assert.match(v.error.message, /^etcd denied writing "b\/10.0.0.1:1" to user "svc-a"/);
    },
  },
  {
    name: "an expired or unknown token",
    status: 401,
    v34:
      '{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}',
    v36: '{"code":16,"message":"etcdserver: invalid auth token","details":[]}',
    context: { user: "root" },
    expect: (v) => assert.equal(v.retry, "token"),
  },
  {
    name: "a future revision (any other refusal)",
    status: 400,
    v34:
      '{"error":"etcdserver: mvcc: required revision is a future revision","message":"etcdserver: mvcc: required revision is a future revision","code":11}',
    v36: '{"code":11,"message":"etcdserver: mvcc: required revision is a future revision"}',
    expect: (v) => {
      assert.equal(v.retry, false);
      assert.match(
        v.error.message,
        /^etcd at http:\/\/10\.0\.0\.5:2379 refused reading "k": etcdserver: mvcc: required revision is a future revision \(gRPC code 11\)$/,
      );
    },
  },
  {
    name: "no leader on this member: the next host may have one",
    status: 503,
    v34: '{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}',
    v36: '{"code":14,"message":"etcdserver: no leader","details":[]}',
    expect: (v) => assert.equal(v.retry, "host"),
  },
];

Deno.test("fetch: etcd's error bodies of 3.4 and of 3.6 mean the same errors", async (t) => {
  for (const body of RECORDED) {
    await t.step(body.name, () => {
      const context: RequestContext = {
        host: "http://10.0.0.5:2379",
        path: "/v3/kv/range",
        operation: 'reading "k"',
        ...body.context,
      };
      const v34 = readStatus(JSON.parse(body.v34));
      const v36 = readStatus(JSON.parse(body.v36));
      assert.ok(v34 && v36);
      assert.deepEqual(v34, v36, "both shapes read the same code and message");
      body.expect(judgeAnswer(body.status, "application/json", body.v34, context));
      body.expect(judgeAnswer(body.status, "application/json", body.v36, context));
    });
  }
  await t.step("stream error chunks of both gateways", () => {
    // Recorded from etcd 3.4.23: a watch open while etcd stopped (SIGTERM).
    const v1 =
      '{"error":{"grpc_code":1,"http_code":408,"message":"grpc: the client connection is closing","http_status":"Request Timeout"}}';
    const v2 =
      '{"error":{"code":1,"message":"grpc: the client connection is closing","details":[]}}';
    const expected = { code: 1, message: "grpc: the client connection is closing" };
    assert.deepEqual(readStatus(JSON.parse(v1)), expected);
    assert.deepEqual(readStatus(JSON.parse(v2)), expected);
    assert.equal(readStatus({ header: { revision: "3" } }), undefined);
    assert.equal(readStatus({ error: "text without a code" }), undefined);
    assert.equal(readStatus("Not Found"), undefined);
  });
});

Deno.test("fetch: an answer that is not etcd's names the host, the status and the body, and moves on", () => {
  const context: RequestContext = {
    host: "http://10.0.0.5:2379",
    path: "/v3/kv/range",
    operation: 'reading the prefix "svc/"',
  };
  // etcd's answer to an unknown path: 404 text/plain (recorded from etcd 3.4.23).
  const missing = judgeAnswer(404, "text/plain; charset=utf-8", "Not Found\n", context);
  assert.equal(missing.retry, "host");
  assert.equal(
    missing.error.message,
    'http://10.0.0.5:2379 did not answer as etcd does while reading the prefix "svc/": ' +
      'POST /v3/kv/range got HTTP 404 text/plain "Not Found" (is it etcd ≥ 3.4, on its client ' +
      "port? etcd < 3.4 serves no /v3/ gateway)",
  );
  const html = judgeAnswer(
    404,
    "text/html",
    `<html><body>${"x".repeat(500)}</body></html>`,
    context,
  );
  assert.equal(html.retry, "host");
  assert.match(html.error.message, /got HTTP 404 text\/html "<html><body>x+…"/);
  const tls = judgeAnswer(400, "text/plain", "Client sent an HTTP request to an HTTPS server.\n", {
    ...context,
  });
  assert.match(tls.error.message, /\(it serves TLS: give https:\/\/ hosts\)$/);
  // Recorded from etcd 3.4.23 with --client-cert-auth and auth on, for a certificate with a CN.
  const named = judgeAnswer(
    400,
    "text/plain; charset=utf-8",
    "CommonName of client sending a request against gateway will be ignored and not used as expected\n",
    context,
  );
  assert.equal(named.retry, "host");
  assert.match(
    named.error.message,
    /\(etcd with auth on refuses gateway requests whose client certificate has a CommonName: present one without a CN, naming the client in its SANs\)$/,
  );
  assert.match(
    judgeAnswer(302, null, "", context).error.message,
    /got HTTP 302 "" \(it redirects elsewhere; give etcd's own client URL\)$/,
  );
});

Deno.test("fetch: a watch's cancel reasons, recorded from etcd 3.4.23, mean the same errors as unary refusals", () => {
  const context: RequestContext = {
    host: "http://10.0.0.5:2379",
    path: "/v3/watch",
    operation: 'watching "a/"',
    user: "svc-b",
  };
  const compacted = judgeCancel(6, "", context);
  assert.ok(compacted.error instanceof CompactedError && compacted.error.compactRevision === 6);
  const denied = judgeCancel(
    0,
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
    context,
  );
  assert.ok(denied.error instanceof PermissionDeniedError);
  assert.match(denied.error.message, /^etcd denied watching "a\/" to user "svc-b"/);
  const expired = judgeCancel(
    0,
    "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token",
    context,
  );
  assert.equal(expired.retry, "token");
  const nobody = judgeCancel(
    0,
    "rpc error: code = InvalidArgument desc = etcdserver: user name is empty",
    { ...context, user: undefined },
  );
  assert.ok(nobody.error instanceof AuthenticationError);
  const other = judgeCancel(0, "something else", context);
  assert.equal(other.retry, false);
  assert.equal(
    other.error.message,
    'etcd at http://10.0.0.5:2379 cancelled watching "a/": something else',
  );
  assert.equal(
    judgeStatus({ code: 5, message: "etcdserver: requested lease not found" }, context).error
      .message,
    'etcd at http://10.0.0.5:2379 refused watching "a/": etcdserver: requested lease not found (gRPC code 5)',
    "without a lease in the context, a lease error stays etcd's own",
  );
});

Deno.test("fetch: connectFetch() names a bad option and its value", () => {
  const bad: [unknown, RegExp, ErrorConstructor][] = [
    [undefined, /options must be \{ hosts, … \}, got undefined/, TypeError],
    [{ hosts: [] }, /options\.hosts must be a non-empty string or array .*got \[\]/, TypeError],
    [{ hosts: 7 }, /options\.hosts must be a non-empty string or array .*got 7/, TypeError],
    [{ hosts: "nope" }, /options\.hosts entries must be .*got "nope"/, TypeError],
    [{ hosts: "ftp://h:1" }, /got "ftp:\/\/h:1"/, TypeError],
    [{ hosts: "http://u:p@h:1" }, /got "http:\/\/u:p@h:1"/, TypeError],
    [{ hosts: "http://h:1/etcd" }, /got "http:\/\/h:1\/etcd"/, TypeError],
    [{ hosts: "http://h:1?x=1" }, /got "http:\/\/h:1\?x=1"/, TypeError],
    [{ hosts: "127.0.0.1:0" }, /got "127\.0\.0\.1:0"/, TypeError],
    [{ hosts: "127.0.0.1:70000" }, /got "127\.0\.0\.1:70000"/, TypeError],
    [{ hosts: [" http://h:1"] }, /got " http:\/\/h:1"/, TypeError],
    [
      { hosts: ["http://a:1", "https://b:2"] },
      /must be all https:\/\/ or all http:\/\//,
      TypeError,
    ],
    [{ hosts: "h:1", dialTimeout: 0 }, /options\.dialTimeout .* got 0/, RangeError],
    [{ hosts: "h:1", dialTimeout: Infinity }, /got Infinity/, RangeError],
    [{ hosts: "h:1", dialTimeout: "5" }, /options\.dialTimeout .* got 5/, RangeError],
    [{ hosts: "h:1", auth: "root" }, /options\.auth must be .* got root/, TypeError],
    [
      { hosts: "h:1", auth: { username: "", password: "x" } },
      /got \{ username: "", password: … \}/,
      TypeError,
    ],
    [{ hosts: "h:1", auth: { username: "u" } }, /options\.auth must be/, TypeError],
    [{ hosts: "h:1", fetch: "fetch" }, /options\.fetch must be a function .* got fetch/, TypeError],
  ];
  for (const [options, message, type] of bad) {
    assert.throws(() => connectFetch(options as never), type, JSON.stringify(options));
    assert.throws(() => connectFetch(options as never), message, JSON.stringify(options));
  }
  for (
    const hosts of ["127.0.0.1:2379", "http://[::1]:2379", "https://etcd.internal", "http://h:1/"]
  ) {
    const client = connectFetch({ hosts });
    assert.deepEqual(client.hosts, [hosts]);
    client.close();
  }
});

// ---------------------------------------------------------------------------------------------
// Request logic, against a stand-in fetch
// ---------------------------------------------------------------------------------------------

/** A recorded request to the stand-in fetch. */
interface Call {
  readonly url: string;
  readonly authorization: string | null;
  readonly body: unknown;
  readonly signal: AbortSignal;
}

/** A fetch answered by `answer`, recording each request. */
function standIn(
  answer: (call: Call, n: number) => Response | Promise<Response>,
): { fetch: FetchFunction; calls: Call[] } {
  const calls: Call[] = [];
  return {
    calls,
    fetch: (url, init) => {
      const call: Call = {
        url,
        authorization: new Headers(init.headers).get("authorization"),
        body: JSON.parse(String(init.body)),
        signal: init.signal!,
      };
      calls.push(call);
      return Promise.resolve(answer(call, calls.length));
    },
  };
}

/** A request that never gets an answer: rejects when its signal aborts, as fetch does. */
function hang(call: Call): Promise<Response> {
  return new Promise((_, reject) => {
    call.signal.addEventListener("abort", () => reject(call.signal.reason), { once: true });
  });
}

const refused = () =>
  Promise.reject(
    new TypeError("fetch failed", { cause: new Error("tcp connect error: Connection refused") }),
  );
const ok = (revision: number, extra: object = {}) =>
  Response.json({ header: { revision: String(revision) }, ...extra });

Deno.test("fetch: a host that fails goes to the back of the line; calls succeed on the next", async () => {
  const { fetch, calls } = standIn((call) =>
    call.url.startsWith("http://dead:1") ? refused() : ok(9)
  );
  await using client = connectFetch({ hosts: ["http://dead:1", "http://live:2"], fetch });
  for (let i = 0; i < 6; i++) assert.equal(await client.put(`k${i}`, "v"), 9);
  const dead = calls.filter((c) => c.url.startsWith("http://dead:1"));
  assert.ok(dead.length <= 1, `the dead host was tried ${dead.length} times`);
  assert.deepEqual(calls.filter((c) => c.url.startsWith("http://live:2")).length, 6);
});

Deno.test("fetch: a write that got no answer goes to the next host with a fresh deadline", async () => {
  const { fetch, calls } = standIn((call) =>
    call.url.startsWith("http://hung:1") ? hang(call) : ok(4)
  );
  await using client = connectFetch({
    hosts: ["http://hung:1", "http://live:2"],
    fetch,
    dialTimeout: 200,
  });
  for (let i = 0; i < 4; i++) assert.equal(await client.delete("k"), 4);
  const hung = calls.filter((c) => c.url.startsWith("http://hung:1"));
  assert.ok(hung.length <= 1 && hung.every((c) => c.signal.aborted), "aborted at its deadline");
});

Deno.test("fetch: when every host fails, one error says what happened at each", async () => {
  const { fetch } = standIn((call) =>
    call.url.startsWith("http://a:1")
      ? refused()
      : call.url.startsWith("http://b:2")
      ? new Response("Not Found\n", { status: 404, headers: { "content-type": "text/plain" } })
      : hang(call)
  );
  await using client = connectFetch({
    hosts: ["http://a:1", "http://b:2", "http://c:3"],
    fetch,
    dialTimeout: 50,
  });
  await assert.rejects(client.get("k"), (e: Error) => {
    assert.match(e.message, /^no etcd host answered reading "k": /);
    assert.match(
      e.message,
      /could not reach etcd at http:\/\/a:1 while reading "k": fetch failed: tcp connect error: Connection refused/,
    );
    assert.match(
      e.message,
      /http:\/\/b:2 did not answer as etcd does .* got HTTP 404 text\/plain "Not Found"/,
    );
    assert.match(e.message, /etcd at http:\/\/c:3 did not answer reading "k" within 50 ms/);
    return true;
  });
});

Deno.test("fetch: a token etcd calls invalid is renewed once and the call repeated", async () => {
  let tokens = 0;
  const { fetch, calls } = standIn((call) => {
    if (call.url.endsWith("/v3/auth/authenticate")) {
      assert.deepEqual(call.body, { name: "root", password: "pw" });
      return ok(1, { token: `t${++tokens}` });
    }
    if (call.authorization === "t1") {
      return Response.json({ error: "etcdserver: invalid auth token", code: 16 }, { status: 401 });
    }
    return ok(5, {
      kvs: [{ key: textToBase64("k"), value: textToBase64("v"), mod_revision: "5" }],
    });
  });
  await using client = connectFetch({
    hosts: "http://e:1",
    fetch,
    auth: { username: "root", password: "pw" },
  });
  const { kvs } = await client.get("k");
  assert.equal(kvs[0]?.modRevision, 5);
  assert.deepEqual(
    calls.map((c) => `${new URL(c.url).pathname} ${c.authorization}`),
    [
      "/v3/auth/authenticate null",
      "/v3/kv/range t1",
      "/v3/auth/authenticate null",
      "/v3/kv/range t2",
    ],
  );
  // A token that stays invalid is not renewed forever: the call fails saying so.
  const { fetch: stubborn, calls: tries } = standIn((call) =>
    call.url.endsWith("/v3/auth/authenticate")
      ? ok(1, { token: "t" })
      : Response.json({ error: "etcdserver: invalid auth token", code: 16 }, { status: 401 })
  );
  await using stuck = connectFetch({
    hosts: "http://e:1",
    fetch: stubborn,
    auth: { username: "u", password: "p" },
  });
  await assert.rejects(stuck.get("k"), /refused reading "k": etcdserver: invalid auth token/);
  assert.equal(tries.length, 4);
});

/** Makes `Math.random` return `values` in turn (then random ones again) until disposed. */
function randomSequence(...values: number[]): Disposable {
  const real = Math.random;
  Math.random = () => values.shift() ?? real();
  return { [Symbol.dispose]: () => void (Math.random = real) };
}

const credentials = { username: "u", password: "p" };

Deno.test("fetch: with auth, a call to a healthy host neither waits for nor fails with an authentication on a host that is down", async (t) => {
  const downs = [["frozen", hang], ["refusing connections", refused]] as const;
  for (const [name, down] of downs) {
    await t.step(`the other host ${name}`, async () => {
      let tokens = 0;
      const { fetch, calls } = standIn((call) => {
        if (call.url.startsWith("http://a:1")) return down(call);
        if (call.url.endsWith("/v3/auth/authenticate")) return ok(1, { token: `t${++tokens}` });
        assert.equal(call.authorization, "t1");
        return ok(3);
      });
      await using client = connectFetch({
        hosts: ["http://a:1", "http://b:2"],
        fetch,
        auth: credentials,
        dialTimeout: 300,
      });
      const settled: string[] = [];
      const get = (key: string) =>
        client.get(key).then(
          ({ revision }) => (settled.push(key), revision),
          (error: Error) => (settled.push(key), error.message),
        );
      let results: (number | string)[];
      {
        // Call "one" tries a, then b; call "two" tries b, then a.
        using _order = randomSequence(0.9, 0.1);
        results = await Promise.all([get("one"), get("two")]);
      }
      assert.deepEqual(results, [3, 3], "both calls succeed on b");
      const atB = calls.filter((c) => c.url.startsWith("http://b:2"));
      assert.deepEqual(atB.map((c) => new URL(c.url).pathname), [
        "/v3/auth/authenticate",
        "/v3/kv/range",
        "/v3/kv/range",
      ], "one token, taken on b, serves both calls");
      const atA = calls.filter((c) => c.url.startsWith("http://a:1"));
      assert.deepEqual(atA.map((c) => new URL(c.url).pathname), ["/v3/auth/authenticate"]);
      if (name === "frozen") {
        assert.deepEqual(settled, ["two", "one"], "call two did not wait for a's deadline");
      }
    });
  }
});

Deno.test("fetch: a host refusing connections does not cost the token: one authentication serves every call", async () => {
  using clock = fakeTime();
  let tokens = 0;
  const { fetch, calls } = standIn((call) =>
    call.url.startsWith("http://dead:1")
      ? refused()
      : call.url.endsWith("/v3/auth/authenticate")
      ? ok(1, { token: `t${++tokens}` })
      : ok(3)
  );
  await using client = connectFetch({
    hosts: ["http://dead:1", "http://live:2"],
    fetch,
    auth: credentials,
  });
  for (let i = 0; i < 6; i++) {
    {
      using _order = randomSequence(0.9); // the dead host first, once it is not avoided
      assert.equal((await client.get("k")).revision, 3);
    }
    await clock.tick(6000); // past the 5 s a failed host waits at the back of the line
  }
  const dead = calls.filter((c) => c.url.startsWith("http://dead:1"));
  assert.equal(dead.length, 6, "the dead host was tried by every call");
  assert.equal(dead.filter((c) => c.authorization === "t1").length, 5, "with the token");
  assert.equal(tokens, 1, "the token stayed");
});

Deno.test("fetch: a token whose requests one host closes twice without an answer is renewed, and the call repeated there", async () => {
  let tokens = 0;
  const { fetch, calls } = standIn((call) => {
    if (call.url.endsWith("/v3/auth/authenticate")) return ok(1, { token: `t${++tokens}` });
    // What etcd issues 15256 and 20332 describe: a stale token, and the connection closes.
    if (call.authorization === "t1") {
      return Promise.reject(
        new TypeError("fetch failed", {
          cause: new Error("connection closed before message completed"),
        }),
      );
    }
    return ok(3);
  });
  await using client = connectFetch({ hosts: "http://e:1", fetch, auth: credentials });
  await assert.rejects(client.get("k"), /connection closed before message completed/);
  assert.equal((await client.get("k")).revision, 3);
  assert.deepEqual(calls.map((c) => `${new URL(c.url).pathname} ${c.authorization}`), [
    "/v3/auth/authenticate null",
    "/v3/kv/range t1",
    "/v3/kv/range t1",
    "/v3/auth/authenticate null",
    "/v3/kv/range t2",
  ]);
});

Deno.test("fetch: keepAlive() gives up after options.timeout, however long the dial timeout", async () => {
  const { fetch, calls } = standIn(hang);
  await using client = connectFetch({
    hosts: ["http://a:1", "http://b:2"],
    fetch,
    dialTimeout: 60_000,
  });
  await assert.rejects(
    client.keepAlive("7", { timeout: 100 }),
    /etcd at http:\/\/[ab]:[12] did not answer renewing lease 7 within 100 ms/,
  );
  assert.equal(calls.length, 1, "no time was left for another host");
  assert.ok(calls[0]!.signal.aborted);
});

Deno.test("fetch: close() aborts every request in flight; later calls reject with ClientClosedError", async () => {
  const { fetch, calls } = standIn(hang);
  const client = connectFetch({ hosts: "http://a:1", fetch });
  const pending = [client.get("k"), client.put("k", "v"), client.keepAlive("7")];
  const watch = client.watch("p/", { startRevision: 0 })[Symbol.asyncIterator]().next();
  await until("four requests out", 1000, () => calls.length === 4);
  await client.close();
  for (const call of [...pending, watch]) await assert.rejects(call, ClientClosedError);
  assert.ok(calls.every((c) => c.signal.aborted));
  await assert.rejects(client.get("k"), ClientClosedError);
});

/** A streamed answer holding `messages` as newline-delimited JSON cut into 7-byte chunks, left open. */
function streamed(messages: readonly unknown[]): Response {
  const bytes = new TextEncoder().encode(messages.map((m) => JSON.stringify(m) + "\n").join(""));
  return new Response(
    new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < bytes.length; i += 7) controller.enqueue(bytes.slice(i, i + 7));
      },
    }),
  );
}

Deno.test("fetch: a watch reads messages cut anywhere, and etcd's error chunks (3.4 and 3.6 shapes) end it", async () => {
  const b64 = textToBase64;
  const events = [
    { result: { header: { revision: "5" }, created: true } },
    {
      result: {
        header: { revision: "6" },
        events: [{ kv: { key: b64("p/a"), value: b64("1"), mod_revision: "6", lease: "42" } }],
      },
    },
    { result: { header: { revision: "7" } } },
    {
      result: {
        header: { revision: "8" },
        events: [{ type: "DELETE", kv: { key: b64("p/a"), mod_revision: "8" } }],
      },
    },
  ];
  const ends = [
    { error: { code: 14, message: "etcdserver: no leader", details: [] } },
    {
      error: {
        grpc_code: 16,
        http_code: 401,
        message: "etcdserver: invalid auth token",
        http_status: "Unauthorized",
      },
    },
  ];
  let watches = 0;
  const { fetch, calls } = standIn((call) =>
    call.url.endsWith("/v3/auth/authenticate")
      ? ok(1, { token: `t${calls.length}` })
      : call.url.endsWith("/v3/watch")
      ? streamed([...events, ends[watches++]!])
      : ok(8)
  );
  await using client = connectFetch({
    hosts: "http://e:1",
    fetch,
    auth: { username: "u", password: "p" },
  });
  for (
    const expected of [
      /refused watching "p\/": etcdserver: no leader \(gRPC code 14\)$/,
      /invalid auth token \(gRPC code 16\) \(the auth token is renewed for the next attempt\)$/,
    ]
  ) {
    const seen: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const batch of client.watch("p/", { startRevision: 6 })) {
          seen.push(
            `@${batch.revision} ` +
              batch.events.map((e) =>
                e.type === "put"
                  ? `put ${e.kv.key} ${e.kv.lease} ${e.kv.modRevision}`
                  : `delete ${e.key} ${e.modRevision}`
              ).join(),
          );
        }
      })(),
      expected,
    );
    assert.deepEqual(seen, ["@5 ", "@6 put p/a 42 6", "@7 ", "@8 delete p/a 8"]);
  }
  assert.deepEqual(calls[1]!.body, {
    create_request: { key: b64("p/"), range_end: b64("p0"), start_revision: "6" },
  });
  await client.get("p/a");
  assert.deepEqual(
    calls.map((c) => `${new URL(c.url).pathname} ${c.authorization}`),
    [
      "/v3/auth/authenticate null",
      "/v3/watch t1",
      "/v3/watch t1",
      "/v3/auth/authenticate null",
      "/v3/kv/range t4",
    ],
    "the token a watch was refused with is not used again",
  );
});

Deno.test("fetch: a watch stream reopened in the middle of a message drops the half, and the new stream delivers it whole", async () => {
  const b64 = textToBase64;
  const created = { result: { header: { revision: "5" }, created: true } };
  const event = {
    result: {
      header: { revision: "6" },
      events: [{ kv: { key: b64("p/a"), value: b64("1"), mod_revision: "6" } }],
    },
  };
  const half = new TextEncoder().encode(JSON.stringify(event).slice(0, 30));
  let watches = 0;
  const { fetch } = standIn((call) => {
    if (!call.url.endsWith("/v3/watch")) return ok(6);
    if (++watches > 1) return streamed([created, event]);
    // The first stream says "created", then half a message, then nothing.
    return new Response(
      new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode(JSON.stringify(created) + "\n"));
          controller.enqueue(half);
        },
      }),
    );
  });
  await using client = connectFetch({ hosts: "http://e:1", fetch });
  const stop = new AbortController();
  const it = client.watch("p/", { startRevision: 6, signal: stop.signal, heartbeat: 50 })
    [Symbol.asyncIterator]();
  assert.deepEqual(shown(await next(it)), [], "created");
  assert.deepEqual(shown(await next(it)), ["put p/a=1"]);
  assert.equal(watches, 2);
  stop.abort();
  assert.deepEqual(await it.next(), { done: true, value: undefined });
});

Deno.test("fetch: a 200 that is not etcd's JSON, or a redirect, is no answer from etcd", async () => {
  const { fetch } = standIn((call) =>
    call.url.startsWith("http://web:1")
      ? new Response("<html>welcome</html>", { headers: { "content-type": "text/html" } })
      : new Response(null, { status: 307, headers: { location: "http://elsewhere/" } })
  );
  await using web = connectFetch({ hosts: "http://web:1", fetch });
  await assert.rejects(
    web.getPrefix("svc/"),
    /^Error: http:\/\/web:1 did not answer as etcd does while reading the prefix "svc\/": POST \/v3\/kv\/range got HTTP 200 text\/html "<html>welcome<\/html>"/,
  );
  await using moved = connectFetch({ hosts: "http://moved:1", fetch });
  await assert.rejects(moved.get("k"), /got HTTP 307 "" \(it redirects elsewhere/);
});

// ---------------------------------------------------------------------------------------------
// Against real etcd
// ---------------------------------------------------------------------------------------------

Deno.test("fetch: register() and resolve() over connectFetch, healing a key deleted and a lease revoked from outside", async () => {
  await using etcd = await startEtcd();
  await using client = connectFetch({ hosts: etcd.endpoint });
  await using outside = connectFetch({ hosts: etcd.endpoint });
  const states: RegistrationState[] = [];
  const reg = await register(client, "svc/echo", { addr: "127.0.0.1:2", metadata: { zone: "z" } }, {
    ttl: 10,
    onStateChange: (s) => states.push(s),
    ...quiet,
  });
  const [kv] = (await outside.get(reg.key)).kvs;
  assert.equal(new TextDecoder().decode(kv!.value), value("127.0.0.1:2", { zone: "z" }));
  assert.equal(kv!.lease, reg.lease);
  await using updates = resolve(client, "svc/echo", quiet);
  const added = {
    op: "add",
    key: reg.key,
    endpoint: { addr: "127.0.0.1:2", metadata: { zone: "z" } },
  };
  assert.deepEqual(await next(updates), [added]);

  // The delete and the put that heals it may come in one batch or two.
  const twoUpdates = async () => {
    const seen: Update[] = [];
    while (seen.length < 2) seen.push(...await next(updates));
    return seen;
  };
  await outside.delete(reg.key);
  assert.deepEqual(await twoUpdates(), [{ op: "delete", key: reg.key }, added], "put back");
  const first = reg.lease;
  await outside.revokeLease(first);
  assert.deepEqual(await twoUpdates(), [{ op: "delete", key: reg.key }, added], "put back");
  assert.notEqual(reg.lease, first);
  assert.equal((await outside.get(reg.key)).kvs[0]?.lease, reg.lease);
  await until("registered again", 2000, () => reg.state === "registered");
  assert.ok(states.includes("recovering"));

  await reg.close();
  assert.deepEqual(await next(updates), [{ op: "delete", key: reg.key }]);
  assert.equal((await outside.get(reg.key)).kvs.length, 0, "gone right after close()");
  assert.equal(await outside.keepAlive(reg.lease), 0, "lease revoked");
});

Deno.test("fetch: credentials given to an etcd without auth: calls go through without a token", async () => {
  await using etcd = await startEtcd();
  let authentications = 0;
  const counting: FetchFunction = (url, init) => {
    if (url.endsWith("/v3/auth/authenticate")) authentications++;
    assert.equal(new Headers(init.headers).get("authorization"), null, url);
    return fetch(url, init);
  };
  await using client = connectFetch({
    hosts: etcd.endpoint,
    auth: { username: "root", password: "pw" },
    fetch: counting,
  });
  await using reg = await register(client, "svc/open", { addr: "10.0.0.1:1" });
  await using updates = resolve(client, "svc/open", quiet);
  assert.deepEqual((await next(updates)).map((u) => u.key), [reg.key]);
  assert.equal(authentications, 1, "asked once; etcd said auth is not enabled");
});

Deno.test("fetch: with one host dead, every call goes to the live one", async () => {
  await using etcd = await startEtcd();
  const dead = `http://127.0.0.1:${await freePort()}`;
  await using client = connectFetch({ hosts: [dead, etcd.endpoint], dialTimeout: 1000 });
  await using reg = await register(client, "svc/echo", { addr: "127.0.0.1:3" }, { ttl: 2 });
  await using updates = resolve(client, "svc/echo", quiet);
  assert.deepEqual((await next(updates)).map((u) => u.key), [reg.key]);
  for (let i = 0; i < 5; i++) assert.equal((await client.get(reg.key)).kvs.length, 1);
  // Renewals every 2/3 s for 3 TTLs: the lease never lapses though a host is dead.
  const lease = reg.lease;
  await sleep(6000);
  assert.equal(reg.lease, lease);
  assert.equal(reg.state, "registered");
  await using deadOnly = connectFetch({
    hosts: [dead, `http://127.0.0.1:${await freePort()}`],
    dialTimeout: 1000,
  });
  await assert.rejects(deadOnly.get("k"), (e: Error) => {
    assert.match(
      e.message,
      /^no etcd host answered reading "k": could not reach etcd at http:\/\/127\.0\.0\.1:\d+/,
    );
    assert.ok(e.message.includes(dead), e.message);
    return true;
  });
});

Deno.test("fetch: a host that is not etcd, unreachable or silent fails within dialTimeout, saying which and what", async (t) => {
  await t.step("a web server answering 404", async () => {
    const pages = [
      new Response("Not Found\n", { status: 404, headers: { "content-type": "text/plain" } }),
      new Response("<html><h1>404</h1></html>", {
        status: 404,
        headers: { "content-type": "text/html" },
      }),
    ];
    await using server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen: () => {} },
      () => pages.shift() ?? new Response("gone", { status: 410 }),
    );
    const host = `http://127.0.0.1:${server.addr.port}`;
    await using client = connectFetch({ hosts: host, dialTimeout: 1000 });
    await assert.rejects(
      client.get("k"),
      new RegExp(
        `^Error: ${host} did not answer as etcd does while reading "k": POST /v3/kv/range got HTTP 404 text/plain "Not Found"`,
      ),
    );
    await assert.rejects(
      client.getPrefix("svc/"),
      /got HTTP 404 text\/html "<html><h1>404<\/h1><\/html>"/,
    );
  });
  await t.step("a closed port", async () => {
    const host = `http://127.0.0.1:${await freePort()}`;
    await using client = connectFetch({ hosts: host, dialTimeout: 1000 });
    await assert.rejects(
      register(client, "svc/echo", { addr: "127.0.0.1:4" }, { timeout: 1500 }),
      new RegExp(
        `could not register "svc/echo/127.0.0.1:4" on etcd at ${host} within 1500 ms: could not reach etcd at ${host} while granting a lease: .*(refused|os error)`,
      ),
    );
  });
  await t.step("a host that accepts connections and never answers", async () => {
    await using etcd = await startEtcd();
    await using proxy = await TcpProxy.start(etcd.endpoint);
    proxy.blackhole();
    await using client = connectFetch({ hosts: proxy.endpoint, dialTimeout: 300 });
    await assert.rejects(
      client.get("k"),
      new RegExp(`^Error: etcd at ${proxy.endpoint} did not answer reading "k" within 300 ms$`),
    );
    await assert.rejects(
      client.keepAlive("1", { timeout: 100 }),
      /did not answer renewing lease 1 within 100 ms/,
    );
    const it = client.watch("p/", { startRevision: 0 })[Symbol.asyncIterator]();
    await assert.rejects(it.next(), /did not answer watching "p\/" within 300 ms/);
    proxy.restore();
  });
});

Deno.test("fetch: a frozen member (SIGSTOP) is noticed by the heartbeat and the watch moves to another", async () => {
  await using cluster = await EtcdCluster.start(3);
  const leader = await cluster.leader();
  const followers = cluster.members.filter((m) => m !== leader);
  await using client = connectFetch({
    hosts: followers.map((m) => m.clientUrl),
    dialTimeout: 1000,
  });
  await using checker = connectFetch({ hosts: leader.clientUrl });
  const errors: { at: number; error: Error }[] = [];
  await using updates = resolve(client, "svc/frozen", {
    onError: (error) => errors.push({ at: Date.now(), error }),
  });
  assert.deepEqual(await next(updates), []);
  let frozen: (typeof followers)[number] | undefined;
  await until("the resolver's watch on a follower", 5000, async () => {
    for (const m of followers) if (await readMetric(m.clientUrl, WATCHERS) > 0) frozen = m;
    return frozen !== undefined;
  });
  const healthy = followers.find((m) => m !== frozen)!;
  // A registration through the same client: its renewals must move off the frozen member too.
  await using reg = await register(client, "svc/frozen", { addr: "10.0.0.1:1" }, {
    ttl: 3,
    ...quiet,
  });
  assert.deepEqual((await next(updates)).map((u) => u.key), [reg.key]);
  const lease = reg.lease;
  frozen!.pause();
  try {
    const frozenAt = Date.now();
    await until("the frozen member reported", 15_000, () => errors.length > 0);
    assert.match(
      errors[0]!.error.message,
      new RegExp(
        `etcd at ${frozen!.clientUrl} did not answer for 5000 ms while watching "svc/frozen/"`,
      ),
    );
    console.log(`frozen member noticed after ${errors[0]!.at - frozenAt} ms`);
    await until(
      "the watch re-created on the healthy member",
      10_000,
      async () => await readMetric(healthy.clientUrl, WATCHERS) > 0,
    );
    await checker.put("svc/frozen/10.0.0.2:1", value("10.0.0.2:1"));
    assert.deepEqual(await next(updates), [{
      op: "add",
      key: "svc/frozen/10.0.0.2:1",
      endpoint: { addr: "10.0.0.2:1" },
    }]);
    assert.equal(reg.lease, lease, "the registration kept its lease while the member was frozen");
    assert.equal(reg.state, "registered");
  } finally {
    frozen!.resume();
  }
});

/** A batch's events as lines: `put k=v`, `delete k`. */
function shown(batch: WatchBatch): string[] {
  return batch.events.map((e) =>
    e.type === "put" ? `put ${e.kv.key}=${new TextDecoder().decode(e.kv.value)}` : `delete ${e.key}`
  );
}

/** The next `count` events of a watch, as {@linkcode shown} lines. */
async function events(it: AsyncIterator<WatchBatch>, count: number): Promise<string[]> {
  const seen: string[] = [];
  while (seen.length < count) seen.push(...shown(await next(it)));
  return seen;
}

/** A `fetch` that records the host of every request, and the body of every watch it opens. */
function recordingWatches(
  inner: FetchFunction = fetch,
): { fetch: FetchFunction; watches: { host: string; body: unknown }[]; hosts: string[] } {
  const watches: { host: string; body: unknown }[] = [];
  const hosts: string[] = [];
  return {
    watches,
    hosts,
    fetch: (url, init) => {
      hosts.push(new URL(url).origin);
      if (url.endsWith("/v3/watch")) {
        watches.push({ host: new URL(url).origin, body: JSON.parse(String(init.body)) });
      }
      return inner(url, init);
    },
  };
}

Deno.test("fetch: a watch whose connection died silently is reopened after six quiet heartbeats, missing and repeating nothing", async () => {
  await using etcd = await startEtcd();
  await using writer = connectFetch({ hosts: etcd.endpoint });
  await using proxy = await TcpProxy.start(etcd.endpoint);
  const { fetch, watches } = recordingWatches();
  await using client = connectFetch({ hosts: proxy.endpoint, fetch, dialTimeout: 1000 });
  const start = await writer.put("w/a", "1");
  const stop = new AbortController();
  const it = client.watch("w/", { startRevision: start, signal: stop.signal, heartbeat: 200 })
    [Symbol.asyncIterator]();
  assert.deepEqual(shown(await next(it)), [], "created");
  assert.deepEqual(await events(it, 1), ["put w/a=1"]);
  // A NAT or load balancer forgets the connection: no FIN, no RST; the member stays healthy.
  assert.equal(proxy.drop("POST /v3/watch"), 1);
  await writer.put("w/b", "2");
  await writer.delete("w/a");
  assert.deepEqual(await events(it, 2), ["put w/b=2", "delete w/a"]);
  assert.ok(watches.length >= 2, "watched again");
  const resumed = watches[1]!.body as { create_request: { start_revision: string } };
  assert.equal(resumed.create_request.start_revision, String(start + 1), "after the last event");
  await writer.put("w/c", "3");
  assert.deepEqual(await events(it, 1), ["put w/c=3"], "nothing repeated");
  stop.abort();
  assert.deepEqual(await it.next(), { done: true, value: undefined });
});

Deno.test("fetch: an idle watch with a heartbeat reopens its stream after six quiet periods, without an error, from where it started", async () => {
  await using etcd = await startEtcd();
  await using writer = connectFetch({ hosts: etcd.endpoint });
  const { fetch, watches } = recordingWatches();
  await using client = connectFetch({ hosts: etcd.endpoint, fetch });
  const start = await writer.put("idle/x", "0") + 1;
  const stop = new AbortController();
  const it = client.watch("idle/", { startRevision: start, signal: stop.signal, heartbeat: 100 })
    [Symbol.asyncIterator]();
  assert.deepEqual(shown(await next(it)), [], "created");
  let settled = false;
  const pending = it.next().finally(() => settled = true);
  pending.catch(() => {}); // awaited below; not left unhandled should the test fail first
  await until("the stream reopened twice", 10_000, () => watches.length >= 3);
  assert.equal(settled, false, "no error, no batch: a routine reopen is not the caller's business");
  for (const { body } of watches) {
    assert.deepEqual(body, {
      create_request: {
        key: textToBase64("idle/"),
        range_end: textToBase64("idle0"),
        start_revision: String(start),
      },
    });
  }
  await until("etcd serves one watch", 5000, async () => {
    return await readMetric(etcd.endpoint, WATCHERS) === 1;
  });
  await writer.put("idle/a", "1");
  const batch = await pending;
  assert.deepEqual(batch.done === false && shown(batch.value), ["put idle/a=1"]);
  await writer.put("idle/b", "2");
  assert.deepEqual(await events(it, 1), ["put idle/b=2"], "nothing repeated");
  stop.abort();
  assert.deepEqual(await it.next(), { done: true, value: undefined });
  await until("etcd serves no watch", 5000, async () => {
    return await readMetric(etcd.endpoint, WATCHERS) === 0;
  });
});

Deno.test("fetch: a compaction past what a silently dropped watch missed surfaces as CompactedError", async () => {
  await using etcd = await startEtcd();
  await using writer = connectFetch({ hosts: etcd.endpoint });
  await using proxy = await TcpProxy.start(etcd.endpoint);
  await using client = connectFetch({ hosts: proxy.endpoint, dialTimeout: 1000 });
  const start = await writer.put("c/a", "0") + 1;
  const it = client.watch("c/", { startRevision: start, heartbeat: 200 })[Symbol.asyncIterator]();
  await next(it);
  assert.equal(proxy.drop("POST /v3/watch"), 1);
  let revision = 0;
  for (let i = 0; i < 5; i++) revision = await writer.put("c/a", String(i));
  const compacted = await fetch(`${etcd.endpoint}/v3/kv/compaction`, {
    method: "POST",
    body: JSON.stringify({ revision: String(revision), physical: true }),
  });
  assert.equal(compacted.status, 200, await compacted.text());
  await assert.rejects(next(it), (e: Error) => {
    assert.ok(e instanceof CompactedError, String(e));
    assert.equal(e.compactRevision, revision);
    return true;
  });
});

Deno.test("fetch: register() heals a delete its key watch missed on a silently dropped connection, reporting nothing", async () => {
  await using etcd = await startEtcd();
  await using outside = connectFetch({ hosts: etcd.endpoint });
  await using proxy = await TcpProxy.start(etcd.endpoint);
  await using client = connectFetch({ hosts: proxy.endpoint, dialTimeout: 1000 });
  const errors: Error[] = [];
  // TTL 3 s: a heartbeat every second, so the key watch is reopened after 6 s of silence.
  await using reg = await register(client, "svc/echo", { addr: "10.0.0.1:1" }, {
    ttl: 3,
    onError: (e) => errors.push(e),
  });
  await until("the key watch open", 5000, async () => {
    return await readMetric(etcd.endpoint, WATCHERS) === 1;
  });
  assert.equal(proxy.drop("POST /v3/watch"), 1);
  await outside.delete(reg.key);
  const back = await until("the key back in etcd", 20_000, async () => {
    return (await outside.get(reg.key)).kvs.length === 1;
  });
  console.log(`key back ${back} ms after the outside delete`);
  await until("registered", 2000, () => reg.state === "registered");
  assert.deepEqual(errors, []);
});

Deno.test("fetch: a watch stream ended by an idle timeout of the runtime is reopened without an error, and its host is not avoided", async () => {
  await using etcd = await startEtcd();
  await using writer = connectFetch({ hosts: etcd.endpoint });
  await using idle = await idleTimeoutFetch(1500);
  const { fetch, watches, hosts } = recordingWatches(idle.fetch);
  const dead = `http://127.0.0.1:${await freePort()}`;
  await using client = connectFetch({ hosts: [etcd.endpoint, dead], fetch, dialTimeout: 1000 });
  const start = await writer.put("t/x", "0") + 1;
  const stop = new AbortController();
  const it = client.watch("t/", { startRevision: start, signal: stop.signal })
    [Symbol.asyncIterator]();
  {
    using _order = randomSequence(0.9); // etcd first, then the dead host
    assert.deepEqual(shown(await next(it)), [], "created");
  }
  let settled = false;
  const pending = it.next().finally(() => settled = true);
  pending.catch(() => {}); // awaited below; not left unhandled should the test fail first
  await until("the stream reopened twice", 15_000, () => watches.length >= 3);
  assert.equal(settled, false, "no error");
  {
    // Were etcd avoided, this order would put the dead host first.
    using _order = randomSequence(0.9);
    await client.get("t/x");
  }
  assert.ok(!hosts.includes(dead), "the dead host was never tried");
  await writer.put("t/a", "1");
  const batch = await pending;
  assert.deepEqual(batch.done === false && shown(batch.value), ["put t/a=1"]);
  stop.abort();
  assert.deepEqual(await it.next(), { done: true, value: undefined });
});

Deno.test("fetch: after cut-offs resolve() misses no change and repeats none", async () => {
  await using etcd = await startEtcd();
  await using writer = connectFetch({ hosts: etcd.endpoint });
  await using proxy = await TcpProxy.start(etcd.endpoint);
  await using client = connectFetch({ hosts: proxy.endpoint, dialTimeout: 1000 });
  const errors: Error[] = [];
  await using updates = resolve(client, "svc/echo", { onError: (e) => errors.push(e) });
  assert.deepEqual(await next(updates), []);
  const put = (n: number) => writer.put(`svc/echo/10.0.0.${n}:1`, value(`10.0.0.${n}:1`));
  await put(1);
  assert.equal((await next(updates)).length, 1);
  for (let round = 0; round < 3; round++) {
    await proxy.cut();
    for (let n = 2; n < 12; n++) await put(n);
    for (let n = 2; n < 7; n++) await writer.delete(`svc/echo/10.0.0.${n}:1`);
    proxy.restore();
    const seen: Update[] = [];
    while (seen.length < 15) seen.push(...await next(updates));
    assert.deepEqual(
      seen.map((u) => `${u.op} ${u.key}`),
      [
        ...Array.from({ length: 10 }, (_, i) => `add svc/echo/10.0.0.${i + 2}:1`),
        ...Array.from({ length: 5 }, (_, i) => `delete svc/echo/10.0.0.${i + 2}:1`),
      ],
      `round ${round}: exactly the 15 changes, in order`,
    );
  }
  assert.ok(errors.length > 0, "the lost connection was reported");
  await put(99);
  assert.deepEqual((await next(updates)).map((u) => u.key), ["svc/echo/10.0.0.99:1"], "no repeat");
});

Deno.test("fetch: compaction while cut off makes resolve() re-list and emit the net change as one batch", async () => {
  await using etcd = await startEtcd();
  await using writer = connectFetch({ hosts: etcd.endpoint });
  await using proxy = await TcpProxy.start(etcd.endpoint);
  await using client = connectFetch({ hosts: proxy.endpoint, dialTimeout: 1000 });
  for (const n of [1, 2, 3]) await writer.put(`svc/echo/${n}`, value(`10.0.0.${n}:1`));
  const errors: Error[] = [];
  await using updates = resolve(client, "svc/echo", { onError: (e) => errors.push(e) });
  let view: Map<string, Endpoint> = applyUpdates(new Map(), await next(updates));
  await proxy.cut();
  let revision = 0;
  for (let i = 0; i < 50; i++) {
    revision = await writer.put("svc/echo/1", value("10.0.0.1:1", { i }));
  }
  await writer.delete("svc/echo/2");
  revision = await writer.put("svc/echo/4", value("10.0.0.4:1"));
  const compacted = await fetch(`${etcd.endpoint}/v3/kv/compaction`, {
    method: "POST",
    body: JSON.stringify({ revision: String(revision), physical: true }),
  });
  assert.equal(compacted.status, 200, await compacted.text());
  proxy.restore();
  const batch = await next(updates);
  assert.deepEqual(batch.map((u) => `${u.op} ${u.key}`).sort(), [
    "add svc/echo/1",
    "add svc/echo/4",
    "delete svc/echo/2",
  ]);
  view = applyUpdates(view, batch);
  assert.deepEqual(view.get("svc/echo/1")?.metadata, { i: 49 });
  assert.deepEqual([...view.keys()].sort(), ["svc/echo/1", "svc/echo/3", "svc/echo/4"]);
  assert.ok(errors.some((e) => e instanceof CompactedError), "compaction reported");
  await writer.delete("svc/echo/3");
  assert.deepEqual(await next(updates), [{ op: "delete", key: "svc/echo/3" }], "watching again");
});

Deno.test("fetch: etcd killed and restarted: the view stands meanwhile, the registration survives, changes flow again", async () => {
  await using etcd = await startEtcd();
  await using client = connectFetch({ hosts: etcd.endpoint, dialTimeout: 1000 });
  await using reg = await register(client, "svc/echo", { addr: "127.0.0.1:20" }, {
    ttl: 5,
    ...quiet,
  });
  const errors: Error[] = [];
  await using updates = resolve(client, "svc/echo", { onError: (e) => errors.push(e) });
  assert.deepEqual((await next(updates)).map((u) => u.key), [reg.key]);
  const batches: Update[][] = [];
  const consumer = (async () => {
    for await (const batch of updates) batches.push(batch);
  })();
  await etcd.stop({ kill: true });
  await until("the outage reported", 10_000, () => errors.length > 0);
  await etcd.start();
  await using b = await register(client, "svc/echo", { addr: "127.0.0.1:21" }, { timeout: 10_000 });
  await until("the new instance seen", 15_000, () => batches.length > 0);
  // The first batch after the outage is the new instance: no delete of the live one came before.
  assert.deepEqual(batches[0], [{ op: "add", key: b.key, endpoint: { addr: "127.0.0.1:21" } }]);
  assert.equal(reg.state, "registered");
  await updates.return();
  await consumer;
});

Deno.test("fetch: with 5 s tokens, a registration and a resolver run 30 s through connection resets without a drop or a missed update", async () => {
  await using etcd = await startSecureEtcd({ auth: true, tokenTtl: 5 });
  let authentications = 0;
  let rejected = 0;
  const counting: FetchFunction = async (url, init) => {
    if (url.endsWith("/v3/auth/authenticate")) authentications++;
    const response = await fetch(url, init);
    if (response.status === 401) rejected++;
    return response;
  };
  await runThroughTokenExpiry(etcd, 30, (options) => connectFetch({ ...options, fetch: counting }));
  // Tokens expired (etcd extends a simple token on each use, so only idle clients' lapse) and
  // were renewed: more tokens were taken than the four clients' first ones.
  assert.ok(authentications > 4, `${rejected} rejected, ${authentications} taken`);
  console.log(`${rejected} requests with an expired token; ${authentications} tokens taken`);
});

Deno.test("fetch: auth: a wrong password, or none, fails at once saying so; RBAC refusals name the operation and the user", async () => {
  await using etcd = await startSecureEtcd({ auth: true });
  await grantService(etcd.etcdctl, "svc-a", "pw-a", "a/", ["b/"]);
  await grantService(etcd.etcdctl, "svc-b", "pw-b", "b/", []);
  const as = (username: string, password: string) =>
    connectFetch({ hosts: etcd.endpoint, auth: { username, password }, dialTimeout: 2000 });

  await using wrong = as("svc-a", "not-the-password");
  await assert.rejects(
    register(wrong, "a", { addr: "10.0.0.1:1" }, { timeout: 60_000 }),
    (e: Error) => {
      assert.ok(e.cause instanceof AuthenticationError, String(e.cause));
      assert.match(e.message, /etcd rejected the user name or password \(user "svc-a"\)$/);
      return true;
    },
  );
  await using none = connectFetch({ hosts: etcd.endpoint });
  await assert.rejects(none.get("a/x"), (e: Error) => {
    assert.ok(e instanceof AuthenticationError, String(e));
    assert.match(
      e.message,
      /needs a user name and password: give them as options\.auth to connectFetch\(\)$/,
    );
    return true;
  });

  await using a = as("svc-a", "pw-a");
  await using b = as("svc-b", "pw-b");
  await using regA = await register(a, "a", { addr: "10.0.0.1:1" }, quiet);
  await using regB = await register(b, "b", { addr: "10.0.0.2:1" }, quiet);
  await assert.rejects(
    register(a, "b", { addr: "10.6.6.6:1" }, { ...quiet, timeout: 60_000 }),
    (e: Error) => {
      assert.ok(e.cause instanceof PermissionDeniedError, String(e.cause));
      assert.match(
        e.message,
        /etcd denied writing "b\/10.6.6.6:1" to user "svc-a": permission denied/,
      );
      return true;
    },
  );
  await assert.rejects(
    a.revokeLease(regB.lease),
    /etcd denied revoking lease \d+ to user "svc-a"/,
  );
  assert.equal((await b.get(regB.key)).kvs.length, 1);
  // A reads b/, the service it calls.
  await using fromA = resolve(a, "b", quiet);
  assert.deepEqual((await next(fromA)).map((u) => u.key), [regB.key]);
  // B may not read a/: the read and the watch are refused by name.
  await assert.rejects(b.getPrefix("a/"), /etcd denied reading the prefix "a\/" to user "svc-b"/);
  await assert.rejects(
    b.watch("a/", { startRevision: 0 })[Symbol.asyncIterator]().next(),
    (e: Error) =>
      e instanceof PermissionDeniedError && /watching "a\/" to user "svc-b"/.test(e.message),
  );
  const errors: Error[] = [];
  await using denied = resolve(b, "a", { onError: (e) => errors.push(e) });
  const pending = denied.next();
  await until("the refused read reported", 5000, () => errors.length > 0);
  assert.ok(errors[0] instanceof PermissionDeniedError, String(errors[0]));
  await denied.return();
  assert.deepEqual(await pending, { done: true, value: undefined });
  assert.equal(regA.state, "registered");
});

Deno.test("fetch: over TLS with a private CA and a client certificate, through Deno.createHttpClient", async () => {
  const pki = await makePki();
  try {
    await using etcd = await startTlsEtcd(pki);
    using http = Deno.createHttpClient({
      caCerts: [pki.ca],
      cert: pki.clientCert,
      key: pki.clientKey,
    });
    const tls: FetchFunction = (url, init) => fetch(url, { ...init, client: http });
    // By DNS name and by IP address: the certificate names both.
    await using client = connectFetch({ hosts: etcd.endpoint, fetch: tls });
    await using byAddress = connectFetch({
      hosts: etcd.endpoint.replace("localhost", "127.0.0.1"),
      fetch: tls,
    });
    await using reg = await register(client, "tls/svc", { addr: "10.0.0.1:50051" }, { ttl: 3 });
    await using updates = resolve(byAddress, "tls/svc", quiet);
    assert.deepEqual(await next(updates), [{
      op: "add",
      key: reg.key,
      endpoint: { addr: "10.0.0.1:50051" },
    }]);
    await reg.close();
    assert.deepEqual(await next(updates), [{ op: "delete", key: reg.key }]);

    // Without the CA, without a client certificate, or in plain HTTP: each says what to change.
    await using untrusted = connectFetch({ hosts: etcd.endpoint, dialTimeout: 2000 });
    await assert.rejects(
      untrusted.get("k"),
      new RegExp(
        `could not reach etcd at ${etcd.endpoint} while reading "k": .*UnknownIssuer.*\\(etcd's certificate is not trusted: to trust a private CA, pass options\\.fetch`,
      ),
    );
    using anonymous = Deno.createHttpClient({ caCerts: [pki.ca] });
    await using noCert = connectFetch({
      hosts: etcd.endpoint,
      fetch: (url, init) => fetch(url, { ...init, client: anonymous }),
      dialTimeout: 2000,
    });
    await assert.rejects(
      noCert.get("k"),
      /\(etcd ended the TLS connection: it may require a client certificate/,
    );
    // With auth on too, etcd's gateway refuses a client certificate that has a CommonName.
    await using withAuth = await startSecureEtcd({ pki, auth: true });
    await using named = connectFetch({
      hosts: withAuth.endpoint,
      auth: { username: "root", password: ROOT_PASSWORD },
      fetch: tls,
    });
    await assert.rejects(
      named.get("k"),
      /got HTTP 400 text\/plain "CommonName of client .*" \(etcd with auth on refuses gateway requests whose client certificate has a CommonName/,
    );
    const plainUrl = etcd.endpoint.replace("https:", "http:");
    await using plain = connectFetch({ hosts: plainUrl, dialTimeout: 2000 });
    await assert.rejects(
      plain.get("k"),
      new RegExp(
        `could not reach etcd at ${plainUrl} .*\\(the connection closed without an answer: if etcd serves TLS, give https:// hosts\\)`,
      ),
    );
  } finally {
    await pki.close();
  }
  await using etcd = await startEtcd();
  const secureUrl = etcd.endpoint.replace("http:", "https:");
  await using secure = connectFetch({ hosts: secureUrl, dialTimeout: 2000 });
  await assert.rejects(
    secure.get("k"),
    new RegExp(
      `could not reach etcd at ${secureUrl} .*\\(the TLS handshake failed: if etcd serves plain HTTP, give http:// hosts\\)`,
    ),
  );
});

Deno.test("fetch: the entry point is web-standard: it type-checks without Deno's namespace", async () => {
  const dir = await Deno.makeTempDir({ prefix: "grpc-etcd-webcheck-" });
  try {
    await Deno.writeTextFile(
      `${dir}/deno.json`,
      JSON.stringify({
        compilerOptions: { lib: ["esnext", "dom", "dom.iterable", "dom.asynciterable"] },
      }),
    );
    const check = async (file: string) => {
      const { code, stderr } = await new Deno.Command(Deno.execPath(), {
        args: ["check", "--quiet", "--config", `${dir}/deno.json`, file],
        env: { NO_COLOR: "1" },
        stdout: "null",
        stderr: "piped",
      }).output();
      return { code, stderr: new TextDecoder().decode(stderr) };
    };
    const entry = await check(new URL("../fetch.ts", import.meta.url).pathname);
    assert.equal(entry.code, 0, entry.stderr);
    // The check can fail: a file that uses Deno's API does not type-check there.
    await Deno.writeTextFile(`${dir}/uses_deno.ts`, 'export const home = Deno.env.get("HOME");\n');
    const control = await check(`${dir}/uses_deno.ts`);
    assert.notEqual(control.code, 0);
    assert.match(control.stderr, /Cannot find name 'Deno'/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
