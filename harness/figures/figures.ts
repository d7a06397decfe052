/**
 * What `main.ts` prints, for whoever reads it (`scripts/runtime_figures.ts`):
 * the result line's prefix and each measurement's result type. Imports no
 * measurement, so that reading results loads neither the module nor grpc-js.
 *
 * @module
 */
export type { MemoryFigure } from "./memory.ts";
export type { InstanceEnd, RollingFigure } from "./rolling.ts";
export type { Round, ThroughputFigure } from "./throughput.ts";

/** The prefix of the result line that `main.ts` prints. */
export const FIGURE_PREFIX = "FIGURE ";
