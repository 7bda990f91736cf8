/**
 * `GET /api/stats/<name>`: what a function used since faasd started, `{"name", "requests", "outcomes", "latency":
 * {"p50Ms", "p99Ms"}, "cpuPerRequestMs": {"mean", "p99"}, "peakMemoryBytes": {"mean", "max"}, "oomKills",
 * "measured"}` (see stats.ts; null where there is no sample yet).
 *
 * @module
 */

import type { Functions } from "../functions.ts";
import type { FunctionStats } from "../stats.ts";
import { json } from "./http.ts";

/** Builds the handler. */
export function functionStats(deps: { stats: FunctionStats; functions: Functions }) {
  return (_req: Request, name: string): Promise<Response> => {
    const record = deps.functions.get(name); // 404 for an unknown function
    return Promise.resolve(json({ name: record.name, ...deps.stats.snapshot(record.name) }));
  };
}
