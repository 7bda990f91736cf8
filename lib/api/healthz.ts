/**
 * `GET /healthz`: 200 `{"status": "ok", ...}` while containerd answers, 503 otherwise.
 *
 * @module
 */

import { json } from "./http.ts";

/** Builds the handler from a probe that throws when a dependency is down. */
export function healthz(deps: { probe: () => Promise<Record<string, unknown>> }) {
  return async (_req: Request): Promise<Response> => {
    try {
      return json({ status: "ok", ...await deps.probe() });
    } catch (e) {
      return json({ status: "unavailable", error: e instanceof Error ? e.message : String(e) }, 503);
    }
  };
}
