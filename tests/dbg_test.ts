import { connect, register, resolve } from "../mod.ts";
import { startEtcd } from "./etcd_server.ts";
Deno.test("dbg", async () => {
  await using etcd = await startEtcd();
  await using client = connect({ hosts: etcd.endpoint });
  const t0 = Date.now();
  await using _r = await register(client, "svc/g", { addr: "127.0.0.1:5" }, {
    onError: (e) => console.log(Date.now() - t0, "reg", e.message),
  });
  const it = resolve(client, "svc/g", {
    onError: (e) => console.log(Date.now() - t0, "res", e.message),
  });
  await it.next();
  console.log(Date.now() - t0, "first");
  await new Promise((r) => setTimeout(r, 8000));
  await it.return();
});
