import assert from "node:assert/strict";
import * as core from "../core.ts";
import * as mod from "../mod.ts";

/** Every module `entry` loads, as `deno info` resolves them. */
async function moduleGraph(entry: string): Promise<string[]> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", new URL(entry, import.meta.url).pathname],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(stdout);
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  return (JSON.parse(text) as { modules: { specifier: string }[] }).modules.map((m) => m.specifier);
}

Deno.test("core: @seed/grpc-etcd/core, /fetch and /testing load only this package's own files", async () => {
  const root = new URL("../", import.meta.url).href;
  for (const entry of ["../core.ts", "../fetch.ts", "../testing.ts"]) {
    const graph = await moduleGraph(entry);
    assert.ok(graph.length > 1, `${entry} loads ${graph.length} module(s)`);
    const foreign = graph.filter((s) =>
      !s.startsWith(root) || s.startsWith(`${root}node_modules/`)
    );
    assert.deepEqual(foreign, [], `${entry} loads more than its own files`);
    // The adapter is the only place that may import npm or Node modules.
    assert.ok(!graph.some((s) => s.endsWith("/src/etcd/etcd3.ts")), `${entry} loads the adapter`);
  }
  // The check above can fail: mod.ts, which adds connect(), does load npm:etcd3.
  const full = await moduleGraph("../mod.ts");
  assert.ok(full.some((s) => s.startsWith("npm:/etcd3@")), "mod.ts loads npm:etcd3");
});

Deno.test("core: exports everything mod.ts does except connect()", () => {
  const missing = Object.keys(mod).filter((name) => !(name in core)).sort();
  assert.deepEqual(missing, ["connect"]);
});
