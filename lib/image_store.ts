/**
 * The image store of functions, backed by containerd: imports stream through lib/images into a containerd image
 * record per function, and removal deletes that record (containerd's GC then drops what nothing else uses).
 *
 * @module
 */

import type { Containerd } from "./containerd/client.ts";
import { IMPORT_LEASE_FILTERS, importImage, removeImage } from "./images/import.ts";
import { labelFilters } from "./labels.ts";
import type { ImageStore } from "./functions.ts";

/** Builds the containerd-backed {@linkcode ImageStore}. */
export function containerdImageStore(
  containerd: Containerd,
  opts: { maxBytes: number; snapshotter: string; mountDir?: string },
): ImageStore {
  return {
    import: async (name, body) => {
      const image = await importImage(containerd, body, {
        name,
        maxBytes: opts.maxBytes,
        snapshotter: opts.snapshotter,
        mountDir: opts.mountDir,
      });
      return {
        imageRef: image.imageRef,
        containerdName: image.containerdName,
        manifestDigest: image.manifestDigest,
        chainId: image.chainId,
        config: image.config,
      };
    },
    remove: async (_name, image) => {
      await removeImage(containerd, image.containerdName);
    },
  };
}

/**
 * Removes faasd's images that no function uses (`keep` lists those in use) and the leases of imports that never
 * finished: what a faasd that died mid-deploy or mid-delete left behind.
 *
 * @returns how many images and leases were removed.
 */
export async function reapImages(containerd: Containerd, keep: readonly string[]): Promise<number> {
  let reaped = 0;
  for (const image of await containerd.listImages(...labelFilters("function"))) {
    if (keep.includes(image.name)) continue;
    await removeImage(containerd, image.name);
    reaped++;
  }
  for (const lease of await containerd.listLeases(...IMPORT_LEASE_FILTERS)) {
    await containerd.deleteLease(lease.id, { sync: true });
    reaped++;
  }
  return reaped;
}
