/**
 * Why an instance cannot be connected to, as grpc-js knows it.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import type { Instance } from "./instance.ts";

/**
 * Reports why an instance cannot be connected to (a certificate for another
 * name, an untrusted CA, a refused connection). grpc-js keeps the reason inside
 * the channel; a call that is not `waitForReady` fails at once with it, before
 * any connection is made, so a probe call brings it out.
 *
 * @param instance an instance whose channel is in TRANSIENT_FAILURE
 * @param report where the reason goes
 */
export function explainFailure(instance: Instance, report: (error: Error) => void): void {
  const call = instance.channel.createCall(
    "/grpc.health.v1.Health/Check",
    Date.now() + 1000,
    null,
    null,
    0,
  );
  call.start(new grpc.Metadata(), {
    onReceiveMetadata: () => {},
    onReceiveMessage: () => {},
    onReceiveStatus: (status) => {
      // A call failed fast for the channel's failure ends UNAVAILABLE. Any other status means
      // the channel connected in between and the server answered: nothing to report.
      if (status.code !== grpc.status.UNAVAILABLE || instance.removed) return;
      // grpc-js stamps the last error with its time: drop it so that one reason reports once.
      const why = status.details.replace(/ ?\(\d{4}-\d\d-\d\dT[^)]*\)/g, "")
        .replace(/\s*Resolution note:\s*$/, "");
      report(new Error(`${instance.describe()} gets no calls: ${why}`));
    },
  });
}
