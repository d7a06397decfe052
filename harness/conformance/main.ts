/**
 * Runs one conformance scenario on this runtime and prints one result line:
 *
 *   CONFORMANCE {"scenario":"heal","ok":true,"ms":812,"runtime":"node 24.x","detail":"…"}
 *
 * (`"ok":false` with `"error"` on a failure), then exits 0 or 1. Every child
 * process the scenario started is stopped before the exit, and on SIGTERM or
 * SIGINT, and after `timeout` ms (default 60000) the scenario fails.
 *
 *   deno run -P harness/conformance/main.ts <scenario> [args…]
 *   node main.js <scenario> [args…]          (compiled with the npm build)
 *
 * @module
 */
import process from "node:process";
import { killAllChildren } from "../child.ts";
import { runtimeVersion } from "../runtime.ts";
import { RESULT_PREFIX, SCENARIOS } from "./scenarios.ts";

const [name = "", ...args] = process.argv.slice(2);
const timeout = Number(process.env.CONFORMANCE_TIMEOUT_MS ?? 60_000);

function finish(result: Record<string, unknown>): never {
  killAllChildren();
  console.log(
    RESULT_PREFIX + JSON.stringify({ scenario: name, runtime: runtimeVersion(), ...result }),
  );
  process.exit(result.ok ? 0 : 1);
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => finish({ ok: false, error: `stopped by ${signal}` }));
}

const scenario = SCENARIOS[name];
if (!scenario) {
  finish({
    ok: false,
    error: `no scenario "${name}"; known: ${Object.keys(SCENARIOS).join(", ")}`,
  });
}
const started = Date.now();
let timer: ReturnType<typeof setTimeout> | undefined;
try {
  const detail = await Promise.race([
    scenario!(args),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`not done within ${timeout} ms`)), timeout);
    }),
  ]);
  clearTimeout(timer);
  finish({ ok: true, ms: Date.now() - started, detail });
} catch (error) {
  const e = error as Error;
  finish({ ok: false, ms: Date.now() - started, error: e?.stack ?? String(error) });
}
