/**
 * Every containerd label key faasd writes, in one place, under one prefix (`io.faasd.`).
 *
 * Per-request containers, snapshots and leases carry {@linkcode LABELS.kind} `request` and the function's name; a
 * shim group's anchor also carries {@linkcode LABELS.role} `shim-anchor`. Function images carry
 * {@linkcode LABELS.managed}, {@linkcode LABELS.function} and {@linkcode LABELS.imageRef}; the lease of an import in
 * progress carries {@linkcode LABELS.lease} `import`.
 *
 * faasd before this module wrote the image and import labels under `faasd.` ({@linkcode LEGACY_LABELS}); start-up
 * reaping still recognises those, so an upgrade leaves nothing behind.
 *
 * @module
 */

/** Label keys faasd writes. */
export const LABELS = {
  /** What a per-request object is: `request`. */
  kind: "io.faasd.kind",
  /** The function an object belongs to. */
  function: "io.faasd.function",
  /** `shim-anchor` on a shim group's anchor container (shim_groups.ts). */
  role: "io.faasd.role",
  /** `true` on everything an import wrote. */
  managed: "io.faasd.managed",
  /** `import` on the lease that holds an import in progress. */
  lease: "io.faasd.lease",
  /** The image reference the function was deployed from. */
  imageRef: "io.faasd.image-ref",
} as const;

/** Keys of earlier versions, still read by start-up reaping. */
export const LEGACY_LABELS = {
  managed: "faasd.managed",
  function: "faasd.function",
  lease: "faasd.lease",
  imageRef: "faasd.image-ref",
} as const;

/**
 * containerd filters matching objects that have `key` (with `value`, if given) under the current or the legacy name
 * (a list call ORs its filters).
 */
export function labelFilters(key: keyof typeof LEGACY_LABELS, value?: string): string[] {
  const match = (k: string) => value === undefined ? `labels."${k}"` : `labels."${k}"==${value}`;
  return [match(LABELS[key]), match(LEGACY_LABELS[key])];
}
