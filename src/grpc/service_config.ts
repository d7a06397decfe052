/**
 * gRPC's service config as `dial()` reads it from
 * `channelOptions["grpc.service_config"]`: the JSON a grpc-js user writes for
 * an `etcd:///` target. Accepts what grpc-js 1.14 accepts for its own channels
 * (its service-config validation, and `grpc.experimental.parseLoadBalancingConfig`
 * for the load-balancing entries) and refuses the rest with an error naming the
 * field and the value. Pure: parsing only; the calls and the channel act on it.
 *
 * What `dial()` acts on: `methodConfig[].retryPolicy`, `timeout` and
 * `waitForReady` (gRFC A6 and the service config spec), `retryThrottling`, and
 * an `outlier_detection` entry of `loadBalancingConfig` (gRFC A50).
 *
 * @module
 */
import * as grpc from "@grpc/grpc-js";

/** A method's retry policy (gRFC A6), in milliseconds. */
export interface RetryPolicy {
  /** Attempts in all, the first included; at most the client's limit (5 by default). */
  readonly maxAttempts: number;
  /** The first retry waits a random time up to this. */
  readonly initialBackoffMs: number;
  /** No wait is drawn from a range wider than this. */
  readonly maxBackoffMs: number;
  /** Each retry's range is the previous one's times this. */
  readonly backoffMultiplier: number;
  /** Bit `1 << code` is set for each retryable status code. */
  readonly retryableCodes: number;
}

/** What the service config says about calls of one method. */
export interface MethodPolicy {
  /** The retry policy, if any. */
  readonly retry: RetryPolicy | undefined;
  /** The longest a call may take (its deadline is the earlier of this and its own), in ms. */
  readonly timeoutMs: number | undefined;
  /** Whether calls wait for an instance by default (a call's own setting wins). */
  readonly waitForReady: boolean | undefined;
}

/** Retry throttling (gRFC A6): a token bucket per client. */
export interface RetryThrottling {
  /** Tokens at the start, and at most; retries stop at or below half of it. */
  readonly maxTokens: number;
  /** Tokens a successful call adds back (a failed one takes 1). */
  readonly tokenRatio: number;
}

/** Success-rate ejection (gRFC A50), with grpc-js's defaults filled in. */
export interface SuccessRateEjection {
  /** Ejects below `mean - stdev * stdevFactor / 1000` of the success rates. */
  readonly stdevFactor: number;
  /** The chance, in percent, that an outlier is ejected. */
  readonly enforcementPercentage: number;
  /** The least number of instances with `requestVolume` calls for the check to run. */
  readonly minimumHosts: number;
  /** The least number of calls in an interval for an instance to count. */
  readonly requestVolume: number;
}

/** Failure-percentage ejection (gRFC A50), with grpc-js's defaults filled in. */
export interface FailurePercentageEjection {
  /** Ejects an instance whose failed calls are more than this percentage. */
  readonly threshold: number;
  /** The chance, in percent, that an outlier is ejected. */
  readonly enforcementPercentage: number;
  /** The least number of instances with `requestVolume` calls for the check to run. */
  readonly minimumHosts: number;
  /** The least number of calls in an interval for an instance to count. */
  readonly requestVolume: number;
}

/** An `outlier_detection` config (gRFC A50), in milliseconds, defaults filled in. */
export interface OutlierDetectionConfig {
  /** Time between sweeps. Default 10 s. */
  readonly intervalMs: number;
  /** An ejection lasts this times the instance's ejection count. Default 30 s. */
  readonly baseEjectionTimeMs: number;
  /** An ejection lasts at most the larger of this and the base time. Default 300 s. */
  readonly maxEjectionTimeMs: number;
  /** The largest share of instances ejected at once, in percent. Default 10. */
  readonly maxEjectionPercent: number;
  /** Success-rate ejection, when configured. */
  readonly successRate: SuccessRateEjection | undefined;
  /** Failure-percentage ejection, when configured. */
  readonly failurePercentage: FailurePercentageEjection | undefined;
}

/** A parsed service config. */
export interface ServiceConfig {
  /**
   * The method config for a full method path (`/package.Service/Method`),
   * chosen as gRPC does: the entry naming the service and method, else the one
   * naming the service alone, else the one with an empty name.
   */
  methodPolicy(path: string): MethodPolicy;
  /** Retry throttling, when configured. */
  readonly retryThrottling: RetryThrottling | undefined;
  /** Outlier detection, when the chosen `loadBalancingConfig` entry is `outlier_detection`. */
  readonly outlierDetection: OutlierDetectionConfig | undefined;
  /** Valid parts `dial()` does not act on (a `hedgingPolicy`, say), to report once. */
  readonly notes: readonly string[];
}

/** Calls of a method without a method config: no retries, no timeout. */
export const NO_POLICY: MethodPolicy = Object.freeze({
  retry: undefined,
  timeoutMs: undefined,
  waitForReady: undefined,
});

/** grpc-js's client-side cap on `maxAttempts` (gRFC A6: 5 unless the client says otherwise). */
export const DEFAULT_MAX_ATTEMPTS_LIMIT = 5;

/** A proto3 JSON duration string, as grpc-js checks it: digits, up to 9 decimals, `s`. */
const DURATION = /^(\d+)(?:\.(\d{1,9}))?s$/;

/** The largest `seconds` of a `google.protobuf.Duration` (10,000 years). */
const MAX_DURATION_SECONDS = 315_576_000_000;

/** Status codes by upper-case name. */
const STATUS_BY_NAME = new Map<string, number>(
  Object.entries(grpc.status).filter(([, v]) => typeof v === "number") as [string, number][],
);
const STATUS_CODES = new Set(STATUS_BY_NAME.values());

/** The `outlier_detection` defaults (gRFC A50, as grpc-js fills them in). */
const SUCCESS_RATE_DEFAULTS = {
  stdev_factor: 1900,
  enforcement_percentage: 100,
  minimum_hosts: 5,
  request_volume: 100,
};
const FAILURE_PERCENTAGE_DEFAULTS = {
  threshold: 85,
  enforcement_percentage: 100,
  minimum_hosts: 5,
  request_volume: 50,
};

/** The largest number of method paths whose method config is remembered. */
const CACHED_METHODS = 1000;

type LbConfig = Parameters<typeof grpc.experimental.parseLoadBalancingConfig>[0];

/** The policy name of a load balancing config grpc-js parses; throws grpc-js's error otherwise. */
function grpcJsParse(entry: unknown): string {
  return grpc.experimental.parseLoadBalancingConfig(entry as LbConfig).getLoadBalancerName();
}

/** A value for an error message: JSON, cut short. */
function show(value: unknown): string {
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 120 ? `${text.slice(0, 117)}...` : text;
}

/** Builds the errors of one parse: each names the option, the field and the value. */
class Problems {
  readonly #where: string;
  constructor(where: string) {
    this.#where = where;
  }
  type(field: string, expected: string, value: unknown): TypeError {
    return new TypeError(`${this.#where}: ${field} must be ${expected}, got ${show(value)}`);
  }
  range(field: string, expected: string, value: unknown): RangeError {
    return new RangeError(`${this.#where}: ${field} must be ${expected}, got ${show(value)}`);
  }
  other(message: string): TypeError {
    return new TypeError(`${this.#where}: ${message}`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

/** Milliseconds of a proto3 JSON duration string already checked against {@linkcode DURATION}. */
function durationStringMs(text: string): number {
  const [, seconds, fraction = ""] = DURATION.exec(text)!;
  return Number(seconds) * 1000 + Number(fraction.padEnd(9, "0")) / 1e6;
}

/** A status code list entry: a known code number, or a code name in any case. */
function statusCode(value: unknown): number | undefined {
  if (typeof value === "number") return STATUS_CODES.has(value) ? value : undefined;
  if (typeof value === "string") return STATUS_BY_NAME.get(value.toUpperCase());
  return undefined;
}

function parseName(
  raw: unknown,
  field: string,
  p: Problems,
): { service?: string; method?: string } {
  if (!isObject(raw)) throw p.type(field, "an object { service, method? }", raw);
  // As grpc-js reads it: an unset or empty service means the entry for every method.
  if ("service" in raw && raw.service !== "") {
    if (typeof raw.service !== "string") {
      throw p.type(`${field}.service`, "a string", raw.service);
    }
    if ("method" in raw && raw.method !== "") {
      if (typeof raw.method !== "string") throw p.type(`${field}.method`, "a string", raw.method);
      return { service: raw.service, method: raw.method };
    }
    return { service: raw.service };
  }
  if ("method" in raw && raw.method !== undefined) {
    throw p.other(`${field}.method is set (${show(raw.method)}) without a service`);
  }
  return {};
}

function parseRetryPolicy(
  raw: unknown,
  field: string,
  p: Problems,
  maxAttemptsLimit: number,
): RetryPolicy {
  if (!isObject(raw)) throw p.type(field, "an object", raw);
  const { maxAttempts, initialBackoff, maxBackoff, backoffMultiplier, retryableStatusCodes } = raw;
  if (typeof maxAttempts !== "number" || !Number.isInteger(maxAttempts) || maxAttempts < 2) {
    throw p.range(`${field}.maxAttempts`, "an integer of at least 2", maxAttempts);
  }
  for (const [name, value] of [["initialBackoff", initialBackoff], ["maxBackoff", maxBackoff]]) {
    if (typeof value !== "string" || !DURATION.test(value)) {
      throw p.type(
        `${field}.${name}`,
        'a duration string of seconds with up to 9 decimals and an "s" (e.g. "0.1s")',
        value,
      );
    }
  }
  if (typeof backoffMultiplier !== "number" || !(backoffMultiplier > 0)) {
    throw p.range(`${field}.backoffMultiplier`, "a number greater than 0", backoffMultiplier);
  }
  if (!Array.isArray(retryableStatusCodes)) {
    throw p.type(`${field}.retryableStatusCodes`, "an array of status codes", retryableStatusCodes);
  }
  if (retryableStatusCodes.length === 0) {
    throw p.range(`${field}.retryableStatusCodes`, "a non-empty array", retryableStatusCodes);
  }
  let retryableCodes = 0;
  for (const [i, value] of retryableStatusCodes.entries()) {
    const code = statusCode(value);
    if (code === undefined) {
      throw p.type(
        `${field}.retryableStatusCodes[${i}]`,
        'a gRPC status code, as a number (0-16) or a name (e.g. "UNAVAILABLE")',
        value,
      );
    }
    retryableCodes |= 1 << code;
  }
  return {
    // gRFC A6: values above the client's limit count as the limit, without an error.
    maxAttempts: Math.min(maxAttempts, maxAttemptsLimit),
    initialBackoffMs: durationStringMs(initialBackoff as string),
    maxBackoffMs: durationStringMs(maxBackoff as string),
    backoffMultiplier,
    retryableCodes,
  };
}

/** Checks a hedging policy as grpc-js does; `dial()` does not hedge. */
function checkHedgingPolicy(raw: unknown, field: string, p: Problems): void {
  if (!isObject(raw)) throw p.type(field, "an object", raw);
  const { maxAttempts, hedgingDelay, nonFatalStatusCodes } = raw;
  if (typeof maxAttempts !== "number" || !Number.isInteger(maxAttempts) || maxAttempts < 2) {
    throw p.range(`${field}.maxAttempts`, "an integer of at least 2", maxAttempts);
  }
  if ("hedgingDelay" in raw && (typeof hedgingDelay !== "string" || !DURATION.test(hedgingDelay))) {
    throw p.type(`${field}.hedgingDelay`, 'a duration string (e.g. "0.5s")', hedgingDelay);
  }
  if (Array.isArray(nonFatalStatusCodes)) {
    for (const [i, value] of nonFatalStatusCodes.entries()) {
      if (statusCode(value) === undefined) {
        throw p.type(
          `${field}.nonFatalStatusCodes[${i}]`,
          "a gRPC status code, as a number (0-16) or a name",
          value,
        );
      }
    }
  }
}

interface ParsedMethodConfig {
  readonly names: readonly { service?: string; method?: string }[];
  readonly policy: MethodPolicy;
}

function parseMethodConfig(
  raw: unknown,
  field: string,
  p: Problems,
  maxAttemptsLimit: number,
  notes: string[],
): ParsedMethodConfig {
  if (!isObject(raw)) throw p.type(field, "an object", raw);
  if (!Array.isArray(raw.name)) throw p.type(`${field}.name`, "an array", raw.name);
  const names = raw.name.map((name, i) => parseName(name, `${field}.name[${i}]`, p));
  let waitForReady: boolean | undefined;
  if ("waitForReady" in raw) {
    if (typeof raw.waitForReady !== "boolean") {
      throw p.type(`${field}.waitForReady`, "a boolean", raw.waitForReady);
    }
    waitForReady = raw.waitForReady;
  }
  let timeoutMs: number | undefined;
  if ("timeout" in raw) {
    const timeout = raw.timeout;
    if (isObject(timeout)) {
      // grpc-js takes any numbers here, negative ones too: such a call is past its deadline.
      if (typeof timeout.seconds !== "number") {
        throw p.type(`${field}.timeout.seconds`, "a number", timeout.seconds);
      }
      if (typeof timeout.nanos !== "number") {
        throw p.type(`${field}.timeout.nanos`, "a number", timeout.nanos);
      }
      timeoutMs = timeout.seconds * 1000 + timeout.nanos / 1e6;
    } else if (typeof timeout === "string" && DURATION.test(timeout)) {
      timeoutMs = durationStringMs(timeout);
    } else {
      throw p.type(
        `${field}.timeout`,
        'a duration string (e.g. "1.5s") or { seconds, nanos }',
        timeout,
      );
    }
  }
  for (const name of ["maxRequestBytes", "maxResponseBytes"]) {
    if (name in raw && typeof raw[name] !== "number") {
      throw p.type(`${field}.${name}`, "a number", raw[name]);
    }
  }
  let retry: RetryPolicy | undefined;
  if ("retryPolicy" in raw) {
    if ("hedgingPolicy" in raw) {
      throw p.other(`${field} has both a retryPolicy and a hedgingPolicy: give one of them`);
    }
    retry = parseRetryPolicy(raw.retryPolicy, `${field}.retryPolicy`, p, maxAttemptsLimit);
  } else if ("hedgingPolicy" in raw) {
    checkHedgingPolicy(raw.hedgingPolicy, `${field}.hedgingPolicy`, p);
    notes.push(
      `${field}.hedgingPolicy is valid but dial() does not hedge: those calls are sent once`,
    );
  }
  return { names, policy: { retry, timeoutMs, waitForReady } };
}

function parseRetryThrottling(raw: unknown, p: Problems, notes: string[]): RetryThrottling {
  if (!isObject(raw)) throw p.type("retryThrottling", "an object { maxTokens, tokenRatio }", raw);
  const { maxTokens, tokenRatio } = raw;
  if (typeof maxTokens !== "number" || !(maxTokens > 0 && maxTokens <= 1000)) {
    throw p.range("retryThrottling.maxTokens", "a number in (0, 1000]", maxTokens);
  }
  if (typeof tokenRatio !== "number" || !(tokenRatio > 0)) {
    throw p.range("retryThrottling.tokenRatio", "a number greater than 0", tokenRatio);
  }
  // gRFC A6 keeps three decimals; grpc-js rounds to them (toFixed), to 0 below 0.0005.
  const rounded = { maxTokens: +maxTokens.toFixed(3), tokenRatio: +tokenRatio.toFixed(3) };
  if (rounded.maxTokens === 0) {
    notes.push(
      `retryThrottling.maxTokens ${maxTokens} is 0 at three decimals (grpc-js rounds it so too): ` +
        `no call is retried`,
    );
  }
  if (rounded.tokenRatio === 0) {
    notes.push(
      `retryThrottling.tokenRatio ${tokenRatio} is 0 at three decimals (grpc-js rounds it so ` +
        `too): successful calls give no tokens back`,
    );
  }
  return rounded;
}

/** Milliseconds of a `{ seconds, nanos }` duration of outlier detection, or `fallback`. */
function odDuration(raw: Record<string, unknown>, name: string, fallback: number, p: Problems) {
  if (!(name in raw) || raw[name] === undefined) return fallback;
  const value = raw[name];
  const field = `outlier_detection.${name}`;
  if (!isObject(value) || typeof value.seconds !== "number" || typeof value.nanos !== "number") {
    throw p.type(field, 'a duration object { "seconds": number, "nanos": number }', value);
  }
  const { seconds, nanos } = value;
  if (!(seconds >= 0 && seconds <= MAX_DURATION_SECONDS && nanos >= 0 && nanos <= 999_999_999)) {
    throw p.range(
      field,
      `a non-negative duration (seconds 0 to ${MAX_DURATION_SECONDS}, nanos 0 to 999999999)`,
      value,
    );
  }
  return seconds * 1000 + nanos / 1e6;
}

function odNumber(raw: Record<string, unknown>, name: string, field: string, p: Problems) {
  const value = raw[name];
  if (value !== undefined && typeof value !== "number") throw p.type(field, "a number", value);
  return value as number | undefined;
}

function odPercent(raw: Record<string, unknown>, name: string, field: string, p: Problems) {
  const value = odNumber(raw, name, field, p);
  if (value !== undefined && !(value >= 0 && value <= 100)) {
    throw p.range(field, "a percentage from 0 to 100", value);
  }
  return value;
}

function odSection(raw: Record<string, unknown>, name: string, p: Problems) {
  if (!(name in raw) || raw[name] === undefined) return undefined;
  const value = raw[name];
  if (!isObject(value)) throw p.type(`outlier_detection.${name}`, "an object", value);
  return value;
}

/**
 * Parses an `outlier_detection` config: the rules of grpc-js 1.14's
 * `OutlierDetectionLoadBalancingConfig`, each with a clear error.
 */
function parseOutlierDetection(raw: unknown, p: Problems): OutlierDetectionConfig {
  if (!isObject(raw)) throw p.type("outlier_detection", "an object", raw);
  const intervalMs = odDuration(raw, "interval", 10_000, p);
  const baseEjectionTimeMs = odDuration(raw, "base_ejection_time", 30_000, p);
  const maxEjectionTimeMs = odDuration(raw, "max_ejection_time", 300_000, p);
  const maxEjectionPercent =
    odPercent(raw, "max_ejection_percent", "outlier_detection.max_ejection_percent", p) ?? 10;
  let successRate: SuccessRateEjection | undefined;
  const sr = odSection(raw, "success_rate_ejection", p);
  if (sr) {
    const f = "outlier_detection.success_rate_ejection";
    const d = SUCCESS_RATE_DEFAULTS;
    successRate = {
      stdevFactor: odNumber(sr, "stdev_factor", `${f}.stdev_factor`, p) ?? d.stdev_factor,
      enforcementPercentage:
        odPercent(sr, "enforcement_percentage", `${f}.enforcement_percentage`, p) ??
          d.enforcement_percentage,
      minimumHosts: odNumber(sr, "minimum_hosts", `${f}.minimum_hosts`, p) ?? d.minimum_hosts,
      requestVolume: odNumber(sr, "request_volume", `${f}.request_volume`, p) ?? d.request_volume,
    };
  }
  let failurePercentage: FailurePercentageEjection | undefined;
  const fp = odSection(raw, "failure_percentage_ejection", p);
  if (fp) {
    const f = "outlier_detection.failure_percentage_ejection";
    const d = FAILURE_PERCENTAGE_DEFAULTS;
    failurePercentage = {
      threshold: odPercent(fp, "threshold", `${f}.threshold`, p) ?? d.threshold,
      enforcementPercentage:
        odPercent(fp, "enforcement_percentage", `${f}.enforcement_percentage`, p) ??
          d.enforcement_percentage,
      minimumHosts: odNumber(fp, "minimum_hosts", `${f}.minimum_hosts`, p) ?? d.minimum_hosts,
      requestVolume: odNumber(fp, "request_volume", `${f}.request_volume`, p) ?? d.request_volume,
    };
  }
  checkChildPolicy(raw.child_policy, p);
  return {
    intervalMs,
    baseEjectionTimeMs,
    maxEjectionTimeMs,
    maxEjectionPercent,
    successRate,
    failurePercentage,
  };
}

/**
 * Checks `child_policy` as grpc-js does: the first entry grpc-js can parse is
 * the child, and it must not be `pick_first`. `dial()` balances with its
 * `balancer` option in the child's place.
 */
function checkChildPolicy(raw: unknown, p: Problems): void {
  const field = "outlier_detection.child_policy";
  if (!Array.isArray(raw)) {
    throw p.type(field, 'an array of load balancing configs (e.g. [{"round_robin":{}}])', raw);
  }
  for (const entry of raw) {
    let name: string;
    try {
      name = grpcJsParse(entry);
    } catch {
      continue; // grpc-js skips entries it cannot parse, and so do we
    }
    if (name === "pick_first") {
      throw p.other(
        `${field} chooses pick_first, which outlier_detection cannot wrap (grpc-js ` +
          `refuses it too): use round_robin, got ${show(raw)}`,
      );
    }
    return;
  }
  throw p.other(`${field} has no load balancing config grpc-js recognises, got ${show(raw)}`);
}

/**
 * Chooses from `loadBalancingConfig` as gRPC does: the first entry naming a
 * policy grpc-js knows. Entries naming other policies are skipped (and noted);
 * a known entry grpc-js would refuse is an error here, where grpc-js would skip
 * it silently.
 */
function chooseLoadBalancing(
  list: readonly Record<string, unknown>[],
  p: Problems,
  notes: string[],
): OutlierDetectionConfig | undefined {
  for (const [i, entry] of list.entries()) {
    const name = Object.keys(entry)[0]!;
    if (name === "outlier_detection") {
      const config = parseOutlierDetection(entry[name], p);
      try {
        grpcJsParse(entry);
      } catch (error) {
        // A rule of grpc-js this parser does not know of: refuse what grpc-js refuses.
        throw p.other(`loadBalancingConfig[${i}]: grpc-js refuses it: ${(error as Error).message}`);
      }
      return config;
    }
    if (!grpc.experimental.isLoadBalancerNameRegistered(name)) {
      notes.push(
        `loadBalancingConfig[${i}] names ${show(name)}, a policy grpc-js does not know: skipped`,
      );
      continue;
    }
    try {
      grpcJsParse(entry);
    } catch (error) {
      throw p.other(
        `loadBalancingConfig[${i}] is not a valid ${name} config: ${(error as Error).message}`,
      );
    }
    return undefined; // e.g. round_robin: dial's balancer option does the balancing
  }
  return undefined;
}

/** Options of {@linkcode parseServiceConfig}. */
export interface ParseOptions {
  /** How errors name the option. Default `grpc.service_config`. */
  readonly where?: string;
  /** The cap on `maxAttempts` (grpc-js's `grpc-node.retry_max_attempts_limit`). Default 5. */
  readonly maxAttemptsLimit?: number;
}

/**
 * Parses and checks a service config.
 *
 * @param text the JSON text (an empty string or `undefined`: no config)
 * @param options how errors name the option, and the `maxAttempts` cap
 * @returns the parsed config
 * @throws {TypeError} when the text is not JSON or a field has the wrong type
 * @throws {RangeError} when a number is out of its range
 */
export function parseServiceConfig(text: unknown, options: ParseOptions = {}): ServiceConfig {
  const p = new Problems(options.where ?? "grpc.service_config");
  const maxAttemptsLimit = options.maxAttemptsLimit ?? DEFAULT_MAX_ATTEMPTS_LIMIT;
  // grpc-js ignores an empty (falsy) value.
  if (!text) return build([], undefined, undefined, []);
  if (typeof text !== "string") throw p.type("the option", "a JSON string", text);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw p.other(`not JSON: ${(error as Error).message}`);
  }
  if (!isObject(raw)) throw p.type("the config", "a JSON object", raw);
  if ("loadBalancingPolicy" in raw && typeof raw.loadBalancingPolicy !== "string") {
    throw p.type("loadBalancingPolicy", "a string", raw.loadBalancingPolicy);
  }
  const lbList: Record<string, unknown>[] = [];
  if ("loadBalancingConfig" in raw) {
    if (!Array.isArray(raw.loadBalancingConfig)) {
      throw p.type("loadBalancingConfig", "an array", raw.loadBalancingConfig);
    }
    for (const [i, entry] of raw.loadBalancingConfig.entries()) {
      if (!isObject(entry)) throw p.type(`loadBalancingConfig[${i}]`, "an object", entry);
      const keys = Object.keys(entry);
      if (keys.length !== 1) {
        throw p.type(
          `loadBalancingConfig[${i}]`,
          'an object with one key, the policy name (e.g. {"round_robin":{}})',
          entry,
        );
      }
      lbList.push(entry);
    }
  }
  const notes: string[] = [];
  const methods: ParsedMethodConfig[] = [];
  if ("methodConfig" in raw) {
    if (Array.isArray(raw.methodConfig)) {
      for (const [i, entry] of raw.methodConfig.entries()) {
        methods.push(parseMethodConfig(entry, `methodConfig[${i}]`, p, maxAttemptsLimit, notes));
      }
    } else {
      notes.push(
        `methodConfig is not an array (${show(raw.methodConfig)}): ignored, as grpc-js does`,
      );
    }
  }
  const retryThrottling = "retryThrottling" in raw
    ? parseRetryThrottling(raw.retryThrottling, p, notes)
    : undefined;
  const seen = new Set<string>();
  for (const [i, method] of methods.entries()) {
    for (const name of method.names) {
      const id = JSON.stringify([name.service ?? "", name.method ?? ""]);
      if (seen.has(id)) {
        throw p.other(`methodConfig[${i}] names ${show(name)} again: each name may appear once`);
      }
      seen.add(id);
    }
  }
  const outlierDetection = chooseLoadBalancing(lbList, p, notes);
  return build(methods, retryThrottling, outlierDetection, notes);
}

function build(
  methods: readonly ParsedMethodConfig[],
  retryThrottling: RetryThrottling | undefined,
  outlierDetection: OutlierDetectionConfig | undefined,
  notes: readonly string[],
): ServiceConfig {
  const exact = new Map<string, MethodPolicy>();
  const byService = new Map<string, MethodPolicy>();
  let fallback: MethodPolicy = NO_POLICY;
  let hasFallback = false;
  // The first entry naming a method (or service) wins, as in grpc-js's search.
  for (const { names, policy } of methods) {
    for (const { service, method } of names) {
      if (service === undefined) {
        if (!hasFallback) (fallback = policy), (hasFallback = true);
      } else if (method === undefined) {
        if (!byService.has(service)) byService.set(service, policy);
      } else {
        const key = `${service}/${method}`;
        if (!exact.has(key)) exact.set(key, policy);
      }
    }
  }
  const cache = new Map<string, MethodPolicy>();
  return {
    methodPolicy(path: string): MethodPolicy {
      const cached = cache.get(path);
      if (cached) return cached;
      if (methods.length === 0) return NO_POLICY;
      const parts = path.split("/").filter((part) => part.length > 0);
      const service = parts[0] ?? "";
      const method = parts[1] ?? "";
      const policy = exact.get(`${service}/${method}`) ?? byService.get(service) ?? fallback;
      if (cache.size < CACHED_METHODS) cache.set(path, policy);
      return policy;
    },
    retryThrottling,
    outlierDetection,
    notes,
  };
}
