/**
 * Harness: a throwaway CA, server and client certificates made with
 * `openssl`, a single etcd member that requires client certificates (and/or
 * has auth on, with the RBAC commands of docs/security.md run through `etcdctl`), and
 * gRPC credentials from those certificates. Built on `node:` APIs, so it runs
 * on Deno, Node and Bun.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { atExit } from "./child.ts";
import { findEtcd, findExecutable, Member } from "./etcd_server.ts";
import { type LoneGreeter, startLoneGreeter } from "./greeter.ts";
import { sleep } from "./wait.ts";

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

/** Runs `command` with `args` in `cwd`; resolves with its stdout, fails with its stderr. */
function run(command: string, args: readonly string[], cwd?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, [...args], { cwd, encoding: "utf8" }, (error, stdout, stderr) => {
      if (!error) resolve(stdout);
      else reject(Object.assign(error, { stderr: String(stderr).trim() }));
    });
  });
}

async function openssl(dir: string, args: string[]): Promise<void> {
  try {
    await run("openssl", args, dir);
  } catch (error) {
    const e = error as Error & { code?: unknown; stderr?: string };
    if (e.code === "ENOENT") {
      throw new Error(`openssl is needed for the TLS tests (apt-get install -y openssl): ${e}`);
    }
    throw new Error(`openssl ${args[0]} failed: ${e.stderr || e.message}`);
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

/**
 * Makes a CA and a server and a client certificate for `localhost` and 127.0.0.1.
 *
 * @throws {Error} when openssl is missing (saying how to install it) or fails
 */
export async function makePki(): Promise<TestPki> {
  const dir = mkdtempSync(join(tmpdir(), "grpc-etcd-pki-"));
  const forget = atExit(() => rmSync(dir, { recursive: true, force: true }));
  const read = (file: string) => readFileSync(join(dir, file), "utf8");
  const stamp = (date: Date) => date.toISOString().replace(/[-:T]/g, "").slice(0, 14) + "Z";
  const sign = async (
    name: string,
    san: string,
    options: { expired?: boolean } = {},
  ): Promise<Issued> => {
    writeFileSync(
      join(dir, `${name}.ext`),
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
    return {
      cert: read(`${name}.crt`),
      key: read(`${name}.key`),
      certFile: join(dir, `${name}.crt`),
      keyFile: join(dir, `${name}.key`),
    };
  };
  const close = () => {
    rmSync(dir, { recursive: true, force: true });
    forget();
    return Promise.resolve();
  };
  try {
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
    writeFileSync(join(dir, "ca.cnf"), CA_CONFIG);
    writeFileSync(join(dir, "index.txt"), "");
    writeFileSync(join(dir, "serial"), "01\n");
    const server = await sign("server", "IP:127.0.0.1,DNS:localhost");
    const client = await sign("client", "IP:127.0.0.1,DNS:localhost");
    return {
      dir,
      ca: read("ca.crt"),
      serverCert: server.cert,
      serverKey: server.key,
      clientCert: client.cert,
      clientKey: client.key,
      issue: (name, dnsNames, options) =>
        sign(name, dnsNames.map((n) => `DNS:${n}`).join(","), options),
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
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
  const found = findExecutable("etcdctl", [dirname(etcd)]);
  if (found) return found;
  throw new Error(
    `etcdctl was found neither beside ${etcd} nor on PATH; install it with: apt-get install -y etcd-client`,
  );
}

/**
 * Starts a single etcd member with TLS (client certificates required) and/or
 * auth turned on (through `etcdctl`, the commands docs/security.md documents).
 *
 * @throws {Error} when etcd, etcdctl or openssl is missing (saying how to
 *   install it), or etcd does not come up within 15 s (with what it said)
 */
export async function startSecureEtcd(options: SecureEtcdOptions): Promise<SecureEtcd> {
  const { pki, server, auth = false, tokenTtl, jwtTtl } = options;
  const ctl = findEtcdctl();
  const data = mkdtempSync(join(tmpdir(), "grpc-etcd-secure-"));
  const forget = atExit(() => rmSync(data, { recursive: true, force: true }));
  const removeData = () => {
    rmSync(data, { recursive: true, force: true });
    forget();
  };
  let member: Member;
  try {
    const args = tokenTtl === undefined
      ? []
      : ["--auth-token=simple", `--auth-token-ttl=${tokenTtl}`];
    if (jwtTtl !== undefined) {
      await openssl(data, ["genrsa", "-out", "jwt.key", "2048"]);
      await openssl(data, ["rsa", "-in", "jwt.key", "-pubout", "-out", "jwt.pub"]);
      const pub = join(data, "jwt.pub");
      const priv = join(data, "jwt.key");
      args.push(
        `--auth-token=jwt,pub-key=${pub},priv-key=${priv},sign-method=RS256,ttl=${jwtTtl}s`,
      );
    }
    member = await Member.create(findEtcd(), data, "t", {
      clientHost: "localhost",
      tls: pki
        ? {
          cert: server?.certFile ?? join(pki.dir, "server.crt"),
          key: server?.keyFile ?? join(pki.dir, "server.key"),
          ca: join(pki.dir, "ca.crt"),
        }
        : undefined,
      args,
    });
  } catch (error) {
    removeData();
    throw error;
  }
  member.spawn();
  const stop = async () => {
    await member.stop({ kill: true });
    removeData();
  };
  const endpoint = member.clientUrl;
  let asRoot = false;
  const etcdctl = async (...rest: string[]): Promise<string> => {
    const flags = [`--endpoints=${endpoint}`, "--dial-timeout=2s", "--command-timeout=5s"];
    if (pki) {
      flags.push(
        `--cacert=${join(pki.dir, "ca.crt")}`,
        `--cert=${join(pki.dir, "client.crt")}`,
        `--key=${join(pki.dir, "client.key")}`,
      );
    }
    if (asRoot) flags.push(`--user=root:${ROOT_PASSWORD}`);
    try {
      return await run(ctl, [...flags, ...rest]);
    } catch (error) {
      const e = error as Error & { stderr?: string };
      throw new Error(`etcdctl ${rest.join(" ")} failed: ${e.stderr || e.message}`);
    }
  };
  try {
    const deadline = Date.now() + 15_000;
    while (true) {
      try {
        await etcdctl("endpoint", "health");
        break;
      } catch (error) {
        if (Date.now() > deadline || !member.running) {
          const stderr = member.stderrTail();
          throw new Error(
            `etcd did not come up: ${error}${stderr ? `\netcd stderr:\n${stderr}` : ""}`,
          );
        }
        await sleep(50);
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

/** The commands of docs/security.md that turn auth on, with a root user. */
export async function enableAuth(
  etcdctl: (...args: string[]) => Promise<string>,
  rootPassword: string,
): Promise<void> {
  await etcdctl("user", "add", `root:${rootPassword}`);
  await etcdctl("role", "add", "root");
  await etcdctl("user", "grant-role", "root", "root");
  await etcdctl("auth", "enable");
}

/** The RBAC commands of docs/security.md: each service writes its own prefix and reads those it calls. */
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
