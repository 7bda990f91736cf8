/**
 * `GET /api/logs/<name>[?follow=1]`: the function's container output as text; with `follow`, the answer stays open
 * and streams new output until the client goes away.
 *
 * @module
 */

import type { Functions } from "../functions.ts";
import { logStream } from "../logs.ts";

/** Builds the handler. */
export function functionLogs(
  deps: { functions: Functions; logPath: (name: string) => string; stopping?: AbortSignal },
) {
  return (req: Request, name: string): Promise<Response> => {
    deps.functions.get(name); // 404 for an unknown function
    const follow = ["1", "true", "yes"].includes(new URL(req.url).searchParams.get("follow") ?? "");
    const signal = deps.stopping ? AbortSignal.any([req.signal, deps.stopping]) : req.signal;
    const body = logStream(deps.logPath(name), { follow, signal });
    return Promise.resolve(
      new Response(body, { headers: { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" } }),
    );
  };
}
