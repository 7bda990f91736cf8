/**
 * `GET /metrics`: Prometheus text exposition.
 *
 * @module
 */

import type { Metrics } from "../metrics.ts";

/** Builds the handler. */
export function metricsEndpoint(deps: { metrics: Metrics }) {
  return (_req: Request): Promise<Response> =>
    Promise.resolve(
      new Response(deps.metrics.render(), { headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" } }),
    );
}
