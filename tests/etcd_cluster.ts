/**
 * Test helper: an etcd cluster of 1 or 3 members on loopback ports, with data
 * in a temporary directory, whose members the tests kill, freeze and restart.
 *
 * @module
 */
import { findEtcd, freePort } from "./etcd_server.ts";

/** One member process of a {@linkcode EtcdCluster}. */
export class Member {
  readonly name: string;
  readonly clientUrl: string;
  readonly peerUrl: string;
  readonly #bin: string;
  readonly #dir: string;
  #cluster = "";
  #state: "new" | "existing" = "new";
  #child: Deno.ChildProcess | undefined;
  #drain: Promise<unknown> = Promise.resolve();

  constructor(bin: string, dir: string, name: string) {
    this.#bin = bin;
    this.#dir = dir;
    this.name = name;
    this.clientUrl = `http://127.0.0.1:${freePort()}`;
    this.peerUrl = `http://127.0.0.1:${freePort()}`;
  }

  /** Sets the `--initial-cluster` string (all members' peer URLs). */
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
        `--listen-client-urls=${this.clientUrl}`,
        `--advertise-client-urls=${this.clientUrl}`,
        `--listen-peer-urls=${this.peerUrl}`,
        `--initial-advertise-peer-urls=${this.peerUrl}`,
        `--initial-cluster=${this.#cluster}`,
        `--initial-cluster-state=${this.#state}`,
        "--initial-cluster-token=grpc-etcd-test",
        "--logger=zap",
        "--log-outputs=stderr",
        "--log-level=error",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.#state = "existing";
    this.#child = child;
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

/** A cluster of etcd members on loopback. */
export class EtcdCluster implements AsyncDisposable {
  readonly members: readonly Member[];
  readonly #dir: string;

  private constructor(dir: string, members: Member[]) {
    this.#dir = dir;
    this.members = members;
  }

  /**
   * Starts `size` members and waits until they agree on a leader.
   *
   * @param size 1 or 3 (any odd number works)
   */
  static async start(size: number): Promise<EtcdCluster> {
    const bin = findEtcd();
    const dir = await Deno.makeTempDir({ prefix: "grpc-etcd-cluster-" });
    const members = Array.from({ length: size }, (_, i) => new Member(bin, dir, `m${i}`));
    const cluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(",");
    for (const member of members) {
      member.join(cluster);
      member.spawn();
    }
    const result = new EtcdCluster(dir, members);
    try {
      await result.healthy(20_000);
    } catch (error) {
      await result.close();
      throw error;
    }
    return result;
  }

  /** Client URLs of every member. */
  get endpoints(): string[] {
    return this.members.map((m) => m.clientUrl);
  }

  /** Waits until every running member reports the same leader, itself running. */
  async healthy(ms = 15_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const running = this.members.filter((m) => m.running);
      const statuses = await Promise.all(running.map((m) => m.status()));
      const leaders = new Set(statuses.map((s) => s?.leader));
      const members = new Set(statuses.map((s) => s?.member));
      const [leader] = leaders;
      if (statuses.every((s) => s) && leaders.size === 1 && members.has(leader)) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`etcd cluster did not agree on a leader within ${ms} ms`);
  }

  /** The member that is the leader now. */
  async leader(): Promise<Member> {
    for (const member of this.members) {
      const status = await member.status();
      if (status && status.member === status.leader) return member;
    }
    throw new Error("no member reports itself as the leader");
  }

  /** A running member that is not the leader. */
  async follower(): Promise<Member> {
    const leader = await this.leader();
    const follower = this.members.find((m) => m !== leader && m.running);
    if (!follower) throw new Error("no running follower");
    return follower;
  }

  /** Stops every member and removes the data. */
  async close(): Promise<void> {
    await Promise.all(this.members.map((m) => m.stop({ kill: true })));
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
