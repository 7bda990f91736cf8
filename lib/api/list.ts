/**
 * `GET /api/list`: every function as `{"<name>": {"ip", "image_ref", "status", ...}}`, the seed's shape with more
 * fields.
 *
 * @module
 */

import type { Functions } from "../functions.ts";
import { json } from "./http.ts";

/** Builds the handler. */
export function listFunctions(deps: { functions: Functions }) {
  return (_req: Request): Promise<Response> => {
    const body: Record<string, unknown> = {};
    for (const f of deps.functions.list()) {
      body[f.name] = {
        ip: f.ip,
        image_ref: f.imageRef,
        status: f.status,
        digest: f.image?.manifestDigest ?? null,
        created_at: f.createdAt,
        updated_at: f.updatedAt,
      };
    }
    return Promise.resolve(json(body));
  };
}
