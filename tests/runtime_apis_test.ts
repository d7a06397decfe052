/**
 * The check in `deno task check` that keeps runtime-specific globals out of
 * the files every runtime runs (.ci/runtime_apis.ts).
 */
import assert from "node:assert/strict";
import { findRuntimeApis, sharedFiles } from "../.ci/runtime_apis.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

Deno.test("runtime APIs: Deno and Bun globals in code are found, comments and strings are not", () => {
  const text = [
    'export const home = Deno.env.get("HOME");',
    "// Deno.exit(1) in a comment",
    'const s = "Bun.serve";',
    "export type S = Deno.Signal;",
    "export const bun = globalThis.Bun;",
    "export const deno = typeof Deno;",
  ].join("\n");
  assert.deepEqual(findRuntimeApis("x.ts", text).map((f) => `${f.line}:${f.column} ${f.code}`), [
    "1:21 Deno.env.get",
    "4:17 Deno.Signal",
    "5:31 globalThis.Bun",
    "6:28 Deno",
  ]);
});

Deno.test("runtime APIs: the shared files are the entry points, src/ and harness/, and are clean", () => {
  const files = sharedFiles(ROOT);
  for (const f of ["mod.ts", "core.ts", "grpc.ts", "testing.ts", "src/register.ts"]) {
    assert.ok(files.includes(f), f);
  }
  assert.ok(files.includes("harness/conformance/scenarios.ts"));
  assert.ok(!files.some((f) => /^(tests|bench|examples|scripts)\//.test(f)));
  const findings = files.flatMap((f) => findRuntimeApis(f, Deno.readTextFileSync(`${ROOT}/${f}`)));
  assert.deepEqual(findings, []);
});

Deno.test("runtime APIs: the check fails naming the file when a shared file uses Deno", async () => {
  const root = await Deno.makeTempDir({ prefix: "grpc-etcd-apis-" });
  try {
    await Deno.writeTextFile(`${root}/deno.json`, JSON.stringify({ exports: { ".": "./mod.ts" } }));
    await Deno.writeTextFile(`${root}/mod.ts`, 'export * from "./src/a.ts";\n');
    await Deno.mkdir(`${root}/src`);
    await Deno.writeTextFile(`${root}/src/a.ts`, "export const pid = Deno.pid;\n");
    await Deno.mkdir(`${root}/tests`);
    await Deno.writeTextFile(`${root}/tests/a_test.ts`, "Deno.test('x', () => {});\n");
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", "--allow-env", `${ROOT}/.ci/runtime_apis.ts`, root],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, stderr);
    assert.match(stderr, /^src\/a\.ts:1:20: Deno\.pid: /m);
    assert.doesNotMatch(stderr, /tests\/a_test\.ts/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
