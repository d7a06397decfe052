/**
 * Harness: an etcd cluster of 1 or 3 members on loopback ports, with data in
 * a temporary directory, whose members the tests kill, freeze and restart.
 * Built on `node:` APIs, so it runs on Deno, Node and Bun.
 *
 * @module
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { atExit } from "./child.ts";
import { findEtcd, Member } from "./etcd_server.ts";
import { sleep } from "./wait.ts";

/** A cluster of etcd members on loopback. */
export class EtcdCluster implements AsyncDisposable {
  /** Every member, running or not. */
  readonly members: readonly Member[];
  readonly #dir: string;
  readonly #forget: () => void;

  private constructor(dir: string, members: Member[]) {
    this.#dir = dir;
    this.members = members;
    this.#forget = atExit(() => rmSync(dir, { recursive: true, force: true }));
  }

  /**
   * Starts `size` members and waits until they agree on a leader.
   *
   * @param size 1 or 3 (any odd number works)
   * @throws {Error} when etcd is not installed (saying how to install it), or
   *   the members do not agree on a leader within 20 s (with what etcd said)
   */
  static async start(size: number): Promise<EtcdCluster> {
    const bin = findEtcd();
    const dir = mkdtempSync(join(tmpdir(), "grpc-etcd-cluster-"));
    const members: Member[] = [];
    try {
      for (let i = 0; i < size; i++) members.push(await Member.create(bin, dir, `m${i}`));
    } catch (error) {
      rmSync(dir, { recursive: true, force: true });
      throw error;
    }
    const cluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(",");
    const result = new EtcdCluster(dir, members);
    for (const member of members) {
      member.join(cluster);
      member.spawn();
    }
    try {
      await result.healthy(20_000);
    } catch (error) {
      const stderr = members.map((m) => m.stderrTail() && `${m.name}: ${m.stderrTail()}`)
        .filter((s) => s).join("\n");
      await result.close();
      throw new Error(`${(error as Error).message}${stderr ? `\netcd stderr:\n${stderr}` : ""}`);
    }
    return result;
  }

  /** Client URLs of every member. */
  get endpoints(): string[] {
    return this.members.map((m) => m.clientUrl);
  }

  /**
   * Waits until every running member reports the same leader, itself running.
   *
   * @throws {Error} after `ms`
   */
  async healthy(ms = 15_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const running = this.members.filter((m) => m.running);
      const statuses = await Promise.all(running.map((m) => m.status()));
      const leaders = new Set(statuses.map((s) => s?.leader));
      const members = new Set(statuses.map((s) => s?.member));
      const [leader] = leaders;
      if (statuses.every((s) => s) && leaders.size === 1 && members.has(leader)) return;
      await sleep(50);
    }
    throw new Error(`etcd cluster did not agree on a leader within ${ms} ms`);
  }

  /**
   * The member that is the leader now.
   *
   * @throws {Error} when none says it is
   */
  async leader(): Promise<Member> {
    for (const member of this.members) {
      const status = await member.status();
      if (status && status.member === status.leader) return member;
    }
    throw new Error("no member reports itself as the leader");
  }

  /**
   * A running member that is not the leader.
   *
   * @throws {Error} when there is none
   */
  async follower(): Promise<Member> {
    const leader = await this.leader();
    const follower = this.members.find((m) => m !== leader && m.running);
    if (!follower) throw new Error("no running follower");
    return follower;
  }

  /** Stops every member and removes the data. */
  async close(): Promise<void> {
    await Promise.all(this.members.map((m) => m.stop({ kill: true })));
    rmSync(this.#dir, { recursive: true, force: true });
    this.#forget();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
