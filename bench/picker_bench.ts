/**
 * Picks per second of each balancer against a bare array walk, for 3, 100 and
 * 10,000 endpoints, and of consistentHash against hashing its key alone. Each
 * iteration makes 1,000 picks so that the harness's own cost per iteration does
 * not hide the picker's. Each balancer gets its own bench function, so that V8
 * sees one picker per call site, as in real use.
 *
 *   deno task bench bench/picker_bench.ts
 */
import {
  consistentHash,
  type Endpoint,
  p2c,
  random,
  roundRobin,
  weightedRoundRobin,
} from "../mod.ts";
import { hash32 } from "../src/balancers/consistent_hash.ts";
import { endpoints, infos, sink } from "./_endpoints.ts";

const PICKS = 1000;

for (const n of [3, 100, 10_000]) {
  const group = `1,000 picks over ${n.toLocaleString("en")} endpoints`;
  const list = endpoints(n);
  const load = new Map<Endpoint, number>(list.map((e, i) => [e, i % 7]));
  const inflight = (e: Endpoint) => load.get(e) ?? 0;

  let i = 0;
  Deno.bench({
    name: "baseline: items[i++ % n]",
    group,
    baseline: true,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) acc += list[i++ % n]!.addr.length;
      sink.value += acc;
    },
  });

  const rr = roundRobin(list);
  Deno.bench({
    name: "roundRobin",
    group,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) acc += rr()!.addr.length;
      sink.value += acc;
    },
  });

  const wrr = weightedRoundRobin(list);
  Deno.bench({
    name: "weightedRoundRobin",
    group,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) acc += wrr()!.addr.length;
      sink.value += acc;
    },
  });

  const rnd = random(list);
  Deno.bench({
    name: "random",
    group,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) acc += rnd()!.addr.length;
      sink.value += acc;
    },
  });

  const counts = Int32Array.from(list, (_, i) => i % 7);
  const byIndex = p2c(list, { inflightAt: (i) => counts[i]! });
  Deno.bench({
    name: "p2c (in-flight counts by index, as dial gives them)",
    group,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) acc += byIndex()!.addr.length;
      sink.value += acc;
    },
  });

  const two = p2c(list, { inflight });
  Deno.bench({
    name: "p2c (in-flight counts from a Map)",
    group,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) acc += two()!.addr.length;
      sink.value += acc;
    },
  });

  const ring = consistentHash(list);
  let j = 0;
  Deno.bench({
    name: "consistentHash (hashes a request key per pick)",
    group,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) acc += ring(infos[j++ & 1023])!.addr.length;
      sink.value += acc;
    },
  });

  // consistentHash against what hashing its key costs: the same function, the same keys, in
  // the same run. The rows "reference" are floors: any picker that depends on the whole key
  // reads its characters, and any that hashes it then fetches one of n endpoints.
  const vsHash = `consistentHash against hashing its key, ${n.toLocaleString("en")} endpoints`;
  let h = 0;
  Deno.bench({
    name: "baseline: hashing the request key alone (consistentHash's hash32)",
    group: vsHash,
    baseline: true,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) acc += hash32(infos[h++ & 1023]!.header("x-hash-key")!);
      sink.value += acc;
    },
  });
  let r = 0;
  Deno.bench({
    name: "reference: reading the request key's characters alone",
    group: vsHash,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) {
        const key = infos[r++ & 1023]!.header("x-hash-key")!;
        for (let c = 0; c < key.length; c++) acc ^= key.charCodeAt(c);
      }
      sink.value += acc;
    },
  });
  const scale = n / 2 ** 32;
  let f = 0;
  Deno.bench({
    name: "reference: the hash, then the endpoint at hash × n / 2^32 (no ring, not consistent)",
    group: vsHash,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) {
        acc += list[(hash32(infos[f++ & 1023]!.header("x-hash-key")!) * scale) | 0]!.addr.length;
      }
      sink.value += acc;
    },
  });
  const sticky = consistentHash(list);
  let s = 0;
  Deno.bench({
    name: "consistentHash",
    group: vsHash,
    fn() {
      let acc = 0;
      for (let k = 0; k < PICKS; k++) acc += sticky(infos[s++ & 1023])!.addr.length;
      sink.value += acc;
    },
  });
}
