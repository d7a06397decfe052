/**
 * Harness: greeter instances as separate processes of the runtime running the
 * harness (`greeter_server.ts`).
 *
 * @module
 */
import { type ExitStatus, readLines, spawnChild } from "./child.ts";
import { harnessFile, scriptCommand } from "./runtime.ts";

/** A running greeter process. */
export interface GreeterProcess extends AsyncDisposable {
  /** Its instance name. */
  readonly name: string;
  /** The address it registered. */
  readonly addr: string;
  /** Sends a signal (SIGTERM drains gracefully, SIGKILL crashes). */
  kill(signal: NodeJS.Signals): void;
  /** Resolves with the exit status. */
  readonly status: Promise<ExitStatus>;
}

const script = harnessFile("greeter_server", import.meta.url);

/**
 * Starts a greeter process and waits until it has registered.
 *
 * @param etcd the etcd client URL
 * @param service the service name
 * @param name the instance name
 * @param options lease TTL (s) and drain time (ms)
 * @throws {Error} when it exits or takes over 20 s before it is ready
 */
export async function spawnGreeter(
  etcd: string,
  service: string,
  name: string,
  options: { ttl?: number; drainMs?: number } = {},
): Promise<GreeterProcess> {
  const { command, args } = scriptCommand(script, [
    etcd,
    service,
    name,
    String(options.ttl ?? 2),
    String(options.drainMs ?? 300),
  ]);
  const child = spawnChild(command, args, { stdout: "pipe" });
  const ready = Promise.withResolvers<string>();
  const output = readLines(child.stdout!, (line) => {
    if (line.startsWith("ready ")) ready.resolve(line.slice(6).trim());
  });
  const status = child.exited.then(async (s) => {
    await output;
    return s;
  });
  status.then((s) =>
    ready.reject(new Error(`greeter ${name} exited before it was ready: ${s.code ?? s.signal}`))
  );
  const timer = setTimeout(() => {
    ready.reject(new Error(`greeter ${name} was not ready within 20 s`));
    child.kill("SIGKILL");
  }, 20_000);
  let addr: string;
  try {
    addr = await ready.promise;
  } catch (error) {
    child.kill("SIGKILL");
    await status;
    throw error;
  } finally {
    clearTimeout(timer);
  }
  return {
    name,
    addr,
    status,
    kill: (signal) => child.kill(signal),
    async [Symbol.asyncDispose]() {
      child.kill("SIGKILL");
      await status;
    },
  };
}
