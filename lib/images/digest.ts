/**
 * Digests as OCI images use them: validation, and the chain ids naming unpacked layer snapshots.
 *
 * @module
 */

import { createHash } from "node:crypto";

const SHA256_DIGEST = /^sha256:[a-f0-9]{64}$/;

/** Whether `digest` is a well-formed `sha256:<64 hex>` digest (the only algorithm accepted here). */
export function isDigest(digest: unknown): digest is string {
  return typeof digest === "string" && SHA256_DIGEST.test(digest);
}

/** `sha256:<hex>` of `data`. */
export function sha256Digest(data: Uint8Array | string): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

/**
 * The chain id of each layer, as containerd names committed layer snapshots: the first is the first diff id, every
 * next one is `sha256(previous chain id + " " + diff id)`.
 *
 * @throws {TypeError} when a diff id is not a sha256 digest.
 */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const diffId of diffIds) {
    if (!isDigest(diffId)) throw new TypeError(`invalid diff id ${JSON.stringify(diffId)}`);
    const previous = out.at(-1);
    out.push(previous === undefined ? diffId : sha256Digest(`${previous} ${diffId}`));
  }
  return out;
}
