/**
 * The JSON of etcd's gRPC gateway (`/v3/…` on the client port, etcd ≥ 3.4), as
 * pure functions: keys and values in base64, the end of a prefix range, and
 * what an answer that is not a success means to a client. `connectFetch()`
 * does the I/O; everything here is tested without etcd.
 *
 * @module
 */
import {
  AuthenticationError,
  CompactedError,
  LeaseNotFoundError,
  PermissionDeniedError,
} from "./client.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The bytes as base64 (standard alphabet, padded), as etcd's JSON carries bytes. */
export function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** The bytes of base64 text; the empty string (or none) for no bytes. */
export function fromBase64(text: string | undefined): Uint8Array {
  if (!text) return new Uint8Array(0);
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** UTF-8 text as base64. */
export function textToBase64(text: string): string {
  return toBase64(encoder.encode(text));
}

/** base64 as UTF-8 text. */
export function base64ToText(text: string | undefined): string {
  return decoder.decode(fromBase64(text));
}

/**
 * The `range_end` of every key starting with `prefix`: the prefix with its last
 * byte below 0xff incremented and what follows dropped (`[0]`, meaning "to the
 * end of the keyspace", when every byte is 0xff).
 */
export function prefixEnd(prefix: Uint8Array): Uint8Array {
  const end = new Uint8Array(prefix); // a copy, also for a Buffer (whose slice() is a view)
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return new Uint8Array([0]);
}

/** An error status read from etcd's gateway: the gRPC code and message. */
export interface GatewayStatus {
  /** The gRPC status code (5 NOT_FOUND, 7 PERMISSION_DENIED, 16 UNAUTHENTICATED, …). */
  readonly code: number;
  /** etcd's message, e.g. `etcdserver: requested lease not found`. */
  readonly message: string;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Reads an error status from a parsed body of etcd's gateway, in each shape
 * etcd has sent: a unary error of etcd 3.4/3.5 (grpc-gateway v1:
 * `{"error","code","message"}`), of etcd 3.6 (grpc-gateway v2, a
 * `google.rpc.Status`: `{"code","message","details"}`), and an error chunk in a
 * stream (`{"error":{"grpc_code","http_code","message","http_status"}}` in v1,
 * `{"error":{"code","message","details"}}` in v2).
 *
 * @returns the status, or `undefined` when the value is none of these
 */
export function readStatus(body: unknown): GatewayStatus | undefined {
  if (!isRecord(body)) return undefined;
  const inner = body.error;
  if (isRecord(inner)) {
    const code = typeof inner.grpc_code === "number" ? inner.grpc_code : inner.code;
    if (typeof code === "number" && typeof inner.message === "string") {
      return { code, message: inner.message };
    }
    return undefined;
  }
  if (typeof body.code !== "number") return undefined;
  const message = typeof body.message === "string"
    ? body.message
    : typeof inner === "string"
    ? inner
    : undefined;
  return message === undefined ? undefined : { code: body.code, message };
}

/** What a status from etcd means to a client (see {@linkcode classify}). */
export type StatusKind =
  | "lease-not-found"
  | "token-rejected"
  | "no-credentials"
  | "bad-credentials"
  | "auth-disabled"
  | "permission-denied"
  | "compacted"
  | "unavailable"
  | "other";

/**
 * Sorts an error from etcd by what the client does about it. The gRPC code
 * alone is not enough (etcd answers INVALID_ARGUMENT both for a missing user
 * name and for a stale token), so the message decides where etcd's own words
 * are known; `code` may be omitted for a watch's `cancel_reason`, which is text.
 *
 * @param code the gRPC status code, when known
 * @param message etcd's message
 * @returns what the status means
 */
export function classify(code: number | undefined, message: string): StatusKind {
  if (/requested lease not found/i.test(message)) return "lease-not-found";
  if (/invalid auth token|revision of auth store is old/i.test(message)) return "token-rejected";
  if (/user name is empty/i.test(message)) return "no-credentials";
  if (/authentication failed|invalid user ID or password/i.test(message)) {
    return "bad-credentials";
  }
  if (/authentication is not enabled/i.test(message)) return "auth-disabled";
  if (code === 7 || /permission denied/i.test(message)) return "permission-denied";
  if (/required revision has been compacted/i.test(message)) return "compacted";
  if (
    code === 14 || code === 4 ||
    /no leader|leader changed|request timed out|too many requests|server stopped/i.test(message)
  ) {
    return "unavailable";
  }
  return "other";
}

/** What a request was, for the error that explains its failure. */
export interface RequestContext {
  /** The host as the user gave it, e.g. `http://10.0.0.5:2379`. */
  readonly host: string;
  /** The gateway path, e.g. `/v3/kv/put`. */
  readonly path: string;
  /** What the call did, in words: `writing "svc/a/1"`, `reading the prefix "svc/a/"`. */
  readonly operation: string;
  /** The user name the client authenticates as, if any. */
  readonly user?: string;
  /** The lease the call named, if any. */
  readonly lease?: string;
  /** The name of the function that made the client, for "give options.auth to …". */
  readonly factory?: string;
}

/**
 * What the client does after an answer that is not a success:
 * - `retry: "token"`: authenticate again, then repeat the call on the same host;
 * - `retry: "host"`: this host could not serve it (down, not etcd, no leader):
 *   try the next one; `error` says what happened here;
 * - `retry: false`: fail the call with `error`.
 */
export type Verdict =
  | { readonly retry: "token"; readonly error: Error }
  | { readonly retry: "host"; readonly error: Error }
  | { readonly retry: false; readonly error: Error };

/** The first `max` characters of a body, on one line, quoted. */
function excerpt(body: string, max = 120): string {
  const line = body.replace(/\s+/g, " ").trim();
  return JSON.stringify(line.length > max ? `${line.slice(0, max)}…` : line);
}

/**
 * Decides what an error status from etcd means for a call (pure: the mapping of
 * etcd's errors onto this module's error classes).
 *
 * @param status the status etcd sent
 * @param context what the call was
 * @returns what to do, and the error that explains it
 */
export function judgeStatus(status: GatewayStatus, context: RequestContext): Verdict {
  const { host, operation, user, lease, factory = "connectFetch()" } = context;
  const said = `etcd at ${host} refused ${operation}: ${status.message} (gRPC code ${status.code})`;
  const cause = new Error(said);
  switch (classify(status.code, status.message)) {
    case "lease-not-found":
      return lease !== undefined
        ? { retry: false, error: new LeaseNotFoundError(lease, { cause }) }
        : { retry: false, error: cause };
    case "token-rejected":
      return { retry: "token", error: cause };
    case "no-credentials":
      // With credentials, etcd lost track of the token (auth turned on after it was taken).
      return user === undefined
        ? { retry: false, error: new AuthenticationError(undefined, { cause, factory }) }
        : { retry: "token", error: cause };
    case "bad-credentials":
      return { retry: false, error: new AuthenticationError(user ?? "", { cause }) };
    case "permission-denied":
      return { retry: false, error: new PermissionDeniedError(operation, user, { cause }) };
    case "compacted":
      return { retry: false, error: new CompactedError(0, { cause }) };
    case "unavailable":
      return { retry: "host", error: cause };
    default:
      return { retry: false, error: cause };
  }
}

/**
 * Decides what an HTTP answer that is not a 2xx success means: etcd's own
 * errors (JSON in any of the shapes {@linkcode readStatus} reads, including
 * etcd's 404s, such as a lease not found) go to {@linkcode judgeStatus};
 * anything else comes from something that is not etcd's gateway (a web server,
 * a proxy, a TLS port spoken to in plain HTTP, etcd < 3.4): this host fails,
 * with an error that says what answered.
 *
 * @param httpStatus the HTTP status code
 * @param contentType the `Content-Type` header, if any
 * @param body the body as text
 * @param context what the call was
 * @returns what to do, and the error that explains it
 */
export function judgeAnswer(
  httpStatus: number,
  contentType: string | null,
  body: string,
  context: RequestContext,
): Verdict {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  const status = readStatus(parsed);
  if (status) return judgeStatus(status, context);
  return { retry: "host", error: notEtcd(httpStatus, contentType, body, context) };
}

/**
 * The error for an answer that did not come from etcd's gateway, with a hint
 * when the answer says why.
 *
 * @param httpStatus the HTTP status code
 * @param contentType the `Content-Type` header, if any
 * @param body the body as text
 * @param context what the call was
 * @returns the error, naming the host and what answered
 */
export function notEtcd(
  httpStatus: number,
  contentType: string | null,
  body: string,
  context: RequestContext,
): Error {
  const type = contentType ? ` ${contentType.split(";")[0]}` : "";
  const hint = /HTTP request to an HTTPS server/i.test(body)
    ? "it serves TLS: give https:// hosts"
    : /CommonName of client/i.test(body)
    ? "etcd with auth on refuses gateway requests whose client certificate has a CommonName: " +
      "present one without a CN, naming the client in its SANs"
    : httpStatus >= 300 && httpStatus < 400
    ? "it redirects elsewhere; give etcd's own client URL"
    : "is it etcd ≥ 3.4, on its client port? etcd < 3.4 serves no /v3/ gateway";
  return new Error(
    `${context.host} did not answer as etcd does while ${context.operation}: POST ${context.path} ` +
      `got HTTP ${httpStatus}${type} ${excerpt(body)} (${hint})`,
  );
}

/**
 * What a watch's cancellation means: etcd cancels a watch it cannot serve and
 * says why in `cancel_reason` (gRPC's text, e.g. `rpc error: code =
 * PermissionDenied desc = etcdserver: permission denied`), or in
 * `compact_revision` when the start revision is compacted.
 *
 * @param compactRevision the `compact_revision` of the message (0 when absent)
 * @param reason the `cancel_reason` of the message
 * @param context what the watch was
 * @returns what to do, and the error that explains it
 */
export function judgeCancel(
  compactRevision: number,
  reason: string,
  context: RequestContext,
): Verdict {
  if (compactRevision > 0) return { retry: false, error: new CompactedError(compactRevision) };
  const code = /code = (\w+)/.exec(reason)?.[1];
  const verdict = judgeStatus({
    code: code === "PermissionDenied" ? 7 : code === "Unauthenticated" ? 16 : -1,
    message: reason,
  }, context);
  if (verdict.retry === false && classify(undefined, reason) === "other") {
    return {
      retry: false,
      error: new Error(
        `etcd at ${context.host} cancelled ${context.operation}: ${reason || "no reason given"}`,
      ),
    };
  }
  return verdict;
}
