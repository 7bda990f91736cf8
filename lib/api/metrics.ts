/**
 * `GET /metrics`: Prometheus text exposition.
 *
 * @module
 */

import type { Functions } from "../functions.ts";
import type { Metrics } from "../metrics.ts";

/** Builds the handler. */
export function metricsEndpoint(deps: { metrics: Metrics; functions: Functions }) {
  return (_req: Request): Promise<Response> => {
    // Counted when scraped rather than on every change.
    deps.metrics.functions.set({}, deps.functions.list().length);
    return Promise.resolve(
      new Response(deps.metrics.render(), { headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" } }),
    );
  };
}
