/**
 * The TLS material given to `connect()`: read (PEM text, bytes or a file path)
 * and checked up front, and what can be told about a client certificate that
 * etcd rejects.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";

/**
 * PEM text (a string holding `-----BEGIN`), PEM bytes, or the path of a PEM
 * file (any other string; read once by `connect()`).
 */
export type Pem = string | Uint8Array;

const CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/** PEM text or bytes as given, or read from the file a string names. */
export function pem(name: string, value: Pem | undefined): Buffer | undefined {
  if (value === undefined) return undefined;
  if (value instanceof Uint8Array) return Buffer.from(value);
  if (typeof value !== "string" || value === "") {
    throw new TypeError(
      `options.tls.${name} must be PEM text, PEM bytes or a file path, got ${String(value)}`,
    );
  }
  if (value.includes("-----BEGIN")) return Buffer.from(value);
  let bytes: Buffer;
  try {
    bytes = readFileSync(value);
  } catch (error) {
    throw new TypeError(
      `options.tls.${name}: could not read the file ${JSON.stringify(value)}: ${
        (error as Error).message
      }`,
      { cause: error },
    );
  }
  if (!bytes.toString("latin1").includes("-----BEGIN")) {
    throw new TypeError(`options.tls.${name}: the file ${JSON.stringify(value)} is not PEM`);
  }
  return bytes;
}

/** A certificate's subject on one line (`CN=client`, `O=acme, CN=client`). */
function subject(certificate: X509Certificate): string {
  return certificate.subject.replaceAll("\n", ", ");
}

/** Runs `parse`, or throws a TypeError saying that `what` cannot be read, and why. */
function parsed<T>(what: string, parse: () => T): T {
  try {
    return parse();
  } catch (error) {
    throw new TypeError(`${what} cannot be read: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * Checks TLS material when `connect()` is called: the runtime would only fail
 * at the first handshake, and obscurely ("unsupported protocol" for a key that
 * does not match its certificate).
 */
export function checkTlsMaterial(
  ca?: Buffer,
  key?: Buffer,
  cert?: Buffer,
): { cas: X509Certificate[]; certificate?: X509Certificate } {
  const cas: X509Certificate[] = [];
  if (ca) {
    const blocks = ca.toString("latin1").match(CERTIFICATE) ?? [];
    if (blocks.length === 0) throw new TypeError("options.tls.ca holds no PEM certificate");
    blocks.forEach((block, i) =>
      cas.push(parsed(
        `options.tls.ca (certificate ${i + 1} of ${blocks.length})`,
        () => new X509Certificate(block),
      ))
    );
  }
  if (!key || !cert) return { cas };
  const privateKey = parsed("options.tls.key", () => createPrivateKey(key));
  const first = cert.toString("latin1").match(CERTIFICATE)?.[0];
  if (!first) throw new TypeError("options.tls.cert holds no PEM certificate");
  const certificate = parsed("options.tls.cert", () => new X509Certificate(first));
  if (!certificate.checkPrivateKey(privateKey)) {
    throw new TypeError(
      `options.tls.key is not the key of options.tls.cert (${subject(certificate)})`,
    );
  }
  return { cas, certificate };
}

/**
 * What this process can tell is wrong with the client certificate when etcd
 * rejects it: out of its dates, or not issued by the CA in `tls.ca` (which
 * etcd usually trusts for clients too). `undefined` when neither.
 */
export function clientCertProblem(
  certificate: X509Certificate,
  cas: readonly X509Certificate[],
  now: number = Date.now(),
): string | undefined {
  const which = `the one in tls.cert (${subject(certificate)})`;
  const from = Date.parse(certificate.validFrom);
  const to = Date.parse(certificate.validTo);
  if (to < now) return `${which} expired on ${new Date(to).toISOString()}`;
  if (from > now) return `${which} is not valid until ${new Date(from).toISOString()}`;
  if (
    cas.length > 0 &&
    !cas.some((ca) => certificate.checkIssued(ca) && certificate.verify(ca.publicKey))
  ) {
    return `${which} was not issued by the CA in tls.ca; etcd must trust its issuer ` +
      "(--trusted-ca-file)";
  }
  return undefined;
}
