/**
 * `GET /api/list`: every function as `{"<name>": {"ip", "image_ref", "status", ...}}`, the seed's shape with more
 * fields: among them what one request's container gets (`memory_bytes`, `cpus`, `pids`, `timeout_ms`, `rootfs`; 0:
 * no limit), how many ready containers the pool keeps for it (`min_ready`, `max_ready`) and has now (`ready`), and
 * `settings`, what was set for the function (the rest follows the daemon's flags); in a cluster, `hosts`: which host
 * serves which image digest.
 *
 * @module
 */

import type { DaemonLimits } from "../config.ts";
import type { Functions } from "../functions.ts";
import type { FunctionRecord } from "../registry.ts";
import { effectiveLimits, poolSizing, settingsJson } from "../settings.ts";
import { json } from "./http.ts";

/** What the server knows of each function's pool now (the registry knows only what was deployed). */
export interface PoolState {
  /** Ready containers the function has now. */
  ready(name: string): number;
  /** A status that overrides the registry's (e.g. `failing`), or null to show the registry's. */
  status(name: string): string | null;
}

/** In a cluster: which hosts serve a function, and which image each serves. */
export type Placements = (name: string) => Array<{ host: string; digest: string; since: string }>;

/**
 * A function as the list shows it (also the answer of `PATCH /api/functions/<name>`).
 *
 * @param pool the server's view of the pool; without one, `ready` is 0 and `status` the registry's.
 */
export function functionEntry(
  f: FunctionRecord,
  limits: DaemonLimits,
  pool?: PoolState,
  placements?: Placements,
): Record<string, unknown> {
  const effective = effectiveLimits(f.settings, limits);
  const sizing = poolSizing(f.settings, limits);
  return {
    ip: f.ip,
    image_ref: f.imageRef,
    status: pool?.status(f.name) ?? f.status,
    digest: f.image?.manifestDigest ?? null,
    created_at: f.createdAt,
    updated_at: f.updatedAt,
    memory_bytes: effective.memoryBytes,
    cpus: effective.cpus,
    pids: effective.pids,
    timeout_ms: effective.timeoutMs,
    rootfs: effective.rootfs,
    min_ready: sizing.minReady,
    max_ready: sizing.maxReady,
    ready: pool?.ready(f.name) ?? 0,
    settings: settingsJson(f.settings),
    ...(placements ? { hosts: placements(f.name) } : {}),
  };
}

/** Builds the handler. */
export function listFunctions(
  deps: { functions: Functions; limits: DaemonLimits; pool?: PoolState; placements?: Placements },
) {
  return (_req: Request): Promise<Response> => {
    const body: Record<string, unknown> = {};
    for (const f of deps.functions.list()) body[f.name] = functionEntry(f, deps.limits, deps.pool, deps.placements);
    return Promise.resolve(json(body));
  };
}
