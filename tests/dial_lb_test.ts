/**
 * dial() as a load balancer: retries (gRFC A6), outlier ejection (gRFC A50),
 * filter and locality, against real etcd and greeter servers in separate
 * processes; and the deadline it forwards to an instance.
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";

import { dial } from "../grpc.ts";
import { memoryClient } from "../testing.ts";
import { Greeter, sayHello, startGreeter } from "../harness/greeter.ts";

Deno.test("dial: a slow call with a deadline 30 days away is answered, not cut off by a wrapped grpc-timeout", async () => {
  await using etcd = memoryClient();
  await using _a = await startGreeter(etcd, "svc/slow", "a", { drainMs: 0 });
  const greeter = dial(etcd, "svc/slow", Greeter);
  try {
    const thirtyDays = Date.now() + 30 * 24 * 3600 * 1000;
    const outcome = await sayHello(greeter, { name: "x", delay_ms: 100 }, {
      deadline: thirtyDays,
      waitForReady: true,
    }).then(
      (reply) => reply.message,
      (error: grpc.ServiceError) => `${grpc.status[error.code]} ${error.details}`,
    );
    assert.equal(outcome, "hello x");
  } finally {
    greeter.close();
  }
});
