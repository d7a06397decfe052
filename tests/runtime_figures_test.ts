/**
 * `deno task figures:runtimes` (scripts/runtime_figures.ts): its quick mode
 * runs end to end on the pinned Deno, so that the script cannot rot between
 * full measurements; and how it reads a process's end (crash or not), its
 * options and its table, on made-up outcomes. The measurements themselves are
 * not run at full size here: they are measurements, not tests.
 */
import assert from "node:assert/strict";
import { judge } from "../harness/figures/rolling.ts";
import { ROOT } from "../scripts/build_npm.ts";
import {
  type Options,
  type Outcome,
  parseOptions,
  processCrash,
  QUICK,
  RUNTIMES,
  table,
} from "../scripts/runtime_figures.ts";

Deno.test("figures: the quick mode measures everything on Deno 2.9.3 and leaves nothing behind", async () => {
  const json = await Deno.makeTempFile({ prefix: "runtime-figures-test-", suffix: ".json" });
  try {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "task",
        "--quiet",
        "figures:runtimes",
        "--quick",
        "--runtimes=deno-2.9.3",
        "--cutoffs=8",
        "--rounds=1",
        `--json=${json}`,
      ],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, `exit ${out.code}\nstdout:\n${stdout}\nstderr:\n${stderr}`);
    const row = stdout.split("\n").find((l) => l.startsWith("| Deno 2.9.3 (pinned), sources |"));
    assert.ok(row, `no table row for Deno 2.9.3:\n${stdout}`);
    const cells = row.split("|").slice(2, -1).map((c) => c.trim());
    assert.equal(cells.length, 4, row);
    assert.match(cells[0]!, /^[+-]\d+\.\d % \(\d+ → \d+ MiB\)$/, "memory over connect()");
    assert.match(cells[1]!, /^[+-]\d+\.\d % \(\d+ → \d+ MiB\)$/, "memory over connectFetch()");
    assert.equal(cells[2], "0 of 1", "rolling restarts");
    assert.match(cells[3]!, /^\d+\.\d\d× \(\S+ vs \S+ calls\/s\)$/, "throughput");

    const { outcomes } = JSON.parse(await Deno.readTextFile(json)) as { outcomes: Outcome[] };
    assert.deepEqual(
      outcomes.map((o) => `${o.measurement} ${o.args.join(" ")}`),
      ["memory connect 8 1", "memory fetch 8 1", "rolling ", "throughput 1 1"],
    );
    for (const o of outcomes) {
      assert.equal(o.line?.ok, true, `${o.measurement}: ${o.line?.error ?? o.stderr}`);
      assert.equal(o.crash, undefined);
      assert.equal(o.leftover, "", `${o.measurement} left processes running`);
      assert.equal(o.line?.runtime, "deno 2.9.3");
    }
    const memory = outcomes[0]!.line!.result as { rssByQuarter: number[]; gc: boolean };
    assert.equal(memory.rssByQuarter.length, 4);
    assert.ok(memory.rssByQuarter.every((b) => b > 10 * 2 ** 20), `${memory.rssByQuarter}`);
    assert.equal(memory.gc, true, "each sample follows a full collection");
    const rolling = outcomes[2]!.line!.result as { instances: { sent: string; code: number }[] };
    assert.deepEqual(
      rolling.instances.map((i) => `${i.sent} ${i.code}`),
      Array(6).fill("SIGTERM 0"),
      "3 instances and their 3 successors each stopped with SIGTERM and exited 0",
    );
    // Every process ran in a temporary directory of its own, removed afterwards.
    const left: string[] = [];
    for await (const entry of Deno.readDir(Deno.env.get("TMPDIR") ?? "/tmp")) {
      if (entry.name.startsWith("grpc-etcd-figures-")) left.push(entry.name);
    }
    assert.deepEqual(left, []);
  } finally {
    await Deno.remove(json);
  }
});

Deno.test("figures: a measurement process crashed when it ended by a signal or an exit it did not choose", () => {
  const ok = { ok: true };
  const failed = { ok: false };
  const end = (code: number | null, signal: string | null = null, timedOut = false) => ({
    code,
    signal,
    timedOut,
  });
  assert.equal(processCrash(end(0), ok), undefined);
  assert.equal(processCrash(end(1), failed), undefined, "it could not measure: not a crash");
  assert.equal(processCrash(end(null, "SIGKILL", true), undefined), undefined, "a timeout");
  assert.equal(
    processCrash(end(null, "SIGABRT"), undefined),
    "the client process ended by SIGABRT",
  );
  assert.equal(processCrash(end(null, "SIGSEGV"), ok), "the client process ended by SIGSEGV");
  assert.equal(processCrash(end(134), undefined), "the client process exited 134 without a result");
  assert.equal(processCrash(end(1), undefined), "the client process exited 1 without a result");
  assert.equal(
    processCrash(end(139), ok),
    "the client process exited 139 after printing its result",
  );
  assert.equal(
    processCrash(end(0), failed),
    "the client process exited 0 after printing its result",
  );
});

Deno.test("figures: rolling: an instance that ends unasked, or otherwise than asked, crashed", () => {
  const status = (code: number | null, signal: string | null = null) => ({
    success: code === 0,
    code,
    signal,
  });
  assert.equal(judge("SIGTERM", status(0)), undefined);
  assert.equal(judge("SIGKILL", status(null, "SIGKILL")), undefined);
  assert.equal(judge("SIGTERM", status(134)), "exit 134 after SIGTERM (expected exit 0)");
  assert.equal(
    judge("SIGTERM", status(null, "SIGSEGV")),
    "SIGSEGV after SIGTERM (expected exit 0)",
  );
  assert.equal(judge(null, status(0)), "ended by itself (exit 0)");
  assert.equal(judge(null, status(null, "SIGABRT")), "ended by itself (SIGABRT)");
  assert.equal(judge("SIGKILL", status(null, "SIGABRT")), "SIGABRT (it was sent SIGKILL)");
});

Deno.test("figures: options: --quick sizes, overrides, and bad values named", () => {
  const quick = parseOptions(["--quick", "--runs=3"]) as Options;
  assert.deepEqual(
    { cutoffs: quick.cutoffs, runs: quick.runs, rounds: quick.rounds, bursts: quick.bursts },
    { ...QUICK, runs: 3 },
  );
  assert.deepEqual(quick.runtimes.map((r) => r.id), RUNTIMES.map((r) => r.id));
  const full = parseOptions(["--runtimes=bun-1.4,deno-2.9.3", "--figures=rolling"]) as Options;
  assert.deepEqual(full.runtimes.map((r) => r.id), ["deno-2.9.3", "bun-1.4"], "table order");
  assert.deepEqual([full.cutoffs, full.runs, full.rounds], [1000, 10, 10]);
  assert.deepEqual(full.measurements, ["rolling"]);
  assert.throws(() => parseOptions(["--cutoffs=3"]), {
    name: "RangeError",
    message: '--cutoffs must be a whole number of at least 4, got "3"',
  });
  assert.throws(() => parseOptions(["--runs=1.5"]), /--runs .* got "1\.5"/);
  assert.throws(
    () => parseOptions(["--runtimes=deno"]),
    /--runtimes must list some of .* got "deno"/,
  );
  assert.throws(() => parseOptions(["--figures="]), /--figures must list/);
  assert.throws(() => parseOptions(["--cutof=5"]), /cutof/);
});

Deno.test("figures: the table counts crashed rolling runs apart from runs that stopped otherwise", () => {
  const options = parseOptions([
    "--runtimes=deno-2.9.6",
    "--figures=rolling",
    "--runs=4",
  ]) as Options;
  const run = (result: Record<string, unknown> | undefined, extra: Partial<Outcome> = {}) =>
    ({
      runtime: "deno-2.9.6",
      measurement: "rolling",
      args: [],
      code: 0,
      signal: null,
      timedOut: false,
      leftover: "",
      stderr: "",
      seconds: 4,
      ...(result && {
        line: { ok: true, runtime: "deno 2.9.6", ms: 4000, result },
      }),
      ...extra,
    }) as Outcome;
  const clean = { calls: 300, failed: 0, failures: [], instances: [], crashes: [], ms: 4000 };
  const outcomes = [
    run(clean),
    run({ ...clean, crashes: ["instance a2: SIGSEGV after SIGTERM (expected exit 0)"] }),
    run(undefined, { code: null, signal: "SIGABRT", crash: "the client process ended by SIGABRT" }),
    run({ ...clean, error: "b2 answers: not within 10000 ms" }),
  ];
  assert.equal(
    table(options, outcomes).split("\n")[2],
    "| Deno 2.9.6 (newest on npm), sources | 2 of 4 (and 1 stopped for another reason) |",
  );
});
