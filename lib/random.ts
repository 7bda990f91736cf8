/**
 * {@linkcode randomHex}: random identifiers for what faasd names itself (leases, containers, ingests).
 *
 * @module
 */

/** `bytes` random bytes as lowercase hex (twice as many characters). */
export function randomHex(bytes: number): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}
