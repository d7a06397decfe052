/**
 * `deno task figures:runtimes`: the figures of the "Runtimes" table
 * (docs/runtimes.md) on each runtime, each measurement in a fresh process of
 * the runtime under test, one process at a time:
 *
 * - `memory`: resident memory growth over repeated etcd cut-offs (fault
 *   scenario 10's loop; `harness/figures/memory.ts`), over `connect()` and
 *   over `connectFetch()`;
 * - `rolling`: crashed runs of the rolling restart (`harness/figures/rolling.ts`),
 *   one process per run;
 * - `throughput`: `dial()` against grpc-js's own `round_robin`, median of the
 *   rounds' ratios (`harness/figures/throughput.ts`).
 *
 * Runtimes: Deno 2.9.3 (the one running this script, or `DENO_2_9_3_BIN`) and
 * Deno 2.9.6 (`.tools/` or `DENO_2_9_6_BIN`) on the sources; Node 24 and Bun
 * 1.4 (`.tools/`, `NODE24_BIN`, `BUN_BIN`) on the npm build, installed from
 * its tarball into a temporary project. Nothing is installed: a missing
 * runtime fails before any measurement, with the command that installs it.
 * Each process runs in a session of its own (`setsid`) with a temporary
 * directory of its own (`TMPDIR`), both emptied when it ends, on a failure
 * and on Ctrl-C too.
 *
 *   deno task figures:runtimes                    # everything, full size (see docs/runtimes.md)
 *   deno task figures:runtimes --quick            # 20 cut-offs, 1 rolling run, 2 rounds of 1 burst
 *   deno task figures:runtimes --runtimes=node-24 --figures=memory --cutoffs=200 --json=out.json
 *
 * Prints a markdown table, then the raw numbers of every process. Exits 0
 * once every measurement has been tried (a crash is a figure, not an error of
 * this script), 1 when a process left others running after a normal end, 2
 * on bad arguments or a missing runtime.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { DENO_RUN_FLAGS } from "../harness/runtime.ts";
import {
  FIGURE_PREFIX,
  type MemoryFigure,
  type RollingFigure,
  type ThroughputFigure,
} from "../harness/figures/figures.ts";
import { ROOT } from "./build_npm.ts";
import {
  findBinary,
  findBun14,
  findNode24,
  killRunningGroups,
  npmProject,
  runInGroup,
  versionOf,
} from "./runtimes.ts";

/** How to start `harness/figures/main` on one runtime. */
interface Command {
  readonly bin: string;
  /** The arguments before the figure's name. */
  readonly args: string[];
  readonly cwd: string;
}

/** A runtime the figures run on. */
export interface FigureRuntime {
  /** Its name on the command line, e.g. `node-24`. */
  readonly id: string;
  /** Its name in the table. */
  readonly label: string;
  /** Finds its binary (throws with the install command) and, for Node and Bun, the npm build. */
  command(): Promise<Command>;
}

function denoRuntime(id: string, label: string, find: () => Promise<string>): FigureRuntime {
  return {
    id,
    label,
    async command() {
      return {
        bin: await find(),
        args: [
          "run",
          "--v8-flags=--expose-gc",
          ...DENO_RUN_FLAGS,
          `--config=${ROOT}deno.json`,
          "harness/figures/main.ts",
        ],
        cwd: ROOT,
      };
    },
  };
}

function npmRuntime(id: string, label: string, find: () => Promise<string>): FigureRuntime {
  return {
    id,
    label,
    async command() {
      const bin = await find();
      console.error(
        `${label}: building the npm package and installing its tarball in a temporary project`,
      );
      const { project } = await npmProject();
      return { bin, args: ["--expose-gc", "harness/figures/main.js"], cwd: project };
    },
  };
}

/** Deno 2.9.3: `DENO_2_9_3_BIN`, else the Deno running this script, which must be 2.9.3. */
async function findDeno293(): Promise<string> {
  const bin = Deno.env.get("DENO_2_9_3_BIN") ?? Deno.execPath();
  const reported = await versionOf(bin).catch((e: Error) => `(${e.message})`);
  if (!/^deno 2\.9\.3 /.test(reported)) {
    throw new Error(
      `Deno 2.9.3 is needed: ${bin} reports "${reported}"; install it with ` +
        "`npm install -g deno@2.9.3` and run this with it, or set DENO_2_9_3_BIN to a Deno 2.9.3 binary",
    );
  }
  return bin;
}

/** Every runtime, in the table's order. */
export const RUNTIMES: readonly FigureRuntime[] = [
  denoRuntime("deno-2.9.3", "Deno 2.9.3 (pinned), sources", findDeno293),
  denoRuntime(
    "deno-2.9.6",
    "Deno 2.9.6 (newest on npm), sources",
    () =>
      findBinary(
        "Deno 2.9.6",
        "DENO_2_9_6_BIN",
        ".tools/node_modules/.bin/deno",
        /^deno 2\.9\.6 /,
        "deno@2.9.6",
      ),
  ),
  npmRuntime("node-24", "Node 24, npm build", findNode24),
  npmRuntime("bun-1.4", "Bun 1.4, npm build", findBun14),
];

/** The measurements, in the table's order. */
export const MEASUREMENTS = ["memory", "rolling", "throughput"] as const;
type Measurement = (typeof MEASUREMENTS)[number];

/** The adapters of the memory figure: `connect()` and `connectFetch()`. */
export const ADAPTERS = ["connect", "fetch"] as const;
type Adapter = (typeof ADAPTERS)[number];

/** The parameters of a run. */
export interface Options {
  readonly runtimes: FigureRuntime[];
  readonly measurements: Measurement[];
  readonly adapters: Adapter[];
  readonly cutoffs: number;
  readonly runs: number;
  readonly rounds: number;
  readonly bursts: number;
  readonly seed: number;
  readonly json?: string;
}

/** The full-size parameters, and those of `--quick`. */
export const FULL = { cutoffs: 1000, runs: 10, rounds: 10, bursts: 5 } as const;
/** @see FULL */
export const QUICK = { cutoffs: 20, runs: 1, rounds: 2, bursts: 1 } as const;

const USAGE = `deno task figures:runtimes [options]

  --runtimes=LIST   ${RUNTIMES.map((r) => r.id).join(",")} (default: all)
  --figures=LIST    ${MEASUREMENTS.join(",")} (default: all)
  --adapters=LIST   memory figure over ${ADAPTERS.join(",")} (default: both)
  --cutoffs=N       cut-offs per memory run (default ${FULL.cutoffs}; --quick ${QUICK.cutoffs})
  --runs=N          rolling restarts per runtime (default ${FULL.runs}; --quick ${QUICK.runs})
  --rounds=N        throughput rounds (default ${FULL.rounds}; --quick ${QUICK.rounds})
  --bursts=N        bursts of 640 calls per client per round (default ${FULL.bursts}; --quick ${QUICK.bursts})
  --seed=N          the cut-offs' random seed (default 1)
  --quick           the small defaults above, for a check that the script works
  --json=FILE       also write every process's outcome to FILE`;

function list<T extends string>(flag: string, value: string | undefined, known: readonly T[]): T[] {
  if (value === undefined) return [...known];
  const items = value.split(",").map((s) => s.trim()).filter((s) => s);
  const unknown = items.filter((s) => !known.includes(s as T));
  if (items.length === 0 || unknown.length > 0) {
    throw new RangeError(`--${flag} must list some of ${known.join(", ")}, got "${value}"`);
  }
  return known.filter((k) => items.includes(k));
}

function whole(flag: string, value: string | undefined, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < min) {
    throw new RangeError(`--${flag} must be a whole number of at least ${min}, got "${value}"`);
  }
  return n;
}

/**
 * Reads the command line.
 *
 * @throws {RangeError} naming the flag and the value when one is wrong
 */
export function parseOptions(args: string[]): Options | "help" {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      runtimes: { type: "string" },
      figures: { type: "string" },
      adapters: { type: "string" },
      cutoffs: { type: "string" },
      runs: { type: "string" },
      rounds: { type: "string" },
      bursts: { type: "string" },
      seed: { type: "string" },
      quick: { type: "boolean" },
      json: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  const size = values.quick ? QUICK : FULL;
  const ids = list("runtimes", values.runtimes, RUNTIMES.map((r) => r.id));
  return {
    runtimes: RUNTIMES.filter((r) => ids.includes(r.id)),
    measurements: list("figures", values.figures, MEASUREMENTS),
    adapters: list("adapters", values.adapters, ADAPTERS),
    // Four samples need at least four cut-offs.
    cutoffs: whole("cutoffs", values.cutoffs, size.cutoffs, 4),
    runs: whole("runs", values.runs, size.runs, 1),
    rounds: whole("rounds", values.rounds, size.rounds, 1),
    bursts: whole("bursts", values.bursts, size.bursts, 1),
    seed: whole("seed", values.seed, 1, 0),
    json: values.json,
  };
}

/** One process of `harness/figures/main` and how it ended. */
export interface Outcome {
  readonly runtime: string;
  readonly measurement: Measurement;
  readonly args: string[];
  readonly code: number | null;
  readonly signal: string | null;
  readonly timedOut: boolean;
  /** What was still running in its session when it had exited (then killed). */
  readonly leftover: string;
  /** Its result line, when it printed one. */
  readonly line?: { ok: boolean; runtime: string; ms: number; result?: unknown; error?: string };
  /** The last lines it (or its children) wrote to stderr. */
  readonly stderr: string;
  /** Whether the process itself crashed: a signal it was not sent, or an exit it did not choose. */
  readonly crash?: string;
  /** Seconds it ran. */
  readonly seconds: number;
}

const FIGURE_NAME: Record<Measurement, string> = {
  memory: "cut-offs",
  rolling: "rolling",
  throughput: "throughput",
};

/**
 * Whether a measurement process crashed, from how it ended: by a signal this
 * script did not send (only a timeout sends one), or with an exit code other
 * than the one it chooses after printing its result (0, or 1 when it could
 * not measure), or without printing a result at all.
 *
 * @returns what happened, or undefined when it ended as it should
 */
export function processCrash(
  end: { code: number | null; signal: string | null; timedOut: boolean },
  line: { ok: boolean } | undefined,
): string | undefined {
  if (end.timedOut) return undefined;
  if (end.signal !== null) return `the client process ended by ${end.signal}`;
  const expected = line ? (line.ok ? 0 : 1) : undefined;
  if (end.code === expected) return undefined;
  return `the client process exited ${end.code}${
    line ? " after printing its result" : " without a result"
  }`;
}

/** The temporary directories of the processes running now, for the Ctrl-C handler. */
const tempDirs = new Set<string>();

/** Removes the temporary directories of the processes running now. */
function removeTempDirs(): void {
  for (const dir of tempDirs) {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch {
      // gone meanwhile
    }
  }
  tempDirs.clear();
}

/** Runs one measurement process on `runtime`, in a session and a temporary directory of its own. */
async function measure(
  runtime: FigureRuntime,
  command: Command,
  measurement: Measurement,
  args: string[],
  timeoutMs: number,
): Promise<Outcome> {
  const tmp = await Deno.makeTempDir({ prefix: "grpc-etcd-figures-" });
  tempDirs.add(tmp);
  const started = Date.now();
  try {
    const out = await runInGroup(
      command.bin,
      [...command.args, FIGURE_NAME[measurement], ...args],
      { cwd: command.cwd, timeoutMs, env: { TMPDIR: tmp, DENO_NO_UPDATE_CHECK: "1" } },
    );
    const raw = out.stdout.split("\n").find((l) => l.startsWith(FIGURE_PREFIX));
    const line = raw ? JSON.parse(raw.slice(FIGURE_PREFIX.length)) as Outcome["line"] : undefined;
    const crash = processCrash(out, line);
    return {
      runtime: runtime.id,
      measurement,
      args,
      code: out.code,
      signal: out.signal,
      timedOut: out.timedOut,
      leftover: out.leftover,
      ...(line && { line }),
      stderr: out.stderr.split("\n").slice(-6).join("\n"),
      ...(crash && { crash }),
      seconds: (Date.now() - started) / 1000,
    };
  } finally {
    tempDirs.delete(tmp);
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

const MiB = 2 ** 20;
const pct = (x: number) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(1)} %`;
const mib = (bytes: number) => `${(bytes / MiB).toFixed(0)}`;
const rate = (n: number) => n >= 1000 ? `${(n / 1000).toFixed(1)}k` : n.toFixed(0);

/** Why a process gave no figure, in a few words. */
function whyNot(o: Outcome): string {
  if (o.crash) return `crashed (${o.crash.replace("the client process ", "")})`;
  if (o.timedOut) return "timed out";
  return `failed: ${(o.line?.error ?? "no result").split("\n")[0]!.slice(0, 80)}`;
}

/** The memory cell: growth from the first quarter to the last, in MiB. */
function memoryCell(o: Outcome | undefined): string {
  if (!o) return "—";
  const figure = o.line?.ok ? o.line.result as MemoryFigure : undefined;
  if (!figure || o.crash) return whyNot(o);
  const q = figure.rssByQuarter;
  return `${pct(figure.rssGrowth)} (${mib(q[0]!)} → ${mib(q.at(-1)!)} MiB)`;
}

/** How one rolling run ended: `ok`, or crashed or failed with why. */
export function rollingVerdict(o: Outcome): { kind: "ok" | "crashed" | "failed"; why: string } {
  const figure = o.line?.ok ? o.line.result as RollingFigure : undefined;
  const crashes = [...(o.crash ? [o.crash] : []), ...(figure?.crashes ?? [])];
  if (crashes.length > 0) return { kind: "crashed", why: crashes.join("; ") };
  if (o.timedOut) return { kind: "failed", why: "timed out" };
  if (!figure) return { kind: "failed", why: o.line?.error?.split("\n")[0] ?? "no result" };
  if (figure.error) return { kind: "failed", why: figure.error };
  return { kind: "ok", why: "every process ended as asked" };
}

function rollingCell(outcomes: Outcome[]): string {
  if (outcomes.length === 0) return "—";
  const verdicts = outcomes.map(rollingVerdict);
  const crashed = verdicts.filter((v) => v.kind === "crashed").length;
  const failed = verdicts.filter((v) => v.kind === "failed").length;
  return `${crashed} of ${outcomes.length}` +
    (failed > 0 ? ` (and ${failed} stopped for another reason)` : "");
}

function throughputCell(o: Outcome | undefined): string {
  if (!o) return "—";
  const figure = o.line?.ok ? o.line.result as ThroughputFigure : undefined;
  if (!figure || o.crash) return whyNot(o);
  return `${figure.medianRatio.toFixed(2)}× (${rate(figure.medianDial)} vs ${
    rate(figure.medianRoundRobin)
  } calls/s)`;
}

/** The markdown table: one row per runtime. */
export function table(options: Options, outcomes: Outcome[]): string {
  const n = options.cutoffs.toLocaleString("en-US");
  const columns = [
    "runtime",
    ...(options.measurements.includes("memory")
      ? options.adapters.map((a) =>
        `resident memory, ${n} cut-offs, ${a === "connect" ? "`connect()`" : "`connectFetch()`"}`
      )
      : []),
    ...(options.measurements.includes("rolling") ? ["crashed rolling restarts"] : []),
    ...(options.measurements.includes("throughput")
      ? ["`dial` / grpc-js `round_robin` throughput"]
      : []),
  ];
  const rows = options.runtimes.map((r) => {
    const mine = outcomes.filter((o) => o.runtime === r.id);
    const of = (m: Measurement) => mine.filter((o) => o.measurement === m);
    return [
      r.label,
      ...(options.measurements.includes("memory")
        ? options.adapters.map((a) => memoryCell(of("memory").find((o) => o.args[0] === a)))
        : []),
      ...(options.measurements.includes("rolling") ? [rollingCell(of("rolling"))] : []),
      ...(options.measurements.includes("throughput") ? [throughputCell(of("throughput")[0])] : []),
    ];
  });
  const line = (cells: string[]) => `| ${cells.join(" | ")} |`;
  return [line(columns), line(columns.map(() => "---")), ...rows.map(line)].join("\n");
}

/** Every process's numbers, one block per runtime and measurement. */
export function raw(options: Options, outcomes: Outcome[]): string {
  const out: string[] = [];
  for (const r of options.runtimes) {
    const mine = outcomes.filter((o) => o.runtime === r.id);
    if (mine.length === 0) continue;
    out.push(`${r.label} (${mine.find((o) => o.line)?.line?.runtime ?? "no result line"}):`);
    for (const o of mine) {
      const head = `  ${[o.measurement, ...o.args].join(" ")} (${o.seconds.toFixed(1)} s, ` +
        `exit ${o.signal ?? o.code}${o.timedOut ? ", timed out" : ""})`;
      const result = o.line?.ok ? o.line.result : undefined;
      if (o.measurement === "memory" && result) {
        const f = result as MemoryFigure;
        out.push(
          `${head}: resident ${f.rssByQuarter.map(mib).join(", ")} MiB by quarter ` +
            `(${mib(f.rssBefore)} before the first cut-off): ${pct(f.rssGrowth)}; heap ` +
            `${f.heapByQuarter.map(mib).join(", ")} MiB: ${pct(f.heapGrowth)}; ` +
            `loop ${(f.loopMs / 1000).toFixed(0)} s; gc ${f.gc ? "exposed" : "NOT exposed"}`,
        );
      } else if (o.measurement === "rolling" && o.line) {
        const v = rollingVerdict(o);
        const f = result as RollingFigure | undefined;
        const ends = f?.instances.map((i) => `${i.name} ${i.signal ?? `exit ${i.code}`}`).join(
          ", ",
        );
        out.push(
          `${head}: ${v.kind}: ${v.why}` +
            (f ? `; ${f.calls} calls, ${f.failed} failed; instances: ${ends}` : ""),
        );
        if (f && f.failures.length > 0) out.push(`    failures: ${f.failures.join(" | ")}`);
      } else if (o.measurement === "throughput" && result) {
        const f = result as ThroughputFigure;
        out.push(
          `${head}: ratio by round ${f.rounds.map((x) => x.ratio.toFixed(2)).join(", ")} ` +
            `(median ${f.medianRatio.toFixed(3)}); dial ${
              f.rounds.map((x) => x.dial.toFixed(0)).join(", ")
            } calls/s; round_robin ${f.rounds.map((x) => x.roundRobin.toFixed(0)).join(", ")} ` +
            `calls/s; ${f.bursts} burst(s) of 640 per client per round`,
        );
      } else {
        out.push(`${head}: ${whyNot(o)}`);
      }
      if (o.crash) out.push(`    ${o.crash}`);
      if ((o.crash || !o.line?.ok || rollingHadCrash(o)) && o.stderr) {
        out.push(...o.stderr.split("\n").map((l) => `    stderr: ${l}`));
      }
      if (o.leftover) out.push(`    left running, then killed: ${o.leftover.replace(/\n/g, "; ")}`);
    }
  }
  return out.join("\n");
}

function rollingHadCrash(o: Outcome): boolean {
  return o.measurement === "rolling" && rollingVerdict(o).kind !== "ok";
}

/** Every process to run, in order: runtimes interleaved, so that noise spreads evenly. */
function plan(options: Options): { measurement: Measurement; args: string[]; timeoutMs: number }[] {
  const steps: { measurement: Measurement; args: string[]; timeoutMs: number }[] = [];
  if (options.measurements.includes("memory")) {
    for (const adapter of options.adapters) {
      // A cycle takes 70–250 ms; etcd, the resolvers and the checks after the loop up to a minute.
      steps.push({
        measurement: "memory",
        args: [adapter, String(options.cutoffs), String(options.seed)],
        timeoutMs: options.cutoffs * 400 + 120_000,
      });
    }
  }
  if (options.measurements.includes("rolling")) {
    for (let run = 0; run < options.runs; run++) {
      steps.push({ measurement: "rolling", args: [], timeoutMs: 180_000 });
    }
  }
  if (options.measurements.includes("throughput")) {
    steps.push({
      measurement: "throughput",
      args: [String(options.rounds), String(options.bursts)],
      timeoutMs: 120_000 + options.rounds * (options.bursts + 1) * 2 * 10_000,
    });
  }
  return steps;
}

/** Runs every measurement of `options` on every runtime, one process at a time. */
export async function runFigures(
  options: Options,
  log: (line: string) => void = (l) => console.error(l),
): Promise<Outcome[]> {
  // Every runtime found (and the npm build made) before anything is measured.
  const commands = new Map<string, Command>();
  const missing: string[] = [];
  for (const runtime of options.runtimes) {
    try {
      commands.set(runtime.id, await runtime.command());
    } catch (error) {
      missing.push(`${runtime.label}: ${(error as Error).message}`);
    }
  }
  if (missing.length > 0) throw new MissingRuntimeError(missing.join("\n"));
  const outcomes: Outcome[] = [];
  const steps = plan(options);
  for (const [i, step] of steps.entries()) {
    for (const runtime of options.runtimes) {
      const outcome = await measure(
        runtime,
        commands.get(runtime.id)!,
        step.measurement,
        step.args,
        step.timeoutMs,
      );
      outcomes.push(outcome);
      const verdict = outcome.measurement === "rolling"
        ? rollingVerdict(outcome).kind
        : outcome.crash
        ? "crashed"
        : outcome.line?.ok
        ? "ok"
        : "failed";
      log(
        `[${i + 1}/${steps.length}] ${runtime.id} ${step.measurement} ${step.args.join(" ")}: ` +
          `${verdict} (${outcome.seconds.toFixed(1)} s)`,
      );
    }
  }
  return outcomes;
}

/** A runtime that is not installed; its message says how to install it. */
export class MissingRuntimeError extends Error {
  override name = "MissingRuntimeError";
}

if (import.meta.main) {
  let options: Options | "help";
  try {
    options = parseOptions(Deno.args);
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (options === "help") {
    console.log(USAGE);
    Deno.exit(0);
  }
  const stop = () => {
    killRunningGroups();
    removeTempDirs();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  const started = Date.now();
  let outcomes: Outcome[];
  try {
    outcomes = await runFigures(options);
  } catch (error) {
    killRunningGroups();
    removeTempDirs();
    if (error instanceof MissingRuntimeError) {
      console.error(`missing runtime(s):\n${error.message}`);
      Deno.exit(2);
    }
    throw error;
  }
  const o = options;
  const sizes = [
    o.measurements.includes("memory") && `${o.cutoffs} cut-offs (seed ${o.seed})`,
    o.measurements.includes("rolling") && `${o.runs} rolling restart(s) per runtime`,
    o.measurements.includes("throughput") &&
    `throughput ${o.rounds} round(s) of ${o.bursts} burst(s) per client`,
  ].filter((x) => x);
  const minutes = ((Date.now() - started) / 60_000).toFixed(1);
  console.log(`${sizes.join("; ")}; ${minutes} min\n`);
  console.log(table(options, outcomes));
  console.log(`\n${raw(options, outcomes)}`);
  if (options.json) {
    await Deno.writeTextFile(
      options.json,
      JSON.stringify(
        { options: { ...o, runtimes: o.runtimes.map((r) => r.id) }, outcomes },
        null,
        2,
      ),
    );
  }
  const strays = outcomes.filter((x) => x.leftover && !x.crash && !x.timedOut);
  if (strays.length > 0) {
    console.error(
      `${strays.length} process(es) ended normally but left others running (a harness defect)`,
    );
    Deno.exit(1);
  }
}
