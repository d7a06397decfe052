/**
 * Test helper: a throwaway CA, server and client certificates made with
 * `openssl`, and a single etcd member that requires client certificates.
 *
 * @module
 */
import { findEtcd, freePort } from "./etcd_server.ts";

/** PEM texts of a test CA and the certificates it signed. */
export interface TestPki {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** The directory holding the files (removed by `close`). */
  readonly dir: string;
  close(): Promise<void>;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd: dir, stdout: "null", stderr: "piped" })
    .output()
    .catch((error) => {
      throw new Error(`openssl is needed for the TLS tests (apt-get install -y openssl): ${error}`);
    });
  if (!out.success) {
    throw new Error(`openssl ${args[0]} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** Makes a CA and a server and a client certificate for `localhost` and 127.0.0.1. */
export async function makePki(): Promise<TestPki> {
  const dir = await Deno.makeTempDir({ prefix: "grpc-etcd-pki-" });
  await openssl(dir, [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    "-days",
    "2",
    "-subj",
    "/CN=grpc-etcd test CA",
  ]);
  for (const name of ["server", "client"]) {
    await Deno.writeTextFile(
      `${dir}/${name}.ext`,
      "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    );
    await openssl(dir, [
      "req",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
      "-subj",
      `/CN=${name}`,
    ]);
    await openssl(dir, [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-out",
      `${name}.crt`,
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
    ]);
  }
  const read = (file: string) => Deno.readTextFileSync(`${dir}/${file}`);
  return {
    dir,
    ca: read("ca.crt"),
    serverCert: read("server.crt"),
    serverKey: read("server.key"),
    clientCert: read("client.crt"),
    clientKey: read("client.key"),
    close: () => Deno.remove(dir, { recursive: true }).catch(() => {}),
  };
}

/** A single etcd member serving TLS on loopback and requiring client certificates. */
export async function startTlsEtcd(pki: TestPki): Promise<{ endpoint: string } & AsyncDisposable> {
  const port = freePort();
  const peer = `http://127.0.0.1:${freePort()}`;
  const data = await Deno.makeTempDir({ prefix: "grpc-etcd-tls-" });
  const child = new Deno.Command(findEtcd(), {
    args: [
      "--name=t",
      `--data-dir=${data}`,
      `--listen-client-urls=https://127.0.0.1:${port}`,
      `--advertise-client-urls=https://localhost:${port}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=t=${peer}`,
      `--cert-file=${pki.dir}/server.crt`,
      `--key-file=${pki.dir}/server.key`,
      `--trusted-ca-file=${pki.dir}/ca.crt`,
      "--client-cert-auth",
      "--logger=zap",
      "--log-level=error",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const stop = async () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
    await child.status;
    await Deno.remove(data, { recursive: true }).catch(() => {});
  };
  // Healthy once it answers a TLS connection on its port.
  const deadline = Date.now() + 15_000;
  while (true) {
    try {
      const conn = await Deno.connectTls({ hostname: "localhost", port, caCerts: [pki.ca] });
      await conn.handshake();
      conn.close();
      break;
    } catch (error) {
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`TLS etcd did not come up: ${error}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  // etcd names "localhost" in its certificate; grpc-js under Deno cannot verify a TLS
  // server by IP address (node:tls refuses an IP as servername), so clients use the name.
  return { endpoint: `https://localhost:${port}`, [Symbol.asyncDispose]: stop };
}
