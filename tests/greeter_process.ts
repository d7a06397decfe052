/**
 * Test helper: greeter instances as separate processes (`examples/greeter_server.ts`).
 *
 * @module
 */
import { TextLineStream } from "./text_lines.ts";

/** A running greeter process. */
export interface GreeterProcess extends AsyncDisposable {
  /** Its instance name. */
  readonly name: string;
  /** The address it registered. */
  readonly addr: string;
  /** Sends a signal (SIGTERM drains gracefully, SIGKILL crashes). */
  kill(signal: Deno.Signal): void;
  /** Resolves with the exit status. */
  readonly status: Promise<Deno.CommandStatus>;
}

const script = new URL("../examples/greeter_server.ts", import.meta.url).pathname;

/**
 * Starts a greeter process and waits until it has registered.
 *
 * @param etcd the etcd client URL
 * @param service the service name
 * @param name the instance name
 * @param options lease TTL (s) and drain time (ms)
 */
export async function spawnGreeter(
  etcd: string,
  service: string,
  name: string,
  options: { ttl?: number; drainMs?: number } = {},
): Promise<GreeterProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      "--allow-read",
      "--allow-env",
      // grpc-health-check loads its .proto through node:fs, whose stat needs the uid.
      "--allow-sys=uid,networkInterfaces",
      script,
      etcd,
      service,
      name,
      String(options.ttl ?? 2),
      String(options.drainMs ?? 300),
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).pipeThrough(new TextLineStream());
  const reader = lines.getReader();
  let addr = "";
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    while (!addr) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`greeter ${name} exited before it was ready`);
      if (value.startsWith("ready ")) addr = value.slice(6).trim();
    }
  } finally {
    clearTimeout(timer);
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  const drained = (async () => {
    while (!(await reader.read()).done) { /* discard */ }
  })();
  const status = child.status.then(async (s) => {
    await drained;
    return s;
  });
  return {
    name,
    addr,
    status,
    kill(signal) {
      try {
        child.kill(signal);
      } catch {
        // already exited
      }
    },
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch {
        // already exited
      }
      await status;
    },
  };
}
