/**
 * The cost of one change to a 10,000-endpoint view: fold it in with
 * `applyUpdates` and build the next picker. Baseline: copying the view, which
 * any immutable fold must do.
 *
 *   deno task bench bench/update_bench.ts
 */
import {
  applyUpdates,
  applyUpdatesInPlace,
  type Balancer,
  consistentHash,
  type Endpoint,
  p2c,
  random,
  roundRobin,
  type Update,
  weightedRoundRobin,
} from "../mod.ts";
import { endpoints, sink } from "./_endpoints.ts";

const list = endpoints(10_000);
const view = new Map<string, Endpoint>(list.map((e) => [`svc/x/${e.addr}`, e]));
const add: Update[] = [{
  op: "add",
  key: "svc/x/10.200.0.1:50051",
  endpoint: { addr: "10.200.0.1:50051" },
}];
const remove: Update[] = [{ op: "delete", key: `svc/x/${list[5000]!.addr}` }];

for (const [what, batch] of [["add", add], ["delete", remove]] as const) {
  const group = `one ${what} into 10,000 endpoints`;
  Deno.bench({
    name: "baseline: copy the view (new Map)",
    group,
    baseline: true,
    fn() {
      sink.value += new Map(view).size;
    },
  });
  Deno.bench({
    name: "applyUpdates only",
    group,
    fn() {
      sink.value += applyUpdates(view, batch).size;
    },
  });
  const balancers: Record<string, Balancer> = {
    roundRobin,
    weightedRoundRobin,
    random,
    p2c,
    consistentHash,
  };
  for (const [name, balancer] of Object.entries(balancers)) {
    Deno.bench({
      name: `applyUpdates + ${name}`,
      group,
      fn() {
        const next = applyUpdates(view, batch);
        const pick = balancer([...next.values()]);
        sink.value += pick() ? 1 : 0;
      },
    });
  }
}

{
  const group = "one change to 10,000 endpoints, in place";
  const own = new Map(view);
  let flip = false;
  const undo: Update[] = [{ op: "delete", key: add[0]!.key }];
  const change = () => {
    flip = !flip;
    return flip ? add : undo;
  };
  Deno.bench({
    name: "baseline: list the view ([...values()])",
    group,
    baseline: true,
    fn() {
      sink.value += [...own.values()].length;
    },
  });
  Deno.bench({
    name: "applyUpdatesInPlace + roundRobin",
    group,
    fn() {
      applyUpdatesInPlace(own, change());
      sink.value += roundRobin([...own.values()])() ? 1 : 0;
    },
  });
  Deno.bench({
    name: "applyUpdatesInPlace + weightedRoundRobin",
    group,
    fn() {
      applyUpdatesInPlace(own, change());
      sink.value += weightedRoundRobin([...own.values()])() ? 1 : 0;
    },
  });
  Deno.bench({
    name: "applyUpdatesInPlace + consistentHash",
    group,
    fn() {
      applyUpdatesInPlace(own, change());
      sink.value += consistentHash([...own.values()])() ? 1 : 0;
    },
  });
}
