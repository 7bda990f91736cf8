/**
 * `GET /api/list`: every function as `{"<name>": {"ip", "image_ref", "status", ...}}`, the seed's shape with more
 * fields: among them what one request's container gets (`memory_bytes`, `cpus`, `pids`, `timeout_ms`, `rootfs`; 0:
 * no limit) and `settings`, what was set for the function (the rest follows the daemon's flags).
 *
 * @module
 */

import type { DaemonLimits } from "../config.ts";
import type { Functions } from "../functions.ts";
import type { FunctionRecord } from "../registry.ts";
import { effectiveLimits, settingsJson } from "../settings.ts";
import { json } from "./http.ts";

/** A function as the list shows it (also the answer of `PATCH /api/functions/<name>`). */
export function functionEntry(f: FunctionRecord, limits: DaemonLimits): Record<string, unknown> {
  const effective = effectiveLimits(f.settings, limits);
  return {
    ip: f.ip,
    image_ref: f.imageRef,
    status: f.status,
    digest: f.image?.manifestDigest ?? null,
    created_at: f.createdAt,
    updated_at: f.updatedAt,
    memory_bytes: effective.memoryBytes,
    cpus: effective.cpus,
    pids: effective.pids,
    timeout_ms: effective.timeoutMs,
    rootfs: effective.rootfs,
    settings: settingsJson(f.settings),
  };
}

/** Builds the handler. */
export function listFunctions(deps: { functions: Functions; limits: DaemonLimits }) {
  return (_req: Request): Promise<Response> => {
    const body: Record<string, unknown> = {};
    for (const f of deps.functions.list()) body[f.name] = functionEntry(f, deps.limits);
    return Promise.resolve(json(body));
  };
}
