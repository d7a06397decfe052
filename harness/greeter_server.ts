/**
 * One greeter instance as its own process, on any runtime:
 *
 *   deno run -P harness/greeter_server.ts <etcd-endpoints> <service> <name> [ttl] [drainMs]
 *   node greeter_server.js <etcd-endpoints> <service> <name> [ttl] [drainMs]   (compiled)
 *
 * Prints `ready <addr>` once registered; SIGTERM (or SIGINT) drains gracefully
 * (health NOT_SERVING, deregister, drain, shutdown), prints `stopped <name>`
 * and exits 0. SIGUSR2 switches between answering and failing every call with
 * UNAVAILABLE (`greeter <name> fails on purpose (call <n>)`) while its health
 * service still says SERVING, and prints `failing <name>` or `answering <name>`.
 * `spawnGreeter()` in `greeter_process.ts` starts it.
 *
 * @module
 */
import process from "node:process";
import * as grpc from "@grpc/grpc-js";
import { connect } from "@seed/grpc-etcd";
import { startGreeter } from "./greeter.ts";

const [hosts, service, name, ttl = "2", drainMs = "500"] = process.argv.slice(2);
if (!hosts || !service || !name) {
  console.error("usage: greeter_server <etcd-endpoints> <service> <name> [ttl] [drainMs]");
  process.exit(2);
}
const client = connect({ hosts: hosts.split(",") });
let failing = false;
process.on("SIGUSR2", () => {
  failing = !failing;
  console.log(`${failing ? "failing" : "answering"} ${name}`);
});
const serving = await startGreeter(client, service, name, {
  ttl: Number(ttl),
  drainMs: Number(drainMs),
  onError: (e) => console.error(`${name}: ${e.message}`),
}, { failWith: () => failing ? grpc.status.UNAVAILABLE : undefined });
console.log(`ready ${serving.addr}`);

let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await serving.close();
  await client.close();
  console.log(`stopped ${name}`);
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
