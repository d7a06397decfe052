/**
 * An etcd client over `fetch`: {@linkcode connectFetch} talks to etcd's JSON
 * gateway (`/v3/…` on the client port, etcd ≥ 3.4) with nothing but
 * web-standard globals (`fetch`, streams, `TextEncoder`/`TextDecoder`,
 * `AbortController`, `atob`/`btoa`, timers). It imports no npm package, no
 * `node:` module and no runtime API, so `register()` and `resolve()` from
 * `@seed/grpc-etcd/core` run on Deno, Node, Bun and edge runtimes such as
 * Cloudflare's workerd, without `node:http2`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { connectFetch, type EtcdClient } from "@seed/grpc-etcd/fetch";
 *
 * // With a fetch of one's own; a real client gives only the hosts (and auth).
 * const client: EtcdClient = connectFetch({
 *   hosts: ["http://10.0.0.5:2379", "http://10.0.0.6:2379"],
 *   fetch: () => Promise.resolve(Response.json({ header: { revision: "42" } })),
 * });
 * assert.equal(await client.delete("svc/echo/10.0.0.9:50051"), 42);
 * await client.close();
 * ```
 *
 * @module
 */
export { connectFetch, type ConnectFetchOptions, type FetchFunction } from "./src/etcd/fetch.ts";
export {
  AuthenticationError,
  ClientClosedError,
  CompactedError,
  type EtcdClient,
  type KeyValue,
  LeaseNotFoundError,
  PermissionDeniedError,
  type RangeResult,
  type WatchBatch,
  type WatchEvent,
  type WatchOptions,
} from "./src/etcd/client.ts";
