/**
 * `DELETE /api/secrets/<name>`: deletes a secret no function uses. Answers 200 `{"name"}`; 404 when there is no such
 * secret, 409 naming the functions that still mount it.
 *
 * @module
 */

import type { Functions } from "../functions.ts";
import { SecretNotFoundError, type Secrets } from "../secrets.ts";
import { HttpError, json } from "./http.ts";

/** Builds the handler. */
export function deleteSecret(deps: { secrets: Secrets; functions: Functions }) {
  return async (_req: Request, name: string): Promise<Response> => {
    const usedBy = deps.functions.list().filter((f) => f.settings.secrets?.includes(name)).map((f) => f.name);
    try {
      await deps.secrets.delete(name, usedBy);
    } catch (e) {
      if (e instanceof SecretNotFoundError) throw new HttpError(404, e.message, { cause: e });
      throw e;
    }
    return json({ name });
  };
}
