/**
 * Edge: Cloudflare's workerd runs `resolve()` over `connectFetch()` against a
 * real etcd. Two Workers, each bundled from the sources into one ES module by
 * `deno bundle`: the Worker of docs/fetch.md with its config as they stand
 * there (a pick per request), and `tests/workerd/watch_worker.ts` (a live view
 * streamed as long as the client reads).
 *
 * workerd is looked up in `.tools/` (where `.ci/run` installs it) or through
 * `WORKERD_BIN`; a missing one fails the test with the command that installs it.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { register } from "../core.ts";
import { connectFetch } from "../fetch.ts";
import { freePort, startEtcd } from "../harness/etcd_server.ts";
import { TextLineStream } from "../harness/text_lines.ts";
import { until } from "../harness/wait.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
/** What `.ci/run` installs. */
const WORKERD_PACKAGE = "workerd@1.20261117.1";
const WATCHERS = "etcd_debugging_mvcc_watcher_total";

/** The workerd binary: `WORKERD_BIN` or `.tools/`, checked to run; fails with how to install it. */
async function findWorkerd(): Promise<string> {
  const bin = Deno.env.get("WORKERD_BIN") ?? `${ROOT}.tools/node_modules/.bin/workerd`;
  const hint = `install it with \`npm install --prefix .tools ${WORKERD_PACKAGE}\` ` +
    `(what .ci/run does), or set WORKERD_BIN to a workerd binary`;
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(bin, { args: ["--version"], stdout: "piped", stderr: "piped" })
      .output();
  } catch (error) {
    throw new Error(`workerd not found at ${bin} (${(error as Error).message}); ${hint}`);
  }
  const reported = new TextDecoder().decode(out.stdout).trim();
  if (!out.success || !/^workerd \d{4}-\d{2}-\d{2}/.test(reported)) {
    throw new Error(`${bin} --version answered "${reported}", not workerd's version; ${hint}`);
  }
  return bin;
}

/** The code block of docs/fetch.md whose info string is `info`. */
async function docBlock(info: string): Promise<string> {
  const text = await Deno.readTextFile(`${ROOT}docs/fetch.md`);
  const start = text.indexOf("```" + info + "\n");
  assert.ok(start >= 0, `docs/fetch.md has no \`\`\`${info} block`);
  const body = start + info.length + 4;
  return text.slice(body, text.indexOf("\n```", body) + 1);
}

/** Bundles `entry` and what it imports (the package's sources) into one ES module at `out`. */
async function bundle(entry: string, out: string): Promise<void> {
  const result = await new Deno.Command(Deno.execPath(), {
    args: ["bundle", `--config=${ROOT}deno.json`, "--platform=browser", "-o", out, entry],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const log = new TextDecoder().decode(result.stderr);
  assert.ok(result.success, `deno bundle ${entry} failed:\n${log}`);
}

/** A workerd process serving one config, stopped (SIGTERM, then SIGKILL) by `await using`. */
class Workerd implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #output: Promise<Deno.CommandOutput>;
  readonly #port: number;
  #exited = false;

  private constructor(child: Deno.ChildProcess, port: number) {
    this.#child = child;
    this.#port = port;
    this.#output = child.output();
    this.#output.finally(() => (this.#exited = true));
  }

  /**
   * Serves constant `config` of `dir/file`, its socket `http` on a free port,
   * with `env`; resolves once the socket accepts connections.
   */
  static async start(
    bin: string,
    dir: string,
    file: string,
    env: Record<string, string>,
  ): Promise<Workerd> {
    const port = await freePort();
    const child = new Deno.Command(bin, {
      args: ["serve", file, "config", `--socket-addr=http=127.0.0.1:${port}`],
      cwd: dir,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const workerd = new Workerd(child, port);
    try {
      await until(`workerd serving ${file} on port ${port}`, 10_000, async () => {
        if (workerd.#exited) throw new Error(`workerd exited:\n${await workerd.log()}`);
        try {
          (await Deno.connect({ hostname: "127.0.0.1", port })).close();
          return true;
        } catch {
          return false;
        }
      });
    } catch (error) {
      await workerd[Symbol.asyncDispose]();
      throw error;
    }
    return workerd;
  }

  /** The URL of its socket. */
  get url(): string {
    return `http://127.0.0.1:${this.#port}/`;
  }

  /** What it wrote (once it has exited). */
  async log(): Promise<string> {
    const out = await this.#output;
    return new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    // SIGTERM lets requests in flight finish; none should be left, but do not wait forever.
    const kill = (signal: Deno.Signal) => {
      try {
        this.#child.kill(signal);
      } catch {
        // exited meanwhile
      }
    };
    kill("SIGTERM");
    const timer = setTimeout(() => kill("SIGKILL"), 5000);
    await this.#output.finally(() => clearTimeout(timer));
  }
}

/** The config of the streaming Worker: as docs/fetch.md's, with that Worker. */
const WATCH_CONFIG = `using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    (name = "etcd-network", network = (allow = ["private"])),
  ],
  sockets = [(name = "http", address = "*:8080", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [(name = "worker.js", esModule = embed "watch.bundle.js")],
  compatibilityDate = "2025-11-01",
  bindings = [(name = "ETCD_ENDPOINTS", fromEnvironment = "ETCD_ENDPOINTS")],
  globalOutbound = "etcd-network",
);
`;

/** The lines of a streamed response, each read within 10 s. */
function lines(
  response: Response,
): { next(): Promise<string | undefined>; cancel(): Promise<void> } {
  assert.equal(response.status, 200);
  const reader = response.body!.pipeThrough(new TextDecoderStream()).pipeThrough(
    new TextLineStream(),
  ).getReader();
  return {
    async next() {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const result = await Promise.race([
        reader.read(),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error("no line from the Worker within 10 s")),
            10_000,
          );
        }),
      ]).finally(() => clearTimeout(timer));
      return result.done ? undefined : result.value;
    },
    cancel: () => reader.cancel(),
  };
}

Deno.test("workerd: Workers resolve through connectFetch(): an instance registered is seen, and gone once it closes", async () => {
  const bin = await findWorkerd();
  await using etcd = await startEtcd();
  const dir = await Deno.makeTempDir({ prefix: "grpc-etcd-workerd-" });
  try {
    await Deno.writeTextFile(`${dir}/worker.js`, await docBlock("js ignore worker.js"));
    await Deno.writeTextFile(`${dir}/config.capnp`, await docBlock("capnp config.capnp"));
    await bundle(`${dir}/worker.js`, `${dir}/worker.bundle.js`);
    await bundle(`${ROOT}tests/workerd/watch_worker.ts`, `${dir}/watch.bundle.js`);
    await Deno.writeTextFile(`${dir}/watch.capnp`, WATCH_CONFIG);
    const env = { ETCD_ENDPOINTS: etcd.endpoint };
    await using docWorker = await Workerd.start(bin, dir, "config.capnp", env);
    await using watchWorker = await Workerd.start(bin, dir, "watch.capnp", env);
    const pick = async () => {
      const response = await fetch(docWorker.url);
      return `${response.status} ${(await response.text()).trim()}`;
    };

    assert.equal(await pick(), "503 no instance of svc/greeter");
    // A live view, its first line (the empty snapshot) read before the instance registers, so
    // that the instance can only arrive through the watch inside workerd.
    const live = lines(await fetch(`${watchWorker.url}?lines=3`));
    assert.equal(await live.next(), "[]");
    await using client = connectFetch({ hosts: etcd.endpoint });
    const registration = await register(client, "svc/greeter", { addr: "10.0.0.9:50051" });
    assert.equal(await live.next(), '["10.0.0.9:50051"]');
    assert.equal(await pick(), "200 10.0.0.9:50051");
    await registration.close();
    assert.equal(await live.next(), "[]");
    assert.equal(await pick(), "503 no instance of svc/greeter");
    assert.equal(await live.next(), undefined, "the stream ends after the lines asked for");
    // Each Worker closed what it opened: no watch is left in etcd.
    await until("every watch released", 5000, async () => await etcd.metric(WATCHERS) === 0);

    // A client that leaves a live view: workerd cancels the body at the Worker's next write,
    // and the Worker's watch is released then.
    const left = lines(await fetch(`${watchWorker.url}?lines=100`));
    assert.equal(await left.next(), "[]");
    await until("the live view's watch open", 5000, async () => await etcd.metric(WATCHERS) === 1);
    await left.cancel();
    await client.put("svc/greeter/10.0.0.8:50051", '{"Op":0,"Addr":"10.0.0.8:50051"}');
    await until("the watch released", 5000, async () => await etcd.metric(WATCHERS) === 0);
    await client.delete("svc/greeter/10.0.0.8:50051");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
