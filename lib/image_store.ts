/**
 * The image store of functions, backed by containerd: imports stream through lib/images into a containerd image
 * record per function, and removal deletes that record (containerd's GC then drops what nothing else uses).
 *
 * @module
 */

import type { Containerd } from "./containerd/client.ts";
import { importImage, removeImage } from "./images/import.ts";
import type { ImageStore } from "./functions.ts";

/** Builds the containerd-backed {@linkcode ImageStore}. */
export function containerdImageStore(
  containerd: Containerd,
  opts: { maxBytes: number; snapshotter: string },
): ImageStore {
  return {
    import: async (name, body) => {
      const image = await importImage(containerd, body, {
        name,
        maxBytes: opts.maxBytes,
        snapshotter: opts.snapshotter,
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
