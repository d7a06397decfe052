/**
 * The conformance matrix: the scenarios of `harness/conformance/` on Deno (the
 * sources), Node 24 and Bun 1.4 (the npm build, installed from its tarball
 * into a project of its own as a user would), one test per runtime and one
 * step per scenario, each scenario in its own process group, which must be
 * empty when the scenario ends. The npm build is made once per run.
 *
 * Node and Bun are looked up in `.tools/` (where `.ci/run` installs them) or
 * through `NODE24_BIN` and `BUN_BIN`; a missing one fails its test with the
 * command that installs it.
 */
import assert from "node:assert/strict";
import { DENO_RUN_FLAGS } from "../harness/runtime.ts";
import { RESULT_PREFIX, SCENARIOS } from "../harness/conformance/scenarios.ts";
import { buildNpm, entryPoints, npmSpecifier, readDenoJson, ROOT } from "../scripts/build_npm.ts";
import {
  DIST,
  findBun14,
  findNode24,
  type NpmProject,
  npmProject,
  runInGroup,
} from "../scripts/runtimes.ts";

const README = `${ROOT}README.md`;

/** The tour scripts: file name, the document holding it, and the code block's info string. */
const TOURS = [
  { file: "tour.mjs", doc: README, info: "js ignore tour.mjs" },
  { file: "tour-fetch.mjs", doc: README, info: "js ignore tour-fetch.mjs" },
] as const;

/** The binary and the arguments that run a scenario runner, and its working directory. */
interface Command {
  readonly bin: string;
  readonly args: string[];
  readonly cwd: string;
}

interface Runtime {
  /** Test name. */
  readonly label: string;
  /** How to run a scenario; fails with the install command when the runtime is missing. */
  command(): Promise<Command>;
  /** The path of a tour script ({@linkcode TOURS}) for this runtime. */
  tour(file: string): Promise<string>;
}

/** The code block of `doc` (default the README) whose info string is `info`. */
async function docBlock(info: string, doc: string = README): Promise<string> {
  const text = await Deno.readTextFile(doc);
  const start = text.indexOf("```" + info + "\n");
  assert.ok(start >= 0, `${doc.slice(ROOT.length)} has no \`\`\`${info} block`);
  const body = start + info.length + 4;
  return text.slice(body, text.indexOf("\n```", body) + 1);
}

let prepared: Promise<NpmProject> | undefined;

/** Once per run: the npm project ({@linkcode npmProject}) with the tour scripts written into it. */
function prepare(): Promise<NpmProject> {
  prepared ??= (async () => {
    const project = await npmProject();
    for (const tour of TOURS) {
      await Deno.writeTextFile(
        `${project.project}/${tour.file}`,
        await docBlock(tour.info, tour.doc),
      );
    }
    return project;
  })();
  return prepared;
}

const deno: Runtime = {
  label: `Deno ${Deno.version.deno} on the sources`,
  command: () =>
    Promise.resolve({
      bin: Deno.execPath(),
      args: ["run", ...DENO_RUN_FLAGS, `--config=${ROOT}deno.json`, "harness/conformance/main.ts"],
      cwd: ROOT,
    }),
  async tour(file) {
    // In the repository, where "@seed/grpc-etcd" is the sources (deno.json).
    const tour = TOURS.find((t) => t.file === file)!;
    await Deno.mkdir(`${DIST}/tour`, { recursive: true });
    await Deno.writeTextFile(`${DIST}/tour/${file}`, await docBlock(tour.info, tour.doc));
    return `${DIST}/tour/${file}`;
  },
};

function npmRuntime(label: string, find: () => Promise<string>): Runtime {
  return {
    label,
    async command() {
      const bin = await find();
      const { project } = await prepare();
      return { bin, args: ["harness/conformance/main.js"], cwd: project };
    },
    async tour(file) {
      return `${(await prepare()).project}/${file}`;
    },
  };
}

const node = npmRuntime("Node 24 on the npm build", findNode24);
const bun = npmRuntime("Bun 1.4 on the npm build", findBun14);

interface Result {
  ok: boolean;
  ms?: number;
  runtime?: string;
  detail?: string;
  error?: string;
}

/**
 * Runs one scenario in a process group of its own (`setsid`), and fails if
 * any process of that group is still alive once the runner has exited.
 */
async function runScenario(
  { bin, args: base, cwd }: Command,
  name: string,
  args: string[] = [],
): Promise<Result> {
  // The runner fails a scenario after 60 s by itself; this is for a runner that hangs anyway.
  const out = await runInGroup(bin, [...base, name, ...args], { cwd, timeoutMs: 90_000 });
  if (out.leftover) throw new Error(`scenario ${name} left processes running:\n${out.leftover}`);
  const { stdout, stderr } = out;
  const line = stdout.split("\n").find((l) => l.startsWith(RESULT_PREFIX));
  if (!line) {
    return {
      ok: false,
      error: `no result line (exit ${out.code}${out.signal ? `, ${out.signal}` : ""}); ` +
        `stdout:\n${stdout.slice(-2000)}\nstderr:\n${stderr.slice(-4000)}`,
    };
  }
  const result = JSON.parse(line.slice(RESULT_PREFIX.length)) as Result;
  if (!result.ok && stderr) result.error += `\nstderr:\n${stderr.slice(-4000)}`;
  return result;
}

async function matrix(t: Deno.TestContext, runtime: Runtime): Promise<void> {
  const command = await runtime.command();
  const expected = (await docBlock("text tour.mjs prints")).split("\n").filter((l) => l);
  // Every scenario, then the "script" scenario once per tour script, each printing the tour's lines.
  const scenarios: [string, string, () => Promise<string[]>][] = [
    ...Object.keys(SCENARIOS).filter((n) => n !== "script").map((
      n,
    ): [string, string, () => Promise<string[]>] => [n, n, () => Promise.resolve([])]),
    ...TOURS.map(({ file, doc }): [string, string, () => Promise<string[]>] => [
      `script: ${file} of ${doc.slice(ROOT.length)}`,
      "script",
      async () => [await runtime.tour(file), ...expected],
    ]),
  ];
  for (const [step, name, args] of scenarios) {
    await t.step(step, async () => {
      const result = await runScenario(command, name, await args());
      if (!result.ok) throw new Error(`${result.runtime ?? runtime.label}: ${result.error}`);
      console.log(`${result.runtime} ${name} (${result.ms} ms): ${result.detail}`);
    });
  }
}

Deno.test(`runtimes: ${deno.label}`, (t) => matrix(t, deno));
Deno.test(`runtimes: ${node.label}`, (t) => matrix(t, node));
Deno.test(`runtimes: ${bun.label}`, (t) => matrix(t, bun));

Deno.test("build:npm: an ESM package with types for every deno.json export, packed clean", async () => {
  const { packed } = await prepare();
  const config = readDenoJson();
  const manifest = JSON.parse(await Deno.readTextFile(`${DIST}/npm/package.json`));
  const entries = entryPoints(config);
  assert.deepEqual(Object.keys(manifest.exports), [...entries.map(([s]) => s), "./package.json"]);
  for (const [subpath, file] of entries) {
    const js = file.replace(/^\.\//, "").replace(/\.ts$/, ".js");
    assert.deepEqual(manifest.exports[subpath], {
      types: `./${js.replace(/\.js$/, ".d.ts")}`,
      default: `./${js}`,
    });
    assert.ok(packed.includes(js) && packed.includes(js.replace(/\.js$/, ".d.ts")), js);
  }
  assert.equal(manifest.type, "module");
  // Nothing but the compiled module, its types, the manifest, README and LICENSE.
  const roots = entries.map(([, file]) => file.replace(/^\.\//, "").replace(/\.ts$/, ""));
  const stray = packed.filter((f) => {
    const base = f.replace(/\.(js|d\.ts)$/, "");
    if (base !== f && (roots.includes(base) || base.startsWith("src/"))) return false;
    return !["package.json", "README.md", "LICENSE"].includes(f);
  });
  assert.deepEqual(stray, []);
  // Dependencies: exactly the packages the shipped JavaScript imports, each pinned as in deno.json.
  const imported = new Set<string>();
  for (const f of packed.filter((f) => f.endsWith(".js"))) {
    const text = await Deno.readTextFile(`${DIST}/npm/${f}`);
    for (const [, specifier] of text.matchAll(/^(?:import|export)\b[^;]*?from "([^".][^"]*)";/gm)) {
      if (specifier!.startsWith("node:")) continue;
      const parts = specifier!.split("/");
      imported.add(specifier!.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!);
    }
  }
  assert.deepEqual(Object.keys(manifest.dependencies).sort(), [...imported].sort());
  for (const [name, range] of Object.entries(manifest.dependencies)) {
    assert.equal(range, npmSpecifier(config.imports[name]!)[1], name);
  }
  for (const f of packed.filter((f) => f.endsWith(".js") || f.endsWith(".d.ts"))) {
    const text = await Deno.readTextFile(`${DIST}/npm/${f}`);
    const code = text.split("\n").filter((l) => !/^\s*(\*|\/\/|\/\*)/.test(l)).join("\n");
    assert.doesNotMatch(code, /from "\.{1,2}\/[^"]*\.ts"/, `${f} imports a .ts file`);
    assert.doesNotMatch(code, /sourceMappingURL/, `${f} points at a source map`);
  }
});

Deno.test("build:npm: a type error fails the build, naming the file", async () => {
  const root = await Deno.makeTempDir({ prefix: "grpc-etcd-build-" });
  try {
    await Deno.writeTextFile(
      `${root}/deno.json`,
      JSON.stringify({ name: "@x/y", version: "1.0.0", license: "MIT", exports: "./mod.ts" }),
    );
    await Deno.writeTextFile(`${root}/mod.ts`, "export const n: number = Deno.pid;\n");
    await Deno.writeTextFile(`${root}/README.md`, "# y\n\nA thing.\n");
    await Deno.writeTextFile(`${root}/LICENSE`, "MIT\n");
    await Deno.symlink(`${ROOT}node_modules`, `${root}/node_modules`);
    assert.throws(
      () => buildNpm({ root }),
      (e: Error) => /mod\.ts.*Cannot find name 'Deno'/s.test(e.message),
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
