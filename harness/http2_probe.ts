/**
 * Harness: one gRPC call written as raw HTTP/2 frames over `node:net`, with an
 * `:authority` of our choosing, to see what a server does with it. The frames
 * are built here rather than by a runtime's `node:http2` client, so that the
 * bytes on the wire are the same whichever runtime sends them and only the
 * server under test varies (grpc-go before 1.57 sends a target's path, such as
 * `svc/greeter`, unescaped as the authority).
 *
 * @module
 */
import { Buffer } from "node:buffer";
import { connect, type Socket } from "node:net";

/** What became of one request. */
export type StreamOutcome =
  | { kind: "answered"; reply: string }
  | { kind: "stream reset"; code: string }
  | { kind: "connection dropped"; code: string }
  | { kind: "no answer" };

/** What a server did with a request, and with a plain request sent next on the same connection. */
export interface ProbeResult {
  /** The request with the chosen authority. */
  readonly first: StreamOutcome;
  /** A request with the authority `127.0.0.1:<port>`, on the same connection. */
  readonly next: StreamOutcome;
}

const ERRORS = [
  "NO_ERROR",
  "PROTOCOL_ERROR",
  "INTERNAL_ERROR",
  "FLOW_CONTROL_ERROR",
  "SETTINGS_TIMEOUT",
  "STREAM_CLOSED",
  "FRAME_SIZE_ERROR",
  "REFUSED_STREAM",
  "CANCEL",
  "COMPRESSION_ERROR",
  "CONNECT_ERROR",
  "ENHANCE_YOUR_CALM",
  "INADEQUATE_SECURITY",
  "HTTP_1_1_REQUIRED",
];
const errorName = (code: number) => ERRORS[code] ?? `error ${code}`;

const DATA = 0x0, HEADERS = 0x1, RST_STREAM = 0x3, SETTINGS = 0x4, PING = 0x6, GOAWAY = 0x7;
const END_STREAM = 0x1, ACK = 0x1, END_HEADERS = 0x4;

/** Describes an outcome in words, e.g. `stream reset (PROTOCOL_ERROR)`. */
export function describeOutcome(outcome: StreamOutcome): string {
  switch (outcome.kind) {
    case "answered":
      return "answered";
    case "stream reset":
    case "connection dropped":
      return `${outcome.kind} (${outcome.code})`;
    case "no answer":
      return "no answer";
  }
}

function frame(type: number, flags: number, stream: number, payload: Uint8Array): Buffer {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(stream, 5);
  return Buffer.concat([header, payload]);
}

/** An HPACK integer with an `n`-bit prefix (RFC 7541, 5.1). */
function hpackInteger(value: number, n: number, first = 0): number[] {
  const max = (1 << n) - 1;
  if (value < max) return [first | value];
  const bytes = [first | max];
  value -= max;
  while (value >= 128) {
    bytes.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  bytes.push(value);
  return bytes;
}

/** A header block of literal fields without indexing, plain strings (no Huffman). */
function headerBlock(headers: [string, string][]): Buffer {
  const bytes: number[] = [];
  for (const [name, value] of headers) {
    bytes.push(0x00);
    for (const text of [name, value]) {
      const raw = Buffer.from(text);
      bytes.push(...hpackInteger(raw.length, 7), ...raw);
    }
  }
  return Buffer.from(bytes);
}

/** A gRPC message frame of `helloworld.HelloRequest { name }`. */
function helloRequest(name: string): Buffer {
  const text = Buffer.from(name);
  const message = Buffer.from([0x0a, text.length, ...text]);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

interface StreamState {
  data: Buffer;
  settle: (outcome: StreamOutcome) => void;
}

/**
 * Opens one HTTP/2 connection to `addr` (cleartext, as grpc-js's insecure
 * server), sends `helloworld.Greeter/SayHello` with `:authority` =
 * `authority`, then the same call with a plain authority, and reports what
 * became of each.
 *
 * @param addr `host:port` of a greeter server
 * @param authority the `:authority` of the first request
 * @param options `timeoutMs` per request (default 3000)
 * @returns the outcome of both requests
 */
export async function probeAuthority(
  addr: string,
  authority: string,
  options: { timeoutMs?: number } = {},
): Promise<ProbeResult> {
  const timeoutMs = options.timeoutMs ?? 3000;
  const [host, port] = [
    addr.slice(0, addr.lastIndexOf(":")),
    Number(addr.slice(addr.lastIndexOf(":") + 1)),
  ];
  const socket: Socket = connect({ host, port });
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", resolve);
    socket.once("error", reject);
  });
  const streams = new Map<number, StreamState>();
  let dropped: string | undefined;
  const drop = (why: string) => {
    dropped ??= why;
    for (const state of streams.values()) {
      state.settle({ kind: "connection dropped", code: dropped });
    }
  };
  let buffer = Buffer.alloc(0);
  socket.on("data", (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    while (buffer.length >= 9) {
      const length = buffer.readUIntBE(0, 3);
      if (buffer.length < 9 + length) break;
      const [type, flags, stream] = [buffer[3]!, buffer[4]!, buffer.readUInt32BE(5) & 0x7fffffff];
      const payload = buffer.subarray(9, 9 + length);
      buffer = buffer.subarray(9 + length);
      const state = streams.get(stream);
      if (type === SETTINGS && !(flags & ACK)) {
        socket.write(frame(SETTINGS, ACK, 0, new Uint8Array()));
      } else if (type === PING && !(flags & ACK)) socket.write(frame(PING, ACK, 0, payload));
      else if (type === GOAWAY) drop(`GOAWAY ${errorName(payload.readUInt32BE(4))}`);
      else if (type === RST_STREAM && state) {
        state.settle({ kind: "stream reset", code: errorName(payload.readUInt32BE(0)) });
      } else if ((type === DATA || type === HEADERS) && state) {
        if (type === DATA) state.data = Buffer.concat([state.data, payload]);
        if (flags & END_STREAM) {
          // HelloReply { message = 1; instance = 2 }: the text after the 5-byte gRPC prefix.
          state.settle({ kind: "answered", reply: state.data.subarray(5).toString("latin1") });
        }
      }
    }
  });
  socket.on("error", () => {});
  socket.once("close", () => drop("closed"));

  const request = (stream: number, authority: string): Promise<StreamOutcome> => {
    if (dropped) return Promise.resolve({ kind: "connection dropped", code: dropped });
    return new Promise((resolve) => {
      const timer = setTimeout(() => settle({ kind: "no answer" }), timeoutMs);
      const settle = (outcome: StreamOutcome) => {
        clearTimeout(timer);
        streams.delete(stream);
        resolve(outcome);
      };
      streams.set(stream, { data: Buffer.alloc(0), settle });
      const headers = headerBlock([
        [":method", "POST"],
        [":scheme", "http"],
        [":path", "/helloworld.Greeter/SayHello"],
        [":authority", authority],
        ["content-type", "application/grpc"],
        ["te", "trailers"],
      ]);
      socket.write(frame(HEADERS, END_HEADERS, stream, headers));
      socket.write(frame(DATA, END_STREAM, stream, helloRequest("probe")));
    });
  };

  try {
    socket.write(Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    socket.write(frame(SETTINGS, 0, 0, new Uint8Array()));
    const first = await request(1, authority);
    const next = await request(3, addr);
    return { first, next };
  } finally {
    socket.destroy();
  }
}
