import assert from "node:assert/strict";
import {
  type Balancer,
  consistentHash,
  type Endpoint,
  p2c,
  type Picker,
  type PickInfo,
  random,
  roundRobin,
  weightedRoundRobin,
} from "../mod.ts";
import { hash32 } from "../src/balancers/consistent_hash.ts";

/** A seeded generator (Park–Miller), so every run draws the same numbers. */
function seeded(seed: number): () => number {
  let state = seed;
  return () => (state = (state * 48271) % 2147483647) / 2147483647;
}

const endpoints = (n: number, weight?: (i: number) => unknown): Endpoint[] =>
  Array.from({ length: n }, (_, i) => ({
    addr: `10.0.${i >> 8}.${i & 255}:50051`,
    metadata: weight ? { weight: weight(i) } : undefined,
  }));

function maxCyclicRun(sequence: string[], who: string): number {
  let best = 0;
  let run = 0;
  for (const item of [...sequence, ...sequence]) {
    run = item === who ? run + 1 : 0;
    best = Math.max(best, run);
  }
  return Math.min(best, sequence.length);
}

Deno.test("weightedRoundRobin() picks each endpoint exactly `weight` times per sum(weights) picks", async (t) => {
  const rng = seeded(11);
  const sets = [
    [1],
    [3, 1],
    [5, 1, 1],
    [2, 2, 1],
    [7, 3, 2, 1],
    Array.from({ length: 50 }, () => 1 + Math.floor(rng() * 20)),
  ];
  for (const weights of sets) {
    await t.step(weights.length > 5 ? "50 random weights" : JSON.stringify(weights), () => {
      const list = endpoints(weights.length, (i) => weights[i]);
      const pick = weightedRoundRobin(list);
      const total = weights.reduce((a, b) => a + b, 0);
      for (let period = 0; period < 3; period++) {
        const counts = new Map<string, number>();
        for (let k = 0; k < total; k++) {
          const addr = pick()!.addr;
          counts.set(addr, (counts.get(addr) ?? 0) + 1);
        }
        assert.deepEqual(list.map((e) => counts.get(e.addr) ?? 0), weights, `period ${period}`);
      }
    });
  }
});

Deno.test("weightedRoundRobin() spreads a heavy endpoint's picks out (no bursts)", () => {
  for (const weights of [[5, 1, 1], [3, 1], [4, 2, 1, 1], [6, 1, 1, 1]]) {
    const list = endpoints(weights.length, (i) => weights[i]);
    const pick = weightedRoundRobin(list);
    const total = weights.reduce((a, b) => a + b, 0);
    const sequence = Array.from({ length: total }, () => pick()!.addr);
    const heavy = list[0]!.addr;
    const others = total - weights[0]!;
    const ideal = Math.ceil(weights[0]! / others);
    assert.ok(
      maxCyclicRun(sequence, heavy) <= ideal + 1,
      `${JSON.stringify(weights)}: run of ${maxCyclicRun(sequence, heavy)} (ideal ${ideal})`,
    );
  }
  // A burst-free order for 5:1:1 has runs of at most 3, where "aaaaabc" has 5.
  const pick = weightedRoundRobin(endpoints(3, (i) => [5, 1, 1][i]));
  const letters = Array.from(
    { length: 7 },
    () => "abc"[Number(pick()!.addr.split(".")[3]!.split(":")[0])],
  );
  assert.equal(maxCyclicRun(letters, "a"), 3, letters.join(""));
});

Deno.test("weightedRoundRobin() treats bad weights as 1 and reports each", () => {
  const reports: Error[] = [];
  const list: Endpoint[] = [
    { addr: "a:1", metadata: { weight: 0 } },
    { addr: "b:1", metadata: { weight: "3" } },
    { addr: "c:1", metadata: { weight: 2.5 } },
    { addr: "d:1", metadata: { weight: 2 } },
    { addr: "e:1" },
  ];
  const pick = weightedRoundRobin(list, { report: (e) => reports.push(e) });
  assert.ok(pick());
  assert.equal(reports.length, 3);
  assert.match(
    reports[1]!.message,
    /b:1 has metadata.weight "3"; a weight must be a positive integer, so 1 is used/,
  );
  const again = weightedRoundRobin(list);
  const seen = Array.from({ length: 6 }, () => again()!.addr).sort();
  assert.deepEqual(seen, ["a:1", "b:1", "c:1", "d:1", "d:1", "e:1"]);
  assert.equal(weightedRoundRobin([])(), undefined);
});

Deno.test("random() is uniform and takes its randomness from the caller", () => {
  const list = endpoints(4);
  assert.equal(random({ random: () => 0 })(list)(), list[0]);
  assert.equal(random({ random: () => 0.99 })(list)(), list[3]);
  const pick = random({ random: seeded(3) })(list);
  const counts = new Map<string, number>();
  for (let i = 0; i < 40_000; i++) {
    const addr = pick()!.addr;
    counts.set(addr, (counts.get(addr) ?? 0) + 1);
  }
  for (const n of counts.values()) assert.ok(n > 9_000 && n < 11_000, `count ${n}`);
  assert.equal(random([])(), undefined);
  // The built-in source (xorshift32, multiply-shift to an index) is uniform too, over an
  // odd count that does not divide 2^32: each of 7 gets 1/7 of 70,000 within 5 %.
  const seven = endpoints(7);
  const own = random(seven);
  const tally = new Map<string, number>();
  for (let i = 0; i < 70_000; i++) {
    const addr = own()!.addr;
    tally.set(addr, (tally.get(addr) ?? 0) + 1);
  }
  assert.equal(tally.size, 7);
  for (const n of tally.values()) assert.ok(n > 9_500 && n < 10_500, `count ${n}`);
});

Deno.test("p2c() takes the less loaded of two different endpoints", () => {
  const list = endpoints(3);
  const load = new Map([[list[0]!.addr, 10], [list[1]!.addr, 0], [list[2]!.addr, 5]]);
  const pick = p2c({ random: seeded(5) })(list, { inflight: (e) => load.get(e.addr)! });
  const counts = new Map<string, number>();
  for (let i = 0; i < 3000; i++) {
    const addr = pick()!.addr;
    counts.set(addr, (counts.get(addr) ?? 0) + 1);
  }
  // The most loaded endpoint loses every draw it is in.
  assert.equal(counts.get(list[0]!.addr), undefined);
  // The least loaded wins every draw it is in: 2 of the 3 pairs.
  const share = (counts.get(list[1]!.addr) ?? 0) / 3000;
  assert.ok(share > 0.6 && share < 0.73, `share ${share}`);
  // The same draws with counts by index (as dial provides) give the same picks.
  const byAddr = p2c({ random: seeded(7) })(list, { inflight: (e) => load.get(e.addr)! });
  const byIndex = p2c({ random: seeded(7) })(list, {
    inflightAt: (i) => load.get(list[i]!.addr)!,
  });
  for (let i = 0; i < 500; i++) assert.equal(byIndex(), byAddr());
  // Without load information it is uniform.
  const plain = p2c({ random: seeded(9) })(list);
  const seen = new Set(Array.from({ length: 100 }, () => plain()!.addr));
  assert.equal(seen.size, 3);
  assert.equal(p2c([])(), undefined);
});

const call = (key: string | undefined): PickInfo => ({
  method: "/demo.Svc/Get",
  header: (name) => (name === "x-hash-key" ? key : undefined),
});

/** The endpoint each key goes to, by address. */
function owners(pick: Picker, keys: string[]): string[] {
  return keys.map((k) => pick(call(k))!.addr);
}

Deno.test("consistentHash() moves exactly the keys of an endpoint that leaves, and only keys to one that joins", async (t) => {
  // Sizes on both sides of a change in the lookup table's size (a power of two per ring
  // size): 3 → 2 and 10 → 11 endpoints cross one, so a table that rounded hashes to its
  // own resolution would move keys between endpoints that stayed.
  for (const n of [3, 10, 100, 1000]) {
    await t.step(`${n} endpoints`, () => {
      const keys = Array.from({ length: Math.max(20_000, 200 * n) }, (_, i) => `user-${i}`);
      const list = endpoints(n);
      const before = owners(consistentHash(list), keys);
      for (const gone of [0, n >> 1, n - 1]) {
        const removed = list[gone]!.addr;
        const after = owners(consistentHash(list.filter((_, i) => i !== gone)), keys);
        let moved = 0;
        for (let k = 0; k < keys.length; k++) {
          if (before[k] === removed) {
            moved++;
            assert.notEqual(after[k], removed);
          } else {
            assert.equal(after[k], before[k], `${keys[k]} moved from ${before[k]} to ${after[k]}`);
          }
        }
        assert.ok(moved > 0, `${removed} had no keys`);
      }
      const added = { addr: "10.9.9.9:50051" };
      const after = owners(consistentHash([...list, added]), keys);
      let gained = 0;
      for (let k = 0; k < keys.length; k++) {
        if (after[k] === before[k]) continue;
        gained++;
        assert.equal(after[k], added.addr, `${keys[k]} moved between endpoints that stayed`);
      }
      const share = (gained / keys.length) * n;
      assert.ok(
        share > 0.5 && share < 2,
        `the new endpoint took ${share.toFixed(2)}/n of the keys`,
      );
    });
  }
});

Deno.test("consistentHash() spreads keys: with 100 ring points each, no endpoint holds over 1.25/n (10) or 1.35/n (100)", () => {
  const keys = Array.from({ length: 100_000 }, (_, i) => `user-${i}`);
  for (const [n, most, least] of [[10, 1.25, 0.75], [100, 1.35, 0.65]] as const) {
    const counts = new Map<string, number>();
    for (const addr of owners(consistentHash(endpoints(n)), keys)) {
      counts.set(addr, (counts.get(addr) ?? 0) + 1);
    }
    const shares = endpoints(n).map((e) => ((counts.get(e.addr) ?? 0) / keys.length) * n);
    assert.ok(Math.max(...shares) <= most, `${n}: the busiest holds ${Math.max(...shares)}/n`);
    assert.ok(Math.min(...shares) >= least, `${n}: the idlest holds ${Math.min(...shares)}/n`);
  }
});

Deno.test("consistentHash() answers the same for any order of the list, even where two addresses' points coincide", () => {
  // Two addresses with the same 32-bit hash have all their ring points at the same positions:
  // the lower address takes them, whatever the order of the list.
  const low = { addr: "10.0.107.237:50051" };
  const high = { addr: "10.2.219.40:50051" };
  assert.equal(hash32(low.addr), hash32(high.addr), "the fixture's addresses must collide");
  const others = endpoints(5);
  const keys = Array.from({ length: 10_000 }, (_, i) => `user-${i}`);
  const forward = owners(consistentHash([low, high, ...others]), keys);
  assert.deepEqual(owners(consistentHash([...others, high, low]), keys), forward);
  assert.deepEqual(owners(consistentHash([high, ...others.toReversed(), low]), keys), forward);
  assert.ok(forward.includes(low.addr));
  assert.ok(!forward.includes(high.addr));
  // Sticky: one picker gives a key the same endpoint every time.
  const pick = consistentHash(others);
  for (const k of keys.slice(0, 100)) assert.equal(pick(call(k)), pick(call(k)));
});

Deno.test("consistentHash() without a key goes round robin", () => {
  const list = endpoints(3);
  const pick = consistentHash(list);
  assert.deepEqual([pick(call(undefined)), pick(), pick()], list);
  assert.equal(consistentHash([])(), undefined);
});

Deno.test("a balancer with options is a Balancer: consistentHash({ header }), random({ random }), p2c({ random })", () => {
  const list = endpoints(20);
  const user = (name: string): PickInfo => ({
    method: "/demo.Svc/Get",
    header: (h) => (h === "x-user" ? name : h === "x-hash-key" ? "same for all" : undefined),
  });
  // The header is read in lower case, and replaces x-hash-key.
  const sticky: Balancer = consistentHash({ header: "X-User" });
  const pick = sticky(list);
  const users = Array.from({ length: 200 }, (_, i) => `u${i}`);
  const homes = new Set(users.map((u) => pick(user(u))!.addr));
  assert.ok(homes.size > 10, `200 users on ${homes.size} of 20 endpoints`);
  for (const u of users) assert.equal(pick(user(u)), pick(user(u)));
  // Options make the same ring as the plain form: only the key differs.
  const plain = consistentHash(list);
  const viaOptions = consistentHash({})(list);
  for (const k of users) assert.equal(viaOptions(call(k)), plain(call(k)));
  const byMethod = consistentHash({ key: (info) => info.method })(list);
  assert.equal(byMethod(call("a")), byMethod(call("b")), "a custom key function decides");
  // random and p2c draw from the source given.
  const last: Balancer = random({ random: () => 0.99 });
  assert.equal(last(list)(), list[19]);
  // p2c's balancer passes the context on: the one idle endpoint wins every draw it is in,
  // 2 of 20 (uniform would give it 1 of 20).
  const lighter: Balancer = p2c({ random: seeded(1) });
  const choice = lighter(list, { inflightAt: (i) => (i === 4 ? 0 : 9) });
  const idle = Array.from({ length: 4000 }, () => choice()).filter((e) => e === list[4]).length;
  assert.ok(idle > 340 && idle < 460, `the idle endpoint got ${idle} of 4000`);
});

Deno.test("balancers name a wrong argument and its value", () => {
  const cases: [() => unknown, RegExp][] = [
    [
      () => consistentHash(42 as never),
      /^consistentHash: the first argument must be an array of endpoints or an options object \{ header, key, replicas \}, got 42$/,
    ],
    [() => consistentHash("a:1" as never), /got "a:1"$/],
    [() => consistentHash(undefined as never), /got undefined$/],
    [() => consistentHash(null as never), /got null$/],
    [() => random(roundRobin as never), /^random: .* \{ random \}, got a function roundRobin$/],
    [() => p2c(true as never), /^p2c: .* \{ random \}, got true$/],
    [
      () => consistentHash({ headers: "x-user" } as never),
      /^consistentHash: options has no field "headers" \(it takes header, key, replicas\)$/,
    ],
    [() => consistentHash({ header: "" }), /options.header must be a non-empty string, got ""/],
    [
      () => consistentHash({ key: "x-user" } as never),
      /options.key must be a function, got "x-user"/,
    ],
    [
      () => random({ random: 0.5 } as never),
      /^random: options.random must be a function, got 0.5$/,
    ],
    [() => p2c({ seed: 1 } as never), /^p2c: options has no field "seed" \(it takes random\)$/],
    [
      () => consistentHash({})({ addr: "a:1" } as never),
      /^consistentHash\(options\) is a balancer: its first argument must be an array of endpoints, got \[object Object\]$/,
    ],
    [() => random({})(3 as never), /^random\(options\) is a balancer: .*, got 3$/],
    [
      () => weightedRoundRobin({} as never),
      /^weightedRoundRobin: endpoints must be an array \(it takes no options; weights come from metadata.weight\), got \[object Object\]$/,
    ],
  ];
  for (const [run, message] of cases) assert.throws(run, { name: "TypeError", message });
  // Options are checked when the balancer is made, not at its first list.
  assert.throws(
    () => consistentHash({ replicas: 0 }),
    { name: "RangeError", message: /options.replicas must be an integer from 1 to 10000, got 0/ },
  );
  assert.throws(() => consistentHash({ replicas: 1.5 }), RangeError);
});

Deno.test("every balancer returns undefined for no endpoints and copies its input", () => {
  const balancers: Balancer[] = [
    roundRobin,
    weightedRoundRobin,
    random,
    p2c,
    consistentHash,
    random({ random: seeded(2) }),
    p2c({ random: seeded(4) }),
    consistentHash({ header: "x-user" }),
  ];
  for (const balancer of balancers) {
    assert.equal(balancer([])(), undefined, balancer.name);
    const list = endpoints(2);
    const pick = balancer(list);
    list.length = 0;
    assert.ok(pick(call("k")) !== undefined, balancer.name);
  }
});

Deno.test("balancers refuse options given after the context (a form JavaScript callers may still use)", () => {
  const endpoints = [{ addr: "a:1" }, { addr: "b:1" }];
  const call = (f: unknown) => (f as (...args: unknown[]) => unknown)(endpoints, undefined, {});
  for (
    const [name, balancer] of [["consistentHash", consistentHash], ["random", random], [
      "p2c",
      p2c,
    ]] as const
  ) {
    assert.throws(
      () => call(balancer),
      new RegExp(`${name}: options go first now - ${name}\\(options\\) makes a balancer`),
    );
  }
});
