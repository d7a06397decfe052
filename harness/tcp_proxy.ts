/**
 * Harness: a TCP proxy on loopback that can cut one client off from etcd
 * while etcd stays up for everyone else: close every connection (`cut`), hold
 * all traffic while keeping connections open (`blackhole`: a partition that TCP
 * outlives; what was held is delivered once it heals), add latency (`delay`),
 * or silently drop the connections that carried a given request (`drop`:
 * what a NAT, proxy or load balancer does to a connection it forgot). Built
 * on `node:net`, so it runs on Deno, Node and Bun.
 *
 * @module
 */
import type { Buffer } from "node:buffer";
import { connect, createServer, type Server, type Socket } from "node:net";

/** One proxied connection: the request lines its client sent, and whether it is dropped. */
interface Pair {
  readonly requests: Set<string>;
  dropped: boolean;
}

const REQUEST_LINE = /(?:^|\r\n)([A-Z]+ \S+) HTTP\/1\.[01]\r\n/g;

type Mode = { kind: "open" } | { kind: "cut" } | { kind: "blackhole" } | {
  kind: "delay";
  ms: number;
};

/** A proxy from a free loopback port to a target. */
export class TcpProxy implements AsyncDisposable {
  readonly #server: Server;
  readonly #port: number;
  readonly #sockets = new Map<Socket, Promise<void>>();
  readonly #pairs = new Set<Pair>();
  #mode: Mode = { kind: "open" };
  #changed = Promise.withResolvers<void>();

  private constructor(server: Server, port: number) {
    this.#server = server;
    this.#port = port;
  }

  /**
   * Listens on a free loopback port and forwards to `target`.
   *
   * @param target `http://host:port` or `host:port` of the real server
   */
  static async start(target: string): Promise<TcpProxy> {
    const url = new URL(target.includes("://") ? target : `http://${target}`);
    const upstream = { host: url.hostname, port: Number(url.port) };
    const server = createServer({ pauseOnConnect: true });
    const port = await new Promise<number>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const address = server.address();
        resolve(typeof address === "object" && address ? address.port : 0);
      });
    });
    const proxy = new TcpProxy(server, port);
    server.on("connection", (socket: Socket) => proxy.#accept(socket, upstream));
    return proxy;
  }

  /** The proxy's URL, to give to the client. */
  get endpoint(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  #track(socket: Socket): void {
    this.#sockets.set(socket, new Promise((resolve) => socket.once("close", () => resolve())));
    socket.once("close", () => this.#sockets.delete(socket));
    socket.on("error", () => socket.destroy());
  }

  #accept(client: Socket, upstream: { host: string; port: number }): void {
    this.#track(client);
    if (this.#mode.kind === "cut") {
      client.destroy();
      return;
    }
    const server = connect(upstream);
    this.#track(server);
    const pair: Pair = { requests: new Set(), dropped: false };
    this.#pairs.add(pair);
    server.once("connect", () => {
      this.#pump(pair, client, server, true);
      this.#pump(pair, server, client, false);
    });
    // Either side ending ends both.
    client.once("close", () => {
      this.#pairs.delete(pair);
      server.destroy();
    });
    server.once("close", () => client.destroy());
  }

  /** Copies `from` to `to` chunk by chunk, honouring the mode for every chunk. */
  #pump(pair: Pair, from: Socket, to: Socket, fromClient: boolean): void {
    let queue = Promise.resolve();
    from.on("data", (chunk: Buffer) => {
      if (fromClient) {
        for (const [, line] of chunk.toString("latin1").matchAll(REQUEST_LINE)) {
          pair.requests.add(line!);
        }
      }
      if (pair.dropped) return; // swallowed, and neither end is told
      from.pause();
      queue = queue.then(async () => {
        while (this.#mode.kind === "blackhole") await this.#changed.promise;
        const mode = this.#mode;
        if (mode.kind === "delay") await new Promise((r) => setTimeout(r, mode.ms));
        if (to.destroyed || mode.kind === "cut") return;
        if (!to.write(chunk)) await new Promise((r) => to.once("drain", r));
        from.resume();
      });
    });
    from.resume();
  }

  #set(mode: Mode): void {
    this.#mode = mode;
    this.#changed.resolve();
    this.#changed = Promise.withResolvers<void>();
  }

  /** Closes every open connection and refuses new ones until {@linkcode restore}. */
  async cut(): Promise<void> {
    this.#set({ kind: "cut" });
    const closed = [...this.#sockets.values()];
    for (const socket of this.#sockets.keys()) socket.destroy();
    await Promise.all(closed);
  }

  /** Keeps connections open but passes nothing on until the mode changes (a half-open network). */
  blackhole(): void {
    this.#set({ kind: "blackhole" });
  }

  /** Delays every chunk by `ms` in both directions. */
  delay(ms: number): void {
    this.#set({ kind: "delay", ms });
  }

  /**
   * Drops every open connection on which the client sent `request` (a request
   * line such as `"POST /v3/watch"`): from now on the proxy swallows its bytes
   * both ways and tells neither end, and the connection stays open, as a NAT,
   * proxy or load balancer that dropped an idle connection leaves it. Other
   * and later connections pass as before.
   *
   * @returns how many connections it dropped
   */
  drop(request: string): number {
    let dropped = 0;
    for (const pair of this.#pairs) {
      if (!pair.dropped && pair.requests.has(request)) {
        pair.dropped = true;
        dropped++;
      }
    }
    return dropped;
  }

  /** Forwards normally again. */
  restore(): void {
    this.#set({ kind: "open" });
  }

  /** Closes the listener and every connection. */
  async close(): Promise<void> {
    await this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
