/**
 * The control API: routes requests to the endpoint handlers (one module each) and turns what they throw into
 * `{"error": ...}` answers. The result is a plain `(req) => Promise<Response>`, served by `Deno.serve` in main.ts
 * and called directly in tests.
 *
 * @module
 */

import type { DaemonLimits } from "../config.ts";
import type { Functions } from "../functions.ts";
import type { Metrics } from "../metrics.ts";
import { bearerAuth } from "./auth.ts";
import { deleteFunction } from "./delete.ts";
import { healthz } from "./healthz.ts";
import { errorResponse, HttpError, json } from "./http.ts";
import { functionIp } from "./ip.ts";
import { listFunctions, type Placements, type PoolState } from "./list.ts";
import { functionLogs } from "./logs.ts";
import { metricsEndpoint } from "./metrics.ts";
import { newFunction } from "./new.ts";
import { updateFunction } from "./update.ts";
import { createSecret } from "./secret_create.ts";
import { listSecrets } from "./secret_list.ts";
import { deleteSecret } from "./secret_delete.ts";
import type { Secrets } from "../secrets.ts";
import { FunctionStats } from "../stats.ts";
import { functionStats } from "./stats.ts";

/** What the API needs, handed in by the composition root. */
export interface ApiDeps {
  functions: Functions;
  metrics: Metrics;
  maxImageBytes: number;
  /** The daemon's per-container limits and `--pool-max`: what functions get by default, the ceilings of settings. */
  limits: DaemonLimits;
  /** The server's view of each function's pool (`ready`, and a status such as `failing`); absent: 0 ready. */
  pool?: PoolState;
  /** In a cluster: which hosts serve each function (shown by the list as `hosts`). */
  placements?: Placements;
  logPath: (name: string) => string;
  probe: () => Promise<Record<string, unknown>>;
  /** Aborts when the daemon stops: long answers (`logs -f`) end then. */
  stopping?: AbortSignal;
  /** When set, every endpoint but `/healthz` wants `Authorization: Bearer <token>`. */
  token?: string | null;
  /** The secrets functions may mount. */
  secrets: Secrets;
  /** Whether adapter mode (`http_port`) can run here; false refuses it with 503. */
  adapterBuilt?: boolean;
  /** Requests and container usage per function; absent: every function shows none. */
  stats?: FunctionStats;
}

/** Endpoints answered without a token: health checks come from load balancers and init systems. */
const OPEN_PATHS = new Set(["/healthz"]);

type Route = {
  method: string;
  pattern: URLPattern;
  handle: (req: Request, name: string) => Promise<Response>;
};

/** Builds the API handler. */
export function createApi(deps: ApiDeps): (req: Request) => Promise<Response> {
  const route = (method: string, pathname: string, handle: Route["handle"]): Route => ({
    method,
    pattern: new URLPattern({ pathname }),
    handle,
  });
  const routes: Route[] = [
    route("POST", "/api/new", newFunction(deps)),
    route("GET", "/api/ip/:name", functionIp(deps)),
    route("GET", "/api/list", listFunctions(deps)),
    route("PATCH", "/api/functions/:name", updateFunction(deps)),
    route("DELETE", "/api/functions/:name", deleteFunction(deps)),
    route("GET", "/api/logs/:name", functionLogs(deps)),
    route("GET", "/api/stats/:name", functionStats({ ...deps, stats: deps.stats ?? new FunctionStats() })),
    route("GET", "/api/secrets", listSecrets(deps)),
    route("POST", "/api/secrets/:name", createSecret(deps)),
    route("DELETE", "/api/secrets/:name", deleteSecret(deps)),
    route("GET", "/healthz", healthz(deps)),
    route("GET", "/metrics", metricsEndpoint(deps)),
  ];

  const authorized = deps.token ? bearerAuth(deps.token) : () => true;

  return async (req: Request): Promise<Response> => {
    try {
      // Before anything else, so that an upload's body is never read and no endpoint's existence is revealed.
      if (!OPEN_PATHS.has(new URL(req.url).pathname) && !authorized(req)) {
        return json({ error: "missing or wrong API token (Authorization: Bearer TOKEN)" }, 401, {
          "www-authenticate": 'Bearer realm="faasd"',
        });
      }
      const matching = routes.filter((r) => r.pattern.test(req.url));
      if (matching.length === 0) throw new HttpError(404, `no such endpoint: ${new URL(req.url).pathname}`);
      const r = matching.find((r) => r.method === req.method);
      if (!r) {
        const allow = matching.map((r) => r.method).join(", ");
        return json({ error: `method ${req.method} not allowed here; use ${allow}` }, 405, { allow });
      }
      const name = decodeURIComponent(r.pattern.exec(req.url)?.pathname.groups.name ?? "");
      return await r.handle(req, name);
    } catch (e) {
      return errorResponse(e);
    }
  };
}
