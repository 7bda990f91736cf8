/**
 * Unpacks an image's layers into committed snapshots named by chain id, as containerd's own unpacker does, so that
 * containers can be prepared on the top one. Layers whose chain snapshot exists already are reused when the layer is
 * known to be the same; otherwise they are applied and checked like new ones.
 *
 * @module
 */

import { errorText, log } from "../log.ts";
import { traced } from "../trace.ts";
import { type Containerd, type Descriptor, isAlreadyExists, isUnavailable } from "../containerd/client.ts";
import { chainIds } from "./digest.ts";
import { ImageImportError, withoutHostPaths } from "./errors.ts";
import { DOCKER_LAYER, OCI_LAYER } from "./mediatypes.ts";

/** Options of {@linkcode unpackLayers}. */
export interface UnpackOptions {
  snapshotter: string;
  /** Lease holding every snapshot prepared or committed (and existing ones reused). */
  lease: string;
  /** Prefix of the temporary active snapshot keys, unique per import. */
  keyPrefix: string;
  /** Labels of the committed snapshots. */
  labels?: Record<string, string>;
}

/**
 * Applies `layers` one on another and returns the chain id of the top snapshot.
 *
 * @throws {ImageImportError} when an applied layer's uncompressed digest differs from its diff id, or containerd
 *   cannot apply a layer (corrupt or unsupported compression): its message names no host path, the full error is
 *   logged.
 * @throws {ContainerdError} when containerd fails otherwise. The active snapshot of the failing layer is removed;
 *   committed ones stay in the lease.
 */
export async function unpackLayers(
  client: Containerd,
  layers: readonly Descriptor[],
  diffIds: readonly string[],
  options: UnpackOptions,
): Promise<string> {
  if (layers.length !== diffIds.length) throw new RangeError("unpackLayers: one diff id per layer needed");
  const chain = chainIds(diffIds);
  const { snapshotter, lease } = options;
  const resource = (id: string) => ({ type: `snapshots/${snapshotter}`, id });
  /**
   * Holds the existing snapshot `name` in the lease; false when it is gone. The lease is added before the check: a
   * garbage collection of an image that used it may be under way, and only once the lease holds it is it safe.
   */
  const hold = async (name: string) => {
    await client.addLeaseResource(lease, resource(name));
    return await client.statSnapshot(snapshotter, name) !== null;
  };
  let parent = "";
  for (const [i, layer] of layers.entries()) {
    const name = chain[i]!;
    await traced(
      "layer.unpack",
      { "layer.index": i, "layer.digest": layer.digest, "layer.bytes": layer.size },
      async (span) => {
        // Already unpacked (another function, an earlier deploy) and known to be this layer: held until the image
        // references it.
        if (await verifiedBefore(client, layer, diffIds[i]!) && await hold(name)) {
          span.setAttribute("layer.reused", true);
          return;
        }
        // Not unpacked yet, or this upload's layer is not known to be what the existing snapshot holds: a chain id is
        // only the uploader's claim, so the layer is applied and checked (a commit that finds the chain reuses it).
        for (let attempt = 1;; attempt++) {
          if (await applyLayer(client, layer, diffIds[i]!, i, name, parent, options) || await hold(name)) break;
          // Committed by someone else, then collected before we held it: apply it again.
          if (attempt === 3) {
            throw new ImageImportError(`layer ${i + 1} (${layer.digest}) kept vanishing while unpacked`);
          }
        }
      },
    );
    parent = name;
  }
  return parent;
}

/**
 * Applies `layer` on `parent` and commits it as `name`. True when committed here; false when the commit found `name`
 * existing (a concurrent import of the same layers was first).
 */
async function applyLayer(
  client: Containerd,
  layer: Descriptor,
  diffId: string,
  i: number,
  name: string,
  parent: string,
  options: UnpackOptions,
): Promise<boolean> {
  const { snapshotter, lease } = options;
  const key = `${options.keyPrefix}-${i}-${name}`;
  const mounts = await client.prepareSnapshot(snapshotter, key, parent, { lease });
  try {
    let applied: Descriptor;
    try {
      applied = await client.applyDiff(layer, mounts, { lease });
    } catch (err) {
      if (isUnavailable(err)) throw err;
      const what = `layer ${i + 1} (${layer.digest}) could not be unpacked`;
      // containerd names the files it failed on by their host paths, under its root or a temporary mount.
      log.error(what, { error: errorText(err) });
      throw new ImageImportError(`${what}: ${withoutHostPaths(errorText(err))}`, { cause: err });
    }
    if (applied.digest !== diffId) {
      throw new ImageImportError(`layer ${i + 1} unpacks to ${applied.digest}, but the image config says ${diffId}`);
    }
    await client.commitSnapshot(snapshotter, name, key, { lease, labels: options.labels });
    return true;
  } catch (err) {
    await client.removeSnapshot(snapshotter, key).catch(() => {});
    if (!isAlreadyExists(err)) throw err;
    return false;
  }
}

/**
 * Whether `layer` is known to unpack to `diffId` without applying it: an uncompressed layer is its own diff, and a
 * compressed blob carries `containerd.io/uncompressed` once an import has applied and checked it.
 */
async function verifiedBefore(client: Containerd, layer: Descriptor, diffId: string): Promise<boolean> {
  if (layer.mediaType === DOCKER_LAYER || layer.mediaType === OCI_LAYER) return layer.digest === diffId;
  return (await client.contentInfo(layer.digest))?.labels["containerd.io/uncompressed"] === diffId;
}
