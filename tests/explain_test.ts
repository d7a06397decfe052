import assert from "node:assert/strict";
import { CLOSED_UNANSWERED, explainText, saysNoReason, type TlsMode } from "../src/etcd/explain.ts";

const plain: TlsMode = { secure: false, ca: false };
const tlsOnly: TlsMode = { secure: true, ca: true };
const systemCa: TlsMode = { secure: true, ca: false };
const withCert: TlsMode = { secure: true, ca: true, clientCert: () => undefined };
const foreign: TlsMode = {
  secure: true,
  ca: true,
  clientCert: () =>
    "the one in tls.cert (CN=client) was not issued by the CA in tls.ca; etcd must trust its " +
    "issuer (--trusted-ca-file)",
};
const expired: TlsMode = {
  secure: true,
  ca: true,
  clientCert: () => "the one in tls.cert (CN=x) expired on 2020-01-03T00:00:00.000Z",
};

Deno.test("explainText(): each runtime's wording of each failure, and what the client was given", async (t) => {
  const cases: [string, string, TlsMode, RegExp | undefined][] = [
    // Server certificate not signed by the CA (Node/Deno wording; Bun's code name).
    [
      "untrusted CA given",
      "14 UNAVAILABLE: unable to verify the first certificate",
      tlsOnly,
      /not signed by the CA given in tls\.ca/,
    ],
    [
      "untrusted, no CA given",
      "self-signed certificate in certificate chain",
      systemCa,
      /not signed by a CA this system trusts \(give etcd's CA as tls\.ca\)/,
    ],
    [
      "Bun: untrusted",
      "UNABLE_TO_VERIFY_LEAF_SIGNATURE: unable to verify leaf signature",
      tlsOnly,
      /not signed by the CA given in tls\.ca/,
    ],
    [
      "Bun: self signed",
      "DEPTH_ZERO_SELF_SIGNED_CERT",
      tlsOnly,
      /not signed by the CA given in tls\.ca/,
    ],
    // Host not named by the certificate.
    [
      "altname",
      "Hostname/IP does not match certificate's altnames: IP: 127.0.0.1 is not in the cert's list",
      tlsOnly,
      /does not name the host as given in options\.hosts/,
    ],
    [
      "Deno: IP as servername",
      "The property 'options.servername' must not be an IP address",
      tlsOnly,
      /Deno refuses an IP address/,
    ],
    // Scheme mismatches.
    [
      "http to TLS, refused",
      "14 UNAVAILABLE: No connection established. Last error: Failed to connect (read ECONNRESET)",
      plain,
      /give https:\/\/ hosts/,
    ],
    [
      "http to TLS, reset",
      "14 UNAVAILABLE: No connection established. Last error: read ECONNRESET",
      plain,
      /give https:\/\/ hosts/,
    ],
    [
      "https to plain",
      "Client network socket disconnected before secure TLS connection was established",
      tlsOnly,
      /give http:\/\/ hosts/,
    ],
    // Client certificate missing or rejected: the alert, or only a broken pipe.
    [
      "no client cert, EPIPE",
      "14 UNAVAILABLE: write EPIPE",
      tlsOnly,
      /may require a client certificate \(tls\.cert and tls\.key were not given\)$/,
    ],
    [
      "no client cert, alert",
      "error:14094410:SSL routines:ssl3_read_bytes:sslv3 alert bad certificate",
      tlsOnly,
      /may require a client certificate/,
    ],
    [
      "Bun: no client cert",
      "14 UNAVAILABLE: No connection established. Last error: SSLV3_ALERT_BAD_CERTIFICATE",
      tlsOnly,
      /may require a client certificate/,
    ],
    [
      "Node: certificate required",
      "tlsv13 alert certificate required",
      tlsOnly,
      /may require a client certificate/,
    ],
    [
      "rejected client cert, told why",
      "read ECONNRESET",
      expired,
      /etcd rejected the client certificate: the one in tls\.cert \(CN=x\) expired on 2020/,
    ],
    [
      "rejected client cert, cannot tell",
      "Bun: SSLV3_ALERT_BAD_CERTIFICATE",
      withCert,
      /rejected the client certificate or closed the TLS connection \(expired, or not signed by a CA etcd trusts\)$/,
    ],
    // Recorded against etcd 3.4.23 with --client-cert-auth (the tls-refused conformance
    // scenarios): what each runtime's grpc-js call says, and what the adapter's own handshake
    // says when the call that authenticates gives no reason.
    [
      "Deno 2.9.3: no client cert",
      "14 UNAVAILABLE: No connection established. Last error: received fatal alert: BadCertificate (2026-11-30T06:09:07.189Z). Resolution note: ",
      tlsOnly,
      /^etcd closed the TLS connection; it may require a client certificate \(tls\.cert and tls\.key were not given\)$/,
    ],
    [
      "Deno 2.9.3: client cert from another CA",
      "14 UNAVAILABLE: No connection established. Last error: write EPIPE (2026-11-30T06:09:08.538Z). Resolution note: ",
      foreign,
      /^etcd rejected the client certificate: the one in tls\.cert \(CN=client\) was not issued/,
    ],
    [
      "Deno 2.9.3: wrong CA",
      "14 UNAVAILABLE: No connection established. Last error: Error: unable to verify the first certificate. Resolution note: ",
      foreign,
      /^etcd's server certificate is not signed by the CA given in tls\.ca$/,
    ],
    [
      "Deno 2.9.3: handshake, no client cert",
      "received fatal alert: BadCertificate",
      tlsOnly,
      /^etcd closed the TLS connection; it may require a client certificate \(tls\.cert and tls\.key were not given\)$/,
    ],
    [
      "Node 24: no client cert",
      "14 UNAVAILABLE: No connection established. Last error: 402D6787097F0000:error:0A000412:SSL routines:ssl3_read_bytes:ssl/tls alert bad certificate:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:918:SSL alert number 42\n (2026-11-30T06:09:33.355Z). Resolution note: ",
      tlsOnly,
      /^etcd closed the TLS connection; it may require a client certificate \(tls\.cert and tls\.key were not given\)$/,
    ],
    [
      "Node 24: client cert from another CA",
      "405D2D41917F0000:error:0A000412:SSL routines:ssl3_read_bytes:ssl/tls alert bad certificate:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:918:SSL alert number 42",
      foreign,
      /^etcd rejected the client certificate: the one in tls\.cert \(CN=client\) was not issued/,
    ],
    [
      "Node 24: wrong CA",
      "14 UNAVAILABLE: No connection established. Last error: Error: unable to verify the first certificate; if the root CA is installed locally, try running Node.js with --use-system-ca. Resolution note: ",
      foreign,
      /^etcd's server certificate is not signed by the CA given in tls\.ca$/,
    ],
    [
      "Node 24: handshake, wrong CA",
      "unable to verify the first certificate; if the root CA is installed locally, try running Node.js with --use-system-ca",
      foreign,
      /^etcd's server certificate is not signed by the CA given in tls\.ca$/,
    ],
    [
      "Bun 1.4: no client cert",
      "14 UNAVAILABLE: No connection established. Last error: error:10000412:SSL routines:OPENSSL_internal:SSLV3_ALERT_BAD_CERTIFICATE (2026-11-30T06:09:50.882Z). Resolution note: ",
      tlsOnly,
      /^etcd closed the TLS connection; it may require a client certificate \(tls\.cert and tls\.key were not given\)$/,
    ],
    [
      "Bun 1.4: handshake, client cert from another CA",
      "error:10000412:SSL routines:OPENSSL_internal:SSLV3_ALERT_BAD_CERTIFICATE",
      foreign,
      /^etcd rejected the client certificate: the one in tls\.cert \(CN=client\) was not issued/,
    ],
    [
      "Bun 1.4: handshake, wrong CA",
      "unable to verify the first certificate",
      foreign,
      /^etcd's server certificate is not signed by the CA given in tls\.ca$/,
    ],
    [
      "handshake: closed without a word, no client cert",
      CLOSED_UNANSWERED,
      tlsOnly,
      /^etcd closed the TLS connection; it may require a client certificate \(tls\.cert and tls\.key were not given\)$/,
    ],
    // With auth: etcd3's authenticate call fails first, and grpc-js keeps no reason.
    // etcd3's authenticate call: grpc-js keeps no reason, and etcd may just be down.
    [
      "auth, no client cert",
      "14 UNAVAILABLE: No connection established. Last error: null",
      tlsOnly,
      /^etcd could not be reached over TLS: it is down or refuses connections, or etcd requires a client certificate \(tls\.cert and tls\.key were not given\), or etcd's certificate is not signed by the CA in tls\.ca$/,
    ],
    [
      "auth, system CAs",
      "14 UNAVAILABLE: No connection established. Last error: null",
      systemCa,
      /^etcd could not be reached over TLS: it is down or refuses connections, or etcd requires a client certificate \(tls\.cert and tls\.key were not given\)$/,
    ],
    [
      "auth, client cert told why",
      "14 UNAVAILABLE: No connection established. Last error: null",
      expired,
      /the client certificate is a likely cause: the one in tls\.cert \(CN=x\) expired/,
    ],
    [
      "auth, client cert, cannot tell",
      "14 UNAVAILABLE: No connection established. Last error: null",
      withCert,
      /or the client certificate was rejected \(expired, or not signed by a CA etcd trusts\), or etcd's certificate is not signed by the CA in tls\.ca$/,
    ],
    // Nothing to explain.
    [
      "plain refused",
      "14 UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED 127.0.0.1:2379",
      plain,
      undefined,
    ],
    ["deadline", "4 DEADLINE_EXCEEDED: Deadline exceeded after 5.001s", tlsOnly, undefined],
    [
      "plain, null reason",
      "14 UNAVAILABLE: No connection established. Last error: null",
      plain,
      undefined,
    ],
  ];
  for (const [name, text, tls, expected] of cases) {
    await t.step(name, () => {
      const hint = explainText(text, tls);
      if (expected === undefined) assert.equal(hint, undefined);
      else assert.match(hint ?? "(no hint)", expected);
    });
  }
});

Deno.test("saysNoReason(): only grpc-js's 'Last error: null' says nothing about the cause", () => {
  assert.equal(
    saysNoReason("14 UNAVAILABLE: No connection established. Last error: null. Resolution note: "),
    true,
  );
  for (
    const text of [
      "14 UNAVAILABLE: No connection established. Last error: write EPIPE",
      "14 UNAVAILABLE: No connection established. Last error: received fatal alert: BadCertificate",
      "4 DEADLINE_EXCEEDED: Deadline exceeded after 5.001s",
    ]
  ) assert.equal(saysNoReason(text), false, text);
});
