/**
 * Figure: one rolling restart under load, with every process's end recorded
 * (the rolling restart of `tests/grpc_test.ts` with the graceful stop of the
 * conformance `graceful-close` scenario). Three greeter instances run as
 * processes of the runtime running this file; this process is the client: it
 * dials them through etcd and keeps 4 callers going (a call, then 20 ms).
 * Each instance in turn gets a successor, which must take calls, then is
 * stopped with SIGTERM and must drain and exit 0. Once every successor has
 * answered, the load stops, the client closes, and the successors are
 * stopped the same way.
 *
 * A process crashed when it ended by a signal it was not sent or with an exit
 * code other than 0 after SIGTERM (abort 134, segfault 139, …), or ended
 * while it was sent nothing; failed calls count as a crash of the run. A run
 * that stops for another reason (an instance that never answers, say) has
 * `error` set. The client's own end (this process) is judged by whoever
 * started it: it exits 0 after printing its result.
 *
 *   rolling
 *
 * @module
 */
import { connect } from "@seed/grpc-etcd";
import { dial } from "@seed/grpc-etcd/grpc";
import type { ExitStatus } from "../child.ts";
import { startEtcd } from "../etcd_server.ts";
import { Greeter, sayHello } from "../greeter.ts";
import { type GreeterProcess, spawnGreeter } from "../greeter_process.ts";
import { Load } from "../load.ts";
import { until } from "../wait.ts";

/** How one instance ended. */
export interface InstanceEnd {
  readonly name: string;
  /** The signal this process sent it, if any. */
  readonly sent: string | null;
  readonly code: number | null;
  readonly signal: string | null;
}

/** What one rolling restart saw. */
export interface RollingFigure {
  /** Calls made under load, and how many failed. */
  readonly calls: number;
  readonly failed: number;
  /** The first few failures, `code details`. */
  readonly failures: string[];
  /** How each instance ended. */
  readonly instances: InstanceEnd[];
  /** Each crash seen: a process that ended unasked or badly, or failed calls. */
  readonly crashes: string[];
  /** Why the run stopped early, when it did for another reason than a crash. */
  readonly error?: string;
  /** How long the run took, in ms. */
  readonly ms: number;
}

const SERVICE = "svc/greeter";

interface Tracked {
  readonly process: GreeterProcess;
  sent: NodeJS.Signals | null;
  status: ExitStatus | undefined;
}

/**
 * Whether an instance ended as asked: exit 0 after SIGTERM (it drains and
 * exits), by SIGKILL after SIGKILL (sent only to what is still running once a
 * run stopped early); an instance that was sent nothing must not end at all.
 *
 * @returns what went wrong, or undefined when it ended as asked
 */
export function judge(sent: NodeJS.Signals | null, status: ExitStatus): string | undefined {
  const end = status.signal ?? `exit ${status.code}`;
  if (sent === null) return `ended by itself (${end})`;
  if (sent === "SIGTERM" && status.code !== 0) return `${end} after SIGTERM (expected exit 0)`;
  if (sent === "SIGKILL" && status.signal !== "SIGKILL") return `${end} (it was sent SIGKILL)`;
  return undefined;
}

/** Resolves with the process's status, or rejects after `ms`. */
async function exitWithin(tracked: Tracked, ms: number): Promise<ExitStatus> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      tracked.process.status,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(new Error(`${tracked.process.name} did not exit within ${ms} ms of SIGTERM`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs one rolling restart; see the module's documentation. */
export async function rollingFigure(args: readonly string[]): Promise<RollingFigure> {
  if (args.length > 0) throw new RangeError(`rolling takes no arguments, got "${args.join(" ")}"`);
  const started = Date.now();
  await using etcd = await startEtcd({ private: true });
  const tracked: Tracked[] = [];
  const crashes: string[] = [];
  const spawn = async (name: string): Promise<Tracked> => {
    let process: GreeterProcess;
    try {
      process = await spawnGreeter(etcd.endpoint, SERVICE, name);
    } catch (e) {
      const message = (e as Error).message;
      if (/exited before it was ready/.test(message)) crashes.push(`instance ${name}: ${message}`);
      throw e;
    }
    const entry: Tracked = { process, sent: null, status: undefined };
    process.status.then((s) => entry.status = s);
    tracked.push(entry);
    return entry;
  };
  const stop = async (entry: Tracked): Promise<void> => {
    entry.sent = "SIGTERM";
    entry.process.kill("SIGTERM");
    await exitWithin(entry, 10_000);
  };
  let load: Load | undefined;
  let error: string | undefined;
  try {
    const firsts = await Promise.all(["a1", "b1", "c1"].map(spawn));
    const client = connect({ hosts: etcd.endpoint });
    try {
      const greeter = dial(client, SERVICE, Greeter);
      try {
        await until(
          "first answer",
          5000,
          async () => (await sayHello(greeter, { name: "w" })).instance !== "",
        );
        const running = load = new Load(greeter, { workers: 4, pauseMs: 20 });
        let lastExit = 0;
        for (const old of firsts) {
          const fresh = await spawn(old.process.name.replace("1", "2"));
          await until(
            `${fresh.process.name} answers`,
            10_000,
            () => running.answeredBy(fresh.process.name) > 0,
          );
          await stop(old);
          lastExit = Date.now();
        }
        await until(
          "every new instance answers after the last restart",
          10_000,
          () => ["a2", "b2", "c2"].every((name) => running.answeredBy(name, lastExit) > 0),
        );
      } finally {
        await load?.stop();
        greeter.close();
      }
    } finally {
      await client.close();
    }
    for (const entry of tracked.filter((t) => t.sent === null)) await stop(entry);
  } catch (e) {
    error = (e as Error)?.message ?? String(e);
  } finally {
    // Whatever is still running once the run stopped early (a hang is not a crash: see error).
    for (const entry of tracked) {
      if (entry.status !== undefined) continue;
      entry.sent = "SIGKILL";
      entry.process.kill("SIGKILL");
      await entry.process.status;
    }
  }
  const instances = tracked.map((t): InstanceEnd => {
    const status = t.status!;
    const wrong = judge(t.sent, status);
    if (wrong) crashes.push(`instance ${t.process.name}: ${wrong}`);
    return { name: t.process.name, sent: t.sent, code: status.code, signal: status.signal };
  });
  const failures = load?.failures ?? [];
  if (failures.length > 0) crashes.push(`${failures.length} failed call(s)`);
  return {
    calls: load?.records.length ?? 0,
    failed: failures.length,
    failures: failures.slice(0, 5).map((f) => `${f.code} ${f.details}`),
    instances,
    crashes,
    ...(error !== undefined && { error }),
    ms: Date.now() - started,
  };
}
