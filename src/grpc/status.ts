/**
 * The status a dialed call passes on to its caller. Pure.
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";

/**
 * grpc-js reports a call cut off by a broken connection as UNAVAILABLE when the
 * socket error is ECONNRESET or ETIMEDOUT, but as INTERNAL ("Received RST_STREAM
 * with code 2 triggered by internal client error: write EPIPE", or "…: This socket
 * has been ended by the other party", the EPIPE of a write after the peer's FIN)
 * when the write lost the race with the peer's close. It is the same event, and
 * callers retry UNAVAILABLE: report it so, keeping grpc-js's details.
 */
const BROKEN_PIPE =
  /triggered by internal client error: (?:(?:read|write) EPIPE|This socket has been ended by the other party)$/;

/** The status to pass on for `status` (see {@linkcode BROKEN_PIPE}). */
export function passedOnStatus(status: grpc.StatusObject): grpc.StatusObject {
  return status.code === grpc.status.INTERNAL && BROKEN_PIPE.test(status.details)
    ? { ...status, code: grpc.status.UNAVAILABLE }
    : status;
}
