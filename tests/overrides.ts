/**
 * Test helper: an `EtcdClient` that behaves as another, with some methods replaced.
 *
 * @module
 */
import type { EtcdClient } from "../mod.ts";

/** `client`, with the methods in `overrides` in place of its own (the others bound to it). */
export function withOverrides(client: EtcdClient, overrides: Partial<EtcdClient>): EtcdClient {
  return new Proxy(client, {
    get(target, name) {
      const own = overrides[name as keyof EtcdClient];
      if (own !== undefined) return own;
      const value = Reflect.get(target, name);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}
