/**
 * `GET /api/ip/<name>`: `{"name", "ip"}` of a deployed function.
 *
 * @module
 */

import type { Functions } from "../functions.ts";
import { json } from "./http.ts";

/** Builds the handler. */
export function functionIp(deps: { functions: Functions }) {
  return (_req: Request, name: string): Promise<Response> => {
    const record = deps.functions.get(name);
    return Promise.resolve(json({ name: record.name, ip: record.ip }));
  };
}
