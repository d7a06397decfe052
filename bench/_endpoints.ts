/**
 * Bench helpers: endpoint lists and a sink that keeps results alive.
 *
 * @module
 */
import type { Endpoint, PickInfo } from "../mod.ts";

/** `n` endpoints with weights 1–4 in `metadata.weight`. */
export function endpoints(n: number): Endpoint[] {
  return Array.from({ length: n }, (_, i) => ({
    addr: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:50051`,
    metadata: { weight: 1 + (i % 4) },
  }));
}

/** Pick infos with 1,024 different routing keys, made once. */
export const infos: PickInfo[] = Array.from({ length: 1024 }, (_, i) => {
  const key = `user-${i}`;
  return {
    method: "/demo.Svc/Get",
    header: (name: string) => (name === "x-hash-key" ? key : undefined),
  };
});

/** Written by every bench so that no result is optimised away. */
export const sink = { value: 0 };
