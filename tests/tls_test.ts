/**
 * connect() against an etcd that requires TLS client certificates. (Groundwork
 * for the security issue: wrong CA, expired certificates, auth and RBAC are not
 * covered yet.)
 */
import assert from "node:assert/strict";
import { connect, register, resolve } from "../mod.ts";
import { makePki, startTlsEtcd } from "./tls.ts";

Deno.test("tls: register and resolve through an etcd that requires client certificates", async () => {
  const pki = await makePki();
  try {
    await using etcd = await startTlsEtcd(pki);
    // PEM as text for one client, as bytes for the other.
    await using a = connect({
      hosts: etcd.endpoint,
      tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey },
    });
    const bytes = (text: string) => new TextEncoder().encode(text);
    await using b = connect({
      hosts: etcd.endpoint,
      tls: { ca: bytes(pki.ca), cert: bytes(pki.clientCert), key: bytes(pki.clientKey) },
    });
    await using registration = await register(a, "tls/svc", { addr: "10.0.0.1:50051" });
    await using updates = resolve(b, "tls/svc");
    const first = await updates.next();
    assert.deepEqual(first.value, [{
      op: "add",
      key: registration.key,
      endpoint: { addr: "10.0.0.1:50051" },
    }]);
  } finally {
    await pki.close();
  }
});

Deno.test("tls: a missing or foreign client certificate, or a wrong CA, fails in bounded time saying which", async (t) => {
  const pki = await makePki();
  const other = await makePki();
  try {
    await using etcd = await startTlsEtcd(pki);
    const cases: [string, { ca: string; cert?: string; key?: string }, RegExp][] = [
      ["no client certificate", { ca: pki.ca }, /client certificate/],
      [
        "a client certificate from another CA",
        { ca: pki.ca, cert: other.clientCert, key: other.clientKey },
        /etcd rejected the client certificate/,
      ],
      [
        "a CA that did not sign etcd's certificate",
        { ca: other.ca, cert: pki.clientCert, key: pki.clientKey },
        /etcd's server certificate is not signed by the CA given in tls.ca/,
      ],
    ];
    for (const [name, tls, reason] of cases) {
      await t.step(name, async () => {
        await using client = connect({ hosts: etcd.endpoint, tls, dialTimeout: 1000 });
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
        assert.ok(Date.now() - start < 4000, `took ${Date.now() - start} ms`);
      });
    }
  } finally {
    await pki.close();
    await other.close();
  }
});
