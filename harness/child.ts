/**
 * Harness: child processes (etcd, greeter instances, scenario runners) started
 * through `node:child_process`, so that the harness runs on Deno, Node and Bun
 * alike. Every child is tracked until it exits; whatever is still running when
 * this process exits is killed then.
 *
 * @module
 */
import { type ChildProcess, spawn } from "node:child_process";
import type { Buffer } from "node:buffer";
import process from "node:process";

/** How a child ended. */
export interface ExitStatus {
  /** Exit code 0. */
  readonly success: boolean;
  /** The exit code, or null when a signal ended it. */
  readonly code: number | null;
  /** The signal that ended it, e.g. `SIGKILL`. */
  readonly signal: string | null;
}

/** A running child process. */
export interface Child {
  /** Its process id. */
  readonly pid: number | undefined;
  /** Its standard output, when `stdout: "pipe"`. */
  readonly stdout: NodeJS.ReadableStream | null;
  /** Resolves when it has exited. */
  readonly exited: Promise<ExitStatus>;
  /** Whether it is still running. */
  readonly running: boolean;
  /** Sends a signal; does nothing once it has exited. */
  kill(signal: NodeJS.Signals): void;
  /** The last few KiB it wrote to stderr, when `stderr: "tail"`. */
  stderrTail(): string;
}

const live = new Set<ChildProcess>();
let exitHook = false;

/**
 * Sends `signal` to process `pid`, ignoring a process that has gone. Through
 * `process.kill` rather than `ChildProcess.kill`: under Deno 2.9 the latter
 * sends nothing once it has sent any signal (a SIGCONT, say).
 */
function sendSignal(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/**
 * Kills every child still running (SIGCONT first, in case it is frozen), then
 * runs the clean-ups registered with {@linkcode atExit}. Runs by itself when
 * this process exits.
 */
export function killAllChildren(): void {
  for (const child of live) {
    if (child.pid === undefined) continue;
    sendSignal(child.pid, "SIGCONT");
    sendSignal(child.pid, "SIGKILL");
  }
  for (const cleanup of [...cleanups]) {
    cleanups.delete(cleanup);
    try {
      cleanup();
    } catch {
      // best effort: the process is exiting
    }
  }
}

const cleanups = new Set<() => void>();

/**
 * Registers a synchronous clean-up (removing a temporary directory, say) for
 * when this process exits before the owner has cleaned up itself.
 *
 * @returns a function that unregisters it, for the owner's own clean-up
 */
export function atExit(cleanup: () => void): () => void {
  hookExit();
  cleanups.add(cleanup);
  return () => cleanups.delete(cleanup);
}

function hookExit(): void {
  if (exitHook) return;
  exitHook = true;
  process.once("exit", killAllChildren);
}

/**
 * Starts `command` with `args`.
 *
 * @param options `stdout`: `"pipe"` to read it, else ignored; `stderr`:
 *   `"inherit"` (default), `"ignore"`, or `"tail"` to keep its last 4 KiB for
 *   error messages; `env`: extra environment variables
 */
export function spawnChild(
  command: string,
  args: readonly string[],
  options: {
    stdout?: "pipe" | "ignore";
    stderr?: "inherit" | "ignore" | "tail";
    env?: Record<string, string>;
    cwd?: string;
  } = {},
): Child {
  hookExit();
  const stderrMode = options.stderr ?? "inherit";
  const child = spawn(command, [...args], {
    stdio: ["ignore", options.stdout ?? "ignore", stderrMode === "tail" ? "pipe" : stderrMode],
    env: options.env ? { ...process.env, ...options.env } : process.env,
    cwd: options.cwd,
  });
  live.add(child);
  let tail = "";
  child.stderr?.on("data", (chunk: Buffer | string) => {
    tail = (tail + chunk.toString()).slice(-4096);
  });
  let running = true;
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once("error", (error: Error) => {
      tail += `\n${command}: ${error.message}`;
      running = false;
      live.delete(child);
      resolve({ success: false, code: null, signal: null });
    });
    child.once("exit", (code: number | null, signal: string | null) => {
      running = false;
      live.delete(child);
      resolve({ success: code === 0, code, signal });
    });
  });
  return {
    pid: child.pid,
    stdout: child.stdout,
    exited,
    get running() {
      return running;
    },
    kill(signal) {
      if (running && child.pid !== undefined) sendSignal(child.pid, signal);
    },
    stderrTail: () => tail.trim(),
  };
}

/**
 * Calls `onLine` for every line `stream` yields, until it ends.
 *
 * @returns resolves when the stream has ended
 */
export function readLines(
  stream: NodeJS.ReadableStream,
  onLine: (line: string) => void,
): Promise<void> {
  let rest = "";
  return new Promise((resolve) => {
    stream.on("data", (chunk: Buffer | string) => {
      const parts = (rest + chunk.toString()).split(/\r?\n/);
      rest = parts.pop() ?? "";
      for (const line of parts) onLine(line);
    });
    const end = () => {
      if (rest) onLine(rest);
      rest = "";
      resolve();
    };
    stream.once("end", end);
    stream.once("close", end);
  });
}
