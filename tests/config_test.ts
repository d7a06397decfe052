import assert from "node:assert/strict";

Deno.test("deno.json: every task that runs code passes exactly the permission set -P reads", async () => {
  const config = JSON.parse(
    await Deno.readTextFile(new URL("../deno.json", import.meta.url)),
  ) as {
    permissions: { default: Record<string, true | string[]> };
    tasks: Record<string, string>;
  };
  const flags = Object.entries(config.permissions.default)
    .map(([name, value]) =>
      value === true ? `--allow-${name}` : `--allow-${name}=${value.join(",")}`
    )
    .sort();
  // Not test or example runs: check runs linters; build:npm and figures:runtimes (a driver of
  // other processes) run with fewer permissions.
  const own = new Set(["check", "build:npm", "figures:runtimes"]);
  const running = Object.entries(config.tasks).filter(([name]) => !own.has(name));
  assert.ok(running.length >= 5, `tasks: ${running.map(([name]) => name)}`);
  for (const [name, command] of running) {
    const given = command.split(/\s+/).filter((word) => word.startsWith("--allow-")).sort();
    assert.deepEqual(given, flags, `task ${name}`);
  }
});
