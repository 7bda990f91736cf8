/**
 * `POST /api/secrets/<name>`: stores a secret; the body is its value (at most 512 KiB). Answers 201 `{"name"}`; 409
 * when it exists already, 400 for a bad name or an empty value, 413 past the limit. The value is never echoed.
 *
 * @module
 */

import { concatBytes } from "../bytes.ts";
import { MAX_SECRET_BYTES, type Secrets } from "../secrets.ts";
import { HttpError, json } from "./http.ts";

/** Builds the handler. */
export function createSecret(deps: { secrets: Secrets }) {
  return async (req: Request, name: string): Promise<Response> => {
    const tooLarge = () => new HttpError(413, `secret over the limit of ${MAX_SECRET_BYTES} bytes`);
    if (Number(req.headers.get("content-length") ?? 0) > MAX_SECRET_BYTES) throw tooLarge();
    const parts: Uint8Array[] = [];
    let size = 0;
    for await (const chunk of req.body ?? []) {
      size += chunk.length;
      if (size > MAX_SECRET_BYTES) throw tooLarge();
      parts.push(chunk);
    }
    try {
      await deps.secrets.create(name, concatBytes(parts, size));
    } catch (e) {
      if (e instanceof TypeError) throw new HttpError(400, e.message, { cause: e });
      throw e;
    }
    return json({ name }, 201);
  };
}
