/**
 * Test helpers: an in-memory etcd behind the same {@linkcode EtcdClient}
 * interface as `connect()`, for fast, deterministic unit tests of this module
 * and of code built on it.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { MemoryEtcd } from "@seed/grpc-etcd/testing";
 *
 * await using etcd = new MemoryEtcd();
 * await using client = etcd.client();
 * const lease = await client.grantLease(10);
 * await client.put("svc/a/1.2.3.4:5", "{}", lease);
 * client.disconnect();
 * await assert.rejects(client.get("svc/a/1.2.3.4:5"), /connection lost/);
 * client.reconnect();
 * await client.revokeLease(lease);
 * assert.equal((await client.get("svc/a/1.2.3.4:5")).kvs.length, 0);
 * ```
 *
 * @module
 */
export type { EtcdClient } from "./src/etcd/client.ts";
export {
  type Clock,
  MemoryClient,
  memoryClient,
  MemoryEtcd,
  UnavailableError,
} from "./src/etcd/memory.ts";
