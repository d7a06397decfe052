/**
 * One greeter instance as its own process, for the example and the tests.
 *
 *   deno run --allow-net=127.0.0.1 --allow-read --allow-env --allow-sys=uid,networkInterfaces \
 *     examples/greeter_server.ts <etcd-endpoints> <service> <name> [ttl] [drainMs]
 *
 * Prints `ready <addr>` once registered; SIGTERM drains gracefully (health
 * NOT_SERVING, deregister, drain, shutdown) and exits 0.
 */
import { connect } from "../mod.ts";
import { startGreeter } from "./greeter.ts";

const [hosts, service, name, ttl = "2", drainMs = "500"] = Deno.args;
if (!hosts || !service || !name) {
  console.error("usage: greeter_server.ts <etcd-endpoints> <service> <name> [ttl] [drainMs]");
  Deno.exit(2);
}
const client = connect({ hosts: hosts.split(",") });
const serving = await startGreeter(client, service, name, {
  ttl: Number(ttl),
  drainMs: Number(drainMs),
  onError: (e) => console.error(`${name}: ${e.message}`),
});
console.log(`ready ${serving.addr}`);

const stop = async () => {
  await serving.close();
  await client.close();
  console.log(`stopped ${name}`);
  Deno.exit(0);
};
Deno.addSignalListener("SIGTERM", stop);
Deno.addSignalListener("SIGINT", stop);
