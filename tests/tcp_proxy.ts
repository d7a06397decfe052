/**
 * Test helper: a TCP proxy on loopback that can cut one client off from etcd
 * while etcd stays up for everyone else: reset every connection (`cut`),
 * hold all traffic while keeping connections open (`blackhole`: a partition
 * that TCP outlives; what was held is delivered once it heals), or add latency
 * (`delay`).
 *
 * @module
 */

type Mode = { kind: "open" } | { kind: "cut" } | { kind: "blackhole" } | {
  kind: "delay";
  ms: number;
};

interface Pair {
  readonly a: Deno.TcpConn;
  readonly b: Deno.TcpConn;
  done: Promise<unknown>;
}

/** A proxy from a free loopback port to `target`. */
export class TcpProxy implements AsyncDisposable {
  readonly #listener: Deno.TcpListener;
  readonly #target: { hostname: string; port: number };
  readonly #pairs = new Set<Pair>();
  #mode: Mode = { kind: "open" };
  #changed = Promise.withResolvers<void>();
  #accepting: Promise<void>;

  /** @param target `http://host:port` or `host:port` of the real server */
  constructor(target: string) {
    const url = new URL(target.includes("://") ? target : `http://${target}`);
    this.#target = { hostname: url.hostname, port: Number(url.port) };
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.#accepting = this.#accept();
  }

  /** The proxy's URL, to give to the client. */
  get endpoint(): string {
    return `http://127.0.0.1:${(this.#listener.addr as Deno.NetAddr).port}`;
  }

  async #accept(): Promise<void> {
    for await (const conn of this.#listener) {
      if (this.#mode.kind === "cut") {
        conn.close();
        continue;
      }
      let upstream: Deno.TcpConn;
      try {
        upstream = await Deno.connect(this.#target);
      } catch {
        conn.close();
        continue;
      }
      const pair: Pair = { a: conn, b: upstream, done: Promise.resolve() };
      const pipes = [this.#pump(conn, upstream), this.#pump(upstream, conn)];
      // Either direction ending ends both.
      pair.done = Promise.race(pipes).then(() => {
        close(pair);
        return Promise.all(pipes);
      }).finally(() => this.#pairs.delete(pair));
      this.#pairs.add(pair);
    }
  }

  /** Copies `from` to `to`, honouring the mode for every chunk. */
  async #pump(from: Deno.TcpConn, to: Deno.TcpConn): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await from.read(buffer);
        if (n === null) return;
        while (this.#mode.kind === "blackhole") await this.#changed.promise;
        const mode = this.#mode;
        if (mode.kind === "delay") await new Promise((r) => setTimeout(r, mode.ms));
        let written = 0;
        while (written < n) written += await to.write(buffer.subarray(written, n));
      }
    } catch {
      // a closed side ends the pump
    }
  }

  #set(mode: Mode): void {
    this.#mode = mode;
    this.#changed.resolve();
    this.#changed = Promise.withResolvers<void>();
  }

  /** Resets every open connection and refuses new ones until {@linkcode restore}. */
  async cut(): Promise<void> {
    this.#set({ kind: "cut" });
    const pairs = [...this.#pairs];
    for (const pair of pairs) close(pair);
    await Promise.allSettled(pairs.map((p) => p.done));
  }

  /** Keeps connections open but passes nothing on until the mode changes (a half-open network). */
  blackhole(): void {
    this.#set({ kind: "blackhole" });
  }

  /** Delays every chunk by `ms` in both directions. */
  delay(ms: number): void {
    this.#set({ kind: "delay", ms });
  }

  /** Forwards normally again. */
  restore(): void {
    this.#set({ kind: "open" });
  }

  /** Closes the listener and every connection. */
  async close(): Promise<void> {
    await this.cut();
    this.#listener.close();
    await this.#accepting.catch(() => {});
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

function close(pair: Pair): void {
  for (const conn of [pair.a, pair.b]) {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}
