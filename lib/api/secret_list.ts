/**
 * `GET /api/secrets`: the secrets, by name, with when each was created (`[{"name", "created_at"}]`); never a value.
 *
 * @module
 */

import type { Secrets } from "../secrets.ts";
import { json } from "./http.ts";

/** Builds the handler. */
export function listSecrets(deps: { secrets: Secrets }) {
  return (_req: Request): Promise<Response> =>
    Promise.resolve(json(deps.secrets.list().map((s) => ({ name: s.name, created_at: s.createdAt }))));
}
