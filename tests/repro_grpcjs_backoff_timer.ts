/**
 * Reproduces the timer that grpc-js 1.14 leaves behind when a channel is
 * closed while its connection is being made or waits to be retried, with
 * plain grpc-js (no grpc-etcd code): Deno's op sanitizer reports it.
 *
 *   deno test --sanitize-ops --allow-net=127.0.0.1 --allow-env --allow-read \
 *     tests/repro_grpcjs_backoff_timer.ts
 *
 * The first test passes: a channel closed once READY leaves nothing (READY
 * stops the backoff timer). The second fails with "A timer was started in
 * this test, but never completed", started at `Subchannel.startBackoff`
 * (`BackoffTimeout.runTimer`, grpc-js `build/src/subchannel.js`): entering
 * CONNECTING starts the subchannel's reconnect backoff timer (1 s, growing
 * to 120 s), and only READY stops it. `Channel.close()` unrefs the
 * subchannel, which then moves CONNECTING/READY to IDLE without stopping the
 * timer (and leaves TRANSIENT_FAILURE as it is). The timer is `unref`ed, so
 * it keeps no process alive, and it ends by itself after the backoff; no
 * public grpc-js API stops it earlier.
 *
 * The third fails the same way, with one more timer: a channel closed while
 * CONNECTING (a server that accepts and never answers) also leaves its
 * pick_first balancer's 250 ms connection-delay timer
 * (`PickFirstLoadBalancer.startConnecting`, grpc-js
 * `build/src/load-balancer-pick-first.js`): `destroy()` does not clear it.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { createServer } from "node:net";

/** Waits until the channel reaches `state`. */
async function until(channel: grpc.Channel, state: grpc.connectivityState): Promise<void> {
  let current = channel.getConnectivityState(true);
  while (current !== state) {
    await new Promise<void>((resolve, reject) =>
      channel.watchConnectivityState(
        current,
        Date.now() + 5000,
        (error) => error ? reject(error) : resolve(),
      )
    );
    current = channel.getConnectivityState(true);
  }
}

Deno.test("grpc-js: a channel closed once READY leaves no timer", async () => {
  const server = new grpc.Server();
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      "127.0.0.1:0",
      grpc.ServerCredentials.createInsecure(),
      (e, port) => e ? reject(e) : resolve(port),
    )
  );
  const channel = new grpc.Channel(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {});
  await until(channel, grpc.connectivityState.READY);
  channel.close();
  await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
});

Deno.test("grpc-js: a channel closed while its connection fails leaves its subchannel's backoff timer", async () => {
  // A port that refuses connections: listen, note the port, stop listening.
  const listener = createServer();
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
  const { port } = listener.address() as { port: number };
  await new Promise<void>((resolve) => listener.close(() => resolve()));
  const channel = new grpc.Channel(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {});
  await until(channel, grpc.connectivityState.TRANSIENT_FAILURE);
  channel.close();
});

Deno.test("grpc-js: a channel closed while its connection is being made leaves pick_first's connection-delay timer too", async () => {
  // A server that accepts connections and never answers: the channel stays CONNECTING.
  const sockets: import("node:net").Socket[] = [];
  const listener = createServer((socket) => sockets.push(socket));
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", resolve));
  const { port } = listener.address() as { port: number };
  const channel = new grpc.Channel(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {});
  await until(channel, grpc.connectivityState.CONNECTING);
  channel.close();
  for (const socket of sockets) socket.destroy();
  await new Promise<void>((resolve) => listener.close(() => resolve()));
});
