/**
 * Images in a cluster: an upload is imported into this host's containerd as on a single host and then pushed to the
 * cluster's OCI registry, before the deploy is recorded in etcd (so every other host can pull what etcd names);
 * other hosts pull it by digest into their own containerd.
 *
 * @module
 */

import type { Containerd } from "../containerd/client.ts";
import type { ImageStore } from "../functions.ts";
import type { DeployedImage, FunctionRecord } from "../registry.ts";
import { pullImage, pushImage } from "./distribution.ts";
import type { ClusterImages } from "./converger.ts";

/** The registry repository of function `name`'s images. */
export function repositoryOf(name: string): string {
  return `faasd/${name}`;
}

/** Options of {@linkcode clusterImageStore}. */
export interface ClusterImageOptions {
  /** The cluster registry's base URL. */
  registry: string;
  maxBytes: number;
  snapshotter: string;
  mountDir?: string;
}

/**
 * Wraps this host's image store (`local`) for a cluster: imports are pushed to the registry, and images can be pulled.
 * An import whose push fails is removed again and the push's error thrown (the deploy fails as a whole).
 */
export function clusterImageStore(
  containerd: Containerd,
  local: ImageStore,
  options: ClusterImageOptions,
): ImageStore & ClusterImages {
  return {
    import: async (name, body) => {
      const image = await local.import(name, body);
      try {
        await pushImage(containerd, {
          registry: options.registry,
          repository: repositoryOf(name),
          manifestDigest: image.manifestDigest,
        });
      } catch (e) {
        await local.remove(name, image).catch(() => {});
        throw e;
      }
      return image;
    },
    remove: (name, image) => local.remove(name, image),
    has: async (image: DeployedImage) => {
      const record = await containerd.getImage(image.containerdName);
      if (record?.target.digest !== image.manifestDigest) return false;
      return (await containerd.statSnapshot(options.snapshotter, image.chainId)) !== null;
    },
    pull: async (record: FunctionRecord) => {
      await pullImage(containerd, {
        registry: options.registry,
        repository: repositoryOf(record.name),
        manifestDigest: record.image!.manifestDigest,
        name: record.name,
        imageRef: record.image!.imageRef,
        maxBytes: options.maxBytes,
        snapshotter: options.snapshotter,
        mountDir: options.mountDir,
      });
    },
  };
}
