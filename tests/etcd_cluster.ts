/**
 * Test helper: an etcd cluster of 1 or 3 members on loopback ports, with data
 * in a temporary directory, whose members the tests kill, freeze and restart.
 *
 * @module
 */
import { findEtcd, Member } from "./etcd_server.ts";

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
