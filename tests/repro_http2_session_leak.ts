/**
 * Reproduces the memory that Deno's `node:http2` keeps per closed client
 * session (see docs/faults.md, scenario 10): opens and closes 300 HTTP/2 sessions
 * to a private etcd and prints the JS heap growth per session after GC.
 * Deno 2.9.3: every `ClientHttp2Session` stays reachable from a global handle
 * of its native session; 2.9.4 and later release them (denoland/deno#36043).
 *
 *   deno run -A --v8-flags=--expose-gc tests/repro_http2_session_leak.ts
 *
 * @module
 */
import http2 from "node:http2";
import { startEtcd } from "../harness/etcd_server.ts";

const SESSIONS = 300;
const gc = () => (globalThis as { gc?: () => void }).gc?.();
const heap = () => {
  gc();
  gc();
  return Deno.memoryUsage().heapUsed;
};

await using etcd = await startEtcd();
const open = async () => {
  const session = http2.connect(etcd.endpoint);
  await new Promise<void>((resolve, reject) => {
    session.once("connect", () => resolve());
    session.once("error", reject);
  });
  await new Promise<void>((resolve) => session.close(() => resolve()));
};
for (let i = 0; i < 30; i++) await open(); // warm-up
await new Promise((r) => setTimeout(r, 200));
const before = heap();
for (let i = 0; i < SESSIONS; i++) await open();
await new Promise((r) => setTimeout(r, 500));
const after = heap();
console.log(
  `Deno ${Deno.version.deno}: ${SESSIONS} closed HTTP/2 sessions kept ${
    ((after - before) / 1024).toFixed(0)
  } KiB of JS heap (${((after - before) / SESSIONS / 1024).toFixed(1)} KiB per session)`,
);
