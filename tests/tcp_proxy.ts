/**
 * Test helper: a TCP proxy on loopback that can cut one client off from etcd
 * (reset every connection and refuse new ones) while etcd stays up.
 *
 * @module
 */

/** A proxy from a free loopback port to `target`. */
export class TcpProxy implements AsyncDisposable {
  readonly #listener: Deno.TcpListener;
  readonly #target: { hostname: string; port: number };
  readonly #pairs = new Set<{ a: Deno.TcpConn; b: Deno.TcpConn; done: Promise<unknown> }>();
  #cut = false;
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
      if (this.#cut) {
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
      const pair = { a: conn, b: upstream, done: Promise.resolve() as Promise<unknown> };
      const close = () => {
        for (const c of [pair.a, pair.b]) {
          try {
            c.close();
          } catch {
            // already closed
          }
        }
      };
      const pipes = [
        conn.readable.pipeTo(upstream.writable, { preventClose: true }),
        upstream.readable.pipeTo(conn.writable, { preventClose: true }),
      ].map((p) => p.catch(() => {}));
      // Either direction ending ends both.
      pair.done = Promise.race(pipes).then(() => {
        close();
        return Promise.all(pipes);
      }).finally(() => this.#pairs.delete(pair));
      this.#pairs.add(pair);
    }
  }

  /** Resets every open connection and refuses new ones until {@linkcode restore}. */
  async cut(): Promise<void> {
    this.#cut = true;
    const pairs = [...this.#pairs];
    for (const pair of pairs) {
      for (const c of [pair.a, pair.b]) {
        try {
          c.close();
        } catch {
          // already closed
        }
      }
    }
    await Promise.allSettled(pairs.map((p) => p.done));
  }

  /** Accepts connections again. */
  restore(): void {
    this.#cut = false;
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
