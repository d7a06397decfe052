/**
 * Test helper: a throwaway CA, server and client certificates made with
 * `openssl`, and a single etcd member that requires client certificates.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import { type LoneGreeter, startLoneGreeter } from "../harness/greeter.ts";
import { findEtcd, findExecutable, Member } from "./etcd_server.ts";

/** A certificate and its key, as PEM text, and the paths of their files. */
export interface Issued {
  readonly cert: string;
  readonly key: string;
  readonly certFile: string;
  readonly keyFile: string;
}

/** PEM texts of a test CA and the certificates it signed. */
export interface TestPki {
  readonly ca: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** The directory holding the files (removed by `close`). */
  readonly dir: string;
  /**
   * Issues another certificate signed by this CA: for the DNS names given (the
   * first is also the common name), valid from yesterday for two days, or
   * expired (valid for one day in 2020) with `expired`.
   */
  issue(
    name: string,
    dnsNames: readonly string[],
    options?: { expired?: boolean },
  ): Promise<Issued>;
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

// `openssl ca` rather than `x509 -req`: only it sets explicit dates (OpenSSL 3.0 has no
// -not_before), which the expired certificate needs.
const CA_CONFIG = `[ca]
default_ca = test
[test]
dir = .
database = index.txt
new_certs_dir = .
certificate = ca.crt
private_key = ca.key
serial = serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
`;

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
  await Deno.writeTextFile(`${dir}/ca.cnf`, CA_CONFIG);
  await Deno.writeTextFile(`${dir}/index.txt`, "");
  await Deno.writeTextFile(`${dir}/serial`, "01\n");
  const stamp = (date: Date) => date.toISOString().replace(/[-:T]/g, "").slice(0, 14) + "Z";
  const sign = async (
    name: string,
    san: string,
    options: { expired?: boolean } = {},
  ): Promise<Issued> => {
    await Deno.writeTextFile(
      `${dir}/${name}.ext`,
      `[ext]\nsubjectAltName=${san}\nextendedKeyUsage=serverAuth,clientAuth\n`,
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
    const day = 86_400_000;
    const from = options.expired ? new Date("2020-01-01T00:00:00Z") : new Date(Date.now() - day);
    const until = new Date(from.getTime() + 2 * day);
    await openssl(dir, [
      "ca",
      "-batch",
      "-notext",
      "-config",
      "ca.cnf",
      "-startdate",
      stamp(from),
      "-enddate",
      stamp(until),
      "-extfile",
      `${name}.ext`,
      "-extensions",
      "ext",
      "-in",
      `${name}.csr`,
      "-out",
      `${name}.crt`,
    ]);
    const certFile = `${dir}/${name}.crt`;
    const keyFile = `${dir}/${name}.key`;
    return {
      cert: Deno.readTextFileSync(certFile),
      key: Deno.readTextFileSync(keyFile),
      certFile,
      keyFile,
    };
  };
  const server = await sign("server", "IP:127.0.0.1,DNS:localhost");
  const client = await sign("client", "IP:127.0.0.1,DNS:localhost");
  return {
    dir,
    ca: Deno.readTextFileSync(`${dir}/ca.crt`),
    serverCert: server.cert,
    serverKey: server.key,
    clientCert: client.cert,
    clientKey: client.key,
    issue: (name, dnsNames, options) =>
      sign(name, dnsNames.map((n) => `DNS:${n}`).join(","), options),
    close: () => Deno.remove(dir, { recursive: true }).catch(() => {}),
  };
}

/** How {@linkcode startSecureEtcd} configures etcd. */
export interface SecureEtcdOptions {
  /** Serve TLS with this PKI's server certificate and require client certificates from its CA. */
  readonly pki?: TestPki;
  /** The certificate etcd serves instead of the PKI's server certificate (with `pki`). */
  readonly server?: Issued;
  /** Turn auth on, with user `root` (password {@linkcode ROOT_PASSWORD}) as the only user. */
  readonly auth?: boolean;
  /** `--auth-token-ttl` in seconds (simple tokens; etcd's default is 300). */
  readonly tokenTtl?: number;
  /** Signed JWT tokens (RS256, a key made by `openssl`) valid this many seconds, instead. */
  readonly jwtTtl?: number;
}

/** The root password of an etcd started with `auth: true`. */
export const ROOT_PASSWORD = "root-secret";

/** A running etcd with TLS and/or auth, and `etcdctl` pointed at it as root. */
export interface SecureEtcd extends AsyncDisposable {
  /** The client URL, `http(s)://localhost:…` (the certificate also names 127.0.0.1). */
  readonly endpoint: string;
  /** Runs `etcdctl` against this etcd (as root when auth is on); resolves to its stdout. */
  etcdctl(...args: string[]): Promise<string>;
}

function findEtcdctl(): string {
  const etcd = findEtcd();
  const found = findExecutable("etcdctl", [etcd.slice(0, etcd.lastIndexOf("/"))]);
  if (found) return found;
  throw new Error(
    `etcdctl was found neither beside ${etcd} nor on PATH; install it with: apt-get install -y etcd-client`,
  );
}

/**
 * Starts a single etcd member with TLS (client certificates required) and/or
 * auth turned on (through `etcdctl`, the commands the README documents).
 */
export async function startSecureEtcd(options: SecureEtcdOptions): Promise<SecureEtcd> {
  const { pki, server, auth = false, tokenTtl, jwtTtl } = options;
  const data = await Deno.makeTempDir({ prefix: "grpc-etcd-secure-" });
  const args = tokenTtl === undefined
    ? []
    : ["--auth-token=simple", `--auth-token-ttl=${tokenTtl}`];
  if (jwtTtl !== undefined) {
    await openssl(data, ["genrsa", "-out", "jwt.key", "2048"]);
    await openssl(data, ["rsa", "-in", "jwt.key", "-pubout", "-out", "jwt.pub"]);
    args.push(
      `--auth-token=jwt,pub-key=${data}/jwt.pub,priv-key=${data}/jwt.key,sign-method=RS256,ttl=${jwtTtl}s`,
    );
  }
  const member = new Member(findEtcd(), data, "t", {
    clientHost: "localhost",
    tls: pki
      ? {
        cert: server?.certFile ?? `${pki.dir}/server.crt`,
        key: server?.keyFile ?? `${pki.dir}/server.key`,
        ca: `${pki.dir}/ca.crt`,
      }
      : undefined,
    args,
  });
  member.spawn();
  const stop = async () => {
    await member.stop({ kill: true });
    await Deno.remove(data, { recursive: true }).catch(() => {});
  };
  const endpoint = member.clientUrl;
  const ctl = findEtcdctl();
  let asRoot = false;
  const etcdctl = async (...rest: string[]): Promise<string> => {
    const flags = [`--endpoints=${endpoint}`, "--dial-timeout=2s", "--command-timeout=5s"];
    if (pki) {
      flags.push(
        `--cacert=${pki.dir}/ca.crt`,
        `--cert=${pki.dir}/client.crt`,
        `--key=${pki.dir}/client.key`,
      );
    }
    if (asRoot) flags.push(`--user=root:${ROOT_PASSWORD}`);
    const out = await new Deno.Command(ctl, {
      args: [...flags, ...rest],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder();
    if (!out.success) {
      throw new Error(`etcdctl ${rest.join(" ")} failed: ${text.decode(out.stderr).trim()}`);
    }
    return text.decode(out.stdout);
  };
  try {
    const deadline = Date.now() + 15_000;
    while (true) {
      try {
        await etcdctl("endpoint", "health");
        break;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`etcd did not come up: ${error}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    if (auth) {
      await enableAuth(etcdctl, ROOT_PASSWORD);
      asRoot = true;
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return { endpoint, etcdctl, [Symbol.asyncDispose]: stop };
}

/** A single etcd member serving TLS on loopback and requiring client certificates. */
export function startTlsEtcd(pki: TestPki): Promise<SecureEtcd> {
  return startSecureEtcd({ pki });
}

/** Server credentials presenting `issued`, requiring client certificates signed by `ca`. */
export function serverCredentials(ca: string, issued: Issued): grpc.ServerCredentials {
  return grpc.ServerCredentials.createSsl(Buffer.from(ca), [
    { cert_chain: Buffer.from(issued.cert), private_key: Buffer.from(issued.key) },
  ], true);
}

/** Channel credentials of a caller presenting `issued` (mutual TLS), trusting `ca`. */
export function callerCredentials(ca: string, issued: Issued): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(
    Buffer.from(ca),
    Buffer.from(issued.key),
    Buffer.from(issued.cert),
  );
}

/**
 * Starts a greeter server on loopback with a real certificate from `pki`, for
 * `dnsName`, answering every call as instance "rogue".
 */
export async function startImpostor(pki: TestPki, dnsName: string): Promise<LoneGreeter> {
  const credentials = serverCredentials(pki.ca, await pki.issue("rogue", [dnsName]));
  return await startLoneGreeter("rogue", { credentials });
}

/** The README's commands that turn auth on, with a root user. */
export async function enableAuth(
  etcdctl: (...args: string[]) => Promise<string>,
  rootPassword: string,
): Promise<void> {
  await etcdctl("user", "add", `root:${rootPassword}`);
  await etcdctl("role", "add", "root");
  await etcdctl("user", "grant-role", "root", "root");
  await etcdctl("auth", "enable");
}

/** The README's RBAC commands: each service writes its own prefix and reads those it calls. */
export async function grantService(
  etcdctl: (...args: string[]) => Promise<string>,
  user: string,
  password: string,
  writes: string | undefined,
  reads: readonly string[],
): Promise<void> {
  await etcdctl("role", "add", user);
  if (writes) await etcdctl("role", "grant-permission", user, "--prefix=true", "readwrite", writes);
  for (const prefix of reads) {
    await etcdctl("role", "grant-permission", user, "--prefix=true", "read", prefix);
  }
  await etcdctl("user", "add", `${user}:${password}`);
  await etcdctl("user", "grant-role", user, user);
}
