/**
 * Harness: a real etcd process on free loopback ports with a temporary data
 * directory (or the cluster named by `ETCD_ENDPOINTS`), started, stopped,
 * killed, frozen and restarted through `node:` APIs only.
 *
 * @module
 */
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import process from "node:process";
import { atExit, type Child, spawnChild } from "./child.ts";
import { sleep } from "./wait.ts";

/** How to get etcd when it is missing; part of every "not found" failure. */
export const INSTALL_HINT =
  "Install etcd (Debian/Ubuntu: `apt-get install -y etcd-server etcd-client`), put it on PATH " +
  "or set ETCD_BIN to the etcd binary, or set ETCD_ENDPOINTS to an existing cluster.";

/** A free TCP port on 127.0.0.1 (bound and released; good enough for tests). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === "object") resolve(address.port);
        else reject(new Error(`no port from ${JSON.stringify(address)}`));
      });
    });
  });
}

/** The first file called `name` in `dirs`, then in the directories of PATH. */
export function findExecutable(name: string, dirs: readonly string[] = []): string | undefined {
  for (const dir of [...dirs, ...(process.env.PATH ?? "").split(delimiter)]) {
    if (!dir) continue;
    const path = join(dir, name);
    try {
      if (statSync(path).isFile()) return path;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** Finds the etcd binary: `ETCD_BIN`, else `etcd` on PATH. Throws with install hints. */
export function findEtcd(): string {
  const explicit = process.env.ETCD_BIN;
  if (explicit) {
    try {
      statSync(explicit);
      return explicit;
    } catch {
      throw new Error(`ETCD_BIN=${explicit} does not exist. ${INSTALL_HINT}`);
    }
  }
  const found = findExecutable("etcd");
  if (found) return found;
  throw new Error(`etcd was not found on PATH. ${INSTALL_HINT}`);
}

/** A running etcd under the harness's control. */
export interface EtcdServer extends AsyncDisposable {
  /** Client URL, e.g. `http://127.0.0.1:23791`. */
  readonly endpoint: string;
  /** Whether the harness started the process (false with ETCD_ENDPOINTS). */
  readonly owned: boolean;
  /** Stops the process (SIGKILL with `kill`), keeping the data directory. */
  stop(options?: { kill?: boolean }): Promise<void>;
  /** Starts the process again on the same ports and data, and waits until healthy. */
  start(): Promise<void>;
  /** Freezes (SIGSTOP) the process: connections stay open, nothing answers. */
  pause(): void;
  /** Thaws a paused process (SIGCONT). */
  resume(): void;
  /** Reads a Prometheus gauge from etcd's /metrics, e.g. `etcd_debugging_mvcc_watcher_total`. */
  metric(name: string): Promise<number>;
  /** Stops the process and removes the data directory. */
  close(): Promise<void>;
}

/** Waits until etcd's /health says true, failing with what it last saw. */
export async function waitHealthy(endpoint: string, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
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
    await sleep(50);
  }
  throw new Error(`etcd at ${endpoint} did not become healthy within ${ms} ms: ${last}`);
}

/** Reads a Prometheus gauge from an etcd member's /metrics. */
export async function readMetric(endpoint: string, name: string): Promise<number> {
  const text = await (await fetch(`${endpoint}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`metric ${name} not found at ${endpoint}/metrics`);
  return Number(line.slice(name.length + 1));
}

/**
 * Waits until a gauge of etcd's /metrics equals `value`, and fails saying
 * what it last read.
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
    await sleep(20);
  }
  throw new Error(`${name} stayed at ${last}, expected ${value}`);
}

/** How a {@linkcode Member} serves clients, beyond plain HTTP on loopback. */
export interface MemberOptions {
  /** Serve clients over TLS with these PEM files and require client certificates signed by `ca`. */
  readonly tls?: { readonly cert: string; readonly key: string; readonly ca: string };
  /** The host of the client URL clients are given (etcd listens on 127.0.0.1). Default `127.0.0.1`. */
  readonly clientHost?: string;
  /** More etcd flags, e.g. `--auth-token-ttl=5`. */
  readonly args?: readonly string[];
}

/** One etcd member process on loopback ports: alone (`startEtcd`) or one of a cluster. */
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
  #child: Child | undefined;

  private constructor(
    bin: string,
    dir: string,
    name: string,
    ports: { client: number; peer: number },
    options: MemberOptions,
  ) {
    this.#bin = bin;
    this.#dir = dir;
    this.name = name;
    const { tls } = options;
    const scheme = tls ? "https" : "http";
    this.#listenUrl = `${scheme}://127.0.0.1:${ports.client}`;
    this.clientUrl = `${scheme}://${options.clientHost ?? "127.0.0.1"}:${ports.client}`;
    this.#args = tls
      ? [
        `--cert-file=${tls.cert}`,
        `--key-file=${tls.key}`,
        `--trusted-ca-file=${tls.ca}`,
        "--client-cert-auth",
        ...(options.args ?? []),
      ]
      : options.args ?? [];
    this.peerUrl = `http://127.0.0.1:${ports.peer}`;
    this.#cluster = `${name}=${this.peerUrl}`;
  }

  /**
   * A member on two free ports, with its data in `dir/<name>`; not started.
   *
   * @param bin the etcd binary ({@linkcode findEtcd})
   */
  static async create(
    bin: string,
    dir: string,
    name: string,
    options: MemberOptions = {},
  ): Promise<Member> {
    const client = await freePort();
    let peer = await freePort();
    while (peer === client) peer = await freePort();
    return new Member(bin, dir, name, { client, peer }, options);
  }

  /** Sets the `--initial-cluster` string (all members' peer URLs; default: this one alone). */
  join(cluster: string): void {
    this.#cluster = cluster;
  }

  /** Whether the process is running (possibly frozen). */
  get running(): boolean {
    return this.#child?.running ?? false;
  }

  /** What etcd last wrote to stderr (its errors), for failure messages. */
  stderrTail(): string {
    return this.#child?.stderrTail() ?? "";
  }

  /** Starts the process (again, on the same ports and data). */
  spawn(): void {
    if (this.running) return;
    this.#child = spawnChild(this.#bin, [
      `--name=${this.name}`,
      `--data-dir=${join(this.#dir, this.name)}`,
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
    ], { stderr: "tail" });
    this.#state = "existing";
  }

  /** Stops the process: SIGKILL with `kill`, else SIGTERM. Keeps the data. */
  async stop(options: { kill?: boolean } = {}): Promise<void> {
    const child = this.#child;
    if (!child) return;
    child.kill("SIGCONT");
    child.kill(options.kill ? "SIGKILL" : "SIGTERM");
    await child.exited;
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
}

class LocalEtcd implements EtcdServer {
  readonly owned = true;
  readonly endpoint: string;
  readonly #member: Member;
  readonly #dir: string;
  readonly #forget: () => void;

  constructor(member: Member, dir: string) {
    this.#member = member;
    this.#dir = dir;
    this.endpoint = member.clientUrl;
    this.#forget = atExit(() => rmSync(dir, { recursive: true, force: true }));
  }

  async start(): Promise<void> {
    if (this.#member.running) return;
    this.#member.spawn();
    try {
      await waitHealthy(this.endpoint);
    } catch (error) {
      const stderr = this.#member.stderrTail();
      await this.stop({ kill: true });
      throw new Error(`${(error as Error).message}${stderr ? `\netcd stderr:\n${stderr}` : ""}`);
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
    rmSync(this.#dir, { recursive: true, force: true });
    this.#forget();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

class ExternalEtcd implements EtcdServer {
  readonly owned = false;
  readonly endpoint: string;
  constructor(endpoint: string) {
    this.endpoint = endpoint;
  }
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
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/**
 * Starts a private etcd, or uses `ETCD_ENDPOINTS` unless `private` is set.
 * Fails, saying how to install etcd, when there is none.
 *
 * @param options `private`: always start one (for tests that stop or freeze it)
 * @returns the running server; `await using` stops it and removes its data
 */
export async function startEtcd(options: { private?: boolean } = {}): Promise<EtcdServer> {
  const external = process.env.ETCD_ENDPOINTS;
  if (external && !options.private) return new ExternalEtcd(external.split(",")[0]!.trim());
  const bin = findEtcd();
  const dir = mkdtempSync(join(tmpdir(), "grpc-etcd-harness-"));
  try {
    const server = new LocalEtcd(await Member.create(bin, dir, "t"), dir);
    await server.start();
    return server;
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}
