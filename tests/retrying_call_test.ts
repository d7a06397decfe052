/**
 * RetryingCall over scripted instances (no network, fake time): when it
 * retries, where, after how long, what the caller sees of attempts it drops,
 * and when it commits.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import type { Instance } from "../src/grpc/instance.ts";
import type { PickedCall } from "../src/grpc/picked_call.ts";
import { RetryBuffer, RetryThrottle } from "../src/grpc/retry.ts";
import { HEADERS_HOLD_MS, RetryingCall, type RetryRouter } from "../src/grpc/retrying_call.ts";
import { type MethodPolicy, NO_POLICY, parseServiceConfig } from "../src/grpc/service_config.ts";
import { fakeTime } from "./fake_time.ts";

const UNAVAILABLE = grpc.status.UNAVAILABLE;
let started = 0;

/** One attempt as an instance's channel saw it; the test ends it. */
class FakeCall {
  readonly instance: FakeInstance;
  readonly deadline: number;
  metadata: grpc.Metadata | undefined;
  listener: Parameters<ReturnType<grpc.Channel["createCall"]>["start"]>[1] | undefined;
  readonly messages: Buffer[] = [];
  halfClosed = false;
  /** The peer it reports: the address once it "has a stream", else the channel's target. */
  peer: string;

  constructor(instance: FakeInstance, deadline: number) {
    this.instance = instance;
    this.deadline = deadline;
    this.peer = instance.target;
  }
  /** The order it was started in, among all fake calls. */
  number = 0;
  start(metadata: grpc.Metadata, listener: NonNullable<FakeCall["listener"]>) {
    this.number = ++started;
    this.metadata = metadata;
    this.listener = listener;
    this.instance.calls.push(this);
  }
  sendMessageWithContext(context: { callback?: () => void }, message: Buffer) {
    this.messages.push(message);
    // A call whose stream never opened keeps its message and never calls back (as grpc-js's).
    if (!this.instance.stuck) queueMicrotask(() => context.callback?.());
  }
  halfClose() {
    this.halfClosed = true;
  }
  startRead() {}
  setCredentials() {}
  cancelWithStatus(code: grpc.status, details: string) {
    queueMicrotask(() => this.end(code, details));
  }
  getPeer() {
    return this.peer;
  }
  getAuthContext() {
    return null;
  }
  /** The server got it (a stream was opened). */
  reached(): this {
    this.peer = this.instance.endpoint.addr;
    return this;
  }
  headers(entries: Record<string, string> = {}) {
    const metadata = new grpc.Metadata();
    for (const [k, v] of Object.entries(entries)) metadata.set(k, v);
    this.listener!.onReceiveMetadata(metadata);
  }
  message(value: string) {
    this.listener!.onReceiveMessage(value);
  }
  end(code: grpc.status, details = grpc.status[code]!, trailers: Record<string, string> = {}) {
    const metadata = new grpc.Metadata();
    for (const [k, v] of Object.entries(trailers)) metadata.set(k, v);
    this.listener!.onReceiveStatus({ code, details, metadata });
  }
}

class FakeInstance {
  readonly endpoint: { addr: string };
  readonly target: string;
  readonly calls: FakeCall[] = [];
  inflight = 0;
  /** Its channel is closed: `createCall` throws, as grpc-js's does. */
  shutDown = false;
  /** Its calls never complete a write. */
  stuck = false;
  readonly channel = {
    createCall: (_method: string, deadline: number) => {
      if (this.shutDown) throw new Error("Channel has been shut down");
      return new FakeCall(this, deadline);
    },
  };
  constructor(addr: string) {
    this.endpoint = { addr };
    this.target = `dns:${addr}`;
  }
  describe() {
    return `instance ${this.endpoint.addr}`;
  }
}

/** A router over fake instances: round robin, avoiding the instances a retry asks to avoid. */
class FakeRouter implements RetryRouter {
  readonly instances: FakeInstance[];
  closed = false;
  retries = true;
  throttle: RetryThrottle | undefined;
  buffer = new RetryBuffer(1 << 24, 1 << 20);
  random = () => 0.5;
  readonly waitingToRetry = new Set<RetryingCall>();
  readonly queued = new Set<PickedCall>();
  readonly ended: [string, grpc.status, boolean][] = [];
  #next = 0;

  constructor(...addrs: string[]) {
    this.instances = addrs.map((addr) => new FakeInstance(addr));
  }
  pick(attempt: PickedCall): void {
    const ready = this.instances.filter((i) => !attempt.avoid?.includes(i as unknown as Instance));
    const list = ready.length > 0 ? ready : this.instances;
    if (list.length === 0) {
      if (attempt.waitForReady) {
        this.queued.add(attempt);
        attempt.waiting();
      } else attempt.fail(UNAVAILABLE, "no ready instance");
      return;
    }
    attempt.bind(list[this.#next++ % list.length] as unknown as Instance);
  }
  unqueue(attempt: PickedCall): void {
    this.queued.delete(attempt);
  }
  finished(instance: Instance, code: grpc.status, counted: boolean): void {
    instance.inflight--;
    this.ended.push([instance.endpoint.addr, code, counted]);
  }
  backingOff(call: RetryingCall, waiting: boolean): void {
    if (waiting) this.waitingToRetry.add(call);
    else this.waitingToRetry.delete(call);
  }
}

/** What the caller of a call saw. */
interface Seen {
  metadata: grpc.Metadata[];
  messages: unknown[];
  status: grpc.StatusObject | undefined;
}

function startCall(
  router: FakeRouter,
  policy: MethodPolicy,
  options: {
    singleResponse?: boolean;
    deadline?: number;
    waitForReady?: boolean;
    message?: Buffer;
  } = {},
): { call: RetryingCall; seen: Seen } {
  const call = new RetryingCall(router, policy, options.singleResponse ?? true, [
    "/demo.Echo/Echo",
    options.deadline ?? Infinity,
    undefined,
    null,
    0,
  ]);
  const seen: Seen = { metadata: [], messages: [], status: undefined };
  const metadata = new grpc.Metadata(
    options.waitForReady === undefined ? {} : { waitForReady: options.waitForReady },
  );
  call.start(metadata, {
    onReceiveMetadata: (m) => seen.metadata.push(m),
    onReceiveMessage: (m) => seen.messages.push(m),
    onReceiveStatus: (s) => {
      assert.equal(seen.status, undefined, "a second status");
      seen.status = s;
    },
  });
  call.sendMessageWithContext({}, options.message ?? Buffer.from("hi"));
  call.halfClose();
  return { call, seen };
}

/** The latest attempt on any instance. */
function last(router: FakeRouter): FakeCall {
  let latest: FakeCall | undefined;
  for (const i of router.instances) {
    for (const c of i.calls) if (!latest || c.number > latest.number) latest = c;
  }
  return latest!;
}

const policyOf = (methodConfig: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
  parseServiceConfig(JSON.stringify({
    methodConfig: [{ name: [{ service: "demo.Echo" }], ...methodConfig }],
    ...extra,
  })).methodPolicy("/demo.Echo/Echo");

const RETRY = {
  retryPolicy: {
    maxAttempts: 3,
    initialBackoff: "0.1s",
    maxBackoff: "1s",
    backoffMultiplier: 2,
    retryableStatusCodes: ["UNAVAILABLE"],
  },
};

Deno.test("RetryingCall: a call that never reached a server is sent again at once to another instance, once, without a policy", async () => {
  const router = new FakeRouter("a:1", "b:1", "c:1");
  const { seen } = startCall(router, NO_POLICY);
  await Promise.resolve();
  const first = last(router);
  assert.equal(first.instance.endpoint.addr, "a:1");
  assert.deepEqual(first.messages.map(String), ["hi"]);
  first.end(UNAVAILABLE, "No connection established"); // no stream: peer is the target
  const second = last(router);
  assert.notEqual(second, first);
  assert.notEqual(second.instance, first.instance, "another instance");
  await Promise.resolve();
  assert.deepEqual(second.messages.map(String), ["hi"], "the message is replayed");
  assert.equal(second.halfClosed, true);
  assert.equal(second.metadata!.get("grpc-previous-rpc-attempts").length, 0, "not an attempt");
  second.end(UNAVAILABLE, "No connection established");
  assert.equal(seen.status?.code, UNAVAILABLE, "only once");
  assert.equal(router.instances.flatMap((i) => i.calls).length, 2);
  // Neither counts for outlier detection: they never reached a server.
  assert.deepEqual(router.ended, [
    ["a:1", UNAVAILABLE, false],
    [second.instance.endpoint.addr, UNAVAILABLE, false],
  ]);
  // A call that reached its server is not sent again without a policy.
  const other = startCall(router, NO_POLICY);
  await Promise.resolve();
  last(router).reached().end(UNAVAILABLE, "read ECONNRESET");
  assert.equal(other.seen.status?.details, "read ECONNRESET");
});

Deno.test("RetryingCall: a retry policy retries a retryable status after a random wait below the backoff, on another instance, up to maxAttempts", async () => {
  using clock = fakeTime();
  const router = new FakeRouter("a:1", "b:1", "c:1");
  const { seen } = startCall(router, policyOf(RETRY));
  await clock.settle();
  last(router).reached().end(UNAVAILABLE, "first");
  assert.equal(router.waitingToRetry.size, 1);
  // random() = 0.5: the first retry waits 50 ms of the 100 ms backoff, the second 100 of 200.
  await clock.tick(49);
  assert.equal(router.instances.flatMap((i) => i.calls).length, 1);
  await clock.tick(1);
  const second = last(router);
  assert.notEqual(second.instance.endpoint.addr, "a:1");
  assert.equal(second.metadata!.get("grpc-previous-rpc-attempts")[0], "1");
  second.reached().end(UNAVAILABLE, "second");
  await clock.tick(99);
  assert.equal(router.instances.flatMap((i) => i.calls).length, 2);
  await clock.tick(1);
  const third = last(router);
  assert.deepEqual(
    new Set(router.instances.map((i) => i.calls.length)),
    new Set([1]),
    "three attempts on three instances",
  );
  third.reached().end(UNAVAILABLE, "third");
  assert.equal(seen.status?.details, "third", "maxAttempts 3");
  assert.equal(seen.status?.metadata.get("grpc-previous-rpc-attempts")[0], "2");
  assert.equal(router.waitingToRetry.size, 0);
  // A status the policy does not list is passed on at once.
  const other = startCall(router, policyOf(RETRY));
  await clock.settle();
  last(router).reached().end(grpc.status.INVALID_ARGUMENT);
  assert.equal(other.seen.status?.code, grpc.status.INVALID_ARGUMENT);
});

Deno.test("RetryingCall: a server's pushback sets the wait, or stops retries; a wait past the deadline ends the call with the failure", async () => {
  using clock = fakeTime();
  const router = new FakeRouter("a:1", "b:1");
  const pushed = startCall(router, policyOf(RETRY));
  await clock.settle();
  last(router).reached().end(UNAVAILABLE, "busy", { "grpc-retry-pushback-ms": "300" });
  await clock.tick(299);
  assert.equal(router.instances.flatMap((i) => i.calls).length, 1);
  await clock.tick(1);
  last(router).reached().headers();
  last(router).message("pong");
  last(router).end(grpc.status.OK, "OK");
  assert.deepEqual(pushed.seen.messages, ["pong"]);
  const stopped = startCall(router, policyOf(RETRY));
  await clock.settle();
  last(router).reached().end(UNAVAILABLE, "go away", { "grpc-retry-pushback-ms": "-1" });
  assert.equal(stopped.seen.status?.details, "go away");
  const late = startCall(router, policyOf(RETRY), { deadline: clock.now + 40 });
  await clock.settle();
  last(router).reached().end(UNAVAILABLE, "too late to retry");
  assert.equal(
    late.seen.status?.details,
    "too late to retry",
    "a 50 ms wait would pass the deadline",
  );
  assert.equal(router.waitingToRetry.size, 0);
});

Deno.test("RetryingCall: with a policy, a streaming call is retried until the caller sees a message; the headers of a dropped attempt are never passed on", async () => {
  using clock = fakeTime();
  const router = new FakeRouter("a:1", "b:1");
  const stream = startCall(router, policyOf(RETRY), { singleResponse: false });
  await clock.settle();
  last(router).reached().headers({ attempt: "1" });
  assert.equal(stream.seen.metadata.length, 0, "held back");
  last(router).end(UNAVAILABLE, "reset before the first message");
  await clock.tick(50);
  last(router).reached().headers({ attempt: "2" });
  last(router).message("m1");
  assert.deepEqual(stream.seen.metadata.map((m) => m.get("attempt")[0]), ["2"]);
  assert.equal(stream.seen.metadata[0]!.get("grpc-previous-rpc-attempts")[0], "1");
  assert.deepEqual(stream.seen.messages, ["m1"]);
  last(router).end(UNAVAILABLE, "reset after a message");
  assert.equal(stream.seen.status?.details, "reset after a message", "committed: not retried");
  // A single response is held back with its headers until the status.
  const single = startCall(router, policyOf(RETRY), { singleResponse: true });
  await clock.settle();
  last(router).reached().headers({ attempt: "1" });
  last(router).message("lost");
  last(router).end(UNAVAILABLE, "reset before the status");
  assert.equal(single.seen.messages.length, 0);
  await clock.tick(50);
  last(router).reached().headers({ attempt: "2" });
  last(router).message("kept");
  last(router).end(grpc.status.OK, "OK");
  assert.deepEqual(single.seen.metadata.map((m) => m.get("attempt")[0]), ["2"]);
  assert.deepEqual(single.seen.messages, ["kept"]);
  assert.equal(single.seen.status?.code, grpc.status.OK);
  // Without a policy nothing is held: the headers pass at once (and commit, as in gRFC A6).
  const plain = startCall(router, NO_POLICY, { singleResponse: true });
  await clock.settle();
  last(router).reached().headers({ attempt: "1" });
  assert.equal(plain.seen.metadata.length, 1);
  last(router).end(UNAVAILABLE, "reset");
  assert.equal(plain.seen.status?.details, "reset");
});

Deno.test("RetryingCall: the method config's timeout shortens the deadline, its waitForReady is the default, a call's own wins", async () => {
  using clock = fakeTime();
  const router = new FakeRouter("a:1");
  startCall(router, policyOf({ timeout: "0.25s" }), { deadline: clock.now + 10_000 });
  await clock.settle();
  assert.equal(last(router).deadline, clock.now + 250);
  startCall(router, policyOf({ timeout: "20s" }), { deadline: clock.now + 10_000 });
  await clock.settle();
  assert.equal(last(router).deadline, clock.now + 10_000);
  const empty = new FakeRouter();
  const waits = startCall(empty, policyOf({ waitForReady: true }), { deadline: clock.now + 500 });
  const failsFast = startCall(empty, policyOf({ waitForReady: true }), { waitForReady: false });
  await clock.settle();
  assert.equal(empty.queued.size, 1, "the config's waitForReady: queued");
  assert.equal(failsFast.seen.status?.code, UNAVAILABLE, "the call's own false wins");
  await clock.tick(500);
  assert.equal(waits.seen.status?.code, grpc.status.DEADLINE_EXCEEDED);
  assert.equal(empty.queued.size, 0);
});

Deno.test("RetryingCall: cancelling or closing while it waits to retry ends it at once and clears its timer", async () => {
  using clock = fakeTime();
  const router = new FakeRouter("a:1", "b:1");
  const { call, seen } = startCall(router, policyOf(RETRY));
  await clock.settle();
  last(router).reached().end(UNAVAILABLE);
  assert.equal(router.waitingToRetry.size, 1);
  call.cancelWithStatus(grpc.status.CANCELLED, "Cancelled on client");
  await clock.settle();
  assert.equal(seen.status?.code, grpc.status.CANCELLED);
  assert.equal(router.waitingToRetry.size, 0);
  await clock.tick(1000);
  assert.equal(router.instances.flatMap((i) => i.calls).length, 1, "no attempt after cancel");
  const closing = startCall(router, policyOf(RETRY));
  await clock.settle();
  last(router).reached().end(UNAVAILABLE);
  router.closed = true;
  for (const waiting of router.waitingToRetry) waiting.abort(UNAVAILABLE, "Channel closed");
  await clock.settle();
  assert.equal(closing.seen.status?.details, "Channel closed");
  assert.equal(router.waitingToRetry.size, 0);
});

Deno.test("RetryingCall: a message past the replay buffer commits the call; throttling and grpc.enable_retries 0 stop retries", async () => {
  using clock = fakeTime();
  const router = new FakeRouter("a:1", "b:1");
  router.buffer = new RetryBuffer(1 << 24, 4);
  const big = startCall(router, policyOf(RETRY), { message: Buffer.from("too big") });
  await clock.settle();
  last(router).reached().end(UNAVAILABLE, "committed");
  assert.equal(big.seen.status?.details, "committed");
  router.buffer = new RetryBuffer(1 << 24, 1 << 20);
  assert.equal(router.buffer.used, 0);
  router.throttle = new RetryThrottle({ maxTokens: 2, tokenRatio: 1 });
  const throttled = startCall(router, policyOf(RETRY));
  await clock.settle();
  last(router).reached().end(UNAVAILABLE, "tokens 1 of 2: no retry");
  assert.equal(throttled.seen.status?.details, "tokens 1 of 2: no retry");
  router.throttle = undefined;
  router.retries = false;
  const off = startCall(router, policyOf(RETRY));
  await clock.settle();
  last(router).end(UNAVAILABLE, "not even transparently");
  assert.equal(off.seen.status?.details, "not even transparently");
});

Deno.test("RetryingCall: an attempt whose instance's channel refuses the call (closed) ends UNAVAILABLE, not reached, and goes to another instance; nothing throws", async () => {
  using clock = fakeTime();
  const router = new FakeRouter("a:1", "b:1");
  router.instances[0]!.shutDown = true;
  // Picked from inside a timer, as a retry is: a throw there would be uncaught.
  let thrown: unknown;
  let started: ReturnType<typeof startCall> | undefined;
  setTimeout(() => {
    try {
      started = startCall(router, NO_POLICY);
    } catch (error) {
      thrown = error;
    }
  }, 0);
  await clock.tick(0);
  assert.equal(thrown, undefined);
  await clock.settle();
  // Sent again at once (a transparent retry), to b.
  const second = last(router);
  assert.equal(second.instance.endpoint.addr, "b:1");
  assert.deepEqual(second.messages.map(String), ["hi"]);
  second.reached().headers();
  second.message("pong");
  second.end(grpc.status.OK, "OK");
  assert.equal(started!.seen.status?.code, grpc.status.OK);
  assert.deepEqual(started!.seen.messages, ["pong"]);
  // Not counted: no call ran on a (its count of running calls never moved).
  assert.deepEqual(router.ended, [["b:1", grpc.status.OK, true]]);
  assert.equal(router.instances[0]!.inflight, 0);
  // With both refusing, the call ends UNAVAILABLE naming the instance and the reason.
  router.instances[1]!.shutDown = true;
  const failing = startCall(router, NO_POLICY);
  await clock.settle();
  assert.equal(failing.seen.status?.code, UNAVAILABLE);
  assert.match(
    failing.seen.status!.details,
    /^grpc-etcd: could not start a call on instance [ab]:1: Channel has been shut down$/,
  );
});

Deno.test("RetryingCall: every write's callback is called, also for writes after the call ended and writes its attempt never completed", async (t) => {
  using clock = fakeTime();
  const policies: [string, MethodPolicy][] = [
    ["no policy", NO_POLICY],
    ["a retry policy", policyOf(RETRY)],
  ];
  for (const [name, policy] of policies) {
    await t.step(name, async () => {
      const router = new FakeRouter("a:1");
      // A client-streaming call: messages, no half-close yet.
      const call = new RetryingCall(router, policy, true, [
        "/demo.Echo/Upload",
        Infinity,
        undefined,
        null,
        0,
      ]);
      let status: grpc.StatusObject | undefined;
      call.start(new grpc.Metadata(), {
        onReceiveMetadata() {},
        onReceiveMessage() {},
        onReceiveStatus: (s) => status = s,
      });
      const acked: number[] = [];
      const write = (n: number) =>
        call.sendMessageWithContext({ callback: () => acked.push(n) }, Buffer.from(`m${n}`));
      write(1);
      await clock.settle();
      assert.deepEqual(acked, [1]);
      // The server ends the call early, with a write of the caller still on its way.
      router.instances[0]!.stuck = true;
      last(router).reached().headers();
      write(2);
      write(3);
      last(router).end(grpc.status.PERMISSION_DENIED, "no more");
      assert.equal(status?.code, grpc.status.PERMISSION_DENIED);
      write(4);
      await clock.settle();
      assert.deepEqual(acked, [1, 2, 3, 4]);
    });
  }
  await t.step("a message kept for a retry that never comes", async () => {
    const router = new FakeRouter("a:1");
    router.buffer = new RetryBuffer(1 << 24, 4);
    const call = new RetryingCall(router, policyOf(RETRY), true, [
      "/demo.Echo/Upload",
      Infinity,
      undefined,
      null,
      0,
    ]);
    let status: grpc.StatusObject | undefined;
    call.start(new grpc.Metadata(), {
      onReceiveMetadata() {},
      onReceiveMessage() {},
      onReceiveStatus: (s) => status = s,
    });
    last(router).reached().end(UNAVAILABLE, "retry me");
    assert.equal(router.waitingToRetry.size, 1);
    // Too big to keep for replaying while no attempt runs: held for the next attempt.
    let acked = false;
    call.sendMessageWithContext({ callback: () => acked = true }, Buffer.from("too big"));
    call.cancelWithStatus(grpc.status.CANCELLED, "Cancelled on client");
    await clock.settle();
    assert.equal(status?.code, grpc.status.CANCELLED);
    assert.equal(acked, true);
  });
});

Deno.test("RetryingCall: with a policy, headers are held only once the caller has half-closed; a stream's for at most HEADERS_HOLD_MS", async () => {
  using clock = fakeTime();
  const router = new FakeRouter("a:1", "b:1");
  // A bidi call still sending: its headers pass at once and commit it (gRFC A6), so that a
  // caller waiting for them before it sends is not stuck.
  const bidi = new RetryingCall(router, policyOf(RETRY), false, [
    "/demo.Echo/Chat",
    Infinity,
    undefined,
    null,
    0,
  ]);
  const seen: Seen = { metadata: [], messages: [], status: undefined };
  bidi.start(new grpc.Metadata(), {
    onReceiveMetadata: (m) => seen.metadata.push(m),
    onReceiveMessage: (m) => seen.messages.push(m),
    onReceiveStatus: (s) => seen.status = s,
  });
  bidi.startRead();
  await clock.settle();
  last(router).reached().headers({ session: "s1" });
  assert.deepEqual(seen.metadata.map((m) => m.get("session")[0]), ["s1"]);
  last(router).end(UNAVAILABLE, "reset after the headers");
  assert.equal(seen.status?.details, "reset after the headers", "committed: not retried");
  // A server stream (half-closed): held until the first message, or HEADERS_HOLD_MS.
  const stream = startCall(router, policyOf(RETRY), { singleResponse: false });
  await clock.settle();
  last(router).reached().headers({ session: "s2" });
  await clock.tick(HEADERS_HOLD_MS - 1);
  assert.equal(stream.seen.metadata.length, 0);
  await clock.tick(1);
  assert.deepEqual(stream.seen.metadata.map((m) => m.get("session")[0]), ["s2"]);
  last(router).end(UNAVAILABLE, "reset before the first message");
  assert.equal(stream.seen.status?.details, "reset before the first message", "committed");
  // A single response (half-closed): held until the status, however long it takes.
  const single = startCall(router, policyOf(RETRY), { singleResponse: true });
  await clock.settle();
  last(router).reached().headers({ session: "s3" });
  await clock.tick(60_000);
  assert.equal(single.seen.metadata.length, 0);
  last(router).end(UNAVAILABLE, "retried");
  await clock.tick(50);
  last(router).reached().headers({ session: "s4" });
  last(router).message("pong");
  last(router).end(grpc.status.OK, "OK");
  assert.deepEqual(single.seen.metadata.map((m) => m.get("session")[0]), ["s4"]);
  assert.deepEqual(single.seen.messages, ["pong"]);
  assert.equal(router.waitingToRetry.size, 0);
});
