/**
 * The narrow interface through which this module talks to etcd. `connect()`
 * implements it over `npm:etcd3`; `memoryClient()` (the `./testing` export)
 * implements it in memory. Users may implement it over anything else.
 *
 * @module
 */

/** A key and its value as stored in etcd. */
export interface KeyValue {
  /** The key, as UTF-8 text. */
  readonly key: string;
  /** The raw value. */
  readonly value: Uint8Array;
  /** The revision of the last change to this key. */
  readonly modRevision: number;
  /** The lease the key is attached to, `"0"` for none. */
  readonly lease: string;
}

/** The result of a range read: the keys, and the store revision they were read at. */
export interface RangeResult {
  /** The store revision of the read; a watch from `revision + 1` misses nothing. */
  readonly revision: number;
  /** The keys, in key order. */
  readonly kvs: readonly KeyValue[];
}

/** One change seen by a watch. */
export type WatchEvent =
  | { readonly type: "put"; readonly kv: KeyValue }
  | { readonly type: "delete"; readonly key: string; readonly modRevision: number };

/**
 * One watch response: the events of one or more revisions, in revision order. An
 * empty `events` list is a sign of life (watch created, or a progress notice).
 */
export interface WatchBatch {
  /** The store revision in the response header. Not a resume point. */
  readonly revision: number;
  /** The changes, in order. */
  readonly events: readonly WatchEvent[];
}

/** Options of {@linkcode EtcdClient.watch}. */
export interface WatchOptions {
  /** The first revision to report. Must not be compacted. */
  readonly startRevision: number;
  /** Ends the watch: the iterator returns and the watch is released. */
  readonly signal?: AbortSignal;
  /** Watch only the key itself instead of every key that starts with it. */
  readonly exact?: boolean;
  /**
   * Checks every `heartbeat` ms that the server still answers on the watch (etcd:
   * a progress request); when it stays silent for a whole period, the iterator
   * throws, so the caller re-creates the watch, elsewhere if it can. Catches a
   * frozen member, whose TCP connection stays open, within two periods. An
   * implementation that cannot ask on the watch itself checks the member
   * instead, and must still notice a watch whose own connection died silently
   * (`connectFetch()` reopens a stream silent for 6 periods, where it left
   * off). An implementation that cannot hang may ignore it.
   */
  readonly heartbeat?: number;
}

/**
 * A watch or read asked for a revision that etcd has compacted away. Re-read
 * the current state and watch from there.
 */
export class CompactedError extends Error {
  /** The revision etcd has compacted up to (0 when etcd did not say). */
  readonly compactRevision: number;
  /**
   * Creates the error for a compacted revision.
   *
   * @param compactRevision the compacted revision
   * @param options the underlying cause
   */
  constructor(compactRevision: number, options?: ErrorOptions) {
    super(`etcd revision compacted up to ${compactRevision}`, options);
    this.name = "CompactedError";
    this.compactRevision = compactRevision;
  }
}

/** A put or keepalive named a lease that etcd no longer has (expired or revoked). */
export class LeaseNotFoundError extends Error {
  /** The lease ID. */
  readonly lease: string;
  /**
   * Creates the error for a missing lease.
   *
   * @param lease the lease ID
   * @param options the underlying cause
   */
  constructor(lease: string, options?: ErrorOptions) {
    super(`etcd lease ${lease} not found (expired or revoked)`, options);
    this.name = "LeaseNotFoundError";
    this.lease = lease;
  }
}

/**
 * A call on a client that was closed. `resolve()` ends its iterators and
 * `register()` stops when it sees this; nothing retries it.
 */
export class ClientClosedError extends Error {
  /**
   * Creates the error.
   *
   * @param options the underlying cause
   */
  constructor(options?: ErrorOptions) {
    super("the etcd client is closed", options);
    this.name = "ClientClosedError";
  }
}

/**
 * etcd refused an operation to the authenticated user (RBAC: the user's roles do
 * not grant it). Retrying does not help until an administrator grants it.
 */
export class PermissionDeniedError extends Error {
  /**
   * Creates the error.
   *
   * @param operation what was refused, e.g. `write "b/10.0.0.1:50051"`
   * @param user the user name the client authenticated as
   * @param options the underlying cause
   */
  constructor(operation: string, user: string | undefined, options?: ErrorOptions) {
    super(
      `etcd denied ${operation} to ${
        user === undefined ? "this client" : `user ${JSON.stringify(user)}`
      }: permission denied (see RBAC in docs/security.md)`,
      options,
    );
    this.name = "PermissionDeniedError";
  }
}

/**
 * etcd rejected the credentials: a wrong user name or password, or none given
 * while etcd has auth enabled. Retrying with the same credentials does not help.
 */
export class AuthenticationError extends Error {
  /**
   * Creates the error.
   *
   * @param user the user name given in `auth`, or `undefined` when none was
   *   given but etcd has auth enabled
   * @param options the underlying cause, and `factory`: the function that made
   *   the client, named in the message (default `connect()`)
   */
  constructor(
    user: string | undefined,
    options?: ErrorOptions & { readonly factory?: string },
  ) {
    super(
      user === undefined
        ? "etcd has auth enabled and needs a user name and password: give them as options.auth " +
          `to ${options?.factory ?? "connect()"}`
        : `etcd rejected the user name or password (user ${JSON.stringify(user)})`,
      options,
    );
    this.name = "AuthenticationError";
  }
}

/**
 * The door to etcd. Every method may reject when etcd cannot be reached; unary
 * calls are bounded by the implementation's deadline.
 */
export interface EtcdClient extends AsyncDisposable {
  /** The endpoints this client talks to, for error messages. */
  readonly hosts: readonly string[];
  /**
   * Reads every key starting with `prefix` at one revision.
   *
   * @param prefix the key prefix; the empty string is not allowed
   * @returns the keys and the revision of the read
   */
  getPrefix(prefix: string): Promise<RangeResult>;
  /**
   * Reads one key.
   *
   * @param key the key
   * @returns the key (or none) and the revision of the read
   */
  get(key: string): Promise<RangeResult>;
  /**
   * Writes a key, attached to a lease when one is given.
   *
   * @param key the key
   * @param value the value
   * @param lease the lease ID to attach the key to
   * @returns the revision of the write
   * @throws {LeaseNotFoundError} when the lease is gone
   */
  put(key: string, value: string, lease?: string): Promise<number>;
  /**
   * Deletes a key.
   *
   * @param key the key
   * @returns the store revision after the delete
   */
  delete(key: string): Promise<number>;
  /**
   * Grants a lease.
   *
   * @param ttl its time to live in seconds
   * @returns the lease ID
   */
  grantLease(ttl: number): Promise<string>;
  /**
   * Renews a lease once.
   *
   * @param lease the lease ID
   * @param options `timeout`: give up after this many ms (at most the client's own deadline)
   * @returns the remaining TTL in seconds, 0 when the lease is gone
   */
  keepAlive(lease: string, options?: { timeout?: number }): Promise<number>;
  /**
   * Revokes a lease, deleting its keys. Revoking a lease that is gone succeeds.
   *
   * @param lease the lease ID
   */
  revokeLease(lease: string): Promise<void>;
  /**
   * Watches every key starting with `key` (only `key` itself with `exact`),
   * from `startRevision` on. The
   * iterator throws {@linkcode CompactedError} when the start revision is
   * compacted, any other error when the connection breaks, and returns when
   * `signal` aborts or the caller stops iterating.
   *
   * @param key the key prefix, or the key with `exact`
   * @param options where to start, and the signal that ends the watch
   */
  watch(key: string, options: WatchOptions): AsyncIterable<WatchBatch>;
  /**
   * Releases every connection, watch and timer the client owns. Later calls
   * reject with {@linkcode ClientClosedError}.
   */
  close(): Promise<void>;
}
