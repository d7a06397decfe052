/**
 * `deno task example`: a greeter service discovered through etcd.
 *
 * Three greeter instances start as separate processes and register; a client
 * calls the service by name without pause and prints, once a second, how many
 * calls each instance answered and how many failed. During the run instance a
 * crashes (SIGKILL), instance b stops gracefully (SIGTERM: drain, then exit),
 * and instance d joins. A resolver prints every change it sees in etcd. The run
 * ends by itself after about 13 s and leaves no process behind.
 *
 * etcd: ETCD_ENDPOINTS when set; otherwise a private etcd from PATH on free
 * loopback ports (removed on exit); otherwise the in-memory etcd, with the
 * instances in this process, said plainly.
 */
import * as grpc from "@grpc/grpc-js";
import { connect, type EtcdClient, resolve } from "../mod.ts";
import { dial } from "../grpc.ts";
import { MemoryEtcd } from "../testing.ts";
import { type EtcdServer, findEtcd, INSTALL_HINT, startEtcd } from "../harness/etcd_server.ts";
import { type GreeterProcess, spawnGreeter } from "../harness/greeter_process.ts";
import { Greeter, type Greeting, sayHello, startGreeter } from "../harness/greeter.ts";

const SERVICE = "demo/greeter";
const TTL = 2;
const start = Date.now();
const elapsed = () => ((Date.now() - start) / 1000).toFixed(1).padStart(5);
const say = (text: string) => console.log(`[${elapsed()} s] ${text}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One greeter instance, wherever it runs. */
interface Instance {
  readonly name: string;
  crash(): Promise<void>;
  stop(): Promise<void>;
  kill(): Promise<void>;
}

/** Where etcd is, and how instances are started against it. */
interface Setup {
  readonly client: EtcdClient;
  launch(name: string): Promise<Instance>;
  close(): Promise<void>;
}

function processSetup(endpoint: string, server?: EtcdServer): Setup {
  const client = connect({ hosts: endpoint.split(",") });
  return {
    client,
    async launch(name) {
      const child: GreeterProcess = await spawnGreeter(endpoint, SERVICE, name, { ttl: TTL });
      return {
        name,
        async crash() {
          child.kill("SIGKILL");
          await child.status;
        },
        async stop() {
          child.kill("SIGTERM");
          await child.status;
        },
        async kill() {
          await child[Symbol.asyncDispose]();
        },
      };
    },
    async close() {
      await client.close();
      await server?.close();
    },
  };
}

function memorySetup(): Setup {
  const etcd = new MemoryEtcd();
  const client = etcd.client();
  return {
    client,
    async launch(name) {
      // Each instance talks to etcd over its own connection, as a process would.
      const own = etcd.client();
      const greeting: Greeting = await startGreeter(own, SERVICE, name, {
        ttl: TTL,
        drainMs: 300,
        onError: () => {}, // a crashed instance keeps failing to reach etcd, by design
      });
      return {
        name,
        crash() {
          greeting.crash();
          own.disconnect(); // no more keepalives: the lease expires after its TTL
          return Promise.resolve();
        },
        async stop() {
          await greeting.close();
          await own.close();
        },
        async kill() {
          await greeting.close();
          await own.close();
        },
      };
    },
    async close() {
      await client.close();
      await etcd.close();
    },
  };
}

async function setup(): Promise<Setup> {
  const endpoints = Deno.env.get("ETCD_ENDPOINTS");
  if (endpoints) {
    console.log(`etcd: ETCD_ENDPOINTS=${endpoints}; instances run as separate processes`);
    return processSetup(endpoints);
  }
  try {
    findEtcd();
  } catch {
    console.log("etcd: not found, so this runs on the in-memory etcd (memoryClient()), with the");
    console.log("      greeter instances in this one process instead of separate processes.");
    console.log(`      ${INSTALL_HINT}`);
    return memorySetup();
  }
  const server = await startEtcd();
  console.log(
    `etcd: a private etcd at ${server.endpoint} (removed on exit); instances run as processes`,
  );
  return processSetup(server.endpoint, server);
}

const { client, launch, close } = await setup();
const instances = new Map<string, Instance>();
const updates = resolve(client, SERVICE, { onError: (e) => say(`resolver: ${e.message}`) });
const greeter = dial(client, SERVICE, Greeter, { onError: () => {} });
let stopping = false;
const counts = new Map<string, number>();
let failed = 0;
const failures = new Map<string, number>();

try {
  const watching = (async () => {
    for await (const batch of updates) {
      for (const u of batch) {
        say(
          `etcd: ${
            u.op === "add" ? `+ ${u.endpoint.addr}` : `- ${u.key.slice(SERVICE.length + 1)}`
          }`,
        );
      }
    }
  })();

  for (const name of ["a", "b", "c"]) instances.set(name, await launch(name));
  say("instances a, b, c registered; calling the service by name (4 callers)");

  const callers = Array.from({ length: 4 }, async () => {
    while (!stopping) {
      try {
        const { instance } = await sayHello(greeter, { name: "example" }, {
          deadline: Date.now() + 2000,
        });
        counts.set(instance, (counts.get(instance) ?? 0) + 1);
      } catch (error) {
        failed++;
        const code = grpc.status[(error as grpc.ServiceError).code] ?? "ERROR";
        failures.set(code, (failures.get(code) ?? 0) + 1);
      }
      await sleep(5);
    }
  });

  const names = ["a", "b", "c", "d"];
  console.log(`          ${names.map((n) => n.padStart(6)).join("")}  failed   (calls per second)`);
  let last = new Map<string, number>();
  let lastFailed = 0;
  const table = setInterval(() => {
    const row = names.map((n) => String((counts.get(n) ?? 0) - (last.get(n) ?? 0)).padStart(6))
      .join("");
    console.log(`[${elapsed()} s] ${row}  ${String(failed - lastFailed).padStart(6)}`);
    last = new Map(counts);
    lastFailed = failed;
  }, 1000);

  const events: [number, () => Promise<void>][] = [
    [3000, async () => {
      say("a crashes (SIGKILL): its connection drops now, its key expires with its lease");
      await instances.get("a")!.crash();
    }],
    [6500, async () => {
      say("b stops gracefully (SIGTERM): NOT_SERVING, deregister, drain, exit");
      await instances.get("b")!.stop();
      instances.delete("b");
    }],
    [8500, async () => {
      instances.set("d", await launch("d"));
      say("d joins");
    }],
    [12500, () => Promise.resolve()],
  ];
  for (const [at, run] of events) {
    await sleep(Math.max(0, start + at - Date.now()));
    await run();
  }
  stopping = true;
  await Promise.all(callers);
  clearInterval(table);
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  const why = [...failures].map(([code, n]) => `${n} ${code}`).join(", ");
  say(
    `done: ${total} calls answered (${
      names.map((n) => `${n} ${counts.get(n) ?? 0}`).join(", ")
    }), ` +
      `${failed} failed${why ? ` (${why})` : ""}`,
  );
  greeter.close();
  await updates.return();
  await watching;
} finally {
  stopping = true;
  greeter.close();
  await updates.return();
  await Promise.all([...instances.values()].map((i) => i.kill()));
  await close();
}
