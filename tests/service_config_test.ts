/**
 * parseServiceConfig(): what it reads from a service config, its errors, and
 * a table of configs on which it must agree with grpc-js 1.14 (its channel's
 * own service-config validation, and `parseLoadBalancingConfig` for the
 * load-balancing entries).
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { validateRetryThrottling } from "@grpc/grpc-js/build/src/service-config.js";
import { NO_POLICY, parseServiceConfig } from "../src/grpc/service_config.ts";

const RETRY = {
  maxAttempts: 3,
  initialBackoff: "0.1s",
  maxBackoff: "1s",
  backoffMultiplier: 2,
  retryableStatusCodes: ["UNAVAILABLE"],
};
const OD = {
  interval: { seconds: 1, nanos: 0 },
  base_ejection_time: { seconds: 30, nanos: 0 },
  max_ejection_percent: 50,
  failure_percentage_ejection: {
    threshold: 50,
    enforcement_percentage: 100,
    minimum_hosts: 3,
    request_volume: 10,
  },
  child_policy: [{ round_robin: {} }],
};

/** Whether grpc-js accepts a config: its channel takes it, and it parses every LB entry it knows. */
function grpcJsAccepts(text: string): boolean {
  let channel: grpc.Channel | undefined;
  try {
    channel = new grpc.Channel("127.0.0.1:1", grpc.credentials.createInsecure(), {
      "grpc.service_config": text,
    });
  } catch {
    return false;
  } finally {
    channel?.close();
  }
  const list = (JSON.parse(text) as { loadBalancingConfig?: Record<string, unknown>[] })
    .loadBalancingConfig ?? [];
  for (const entry of list) {
    if (!grpc.experimental.isLoadBalancerNameRegistered(Object.keys(entry)[0]!)) continue;
    try {
      grpc.experimental.parseLoadBalancingConfig(entry as never);
    } catch {
      return false;
    }
  }
  return true;
}

function oursAccepts(text: string): boolean {
  try {
    parseServiceConfig(text);
    return true;
  } catch (error) {
    assert.ok(error instanceof TypeError || error instanceof RangeError, String(error));
    return false;
  }
}

const od = (patch: Record<string, unknown>) => ({
  loadBalancingConfig: [{ outlier_detection: { ...OD, ...patch } }],
});
const retry = (patch: Record<string, unknown>) => ({
  methodConfig: [{ name: [{ service: "s" }], retryPolicy: { ...RETRY, ...patch } }],
});
const method = (patch: Record<string, unknown>) => ({
  methodConfig: [{ name: [{ service: "s" }], ...patch }],
});

/** Configs on both sides of grpc-js's rules; each must get grpc-js's verdict. */
const TABLE: Record<string, unknown> = {
  "the issue's example": { loadBalancingConfig: [{ outlier_detection: OD }] },
  "round_robin": { loadBalancingConfig: [{ round_robin: {} }] },
  "empty": {},
  "an array": [],
  "a number": 5,
  "null": null,
  "loadBalancingPolicy string": { loadBalancingPolicy: "round_robin" },
  "loadBalancingPolicy number": { loadBalancingPolicy: 1 },
  "loadBalancingConfig not an array": { loadBalancingConfig: { round_robin: {} } },
  "an LB entry with two keys": { loadBalancingConfig: [{ round_robin: {}, pick_first: {} }] },
  "an LB entry with no key": { loadBalancingConfig: [{}] },
  "an LB entry that is null": { loadBalancingConfig: [null] },
  "an unknown policy, then round_robin": {
    loadBalancingConfig: [{ xds_wrr_locality_experimental: {} }, { round_robin: {} }],
  },
  "od: no child_policy": od({ child_policy: undefined }),
  "od: child_policy not an array": od({ child_policy: { round_robin: {} } }),
  "od: child_policy empty": od({ child_policy: [] }),
  "od: child_policy pick_first": od({ child_policy: [{ pick_first: {} }] }),
  "od: child_policy unknown then round_robin": od({
    child_policy: [{ nope: {} }, { round_robin: {} }],
  }),
  "od: child_policy nested outlier_detection": od({
    child_policy: [{ outlier_detection: { child_policy: [{ round_robin: {} }] } }],
  }),
  "od: only child_policy": {
    loadBalancingConfig: [{ outlier_detection: { child_policy: [{ round_robin: {} }] } }],
  },
  "od: null": { loadBalancingConfig: [{ outlier_detection: null }] },
  "od: interval as a string": od({ interval: "1s" }),
  "od: interval without nanos": od({ interval: { seconds: 1 } }),
  "od: interval null": od({ interval: null }),
  "od: interval zero": od({ interval: { seconds: 0, nanos: 0 } }),
  "od: interval fractional seconds": od({ interval: { seconds: 0.5, nanos: 0 } }),
  "od: negative seconds": od({ base_ejection_time: { seconds: -1, nanos: 0 } }),
  "od: nanos too big": od({ max_ejection_time: { seconds: 1, nanos: 1e9 } }),
  "od: seconds at the limit": od({ max_ejection_time: { seconds: 315576000000, nanos: 0 } }),
  "od: seconds past the limit": od({ max_ejection_time: { seconds: 315576000001, nanos: 0 } }),
  "od: max_ejection_percent 101": od({ max_ejection_percent: 101 }),
  "od: max_ejection_percent -1": od({ max_ejection_percent: -1 }),
  "od: max_ejection_percent as a string": od({ max_ejection_percent: "50" }),
  "od: max_ejection_percent 33.5": od({ max_ejection_percent: 33.5 }),
  "od: failure_percentage_ejection null": od({ failure_percentage_ejection: null }),
  "od: failure_percentage_ejection a number": od({ failure_percentage_ejection: 5 }),
  "od: failure_percentage_ejection empty": od({ failure_percentage_ejection: {} }),
  "od: threshold 150": od({ failure_percentage_ejection: { threshold: 150 } }),
  "od: enforcement_percentage a string": od({
    failure_percentage_ejection: { enforcement_percentage: "100" },
  }),
  "od: minimum_hosts negative": od({ failure_percentage_ejection: { minimum_hosts: -3 } }),
  "od: request_volume a string": od({ failure_percentage_ejection: { request_volume: "10" } }),
  "od: success_rate_ejection": od({
    success_rate_ejection: {
      stdev_factor: 1000,
      enforcement_percentage: 100,
      minimum_hosts: 3,
      request_volume: 10,
    },
  }),
  "od: stdev_factor a string": od({ success_rate_ejection: { stdev_factor: "1" } }),
  "od: success_rate enforcement 101": od({
    success_rate_ejection: { enforcement_percentage: 101 },
  }),
  "od: unknown field": od({ consecutive_5xx: 5 }),
  "retry": retry({}),
  "retry: maxAttempts 1": retry({ maxAttempts: 1 }),
  "retry: maxAttempts 2.5": retry({ maxAttempts: 2.5 }),
  "retry: maxAttempts 9": retry({ maxAttempts: 9 }),
  "retry: maxAttempts missing": retry({ maxAttempts: undefined }),
  "retry: initialBackoff 0s": retry({ initialBackoff: "0s" }),
  "retry: initialBackoff 100ms": retry({ initialBackoff: "100ms" }),
  "retry: initialBackoff .5s": retry({ initialBackoff: ".5s" }),
  "retry: initialBackoff 10 decimals": retry({ initialBackoff: "0.1234567891s" }),
  "retry: initialBackoff a number": retry({ initialBackoff: 0.1 }),
  "retry: maxBackoff missing": retry({ maxBackoff: undefined }),
  "retry: backoffMultiplier 0": retry({ backoffMultiplier: 0 }),
  "retry: backoffMultiplier 0.5": retry({ backoffMultiplier: 0.5 }),
  "retry: backoffMultiplier a string": retry({ backoffMultiplier: "2" }),
  "retry: codes empty": retry({ retryableStatusCodes: [] }),
  "retry: codes not an array": retry({ retryableStatusCodes: "UNAVAILABLE" }),
  "retry: codes as numbers": retry({ retryableStatusCodes: [14, 4] }),
  "retry: code 17": retry({ retryableStatusCodes: [17] }),
  "retry: code in lower case": retry({ retryableStatusCodes: ["unavailable"] }),
  "retry: code as a numeric string": retry({ retryableStatusCodes: ["14"] }),
  "retry: unknown code name": retry({ retryableStatusCodes: ["SOMETIMES"] }),
  "retry: code OK": retry({ retryableStatusCodes: ["OK"] }),
  "retry: policy null": method({ retryPolicy: null }),
  "retry and hedging": method({ retryPolicy: RETRY, hedgingPolicy: { maxAttempts: 2 } }),
  "hedging": method({ hedgingPolicy: { maxAttempts: 2, hedgingDelay: "0.5s" } }),
  "hedging: maxAttempts 1": method({ hedgingPolicy: { maxAttempts: 1 } }),
  "hedging: bad delay": method({ hedgingPolicy: { maxAttempts: 2, hedgingDelay: "1" } }),
  "hedging: bad code": method({ hedgingPolicy: { maxAttempts: 2, nonFatalStatusCodes: ["x"] } }),
  "hedging: codes not an array": method({
    hedgingPolicy: { maxAttempts: 2, nonFatalStatusCodes: 5 },
  }),
  "timeout string": method({ timeout: "1.5s" }),
  "timeout object": method({ timeout: { seconds: 1, nanos: 500000000 } }),
  "timeout negative object": method({ timeout: { seconds: -1, nanos: 0 } }),
  "timeout without nanos": method({ timeout: { seconds: 1 } }),
  "timeout null": method({ timeout: null }),
  "timeout ms string": method({ timeout: "100ms" }),
  "timeout number": method({ timeout: 1 }),
  "waitForReady true": method({ waitForReady: true }),
  "waitForReady a string": method({ waitForReady: "true" }),
  "maxRequestBytes a string": method({ maxRequestBytes: "1" }),
  "maxResponseBytes a number": method({ maxResponseBytes: 1 }),
  "method config not an object": { methodConfig: [5] },
  "method config without name": { methodConfig: [{ timeout: "1s" }] },
  "name not an array": { methodConfig: [{ name: { service: "s" } }] },
  "name entry null": { methodConfig: [{ name: [null] }] },
  "name service a number": { methodConfig: [{ name: [{ service: 1 }] }] },
  "name method a number": { methodConfig: [{ name: [{ service: "s", method: 1 }] }] },
  "name method without service": { methodConfig: [{ name: [{ method: "m" }] }] },
  "name method with empty service": { methodConfig: [{ name: [{ service: "", method: "m" }] }] },
  "name empty service": { methodConfig: [{ name: [{ service: "" }] }] },
  "duplicate names": { methodConfig: [{ name: [{ service: "s" }] }, { name: [{ service: "s" }] }] },
  "duplicate empty names": { methodConfig: [{ name: [{}] }, { name: [{ service: "" }] }] },
  "methodConfig not an array": { methodConfig: { name: [] } },
  "retryThrottling": { retryThrottling: { maxTokens: 10, tokenRatio: 0.1 } },
  "retryThrottling null": { retryThrottling: null },
  "retryThrottling maxTokens 0": { retryThrottling: { maxTokens: 0, tokenRatio: 0.1 } },
  "retryThrottling maxTokens 1000": { retryThrottling: { maxTokens: 1000, tokenRatio: 0.1 } },
  "retryThrottling maxTokens 1001": { retryThrottling: { maxTokens: 1001, tokenRatio: 0.1 } },
  "retryThrottling maxTokens 2.5": { retryThrottling: { maxTokens: 2.5, tokenRatio: 0.1 } },
  "retryThrottling tokenRatio 0": { retryThrottling: { maxTokens: 10, tokenRatio: 0 } },
  "retryThrottling tokenRatio missing": { retryThrottling: { maxTokens: 10 } },
  "retryThrottling rounding to 0": { retryThrottling: { maxTokens: 0.0004, tokenRatio: 0.0004 } },
};

Deno.test("parseServiceConfig() accepts what grpc-js 1.14 accepts, and refuses what it refuses", () => {
  const disagreements: string[] = [];
  let accepted = 0;
  for (const [name, config] of Object.entries(TABLE)) {
    const text = JSON.stringify(config);
    const theirs = grpcJsAccepts(text);
    const ours = oursAccepts(text);
    if (theirs) accepted++;
    if (theirs !== ours) disagreements.push(`${name}: grpc-js ${theirs}, ours ${ours}`);
  }
  assert.deepEqual(disagreements, []);
  // Both verdicts are represented, so the table tests something.
  assert.ok(accepted > 20 && accepted < Object.keys(TABLE).length - 20, `${accepted} accepted`);
  // Text that is not JSON: both refuse.
  assert.throws(() =>
    new grpc.Channel("127.0.0.1:1", grpc.credentials.createInsecure(), {
      "grpc.service_config": "{",
    })
  );
  assert.throws(() => parseServiceConfig("{"), /grpc.service_config: not JSON/);
});

Deno.test("parseServiceConfig() errors name the field and the value", () => {
  const where = 'options.channelOptions["grpc.service_config"]';
  const cases: [unknown, RegExp][] = [
    [
      retry({ maxAttempts: 1 }),
      /methodConfig\[0\]\.retryPolicy\.maxAttempts must be an integer of at least 2, got 1$/,
    ],
    [
      retry({ initialBackoff: "100ms" }),
      /methodConfig\[0\]\.retryPolicy\.initialBackoff must be a duration string .*, got "100ms"$/,
    ],
    [
      retry({ retryableStatusCodes: ["SOMETIMES"] }),
      /retryableStatusCodes\[0\] must be a gRPC status code.*got "SOMETIMES"$/,
    ],
    [
      od({ interval: "1s" }),
      /outlier_detection\.interval must be a duration object \{ "seconds": number, "nanos": number \}, got "1s"$/,
    ],
    [
      od({ max_ejection_percent: 101 }),
      /outlier_detection\.max_ejection_percent must be a percentage from 0 to 100, got 101$/,
    ],
    [
      od({ failure_percentage_ejection: { threshold: 150 } }),
      /failure_percentage_ejection\.threshold must be a percentage from 0 to 100, got 150$/,
    ],
    [od({ child_policy: [{ pick_first: {} }] }), /child_policy chooses pick_first/],
    [
      od({ child_policy: [] }),
      /child_policy has no load balancing config grpc-js recognises, got \[\]$/,
    ],
    [
      { retryThrottling: { maxTokens: 1001, tokenRatio: 0.1 } },
      /retryThrottling\.maxTokens must be a number in \(0, 1000\], got 1001$/,
    ],
    [
      { methodConfig: [{ name: [{ method: "m" }] }] },
      /methodConfig\[0\]\.name\[0\]\.method is set \("m"\) without a service$/,
    ],
    [method({ timeout: 1 }), /methodConfig\[0\]\.timeout must be a duration string .*got 1$/],
  ];
  for (const [config, pattern] of cases) {
    assert.throws(
      () => parseServiceConfig(JSON.stringify(config), { where }),
      (error: Error) => {
        assert.ok(error.message.startsWith(`${where}: `), error.message);
        assert.match(error.message, pattern);
        return error instanceof TypeError || error instanceof RangeError;
      },
    );
  }
  assert.throws(() => parseServiceConfig({ methodConfig: [] }, { where }), TypeError);
});

Deno.test("parseServiceConfig() reads retry policies, timeouts and waitForReady per method, as gRPC finds them", () => {
  const config = parseServiceConfig(JSON.stringify({
    methodConfig: [
      { name: [{ service: "pkg.S", method: "Exact" }], timeout: "0.25s" },
      {
        name: [{ service: "pkg.S" }],
        retryPolicy: { ...RETRY, maxAttempts: 9, retryableStatusCodes: ["unavailable", 4] },
      },
      { name: [{}], waitForReady: true, timeout: { seconds: 2, nanos: 500_000_000 } },
    ],
    retryThrottling: { maxTokens: 10, tokenRatio: 0.5466 },
  }));
  assert.deepEqual(config.methodPolicy("/pkg.S/Exact"), {
    retry: undefined,
    timeoutMs: 250,
    waitForReady: undefined,
  });
  const service = config.methodPolicy("/pkg.S/Other");
  assert.deepEqual(service.retry, {
    maxAttempts: 5, // gRFC A6: above the client's limit counts as the limit
    initialBackoffMs: 100,
    maxBackoffMs: 1000,
    backoffMultiplier: 2,
    retryableCodes: (1 << grpc.status.UNAVAILABLE) | (1 << grpc.status.DEADLINE_EXCEEDED),
  });
  assert.equal(config.methodPolicy("/pkg.S/Other"), service, "cached");
  assert.deepEqual(config.methodPolicy("/other.T/M"), {
    retry: undefined,
    timeoutMs: 2500,
    waitForReady: true,
  });
  // A6 keeps three decimals: rounded, as grpc-js rounds them.
  assert.deepEqual(config.retryThrottling, { maxTokens: 10, tokenRatio: 0.547 });
  assert.equal(config.outlierDetection, undefined);
  assert.equal(parseServiceConfig("").methodPolicy("/a/b"), NO_POLICY);
  assert.equal(parseServiceConfig(undefined).methodPolicy("/a/b"), NO_POLICY);
  assert.equal(
    parseServiceConfig(JSON.stringify(retry({})), { maxAttemptsLimit: 2 }).methodPolicy("/s/m")
      .retry?.maxAttempts,
    2,
  );
});

Deno.test("parseServiceConfig() reads outlier_detection with grpc-js's defaults, and notes what dial does not act on", () => {
  const full = parseServiceConfig(JSON.stringify({
    loadBalancingConfig: [{ outlier_detection: OD }],
  }));
  assert.deepEqual(full.outlierDetection, {
    intervalMs: 1000,
    baseEjectionTimeMs: 30_000,
    maxEjectionTimeMs: 300_000,
    maxEjectionPercent: 50,
    successRate: undefined,
    failurePercentage: {
      threshold: 50,
      enforcementPercentage: 100,
      minimumHosts: 3,
      requestVolume: 10,
    },
  });
  const defaults = parseServiceConfig(JSON.stringify({
    loadBalancingConfig: [{
      outlier_detection: {
        success_rate_ejection: {},
        failure_percentage_ejection: {},
        interval: { seconds: 0, nanos: 250_000_000 },
        child_policy: [{ round_robin: {} }],
      },
    }],
  }));
  assert.deepEqual(defaults.outlierDetection, {
    intervalMs: 250,
    baseEjectionTimeMs: 30_000,
    maxEjectionTimeMs: 300_000,
    maxEjectionPercent: 10,
    successRate: {
      stdevFactor: 1900,
      enforcementPercentage: 100,
      minimumHosts: 5,
      requestVolume: 100,
    },
    failurePercentage: {
      threshold: 85,
      enforcementPercentage: 100,
      minimumHosts: 5,
      requestVolume: 50,
    },
  });
  // The first entry naming a known policy is the one: outlier detection after round_robin is not used.
  const second = parseServiceConfig(JSON.stringify({
    loadBalancingConfig: [{ future_policy: {} }, { round_robin: {} }, { outlier_detection: OD }],
  }));
  assert.equal(second.outlierDetection, undefined);
  assert.equal(second.notes.length, 1);
  assert.match(
    second.notes[0]!,
    /loadBalancingConfig\[0\] names "future_policy", a policy grpc-js does not know: skipped/,
  );
  const hedged = parseServiceConfig(JSON.stringify(method({ hedgingPolicy: { maxAttempts: 2 } })));
  assert.match(
    hedged.notes[0]!,
    /methodConfig\[0\]\.hedgingPolicy is valid but dial\(\) does not hedge/,
  );
});

Deno.test("parseServiceConfig() keeps retryThrottling's values at three decimals as grpc-js does, and notes one that is 0", () => {
  const values = [0.0004, 0.0005, 0.0009, 0.0015, 0.5466, 1.0005, 2.5, 999.9996, 1000];
  const ours = values.map((v) =>
    parseServiceConfig(JSON.stringify({ retryThrottling: { maxTokens: v, tokenRatio: v } }))
      .retryThrottling
  );
  // grpc-js's own parser of the service config, on the same values.
  const theirs = values.map((v) => validateRetryThrottling({ maxTokens: v, tokenRatio: v }));
  assert.deepEqual(ours, theirs);
  assert.deepEqual(ours.slice(0, 3).map((t) => t?.tokenRatio), [0, 0.001, 0.001]);
  assert.deepEqual(
    parseServiceConfig(
      JSON.stringify({ retryThrottling: { maxTokens: 0.0004, tokenRatio: 0.0001 } }),
    )
      .notes,
    [
      "retryThrottling.maxTokens 0.0004 is 0 at three decimals (grpc-js rounds it so too): no call is retried",
      "retryThrottling.tokenRatio 0.0001 is 0 at three decimals (grpc-js rounds it so too): successful calls give no tokens back",
    ],
  );
});
