/**
 * TLS credentials for the connections to etcd: those of grpc-js's `createSsl`,
 * except that an etcd host given by IP address works under Deno.
 *
 * grpc-js always sends the target's host as the TLS server name (SNI). Node
 * accepts an IP address there with a deprecation warning (DEP0123: RFC 6066
 * allows only DNS names), but Deno's `node:tls` refuses it ("The property
 * 'options.servername' must not be an IP address"), so `https://10.0.0.5:2379`
 * could never connect, though etcd's certificates commonly name their members
 * by IP. These credentials send a server name only when it is a DNS name, and
 * check the certificate against the host either way (`checkServerIdentity`
 * matches IP addresses against the certificate's IP SANs, DNS names against its
 * DNS SANs). grpc-js's variables `GRPC_SSL_CIPHER_SUITES` and
 * `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH` do not apply: the ciphers are the
 * runtime's defaults, and without `tls.ca` the roots are the system's.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { isIP } from "node:net";
import {
  checkServerIdentity,
  connect as connectTls,
  createSecureContext,
  type SecureContext,
} from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { CLOSED_UNANSWERED } from "./explain.ts";

type CreateConnector = grpc.ChannelCredentials["_createSecureConnector"];
type SecureConnector = ReturnType<CreateConnector>;
type ChannelTarget = Parameters<CreateConnector>[0];

/**
 * The host of a channel target's `host:port` (`[v6]:port`, bare `v6`, or a
 * name), which is what the server's certificate must name.
 */
export function targetHost(hostPort: string): string {
  const at = hostPort.lastIndexOf("/");
  const address = hostPort.slice(at + 1);
  if (address.startsWith("[")) {
    const end = address.indexOf("]");
    return end > 0 ? address.slice(1, end) : address;
  }
  const colon = address.indexOf(":");
  // One colon separates the port; more than one is a bare IPv6 address.
  return colon >= 0 && colon === address.lastIndexOf(":") ? address.slice(0, colon) : address;
}

/**
 * The path of a URI as grpc-js writes one (`scheme:[//authority/]path`), such
 * as the `grpc.http_connect_target` it sets when it goes through a proxy.
 */
export function uriPath(uri: string): string {
  const match = /^[A-Za-z][A-Za-z0-9+.-]*:(?:\/\/[^/]*\/)?(.*)$/.exec(uri);
  return match ? match[1]! : uri;
}

/** The name a channel checks the server's certificate against. */
function serverName(target: ChannelTarget, options: grpc.ChannelOptions): string {
  const override = options["grpc.ssl_target_name_override"];
  if (typeof override === "string" && override !== "") return override;
  // Through an HTTP CONNECT proxy the channel's target is the proxy; the server is this one.
  const proxied = options["grpc.http_connect_target"];
  return targetHost(typeof proxied === "string" ? uriPath(proxied) : target.path);
}

/** What a client sends first on an HTTP/2 connection: the preface, then empty SETTINGS. */
const HTTP2_PREFACE = Buffer.concat([
  Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
  Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]),
]);

/** Channel credentials for TLS to etcd (see the module documentation). */
export class EtcdTlsCredentials extends grpc.ChannelCredentials {
  readonly #context: SecureContext;

  /**
   * @param ca the CA that signed etcd's certificate (default: the system's roots)
   * @param key the client key, with `cert`
   * @param cert the client certificate, with `key`
   */
  constructor(ca?: Buffer, key?: Buffer, cert?: Buffer) {
    super();
    this.#context = createSecureContext({ ca, key, cert });
  }

  /**
   * Opens one TLS connection to etcd at `origin` with these credentials, sends
   * the HTTP/2 connection preface and waits for etcd's first answer. For a
   * failure that grpc-js reports without a reason ("Last error: null", as the
   * call that authenticates does): this says why the handshake fails.
   *
   * @param origin etcd's `https://host:port`
   * @param ms how long to wait for an answer
   * @returns why the handshake failed or etcd closed the connection, in the
   *   runtime's own words; `undefined` when etcd answered or nothing happened
   *   within `ms`
   */
  handshake(origin: string, ms: number): Promise<string | undefined> {
    const url = new URL(origin);
    const name = url.hostname.replace(/^\[(.*)\]$/, "$1");
    const context = this.#context;
    return new Promise((resolve) => {
      let outcome: string | undefined;
      let decided = false;
      const decide = (why: string | undefined) => {
        if (decided) return;
        decided = true;
        outcome = why;
        clearTimeout(timer);
        socket.destroy();
      };
      const socket = connectTls({
        host: name,
        port: Number(url.port || 443),
        secureContext: context,
        ALPNProtocols: ["h2"],
        servername: isIP(name) ? undefined : name,
        checkServerIdentity: (_host, cert) => checkServerIdentity(name, cert),
      }, () => socket.write(HTTP2_PREFACE));
      const timer = setTimeout(() => decide(undefined), ms);
      socket.once("data", () => decide(undefined));
      socket.once("error", (error: Error) => decide(error.message.trim()));
      socket.once("end", () => decide(CLOSED_UNANSWERED));
      // Resolve once the socket is released, whatever happened.
      socket.once("close", () => {
        decide(CLOSED_UNANSWERED);
        resolve(outcome);
      });
    });
  }

  /** Always secure. */
  _isSecure(): boolean {
    return true;
  }

  /** Equal only to itself. */
  _equals(other: grpc.ChannelCredentials): boolean {
    return other === this;
  }

  /** A connector that runs the TLS handshake on a subchannel's socket. */
  _createSecureConnector(
    target: ChannelTarget,
    options: grpc.ChannelOptions,
    callCredentials?: grpc.CallCredentials,
  ): SecureConnector {
    const name = serverName(target, options);
    const context = this.#context;
    const calls = callCredentials ?? grpc.credentials.createEmpty();
    return {
      connect: (socket) =>
        new Promise((resolve, reject) => {
          const secure = connectTls({
            socket,
            secureContext: context,
            ALPNProtocols: ["h2"],
            host: name,
            servername: isIP(name) ? undefined : name,
            checkServerIdentity: (_host, cert) => checkServerIdentity(name, cert),
          }, () => {
            if (secure.authorized) resolve({ socket: secure, secure: true });
            else reject(secure.authorizationError);
          });
          secure.on("error", reject);
        }),
      waitForReady: () => Promise.resolve(),
      getCallCredentials: () => calls,
      destroy: () => {},
    };
  }
}
