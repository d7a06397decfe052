/**
 * Security against a real etcd configured for it: mutual TLS, user/password
 * auth with short-lived tokens, RBAC per service prefix, and TLS between
 * dialed clients and served instances with the server name taken from the
 * caller, never from the registry. Certificates are made by `openssl` into a
 * temporary directory (harness/tls.ts).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { X509Certificate } from "node:crypto";
import { createServer as createTlsServer, type TLSSocket } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { Etcd3 } from "etcd3";
import {
  AuthenticationError,
  connect,
  type EtcdClient,
  PermissionDeniedError,
  register,
  resolve,
  type Update,
} from "../mod.ts";
import { dial, registerEtcdResolver } from "../grpc.ts";
import { Greeter, type GreeterClient, sayHello, startGreeter } from "../harness/greeter.ts";
import {
  callerCredentials,
  enableAuth,
  grantService,
  makePki,
  ROOT_PASSWORD,
  serverCredentials,
  startImpostor,
  startSecureEtcd,
  startTlsEtcd,
} from "../harness/tls.ts";
import { EtcdTlsCredentials, targetHost, uriPath } from "../src/etcd/tls.ts";
import { CLOSED_UNANSWERED } from "../src/etcd/explain.ts";
import { clientCertProblem } from "../src/etcd/tls_material.ts";
import { TcpProxy } from "../harness/tcp_proxy.ts";
import { runThroughTokenExpiry } from "./token_expiry.ts";
import { until } from "../harness/wait.ts";
import { openChannels } from "../harness/grpcjs.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

/**
 * `client` with its `grantLease` and `put` calls counted, to tell a registration
 * refused at once (one attempt) from one retried until its timeout.
 */
function counted(client: EtcdClient): { client: EtcdClient; calls: Record<string, number> } {
  const calls: Record<string, number> = {};
  const proxy = new Proxy(client, {
    get(target, property) {
      const value = Reflect.get(target, property);
      if (typeof value !== "function") return value;
      if (property !== "grantLease" && property !== "put") return value.bind(target);
      return (...args: unknown[]) => {
        calls[property] = (calls[property] ?? 0) + 1;
        return value.apply(target, args);
      };
    },
  });
  return { client: proxy, calls };
}

/** Asserts that a registration made one attempt: a lease grant and a put at most, once each. */
function assertOneAttempt(calls: Record<string, number>): void {
  assert.ok(
    (calls.grantLease ?? 0) <= 1 && (calls.put ?? 0) <= 1 &&
      (calls.grantLease ?? 0) + (calls.put ?? 0) > 0,
    `one attempt, not retried until the timeout: ${JSON.stringify(calls)}`,
  );
}

/** Asserts that a call waiting for an instance gets no answer: none becomes READY. */
async function assertNoAnswer(greeter: GreeterClient): Promise<void> {
  await assert.rejects(
    sayHello(greeter, { name: "x" }, { waitForReady: true, deadline: Date.now() + 1500 }),
    (e: grpc.ServiceError) =>
      e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED,
  );
}

Deno.test("tls: the handshake that explains a failure without a reason says what TLS said, and nothing when etcd answers", async (t) => {
  const pki = await makePki();
  const other = await makePki();
  const b = (text: string) => Buffer.from(text);
  try {
    await using etcd = await startTlsEtcd(pki);
    const cases: [string, EtcdTlsCredentials, RegExp | undefined][] = [
      [
        "etcd answers",
        new EtcdTlsCredentials(b(pki.ca), b(pki.clientKey), b(pki.clientCert)),
        undefined,
      ],
      ["no client certificate", new EtcdTlsCredentials(b(pki.ca)), /bad ?certificate/i],
      ["a CA that did not sign etcd's", new EtcdTlsCredentials(b(other.ca)), /unable to verify/],
    ];
    for (const [name, credentials, expected] of cases) {
      await t.step(name, async () => {
        const said = await credentials.handshake(etcd.endpoint, 5000);
        if (expected) assert.match(said ?? "(nothing)", expected);
        else assert.equal(said, undefined);
      });
    }
    // A TLS server that closes after the handshake, and one that never answers.
    for (
      const [name, onConnect, expected] of [
        ["closed without a word", (socket: TLSSocket) => socket.end(), CLOSED_UNANSWERED],
        ["no answer within the wait", () => {}, undefined],
      ] as const
    ) {
      await t.step(name, async () => {
        const sockets = new Set<TLSSocket>();
        const server = createTlsServer({ cert: pki.serverCert, key: pki.serverKey }, (socket) => {
          sockets.add(socket);
          socket.on("error", () => {});
          onConnect(socket);
        });
        await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
        try {
          const { port } = server.address() as { port: number };
          const said = await new EtcdTlsCredentials(b(pki.ca)).handshake(
            `https://localhost:${port}`,
            300,
          );
          assert.equal(said, expected);
        } finally {
          for (const socket of sockets) socket.destroy();
          await new Promise((resolve) => server.close(resolve));
        }
      });
    }
  } finally {
    await pki.close();
    await other.close();
  }
});

Deno.test("tls: what is wrong with a client certificate, as far as the client can tell", async () => {
  const pki = await makePki();
  const other = await makePki();
  try {
    const client = new X509Certificate(pki.clientCert);
    const cas = [new X509Certificate(other.ca), new X509Certificate(pki.ca)];
    const from = Date.parse(client.validFrom);
    const to = Date.parse(client.validTo);
    assert.equal(clientCertProblem(client, cas, from + 1000), undefined);
    assert.equal(clientCertProblem(client, [], from + 1000), undefined, "no CA given: no opinion");
    assert.equal(
      clientCertProblem(client, cas, from - 1000),
      `the one in tls.cert (CN=client) is not valid until ${new Date(from).toISOString()}`,
    );
    assert.equal(
      clientCertProblem(client, cas, to + 1000),
      `the one in tls.cert (CN=client) expired on ${new Date(to).toISOString()}`,
    );
    assert.match(
      clientCertProblem(client, [new X509Certificate(other.ca)], from + 1000)!,
      /was not issued by the CA in tls\.ca/,
    );
  } finally {
    await pki.close();
    await other.close();
  }
});

Deno.test("tls: the host a certificate must name is the target's (or a proxy's real target's), without port or brackets", () => {
  const cases: [string, string][] = [
    ["127.0.0.1:2379", "127.0.0.1"],
    ["etcd-1.internal:2379", "etcd-1.internal"],
    ["[::1]:2379", "::1"],
    ["[fd00::5]:443", "fd00::5"],
    ["::1", "::1"],
    ["localhost", "localhost"],
    ["/etcd-1.internal:2379", "etcd-1.internal"],
  ];
  for (const [target, host] of cases) assert.equal(targetHost(target), host, target);
  // Through a proxy, grpc-js passes the real target as a URI (`uriToString` of the target).
  const proxied: [string, string][] = [
    ["dns:127.0.0.1:2379", "127.0.0.1"],
    ["dns:[::1]:2379", "::1"],
    ["dns:///etcd-1.internal:2379", "etcd-1.internal"],
    ["dns://8.8.8.8/etcd-1.internal:2379", "etcd-1.internal"],
  ];
  for (const [uri, host] of proxied) assert.equal(targetHost(uriPath(uri)), host, uri);
});

Deno.test("tls and auth together: client certificate and password", async () => {
  const pki = await makePki();
  try {
    await using etcd = await startSecureEtcd({ pki, auth: true });
    const tls = { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey };
    await using a = connect({
      hosts: etcd.endpoint,
      tls,
      auth: { username: "root", password: ROOT_PASSWORD },
    });
    await using reg = await register(a, "both", { addr: "10.0.0.1:1" });
    assert.equal(reg.state, "registered");
    // By IP address too: etcd3 authenticates over the same TLS credentials as its calls.
    await using byAddress = connect({
      hosts: etcd.endpoint.replace("localhost", "127.0.0.1"),
      tls,
      auth: { username: "root", password: ROOT_PASSWORD },
    });
    assert.equal((await byAddress.get(reg.key)).kvs[0]?.lease, reg.lease);
    await using wrong = connect({
      hosts: etcd.endpoint,
      tls,
      auth: { username: "root", password: "nope" },
    });
    await assert.rejects(wrong.get(reg.key), AuthenticationError);
  } finally {
    await pki.close();
  }
});

Deno.test("auth: a wrong password, or none, fails at once saying so; the right one works", async () => {
  await using etcd = await startSecureEtcd({ auth: true });
  await using wrong = connect({
    hosts: etcd.endpoint,
    auth: { username: "root", password: "not-the-password" },
    dialTimeout: 1000,
  });
  // Refused at once: one attempt, no retry until the timeout.
  const start = Date.now();
  const wrongCalls = counted(wrong);
  await assert.rejects(
    register(wrongCalls.client, "a", { addr: "10.0.0.1:1" }, { timeout: 3000 }),
    (e: Error) => {
      assert.match(
        e.message,
        /^register\(\): could not register "a\/10.0.0.1:1" on etcd at http:\/\/localhost:\d+: etcd rejected the user name or password \(user "root"\)$/,
      );
      assert.ok(e.cause instanceof AuthenticationError);
      return true;
    },
  );
  console.log(`refused after ${Date.now() - start} ms`);
  assertOneAttempt(wrongCalls.calls);
  // No credentials at all, against an etcd with auth on: the same, at once, saying what to give.
  await using none = connect({ hosts: etcd.endpoint, dialTimeout: 1000 });
  const bare = Date.now();
  const noneCalls = counted(none);
  await assert.rejects(
    register(noneCalls.client, "a", { addr: "10.0.0.1:1" }, { timeout: 3000 }),
    (e: Error) => {
      assert.ok(e.cause instanceof AuthenticationError, String(e.cause));
      assert.match(
        e.message,
        /etcd has auth enabled and needs a user name and password: give them as options\.auth to connect\(\)$/,
      );
      return true;
    },
  );
  console.log(`refused after ${Date.now() - bare} ms`);
  assertOneAttempt(noneCalls.calls);
  const errors: Error[] = [];
  await using updates = resolve(none, "a", { onError: (e) => errors.push(e) });
  const pending = updates.next();
  await until("a report of the refused read", 5000, () => errors.length > 0);
  assert.ok(errors[0] instanceof AuthenticationError, String(errors[0]));
  await updates.return();
  assert.deepEqual(await pending, { done: true, value: undefined });

  await using right = connect({
    hosts: etcd.endpoint,
    auth: { username: "root", password: ROOT_PASSWORD },
  });
  await using reg = await register(right, "a", { addr: "10.0.0.1:1" });
  assert.equal(reg.state, "registered");
  assert.throws(
    () => connect({ hosts: etcd.endpoint, auth: { username: "", password: "x" } }),
    /options\.auth must be \{ username, password \} with a non-empty username, got \{ username: "", password: … \}/,
  );
});

Deno.test("auth: authenticating, failed or not, opens no channel of its own: closing the client closes them all", async () => {
  await using etcd = await startSecureEtcd({ auth: true });
  const before = new Set(openChannels().map((channel) => channel.id));
  const ours = () => openChannels().filter((channel) => !before.has(channel.id));
  await using wrong = connect({
    hosts: etcd.endpoint,
    auth: { username: "root", password: "not-the-password" },
  });
  // Each call authenticates again after the last attempt failed.
  for (let i = 0; i < 20; i++) await assert.rejects(wrong.get("a"), AuthenticationError);
  await using right = connect({
    hosts: etcd.endpoint,
    auth: { username: "root", password: ROOT_PASSWORD },
  });
  await right.put("a", "1");
  assert.equal((await right.get("a")).kvs.length, 1);
  const open = ours().length;
  // etcd3 keeps one channel per service and host (KV, Auth, …), whatever the number of attempts.
  assert.ok(open <= 6, `${open} channels open for 2 clients after 21 authentications`);
  await wrong.close();
  await right.close();
  assert.deepEqual(ours(), [], "channels left open after close()");
});

Deno.test("rbac: the etcdctl commands of docs/security.md (auth on, then roles) are the ones the tests run", async () => {
  const readme = await Deno.readTextFile(new URL("../docs/security.md", import.meta.url));
  const lines = readme.split("\n");
  const asRoot = "etcdctl --user root:ROOT_PASSWORD ";
  const documented = [
    ...lines.filter((line) => line.startsWith("etcdctl ") && !line.startsWith(asRoot))
      .map((line) => line.slice("etcdctl ".length)),
    ...lines.filter((line) => line.startsWith(asRoot)).map((line) => line.slice(asRoot.length)),
  ];
  const run: string[] = [];
  const record = (...args: string[]) => {
    run.push(args.join(" "));
    return Promise.resolve("");
  };
  await enableAuth(record, "ROOT_PASSWORD");
  await grantService(record, "svc-a", "A_PASSWORD", "a/", ["b/"]);
  await grantService(record, "reader", "R_PASSWORD", undefined, ["a/"]);
  assert.deepEqual(documented, run);
});

Deno.test("rbac: a service writes only its own prefix, cannot revoke another's lease; a reader cannot register", async () => {
  await using etcd = await startSecureEtcd({ auth: true });
  await grantService(etcd.etcdctl, "svc-a", "pw-a", "a/", ["b/"]);
  await grantService(etcd.etcdctl, "svc-b", "pw-b", "b/", []);
  await grantService(etcd.etcdctl, "reader", "pw-r", undefined, ["a/"]);
  const as = (username: string, password: string) =>
    connect({ hosts: etcd.endpoint, auth: { username, password }, dialTimeout: 2000 });
  await using a = as("svc-a", "pw-a");
  await using b = as("svc-b", "pw-b");
  await using reader = as("reader", "pw-r");
  const quiet = { onError: () => {} };

  await using regA = await register(a, "a", { addr: "10.0.0.1:1" }, quiet);
  await using regB = await register(b, "b", { addr: "10.0.0.2:1" }, quiet);

  // A cannot write under b/: refused at once (one put, no retry until the timeout), naming the
  // key and the user.
  const start = Date.now();
  const aCalls = counted(a);
  await assert.rejects(
    register(aCalls.client, "b", { addr: "10.6.6.6:1" }, { ...quiet, timeout: 4000 }),
    (e: Error) => {
      assert.ok(e.cause instanceof PermissionDeniedError, String(e.cause));
      assert.match(
        e.message,
        /etcd denied writing "b\/10.6.6.6:1" to user "svc-a": permission denied/,
      );
      return true;
    },
  );
  console.log(`refused after ${Date.now() - start} ms`);
  assertOneAttempt(aCalls.calls);
  // A cannot revoke B's lease (etcd checks write access to every key on the lease).
  await assert.rejects(a.revokeLease(regB.lease), PermissionDeniedError);
  assert.equal((await b.get(regB.key)).kvs.length, 1);
  assert.equal(regB.state, "registered");

  // A reads b/ (the service it calls); the reader resolves a/ but cannot register there.
  const first = async (client: EtcdClient, service: string) => {
    await using updates = resolve(client, service, quiet);
    return (await updates.next()).value as Update[];
  };
  assert.deepEqual((await first(a, "b")).map((u) => u.key), [regB.key]);
  assert.deepEqual((await first(reader, "a")).map((u) => u.key), [regA.key]);
  await assert.rejects(
    register(reader, "a", { addr: "10.0.0.9:1" }, quiet),
    /etcd denied writing "a\/10.0.0.9:1" to user "reader": permission denied/,
  );
  // B cannot even read a/: the resolver reports the refusal by name.
  const errors: Error[] = [];
  await using denied = resolve(b, "a", { onError: (e) => errors.push(e) });
  const pending = denied.next();
  await until("a report of the refused read", 5000, () => errors.length > 0);
  assert.ok(errors[0] instanceof PermissionDeniedError, String(errors[0]));
  assert.match(errors[0]!.message, /etcd denied reading the prefix "a\/" to user "svc-b"/);
  await denied.return();
  assert.deepEqual(await pending, { done: true, value: undefined });
});

Deno.test("auth: with 5 s tokens, a registration and a resolver run 60 s through connection resets without a drop or a missed update", async () => {
  await using etcd = await startSecureEtcd({ auth: true, tokenTtl: 5 });
  await runThroughTokenExpiry(etcd, 60, connect);
});

Deno.test("auth: with 3 s JWT tokens, a registration and a resolver run 25 s through connection resets without a drop or a missed update", async () => {
  await using etcd = await startSecureEtcd({ auth: true, jwtTtl: 3 });
  await runThroughTokenExpiry(etcd, 25, connect);
});

// The tests below leave grpc-js's subchannel backoff timers running after they end, and each
// timer may start one more when it fires: they run last, so that no sanitized test sees them.
// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "tls: register, resolve and dial work through an etcd that requires client certificates",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const pki = await makePki();
  try {
    await using etcd = await startTlsEtcd(pki);
    // PEM as text for one client, as bytes for another, as file paths for the third.
    await using a = connect({
      hosts: etcd.endpoint,
      tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
    });
    await using b = connect({
      hosts: etcd.endpoint,
      tls: { ca: bytes(pki.ca), cert: bytes(pki.clientCert), key: bytes(pki.clientKey) },
    });
    await using c = connect({
      hosts: etcd.endpoint,
      tls: { ca: `${pki.dir}/ca.crt`, cert: `${pki.dir}/client.crt`, key: `${pki.dir}/client.key` },
    });
    // etcd by IP address: Deno refuses an IP as TLS server name, so none is sent, and the
    // certificate's IP SAN is checked instead.
    await using d = connect({
      hosts: etcd.endpoint.replace("localhost", "127.0.0.1"),
      tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
    });
    await using registration = await register(a, "tls/svc", { addr: "10.0.0.1:50051" });
    for (const client of [b, c, d]) {
      await using updates = resolve(client, "tls/svc");
      const first = await updates.next();
      assert.deepEqual(first.value, [{
        op: "add",
        key: registration.key,
        endpoint: { addr: "10.0.0.1:50051" },
      }]);
    }

    // gRPC over mutual TLS too: instances serve a certificate for the service's name.
    const service = "greeter.test";
    const cert = await pki.issue("greeter", [service]);
    const clientCert = await pki.issue("caller", ["caller.test"]);
    const instances = await Promise.all(
      ["g1", "g2"].map((name) =>
        startGreeter(a, service, name, {
          bind: "127.0.0.1:0",
          credentials: serverCredentials(pki.ca, cert),
          drainMs: 0,
        })
      ),
    );
    try {
      const credentials = callerCredentials(pki.ca, clientCert);
      const greeter: GreeterClient = dial(c, service, Greeter, { credentials });
      try {
        const seen = new Set<string>();
        for (let i = 0; i < 20; i++) {
          seen.add((await sayHello(greeter, { name: "tls" }, { waitForReady: true })).instance);
        }
        assert.deepEqual([...seen].sort(), ["g1", "g2"]);
      } finally {
        greeter.close();
      }
      // Without a client certificate the instances refuse the caller.
      const anonymous: GreeterClient = dial(c, service, Greeter, {
        credentials: grpc.credentials.createSsl(Buffer.from(pki.ca)),
        onError: () => {},
      });
      try {
        await assertNoAnswer(anonymous);
      } finally {
        anonymous.close();
      }
    } finally {
      await Promise.all(instances.map((i) => i.close()));
    }
  } finally {
    await pki.close();
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "tls: a missing, foreign or expired client certificate, or a wrong CA, fails in bounded time saying which",
  sanitizeOps: false,
  sanitizeResources: false,
}, async (t) => {
  const pki = await makePki();
  const other = await makePki();
  const expired = await pki.issue("expired", ["localhost"], { expired: true });
  try {
    await using etcd = await startTlsEtcd(pki);
    const cases: [string, { ca: string; cert?: string; key?: string }, RegExp][] = [
      ["no client certificate", { ca: pki.ca }, /client certificate/],
      [
        "a client certificate from another CA",
        { ca: pki.ca, cert: other.clientCert, key: other.clientKey },
        /etcd rejected the client certificate: the one in tls\.cert \(CN=client\) was not issued by the CA in tls\.ca; etcd must trust its issuer/,
      ],
      [
        "an expired client certificate",
        { ca: pki.ca, cert: expired.cert, key: expired.key },
        /etcd rejected the client certificate: the one in tls\.cert \(CN=expired\) expired on 2020-01-03T00:00:00\.000Z/,
      ],
      [
        "a CA that did not sign etcd's certificate",
        { ca: other.ca, cert: pki.clientCert, key: pki.clientKey },
        /etcd's server certificate is not signed by the CA given in tls.ca/,
      ],
    ];
    for (const [name, tls, reason] of cases) {
      await t.step(name, async () => {
        // A far dial timeout: a call that waited it out would fail after 30 s saying etcd did
        // not answer, not why.
        await using client = connect({ hosts: etcd.endpoint, tls, dialTimeout: 30_000 });
        // One call fails without waiting out the dial timeout, saying which; register()
        // retries until its own timeout and then says the same.
        const first = Date.now();
        await assert.rejects(client.getPrefix("tls/"), (e: Error) => {
          assert.match(e.message, reason);
          // Failed on the connection's failure, not at a deadline.
          assert.match(e.message, /UNAVAILABLE/);
          return true;
        });
        console.log(`the call failed after ${Date.now() - first} ms`);
        const start = Date.now();
        await assert.rejects(
          register(client, "tls/svc", { addr: "10.0.0.1:50051" }, { timeout: 2000 }),
          (e: Error) => {
            assert.match(
              e.message,
              /could not register "tls\/svc\/10.0.0.1:50051" on etcd at https:\/\/localhost:\d+ within 2000 ms/,
            );
            assert.match(e.message, reason);
            return true;
          },
        );
        console.log(`register() gave up after ${Date.now() - start} ms`);
      });
    }
    await t.step(
      "unreadable or non-PEM files, half a key pair, a key not of its certificate, or a garbled certificate are refused by connect()",
      () => {
        assert.throws(
          () => connect({ hosts: etcd.endpoint, tls: { ca: `${pki.dir}/missing.crt` } }),
          /options\.tls\.ca: could not read the file ".*missing\.crt"/,
        );
        assert.throws(
          () => connect({ hosts: etcd.endpoint, tls: { ca: `${pki.dir}/ca.cnf` } }),
          /options\.tls\.ca: the file ".*ca\.cnf" is not PEM/,
        );
        assert.throws(
          () => connect({ hosts: etcd.endpoint, tls: { ca: pki.ca, cert: pki.clientCert } }),
          /options\.tls\.cert and options\.tls\.key go together, got only cert/,
        );
        // Content the runtime would only reject at the first handshake, if at all.
        assert.throws(
          () =>
            connect({
              hosts: etcd.endpoint,
              tls: { ca: pki.ca, cert: pki.clientCert, key: other.clientKey },
            }),
          /options\.tls\.key is not the key of options\.tls\.cert \(CN=client\)/,
        );
        assert.throws(
          () =>
            connect({
              hosts: etcd.endpoint,
              tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientCert },
            }),
          /options\.tls\.key cannot be read: /,
        );
        const garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert.throws(
          () => connect({ hosts: etcd.endpoint, tls: { ca: pki.ca + garbled } }),
          /options\.tls\.ca \(certificate 2 of 2\) cannot be read: /,
        );
        assert.throws(
          () => connect({ hosts: etcd.endpoint, tls: { ca: "-----BEGIN nothing" } }),
          /options\.tls\.ca holds no PEM certificate/,
        );
        assert.throws(
          () => connect({ hosts: "http://127.0.0.1:2379", tls: { ca: pki.ca } }),
          /options\.tls needs https:\/\/ hosts/,
        );
      },
    );
  } finally {
    await pki.close();
    await other.close();
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "tls: an etcd host given by IP address must be named in etcd's certificate",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const pki = await makePki();
  try {
    // etcd serves a certificate for the name localhost only, not for the address 127.0.0.1.
    const server = await pki.issue("named", ["localhost"]);
    await using etcd = await startSecureEtcd({ pki, server });
    const tls = { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey };
    await using byName = connect({ hosts: etcd.endpoint, tls });
    assert.deepEqual((await byName.getPrefix("tls/")).kvs, []);
    // A far dial timeout: the call fails on the certificate, without waiting it out.
    await using byAddress = connect({
      hosts: etcd.endpoint.replace("localhost", "127.0.0.1"),
      tls,
      dialTimeout: 30_000,
    });
    const start = Date.now();
    await assert.rejects(
      byAddress.getPrefix("tls/"),
      /etcd's server certificate does not name the host as given in options\.hosts: .*UNAVAILABLE.*IP: 127\.0\.0\.1 is not in the cert's list/,
    );
    console.log(`the call failed after ${Date.now() - start} ms`);
    // An Etcd3 instance made by the user keeps etcd3's TLS setup, which Deno refuses for an IP
    // address: the error says what to do.
    const own = new Etcd3({
      hosts: etcd.endpoint.replace("localhost", "127.0.0.1"),
      credentials: { rootCertificate: Buffer.from(pki.ca) },
      dialTimeout: 1000,
      defaultCallOptions: { deadline: Date.now() + 2000 },
    });
    try {
      await using wrapped = connect(own);
      await assert.rejects(
        wrapped.getPrefix("tls/"),
        /Deno refuses an IP address as TLS server name, which etcd3's own TLS setup sends; let connect\(\{ hosts, tls \}\) make the client/,
      );
    } finally {
      own.close();
    }
    // https:// without tls.ca: the system's roots, which do not include the test CA.
    await using systemRoots = connect({ hosts: etcd.endpoint, dialTimeout: 1000 });
    await assert.rejects(
      systemRoots.getPrefix("tls/"),
      /etcd's server certificate is not signed by a CA this system trusts \(give etcd's CA as tls\.ca\)/,
    );
  } finally {
    await pki.close();
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name: "tls: http:// to an etcd serving TLS, or https:// to one serving plain text, says so",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const pki = await makePki();
  try {
    await using secure = await startTlsEtcd(pki);
    await using plain = await startSecureEtcd({});
    await using http = connect({
      hosts: secure.endpoint.replace("https://", "http://"),
      dialTimeout: 1000,
    });
    await assert.rejects(
      http.getPrefix("tls/"),
      /etcd accepted the connection but did not answer in plain-text HTTP\/2; if it serves TLS, give https:\/\/ hosts/,
    );
    await using https = connect({
      hosts: plain.endpoint.replace("http://", "https://"),
      tls: { ca: pki.ca },
      dialTimeout: 1000,
    });
    await assert.rejects(
      https.getPrefix("tls/"),
      /etcd closed the connection before the TLS handshake completed; if it serves plain text, give http:\/\/ hosts/,
    );
  } finally {
    await pki.close();
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "tls: by IP address, a registration and a resolver recover over new TLS connections after a cut-off past the TTL",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const pki = await makePki();
  try {
    await using etcd = await startTlsEtcd(pki);
    const tls = { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey };
    // The proxy forwards the TLS bytes untouched: the client handshakes with etcd through it.
    await using proxy = await TcpProxy.start(
      etcd.endpoint.replace("https://localhost", "127.0.0.1"),
    );
    await using cutOff = connect({
      hosts: proxy.endpoint.replace("http://", "https://"),
      tls,
      dialTimeout: 1000,
    });
    await using observer = connect({ hosts: etcd.endpoint, tls });
    await using reg = await register(cutOff, "tls/svc", { addr: "10.0.0.1:1" }, {
      ttl: 2,
      onError: () => {},
    });
    const seen: string[] = [];
    await using updates = resolve(cutOff, "tls/other", { onError: () => {} });
    const read = (async () => {
      for await (const batch of updates) for (const u of batch) seen.push(`${u.op} ${u.key}`);
    })();
    await proxy.cut();
    await observer.put("tls/other/1", JSON.stringify({ Op: 0, Addr: "10.0.0.2:1" }));
    await until(
      "the lease expiring",
      10_000,
      async () => (await observer.get(reg.key)).kvs.length === 0,
    );
    proxy.restore();
    await until("the key back", 10_000, async () => (await observer.get(reg.key)).kvs.length === 1);
    await until("the resolver catching up", 10_000, () => seen.length === 1);
    assert.deepEqual(seen, ["add tls/other/1"]);
    await until("the registration's own view", 5000, () => reg.state === "registered");
    await updates.return();
    await read;
  } finally {
    await pki.close();
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "tls: a rogue entry pointing at a server with a certificate for another name gets no calls, and dial says why",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const pki = await makePki();
  try {
    await using etcd = await startSecureEtcd({});
    await using client = connect({ hosts: etcd.endpoint.replace("localhost", "127.0.0.1") });
    const service = "payments.internal";
    const good = await startGreeter(client, service, "good", {
      bind: "127.0.0.1:0",
      credentials: serverCredentials(pki.ca, await pki.issue("payments", [service])),
      drainMs: 0,
    });
    // The rogue server holds a real certificate from the same CA, for another name.
    const rogue = await startImpostor(pki, "rogue.internal");
    const rogueAddr = rogue.addr;
    // Valid JSON, in the Go layout, under the service's prefix: etcd cannot tell it apart.
    await client.put(
      `${service}/${rogueAddr}`,
      JSON.stringify({ Op: 0, Addr: rogueAddr, Metadata: { name: "good" } }),
    );
    const errors: Error[] = [];
    const caller = await pki.issue("caller", ["caller.internal"]);
    const greeter: GreeterClient = dial(client, service, Greeter, {
      credentials: callerCredentials(pki.ca, caller),
      onError: (e) => errors.push(e),
    });
    try {
      const answers = new Map<string, number>();
      for (let i = 0; i < 50; i++) {
        const { instance } = await sayHello(greeter, { name: "x" }, { waitForReady: true });
        answers.set(instance, (answers.get(instance) ?? 0) + 1);
      }
      assert.deepEqual(Object.fromEntries(answers), { good: 50 });
      assert.equal(rogue.calls, 0);
      await until("a report on the rogue instance", 5000, () => errors.length > 0);
      const report = errors.find((e) => e.message.includes(rogueAddr));
      assert.ok(report, errors.map((e) => e.message).join("\n"));
      assert.match(
        report.message,
        new RegExp(
          `instance ${rogueAddr} \\("${service}/${rogueAddr}"\\) gets no calls: .*payments\\.internal.*rogue\\.internal`,
        ),
      );
    } finally {
      greeter.close();
      rogue.close();
      await good.close();
    }
    // A service name that is not a DNS name needs an explicit serverName with TLS.
    assert.throws(
      () => dial(client, "svc/payments", Greeter, { credentials: grpc.credentials.createSsl() }),
      /options\.serverName is needed with TLS credentials: the service name "svc\/payments" is not a DNS name/,
    );
    assert.throws(
      () => dial(client, service, Greeter, { serverName: "bad name" }),
      /options\.serverName must be a DNS name, got "bad name"/,
    );
    // With TLS, the name comes from serverName alone: a channel option cannot slip another in.
    assert.throws(
      () =>
        dial(client, service, Greeter, {
          credentials: grpc.credentials.createSsl(),
          channelOptions: { "grpc.ssl_target_name_override": "rogue.internal" },
        }),
      /options\.channelOptions\["grpc\.ssl_target_name_override"\] is set by dial\(\) with TLS credentials; give options\.serverName instead, got "rogue\.internal"/,
    );
  } finally {
    await pki.close();
  }
});

// grpc-js leaves its subchannel backoff timer after closing a channel whose connection failed (tests/repro_grpcjs_backoff_timer.ts)
Deno.test({
  name:
    "tls: with registerEtcdResolver, grpc-js's own channel checks the name given in its options",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const pki = await makePki();
  try {
    await using etcd = await startSecureEtcd({});
    await using client = connect({ hosts: etcd.endpoint.replace("localhost", "127.0.0.1") });
    const service = "ledger.internal";
    await using _instance = await startGreeter(client, service, "ledger", {
      bind: "127.0.0.1:0",
      credentials: serverCredentials(pki.ca, await pki.issue("ledger", [service])),
      drainMs: 0,
    });
    using _binding = registerEtcdResolver(client);
    const caller = await pki.issue("caller", ["caller.internal"]);
    const credentials = callerCredentials(pki.ca, caller);
    const named = (name: string): GreeterClient =>
      new Greeter(`etcd:///${service}`, credentials, {
        "grpc.ssl_target_name_override": name,
        "grpc.default_authority": name,
      }) as unknown as GreeterClient;
    const right = named(service);
    const wrong = named("other.internal");
    try {
      const reply = await sayHello(right, { name: "x" }, { waitForReady: true });
      assert.equal(reply.instance, "ledger");
      await assertNoAnswer(wrong);
    } finally {
      right.close();
      wrong.close();
    }
  } finally {
    await pki.close();
  }
});
