/**
 * `DELETE /api/functions/<name>`: stops serving, frees the address, removes the image. Answers
 * `{"name", "ip", "deleted": true}`.
 *
 * @module
 */

import type { Functions } from "../functions.ts";
import { json } from "./http.ts";

/** Builds the handler. */
export function deleteFunction(deps: { functions: Functions }) {
  return async (_req: Request, name: string): Promise<Response> => {
    const record = await deps.functions.remove(name);
    return json({ name: record.name, ip: record.ip, deleted: true });
  };
}
