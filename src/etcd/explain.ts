/**
 * What a connection error from etcd (through grpc-js, on Deno, Node or Bun)
 * means, in plain words. Pure: it reads the error's text and what the client
 * was given; the one place that knows each runtime's wording.
 *
 * @module
 */

/** The TLS set-up of a client, as far as explaining its failures needs. */
export interface TlsMode {
  /** Whether the hosts are `https://`. */
  readonly secure: boolean;
  /** Whether `tls.ca` was given. */
  readonly ca: boolean;
  /**
   * Given when a client certificate is: says what is wrong with it, as far as
   * this process can tell (expired, not yet valid, not issued by `tls.ca`).
   */
  readonly clientCert?: () => string | undefined;
}

/**
 * What the adapter's one-off TLS handshake with etcd reports when etcd closes
 * the connection without an alert or an answer.
 */
export const CLOSED_UNANSWERED = "etcd closed the TLS connection without answering";

/**
 * Whether an error text gives no reason at all: grpc-js's "No connection
 * established. Last error: null", which is what etcd3's call to authenticate
 * fails with whatever the TLS handshake said. A TLS client then asks etcd for
 * a handshake of its own to learn why, and explains that instead.
 *
 * @param text the error's message
 * @returns whether the text says nothing about the cause
 */
export function saysNoReason(text: string): boolean {
  return /No connection established\. Last error: null/.test(text);
}

/**
 * The hint that explains an error text from etcd3 and grpc-js, or `undefined`
 * when the text needs none.
 *
 * etcd aborts a TLS handshake it rejects; the client then sees the alert
 * (Node: "ssl/tls alert bad certificate"; Deno: "received fatal alert:
 * BadCertificate"; Bun: `SSLV3_ALERT_BAD_CERTIFICATE`; "certificate
 * required" from other servers), or only EPIPE or ECONNRESET when its own
 * write loses the race, or {@linkcode CLOSED_UNANSWERED} from the adapter's
 * own handshake. When the failed connection was etcd3's call to authenticate,
 * grpc-js says only "No connection established. Last error: null" (see
 * {@linkcode saysNoReason}): then etcd may be down as well, and the text alone
 * cannot tell which (the adapter asks a handshake of its own).
 *
 * @param text the error's message
 * @param tls the client's TLS set-up
 * @returns the hint, to put before the text
 */
export function explainText(text: string, tls: TlsMode): string | undefined {
  const aborted =
    /EPIPE|ECONNRESET|bad[ _]?certificate|certificate[ _]?required|handshake failure/i.test(text) ||
    text.includes(CLOSED_UNANSWERED);
  if (/unable to verify|self[- _]signed|certificate verify failed|unknown[ _]?ca/i.test(text)) {
    return tls.ca
      ? "etcd's server certificate is not signed by the CA given in tls.ca"
      : "etcd's server certificate is not signed by a CA this system trusts (give etcd's CA " +
        "as tls.ca)";
  }
  if (/servername' must not be an IP address/.test(text)) {
    // Only an Etcd3 instance made by the user gets here: connect()'s own clients avoid it.
    return "Deno refuses an IP address as TLS server name, which etcd3's own TLS setup sends; " +
      "let connect({ hosts, tls }) make the client, or give etcd hosts by DNS name";
  }
  if (/does not match certificate's altnames|ERR_TLS_CERT_ALTNAME/i.test(text)) {
    return "etcd's server certificate does not name the host as given in options.hosts";
  }
  if (!tls.secure) {
    // Closed before any HTTP/2 answer ("Failed to connect" is grpc-js's words for that), or
    // reset: a TLS server drops a plain-text client either way.
    return /No connection established\. Last error: (Failed to connect \(|read ECONNRESET)/.test(
        text,
      )
      ? "etcd accepted the connection but did not answer in plain-text HTTP/2; " +
        "if it serves TLS, give https:// hosts"
      : undefined;
  }
  if (/disconnected before secure TLS connection/i.test(text)) {
    return "etcd closed the connection before the TLS handshake completed; " +
      "if it serves plain text, give http:// hosts";
  }
  if (saysNoReason(text)) {
    // grpc-js kept no reason (etcd3's authenticate call): etcd may be down as well.
    const problem = tls.clientCert?.();
    if (problem) {
      return `etcd could not be reached over TLS; the client certificate is a likely cause: ${problem}`;
    }
    const suspects = [
      tls.clientCert
        ? "the client certificate was rejected (expired, or not signed by a CA etcd trusts)"
        : "etcd requires a client certificate (tls.cert and tls.key were not given)",
      tls.ca ? "etcd's certificate is not signed by the CA in tls.ca" : undefined,
    ].filter((suspect) => suspect !== undefined);
    return `etcd could not be reached over TLS: it is down or refuses connections, or ${
      suspects.join(", or ")
    }`;
  }
  if (!aborted) return undefined;
  if (!tls.clientCert) {
    return "etcd closed the TLS connection; it may require a client certificate " +
      "(tls.cert and tls.key were not given)";
  }
  const problem = tls.clientCert();
  if (problem) return `etcd rejected the client certificate: ${problem}`;
  return "etcd rejected the client certificate or closed the TLS connection " +
    "(expired, or not signed by a CA etcd trusts)";
}
