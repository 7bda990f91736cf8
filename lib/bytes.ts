/**
 * Byte-array helpers shared by the containerd client and the CLI's upload.
 *
 * @module
 */

/** Concatenates `parts` (of `size` bytes in all); a single part is returned as is, without a copy. */
export function concatBytes(parts: readonly Uint8Array[], size = parts.reduce((n, p) => n + p.length, 0)): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
