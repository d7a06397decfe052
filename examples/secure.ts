/**
 * `deno task example:secure`: the greeter service behind every protection the
 * docs/security.md describes, on a private etcd.
 *
 * It makes a CA and certificates with `openssl`, starts etcd with mutual TLS
 * and auth on, and gives each party its RBAC role (docs/security.md): the service
 * `payments.internal` writes its own prefix, the caller `checkout` only reads
 * it. Two instances serve over mutual TLS and register as `payments.internal`.
 * Then:
 *
 * - `checkout` tries to register under the service's prefix: etcd refuses.
 * - A rogue entry appears under the prefix (written as root, standing for a
 *   leaked writer's password). It points at a server whose certificate, from
 *   the same CA, is for another name.
 * - `checkout` calls the service by name 200 times. Every call goes to the two
 *   real instances; `dial` reports why the rogue one gets none.
 *
 * Needs etcd, etcdctl and openssl (./test.sh installs them). Ends by
 * itself in a few seconds and removes its files.
 */
import { connect, PermissionDeniedError, register } from "../mod.ts";
import { dial } from "../grpc.ts";
import {
  callerCredentials,
  grantService,
  makePki,
  ROOT_PASSWORD,
  serverCredentials,
  startImpostor,
  startSecureEtcd,
} from "../harness/tls.ts";
import { Greeter, type GreeterClient, sayHello, startGreeter } from "../harness/greeter.ts";

const SERVICE = "payments.internal";

const pki = await makePki();
try {
  await using etcd = await startSecureEtcd({ pki, auth: true });
  console.log(`etcd: ${etcd.endpoint}, mutual TLS and auth on`);

  // The RBAC commands of docs/security.md: the service writes its prefix, the caller only reads it.
  await grantService(etcd.etcdctl, "payments", "payments-secret", `${SERVICE}/`, []);
  await grantService(etcd.etcdctl, "checkout", "checkout-secret", undefined, [`${SERVICE}/`]);
  console.log(`rbac: user "payments" writes ${SERVICE}/, user "checkout" only reads it`);

  const tls = { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey };
  const as = (username: string, password: string) =>
    connect({ hosts: etcd.endpoint, tls, auth: { username, password } });
  await using payments = as("payments", "payments-secret");
  await using checkout = as("checkout", "checkout-secret");
  await using root = as("root", ROOT_PASSWORD);

  const instances = [
    await startGreeter(payments, SERVICE, "a", {
      credentials: serverCredentials(pki.ca, await pki.issue("a", [SERVICE])),
      drainMs: 0,
    }),
    await startGreeter(payments, SERVICE, "b", {
      credentials: serverCredentials(pki.ca, await pki.issue("b", [SERVICE])),
      drainMs: 0,
    }),
  ];
  console.log(`instances a and b serve mutual TLS as ${SERVICE} and registered as "payments"`);

  // A rogue server with a real certificate from the same CA, for another name.
  const rogue = await startImpostor(pki, "rogue.internal");
  const caller = await pki.issue("checkout", ["checkout.internal"]);
  const reports: string[] = [];
  const greeter: GreeterClient = dial(checkout, SERVICE, Greeter, {
    credentials: callerCredentials(pki.ca, caller),
    onError: (error) => {
      reports.push(error.message);
      console.log(`dial reports: ${error.message}`);
    },
  });
  try {
    try {
      await register(checkout, SERVICE, { addr: "10.6.6.6:443" }, { onError: () => {} });
      throw new Error(`"checkout" registered under ${SERVICE}/: RBAC is not in force`);
    } catch (error) {
      const cause = (error as Error).cause;
      if (!(cause instanceof PermissionDeniedError)) throw error;
      console.log(`"checkout" tries to register: ${cause.message}`);
    }

    const rogueAddr = rogue.addr;
    await root.put(
      `${SERVICE}/${rogueAddr}`,
      JSON.stringify({ Op: 0, Addr: rogueAddr, Metadata: { name: "a" } }),
    );
    console.log(
      `a rogue entry appears: ${SERVICE}/${rogueAddr}, a server certified for rogue.internal`,
    );

    const answers: Record<string, number> = {};
    for (let i = 0; i < 200; i++) {
      const { instance } = await sayHello(greeter, { name: "checkout" }, { waitForReady: true });
      answers[instance] = (answers[instance] ?? 0) + 1;
    }
    // The report comes from a probe of the rogue instance; give it a moment if it is still out.
    for (let wait = 0; wait < 50 && !reports.some((r) => r.includes(rogueAddr)); wait++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    console.log(
      `200 calls by name: ${JSON.stringify(answers)}; calls the rogue server got: ${rogue.calls}`,
    );
  } finally {
    greeter.close();
    rogue.close();
    await Promise.all(instances.map((i) => i.close()));
  }
} finally {
  await pki.close();
}
