/**
 * Which instances a dialed client uses: `filter` (by endpoint, before any
 * connection) and `locality` (the local zone first, all zones when too few
 * of its instances are ready). Pure.
 *
 * @module
 */
import type { Endpoint } from "../endpoint.ts";

/** `dial()`'s `locality` option. */
export interface Locality {
  /** The local zone: endpoints whose `metadata.zone` equals it are preferred. */
  readonly zone: string;
  /**
   * The fewest ready instances in the zone for calls to stay there; with fewer,
   * calls go to the ready instances of every zone. Default: a third of the
   * zone's instances (at least 1).
   */
  readonly minReady?: number;
}

/** The zone an endpoint names in its metadata (`metadata.zone`), if any. */
export function zoneOf(endpoint: Endpoint): unknown {
  const metadata = endpoint.metadata;
  return typeof metadata === "object" && metadata !== null
    ? (metadata as { zone?: unknown }).zone
    : undefined;
}

function show(value: unknown): string {
  if (typeof value === "function") return `a function ${value.name || "(anonymous)"}`;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * Checks `dial()`'s `locality` option.
 *
 * @throws {TypeError} naming the field and the value
 */
export function checkLocality(value: unknown): Locality | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "object" || value === null) {
    throw new TypeError(
      `options.locality must be an object { zone, minReady? }, got ${show(value)}`,
    );
  }
  for (const field of Object.keys(value)) {
    if (field !== "zone" && field !== "minReady") {
      throw new TypeError(
        `options.locality has no field ${JSON.stringify(field)} (it takes zone, minReady)`,
      );
    }
  }
  const { zone, minReady } = value as Record<string, unknown>;
  if (typeof zone !== "string" || zone === "") {
    throw new TypeError(`options.locality.zone must be a non-empty string, got ${show(zone)}`);
  }
  if (
    minReady !== undefined &&
    (typeof minReady !== "number" || !Number.isInteger(minReady) || minReady < 1)
  ) {
    throw new RangeError(
      `options.locality.minReady must be an integer of at least 1, got ${show(minReady)}`,
    );
  }
  return { zone, minReady: minReady as number | undefined };
}

/** What {@linkcode preferZone} chose, with the numbers behind the choice. */
export interface ZoneChoice<T> {
  /** The instances to balance over. */
  readonly chosen: readonly T[];
  /** Whether they are the local zone's (else every zone's: too few local ones are ready). */
  readonly local: boolean;
  /** Ready instances in the zone. */
  readonly localReady: number;
  /** Instances in the zone, ready or not. */
  readonly localTotal: number;
  /** The fewest ready ones for calls to stay in the zone. */
  readonly minReady: number;
}

/**
 * Chooses the instances to balance over: the ready ones in the local zone,
 * or all ready ones when fewer than `minReady` are ready in the zone (the
 * panic threshold of Envoy and Nacos).
 *
 * @param ready the ready instances
 * @param all every instance, ready or not
 * @param locality the local zone and the threshold
 * @returns the choice
 */
export function preferZone<T extends { readonly endpoint: Endpoint }>(
  ready: readonly T[],
  all: Iterable<T>,
  locality: Locality,
): ZoneChoice<T> {
  let localTotal = 0;
  for (const instance of all) if (zoneOf(instance.endpoint) === locality.zone) localTotal++;
  const local = ready.filter((instance) => zoneOf(instance.endpoint) === locality.zone);
  const minReady = locality.minReady ?? Math.max(1, Math.ceil(localTotal / 3));
  return local.length >= minReady
    ? { chosen: local, local: true, localReady: local.length, localTotal, minReady }
    : { chosen: ready, local: false, localReady: local.length, localTotal, minReady };
}

/**
 * Whether `filter` accepts `endpoint`; an endpoint whose check throws is left
 * out, and the error reported.
 */
export function accepts(
  filter: (endpoint: Endpoint) => boolean,
  endpoint: Endpoint,
  report: (error: Error) => void,
): boolean {
  try {
    return Boolean(filter(endpoint));
  } catch (error) {
    report(
      new Error(
        `options.filter threw for the endpoint ${endpoint.addr}: ${
          (error as Error)?.message ?? String(error)
        }; it gets no calls`,
      ),
    );
    return false;
  }
}
