/**
 * Harness: etcd's own HTTP gateway (`/v3/...`, JSON with base64 keys), to
 * read and change etcd from outside the module under test: what a test checks
 * never goes through the code it checks.
 *
 * @module
 */
import { Buffer } from "node:buffer";

/** A key as etcd stores it. */
export interface StoredKey {
  readonly key: string;
  readonly value: string;
  /** The lease id (decimal string), `"0"` for none. */
  readonly lease: string;
  readonly modRevision: number;
}

const b64 = (text: string) => Buffer.from(text).toString("base64");
const unb64 = (text: string | undefined) => Buffer.from(text ?? "", "base64").toString();

/** The key after every key that starts with `prefix` (etcd's `range_end`). */
function prefixEnd(prefix: string): string {
  const bytes = Buffer.from(prefix);
  bytes[bytes.length - 1]!++;
  return bytes.toString("base64");
}

/** Calls of etcd's HTTP gateway at one endpoint. */
export class EtcdHttp {
  readonly endpoint: string;

  /** @param endpoint etcd's client URL, e.g. `http://127.0.0.1:2379` */
  constructor(endpoint: string) {
    this.endpoint = endpoint;
  }

  /** POSTs `body` to `/v3/<path>` and returns the JSON answer; fails with etcd's error. */
  async call(path: string, body: unknown): Promise<Record<string, unknown>> {
    const res = await fetch(`${this.endpoint}/v3/${path}`, {
      method: "POST",
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`etcd ${path}: HTTP ${res.status}: ${text}`);
    return JSON.parse(text);
  }

  /** The keys under `prefix` (or the one key, with `exact`), and the revision read at. */
  async range(
    key: string,
    options: { exact?: boolean } = {},
  ): Promise<{ kvs: StoredKey[]; revision: number }> {
    const body = options.exact ? { key: b64(key) } : { key: b64(key), range_end: prefixEnd(key) };
    const answer = await this.call("kv/range", body) as {
      header: { revision: string };
      kvs?: { key: string; value?: string; lease?: string; mod_revision: string }[];
    };
    return {
      revision: Number(answer.header.revision),
      kvs: (answer.kvs ?? []).map((kv) => ({
        key: unb64(kv.key),
        value: unb64(kv.value),
        lease: kv.lease ?? "0",
        modRevision: Number(kv.mod_revision),
      })),
    };
  }

  /** The value of `key`, or undefined. */
  async get(key: string): Promise<StoredKey | undefined> {
    return (await this.range(key, { exact: true })).kvs[0];
  }

  /** Puts `key` = `value` (under `lease`) and returns the new revision. */
  async put(key: string, value: string, lease?: string): Promise<number> {
    const answer = await this.call("kv/put", {
      key: b64(key),
      value: b64(value),
      ...(lease ? { lease } : {}),
    }) as { header: { revision: string } };
    return Number(answer.header.revision);
  }

  /** Deletes `key` and returns how many keys went. */
  async delete(key: string): Promise<number> {
    const answer = await this.call("kv/deleterange", { key: b64(key) }) as { deleted?: string };
    return Number(answer.deleted ?? 0);
  }

  /** Revokes a lease (its keys go with it). */
  async revoke(lease: string): Promise<void> {
    await this.call("lease/revoke", { ID: lease });
  }

  /** Seconds left on a lease, -1 when it is gone. */
  async leaseTtl(lease: string): Promise<number> {
    const answer = await this.call("lease/timetolive", { ID: lease }) as { TTL: string };
    return Number(answer.TTL);
  }

  /** Compacts the history up to `revision` (physically, as the tests need). */
  async compact(revision: number): Promise<void> {
    await this.call("kv/compaction", { revision: String(revision), physical: true });
  }
}
