/**
 * A Worker for `tests/workerd_test.ts` (bundled by it, run in workerd): a
 * streaming response that holds `resolve()` over `connectFetch()` open for as
 * long as the client reads, writing one line per batch: the sorted addresses of
 * the view after folding it. `GET /?service=svc/greeter&lines=3` ends after
 * three lines and then closes the resolver and the client; a client that goes
 * away ends them at the next line the Worker writes (workerd cancels the body
 * then).
 *
 * @module
 */
import { connectFetch } from "@seed/grpc-etcd/fetch";
import { applyUpdates, type Endpoint, resolve } from "@seed/grpc-etcd/core";

/** The bindings of `tests/workerd_test.ts`'s config. */
interface Env {
  readonly ETCD_ENDPOINTS: string;
}

export default {
  fetch(request: Request, env: Env): Response {
    const url = new URL(request.url);
    const service = url.searchParams.get("service") ?? "svc/greeter";
    const lines = Number(url.searchParams.get("lines") ?? 1);
    const client = connectFetch({ hosts: env.ETCD_ENDPOINTS.split(",") });
    const updates = resolve(client, service);
    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      async start(controller) {
        let view = new Map<string, Endpoint>();
        let written = 0;
        try {
          for await (const batch of updates) {
            view = applyUpdates(view, batch);
            const addrs = [...view.values()].map((e) => e.addr).sort();
            controller.enqueue(encoder.encode(JSON.stringify(addrs) + "\n"));
            if (++written === lines) break;
          }
          controller.close();
        } catch (error) {
          controller.error(error);
        } finally {
          await updates.return();
          await client.close();
        }
      },
      async cancel() {
        await updates.return();
        await client.close();
      },
    });
    return new Response(body, { headers: { "content-type": "application/x-ndjson" } });
  },
};
