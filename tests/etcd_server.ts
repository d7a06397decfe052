/**
 * Test helper: a real etcd process on free loopback ports with a temporary
 * data directory, or the cluster named by `ETCD_ENDPOINTS`.
 *
 * @module
 */

/** How to get etcd when it is missing; part of every "not found" failure. */
export const INSTALL_HINT =
  "Install etcd (Debian/Ubuntu: `apt-get install -y etcd-server etcd-client`), put it on PATH " +
  "or set ETCD_BIN to the etcd binary, or set ETCD_ENDPOINTS to an existing cluster.";

/** A free TCP port on 127.0.0.1 (bound and released; good enough for tests). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Finds the etcd binary: `ETCD_BIN`, else `etcd` on PATH. Throws with install hints. */
export function findEtcd(): string {
  const explicit = Deno.env.get("ETCD_BIN");
  if (explicit) {
    try {
      Deno.statSync(explicit);
      return explicit;
    } catch {
      throw new Error(`ETCD_BIN=${explicit} does not exist. ${INSTALL_HINT}`);
    }
  }
  const found = findExecutable("etcd");
  if (found) return found;
  throw new Error(`etcd was not found on PATH. ${INSTALL_HINT}`);
}

/** The first file called `name` in `dirs`, then in the directories of PATH. */
export function findExecutable(name: string, dirs: readonly string[] = []): string | undefined {
  for (const dir of [...dirs, ...(Deno.env.get("PATH") ?? "").split(":")]) {
    if (!dir) continue;
    try {
      const path = `${dir}/${name}`;
      if (Deno.statSync(path).isFile) return path;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** A running etcd member under the test's control. */
export interface EtcdServer extends AsyncDisposable {
  /** Client URL, e.g. `http://127.0.0.1:23791`. */
  readonly endpoint: string;
  /** Whether this helper started the process (false with ETCD_ENDPOINTS). */
  readonly owned: boolean;
  /** Stops the process (SIGKILL with `kill`), keeping the data directory. */
  stop(options?: { kill?: boolean }): Promise<void>;
  /** Starts the process again on the same ports and data, and waits until healthy. */
  start(): Promise<void>;
  /** Freezes (SIGSTOP) or thaws (SIGCONT) the process. */
  pause(): void;
  /** Thaws a paused process. */
  resume(): void;
  /** Reads a Prometheus gauge from etcd's /metrics, e.g. `etcd_debugging_mvcc_watcher_total`. */
  metric(name: string): Promise<number>;
  /** Stops the process and removes the data directory. */
  close(): Promise<void>;
  /** Kills the process and removes the data directory at once (for `unload` handlers). */
  closeSync(): void;
}

async function healthy(endpoint: string, deadline: number): Promise<void> {
  let last = "";
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      const body = await res.text();
      if (res.ok && body.includes('"true"')) return;
      last = body;
    } catch (error) {
      last = String(error);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`etcd at ${endpoint} did not become healthy: ${last}`);
}

class ExternalEtcd implements EtcdServer {
  readonly owned = false;
  constructor(readonly endpoint: string) {}
  stop(): Promise<void> {
    return Promise.reject(new Error("cannot stop an etcd given by ETCD_ENDPOINTS"));
  }
  start(): Promise<void> {
    return Promise.resolve();
  }
  pause(): void {
    throw new Error("cannot pause an etcd given by ETCD_ENDPOINTS");
  }
  resume(): void {}
  metric(name: string): Promise<number> {
    return readMetric(this.endpoint, name);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  closeSync(): void {}
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Waits until a gauge of etcd's /metrics equals `value` (watches are created
 * asynchronously: a registration's key watch starts just after `register()`
 * returns), and fails saying what it last read.
 */
export async function waitForMetric(
  server: EtcdServer,
  name: string,
  value: number,
  ms = 3000,
): Promise<number> {
  const deadline = Date.now() + ms;
  let last = NaN;
  while (Date.now() < deadline) {
    last = await server.metric(name);
    if (last === value) return last;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${name} stayed at ${last}, expected ${value}`);
}

/** Reads a Prometheus gauge from an etcd member's /metrics. */
export async function readMetric(endpoint: string, name: string): Promise<number> {
  const text = await (await fetch(`${endpoint}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`metric ${name} not found at ${endpoint}/metrics`);
  return Number(line.slice(name.length + 1));
}

/** How a {@linkcode Member} serves clients, beyond plain HTTP on loopback. */
export interface MemberOptions {
  /** Serve clients over TLS with these PEM files and require client certificates signed by `ca`. */
  readonly tls?: { readonly cert: string; readonly key: string; readonly ca: string };
  /**
   * The host of the client URL clients are given (etcd listens on 127.0.0.1
   * either way). Default `127.0.0.1`.
   */
  readonly clientHost?: string;
  /** More etcd flags, e.g. `--auth-token-ttl=5`. */
  readonly args?: readonly string[];
}

/** One etcd member process on loopback ports: alone (`startEtcd`) or in an `EtcdCluster`. */
export class Member {
  readonly name: string;
  readonly clientUrl: string;
  readonly peerUrl: string;
  readonly #bin: string;
  readonly #dir: string;
  readonly #listenUrl: string;
  readonly #args: readonly string[];
  #cluster: string;
  #state: "new" | "existing" = "new";
  #child: Deno.ChildProcess | undefined;
  #drain: Promise<unknown> = Promise.resolve();

  constructor(bin: string, dir: string, name: string, options: MemberOptions = {}) {
    this.#bin = bin;
    this.#dir = dir;
    this.name = name;
    const port = freePort();
    const { tls } = options;
    const scheme = tls ? "https" : "http";
    this.#listenUrl = `${scheme}://127.0.0.1:${port}`;
    this.clientUrl = `${scheme}://${options.clientHost ?? "127.0.0.1"}:${port}`;
    this.#args = tls
      ? [
        `--cert-file=${tls.cert}`,
        `--key-file=${tls.key}`,
        `--trusted-ca-file=${tls.ca}`,
        "--client-cert-auth",
        ...(options.args ?? []),
      ]
      : options.args ?? [];
    this.peerUrl = `http://127.0.0.1:${freePort()}`;
    this.#cluster = `${name}=${this.peerUrl}`;
  }

  /** Sets the `--initial-cluster` string (all members' peer URLs; default: this one alone). */
  join(cluster: string): void {
    this.#cluster = cluster;
  }

  /** Whether the process is running (possibly frozen). */
  get running(): boolean {
    return this.#child !== undefined;
  }

  /** Starts the process (again, on the same ports and data). */
  spawn(): void {
    if (this.#child) return;
    const child = new Deno.Command(this.#bin, {
      args: [
        `--name=${this.name}`,
        `--data-dir=${this.#dir}/${this.name}`,
        `--listen-client-urls=${this.#listenUrl}`,
        `--advertise-client-urls=${this.clientUrl}`,
        `--listen-peer-urls=${this.peerUrl}`,
        `--initial-advertise-peer-urls=${this.peerUrl}`,
        `--initial-cluster=${this.#cluster}`,
        `--initial-cluster-state=${this.#state}`,
        "--initial-cluster-token=grpc-etcd-test",
        "--logger=zap",
        "--log-outputs=stderr",
        "--log-level=error",
        ...this.#args,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#state = "existing";
    this.#child = child;
    // Drain stderr so that the pipe never fills.
    this.#drain = child.stderr.pipeTo(new WritableStream()).catch(() => {});
  }

  /** Stops the process: SIGKILL with `kill`, else SIGTERM. Keeps the data. */
  async stop(options: { kill?: boolean } = {}): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    try {
      child.kill("SIGCONT");
      child.kill(options.kill ? "SIGKILL" : "SIGTERM");
    } catch {
      // already gone
    }
    await child.status;
    await this.#drain;
  }

  /** Freezes the process (SIGSTOP): its connections stay open but nothing answers. */
  pause(): void {
    this.#child?.kill("SIGSTOP");
  }

  /** Thaws a frozen process (SIGCONT). */
  resume(): void {
    this.#child?.kill("SIGCONT");
  }

  /** This member's view of the cluster: its ID and the leader's, or undefined when unreachable. */
  async status(): Promise<{ member: string; leader: string } | undefined> {
    try {
      const res = await fetch(`${this.clientUrl}/v3/maintenance/status`, {
        method: "POST",
        body: "{}",
        signal: AbortSignal.timeout(500),
      });
      const body = await res.json();
      if (!res.ok || !body.leader || body.leader === "0") return undefined;
      return { member: String(body.header.member_id), leader: String(body.leader) };
    } catch {
      return undefined;
    }
  }

  /** Kills the process and forgets it, for `unload` handlers. */
  killSync(): void {
    try {
      this.#child?.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}

class LocalEtcd implements EtcdServer {
  readonly owned = true;
  readonly endpoint: string;
  readonly #member: Member;
  readonly #dir: string;

  constructor(bin: string, dir: string) {
    this.#dir = dir;
    this.#member = new Member(bin, dir, "t");
    this.endpoint = this.#member.clientUrl;
  }

  async start(): Promise<void> {
    if (this.#member.running) return;
    this.#member.spawn();
    try {
      await healthy(this.endpoint, Date.now() + 15_000);
    } catch (error) {
      await this.stop({ kill: true });
      throw error;
    }
  }

  stop(options: { kill?: boolean } = {}): Promise<void> {
    return this.#member.stop(options);
  }

  pause(): void {
    this.#member.pause();
  }

  resume(): void {
    this.#member.resume();
  }

  metric(name: string): Promise<number> {
    return readMetric(this.endpoint, name);
  }

  async close(): Promise<void> {
    await this.stop({ kill: true });
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }

  closeSync(): void {
    this.#member.killSync();
    try {
      Deno.removeSync(this.#dir, { recursive: true });
    } catch {
      // already removed
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Starts a private etcd (or uses `ETCD_ENDPOINTS`). Fails, saying how to
 * install etcd, when there is none.
 *
 * @returns the running server; `await using` stops it and removes its data
 */
export async function startEtcd(): Promise<EtcdServer> {
  const external = Deno.env.get("ETCD_ENDPOINTS");
  if (external) return new ExternalEtcd(external.split(",")[0]!.trim());
  const bin = findEtcd();
  const dir = await Deno.makeTempDir({ prefix: "grpc-etcd-test-" });
  const server = new LocalEtcd(bin, dir);
  await server.start();
  return server;
}
