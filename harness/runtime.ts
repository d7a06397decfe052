/**
 * Harness: which JavaScript runtime runs this code, and how to start another
 * harness script as a child process of the same runtime (Deno with the
 * permissions the harness needs, Node and Bun as they are).
 *
 * @module
 */
import { existsSync } from "node:fs";
import process from "node:process";
import { fileURLToPath } from "node:url";

/** The runtimes the harness runs on. */
export type RuntimeName = "deno" | "node" | "bun";

/** The runtime running this code. */
export function currentRuntime(): RuntimeName {
  const versions = process.versions as Record<string, string | undefined>;
  if (versions.deno) return "deno";
  if (versions.bun) return "bun";
  return "node";
}

/** The running runtime and its version, e.g. `node 24.22.3`. */
export function runtimeVersion(): string {
  const name = currentRuntime();
  const versions = process.versions as Record<string, string | undefined>;
  return `${name} ${versions[name] ?? process.version}`;
}

/**
 * What a Deno child of the harness may do: loopback network, env, files,
 * processes (etcd, greeters), and the `uid` and `networkInterfaces` that
 * `grpc-health-check` and `serve()` ask for.
 */
export const DENO_RUN_FLAGS: readonly string[] = [
  "--allow-net=127.0.0.1,localhost",
  "--allow-env",
  "--allow-read",
  "--allow-write",
  "--allow-run",
  "--allow-sys=uid,networkInterfaces",
];

/**
 * The harness file `name` (without extension) next to `base`: `.ts` when the
 * harness runs from its sources, `.js` when it runs compiled.
 */
export function harnessFile(name: string, base: string): URL {
  const extension = base.endsWith(".ts") ? ".ts" : ".js";
  return new URL(`${name}${extension}`, base);
}

/**
 * The command that runs `script` with `args` on the current runtime: Deno
 * with {@linkcode DENO_RUN_FLAGS} and the repository's deno.json, Node and
 * Bun with the script alone.
 */
export function scriptCommand(
  script: URL,
  args: readonly string[],
): { command: string; args: string[] } {
  const path = fileURLToPath(script);
  if (currentRuntime() !== "deno") return { command: process.execPath, args: [path, ...args] };
  const config = fileURLToPath(new URL("../deno.json", import.meta.url));
  return {
    command: process.execPath,
    args: [
      "run",
      ...DENO_RUN_FLAGS,
      ...(existsSync(config) ? [`--config=${config}`] : []),
      path,
      ...args,
    ],
  };
}
