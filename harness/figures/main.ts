/**
 * Runs one measurement (`memory.ts`, `rolling.ts` or `throughput.ts`) on this
 * runtime and prints one result line (`scripts/runtime_figures.ts` runs each
 * on each runtime):
 *
 *   FIGURE {"figure":"rolling","runtime":"node 24.x","ok":true,"ms":9120,"result":{…}}
 *
 * (`"ok":false` with `"error"` when the measurement could not be made), then
 * exits 0, or 1 when it could not. Every child process it started is stopped
 * before the exit, and on SIGTERM or SIGINT. Start it with `gc` exposed
 * (`--v8-flags=--expose-gc` on Deno, `--expose-gc` on Node and Bun) for the
 * memory figure.
 *
 *   deno run -P --v8-flags=--expose-gc harness/figures/main.ts <figure> [args…]
 *   node --expose-gc main.js <figure> [args…]          (compiled with the npm build)
 *
 * @module
 */
import process from "node:process";
import { killAllChildren } from "../child.ts";
import { runtimeVersion } from "../runtime.ts";
import { FIGURE_PREFIX } from "./figures.ts";
import { memoryFigure } from "./memory.ts";
import { rollingFigure } from "./rolling.ts";
import { throughputFigure } from "./throughput.ts";

/** Every measurement by name: resolves with what it measured, throws what stopped it. */
const FIGURES: Readonly<Record<string, (args: readonly string[]) => Promise<unknown>>> = {
  "cut-offs": memoryFigure,
  "rolling": rollingFigure,
  "throughput": throughputFigure,
};

const [name = "", ...args] = process.argv.slice(2);

function finish(result: Record<string, unknown>): never {
  killAllChildren();
  console.log(
    FIGURE_PREFIX + JSON.stringify({ figure: name, runtime: runtimeVersion(), ...result }),
  );
  process.exit(result.ok ? 0 : 1);
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => finish({ ok: false, error: `stopped by ${signal}` }));
}

const figure = FIGURES[name];
if (!figure) {
  finish({ ok: false, error: `no figure "${name}"; known: ${Object.keys(FIGURES).join(", ")}` });
}
const started = Date.now();
try {
  const result = await figure!(args);
  finish({ ok: true, ms: Date.now() - started, result });
} catch (error) {
  const e = error as Error;
  finish({ ok: false, ms: Date.now() - started, error: e?.stack ?? String(error) });
}
