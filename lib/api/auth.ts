/**
 * Bearer-token authentication of the control API. The token is compared in constant time (through SHA-256 digests,
 * so that neither its length nor its content leaks through timing).
 *
 * @module
 */

import { createHash, timingSafeEqual } from "node:crypto";

function digest(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/**
 * Returns a check that tells whether a request carries `Authorization: Bearer <token>`.
 *
 * @throws {TypeError} when `token` is empty.
 */
export function bearerAuth(token: string): (req: Request) => boolean {
  if (token === "") throw new TypeError("bearerAuth: empty token");
  const expected = digest(token);
  return (req) => {
    const header = req.headers.get("authorization") ?? "";
    const match = /^Bearer +(\S+)\s*$/i.exec(header);
    return timingSafeEqual(digest(match?.[1] ?? ""), expected) && match !== null;
  };
}
