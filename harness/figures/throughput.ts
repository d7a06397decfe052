/**
 * Figure: unary-call throughput of `dial()` (its default `roundRobin`)
 * against grpc-js's own `round_robin` over the same 3 static addresses, on
 * the runtime running this file (the comparison of `bench/rpc_bench.ts`).
 * Three greeter instances run as processes of the same runtime; this process
 * is the client of both. A burst is 640 unary calls with 64 in flight; after
 * a warm-up of 5 bursts each, every round times `bursts` bursts of one client
 * then of the other (each after one burst untimed, so that no timing starts
 * right after the other client's turn), the order alternating from round to
 * round. Each round gives a ratio (dial's calls/s over round_robin's); the
 * figure is their median.
 *
 *   throughput <rounds> <bursts>
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import { connect } from "@seed/grpc-etcd";
import { dial } from "@seed/grpc-etcd/grpc";
import { startEtcd } from "../etcd_server.ts";
import { Greeter, type GreeterClient, sayHello } from "../greeter.ts";
import { type GreeterProcess, spawnGreeter } from "../greeter_process.ts";
import { wholeArg } from "./memory.ts";

/** Calls per burst, and how many of them are in flight at once. */
export const CALLS = 640;
/** @see CALLS */
export const IN_FLIGHT = 64;

/** One round's throughputs, in calls per second. */
export interface Round {
  readonly dial: number;
  readonly roundRobin: number;
  /** `dial / roundRobin`. */
  readonly ratio: number;
  /** Which client went first. */
  readonly first: "dial" | "roundRobin";
}

/** What the rounds measured. */
export interface ThroughputFigure {
  readonly rounds: Round[];
  readonly bursts: number;
  /** The median of the rounds' ratios. */
  readonly medianRatio: number;
  /** The medians of each client's throughput, in calls per second. */
  readonly medianDial: number;
  readonly medianRoundRobin: number;
}

/** The median of `values` (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Runs {@linkcode CALLS} calls, keeping {@linkcode IN_FLIGHT} of them in flight. */
async function burst(client: GreeterClient): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next++ < CALLS) await sayHello(client, { name: "figure" });
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
}

/** Calls per second over `bursts` bursts, after one burst untimed. */
async function timed(client: GreeterClient, bursts: number): Promise<number> {
  await burst(client);
  const start = performance.now();
  for (let i = 0; i < bursts; i++) await burst(client);
  return (bursts * CALLS * 1000) / (performance.now() - start);
}

/** Runs the rounds; see the module's documentation. */
export async function throughputFigure(args: readonly string[]): Promise<ThroughputFigure> {
  const rounds = wholeArg("rounds", args[0], 1);
  const bursts = wholeArg("bursts", args[1], 1);
  await using etcd = await startEtcd({ private: true });
  const service = "figures/greeter";
  const started = await Promise.allSettled(
    ["a", "b", "c"].map((name) => spawnGreeter(etcd.endpoint, service, name, { ttl: 10 })),
  );
  const servers = started.flatMap((s) => s.status === "fulfilled" ? [s.value] : []);
  const stopServers = async (list: GreeterProcess[]) => {
    for (const s of list) await s[Symbol.asyncDispose]();
  };
  const failed = started.find((s) => s.status === "rejected");
  if (failed) {
    await stopServers(servers);
    throw (failed as PromiseRejectedResult).reason;
  }
  const client = connect({ hosts: etcd.endpoint });
  const ours = dial(client, service, Greeter);
  const theirs = new Greeter(
    `ipv4:${servers.map((s) => s.addr).join(",")}`,
    grpc.credentials.createInsecure(),
    { "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }) },
  );
  try {
    // Warm both up: every connection open, every code path compiled.
    for (let i = 0; i < 5; i++) {
      await burst(ours);
      await burst(theirs);
    }
    const results: Round[] = [];
    for (let round = 0; round < rounds; round++) {
      const dialFirst = round % 2 === 0;
      let dialRate: number;
      let theirRate: number;
      if (dialFirst) {
        dialRate = await timed(ours, bursts);
        theirRate = await timed(theirs, bursts);
      } else {
        theirRate = await timed(theirs, bursts);
        dialRate = await timed(ours, bursts);
      }
      results.push({
        dial: dialRate,
        roundRobin: theirRate,
        ratio: dialRate / theirRate,
        first: dialFirst ? "dial" : "roundRobin",
      });
    }
    return {
      rounds: results,
      bursts,
      medianRatio: median(results.map((r) => r.ratio)),
      medianDial: median(results.map((r) => r.dial)),
      medianRoundRobin: median(results.map((r) => r.roundRobin)),
    };
  } finally {
    // The clients go first, so that no connection of theirs is reset by an instance's end.
    ours.close();
    theirs.close();
    await client.close();
    await stopServers(servers);
  }
}
