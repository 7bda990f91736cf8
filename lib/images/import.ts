/**
 * Streaming image import: a `docker save` / `podman save` tarball (docker-archive or OCI layout, layers plain or
 * compressed, the whole archive optionally gzipped) goes straight from the request body into containerd's content
 * store, becomes the function's image record, and is unpacked into committed overlayfs snapshots.
 *
 * Everything is written under one lease, labelled so that faasd can find it after a crash (and set to expire in an
 * hour regardless). On success the image record, with GC labels down to the top snapshot, holds what the image needs
 * and the lease is deleted; on failure the lease is deleted with a synchronous GC, so nothing the import wrote stays.
 *
 * Everything after the blobs are in the content store ({@linkcode importWith}) is shared with the cluster's pull from
 * a registry (lib/cluster/distribution.ts), so that an image pulled on another host ends exactly as it was imported.
 *
 * @module
 */

import { errorText, log } from "../log.ts";
import {
  type Containerd,
  ContainerdError,
  type Descriptor,
  isAlreadyExists,
  isNotFound,
} from "../containerd/client.ts";
import { assertValidName } from "../names.ts";
import { type ArchiveContents, ingestArchive } from "./archive.ts";
import { type LayerScan, SizeBudget } from "./layer_scan.ts";
import { ImageImportError, withoutHostPaths } from "./errors.ts";
import { type ProcessConfig, resolveImage } from "./manifest.ts";
import type { DeployedProcess } from "../serve/spec.ts";
import { unpackLayers } from "./unpack.ts";
import { resolveImageUser } from "./user.ts";
import { randomHex } from "../random.ts";
import { labelFilters, LABELS } from "../labels.ts";
import { traced } from "../trace.ts";

export { ImageImportError, type ImageImportErrorKind, ImageTooLargeError, TooManyLayersError } from "./errors.ts";
export type { ProcessConfig } from "./manifest.ts";

/** containerd filters selecting import leases, of this version or an earlier one (for reaping a crash's leftovers). */
export const IMPORT_LEASE_FILTERS: readonly string[] = labelFilters("lease", "import");

/**
 * An import lease expires by itself after this long, should faasd die holding it (the next start reaps it sooner).
 * Long enough for the slowest upload that still sends a byte a minute.
 */
const LEASE_EXPIRY_SECONDS = 24 * 3600;
const DEFAULT_MAX_ENTRIES = 10_000;
/**
 * Most layers an image may have. A container's root filesystem is one overlayfs mount stacking every layer: the
 * kernel takes at most 500 lower layers, and the mount options must fit one 4 KiB page even once containerd
 * shortens them to paths relative to its snapshots directory (past that, every request of the function fails with
 * "mount options is too long"). Docker refuses images of more than 125 layers; so does faasd, at deploy, well within
 * both bounds.
 */
export const MAX_LAYERS = 125;

/** Options of {@linkcode importImage}. */
export interface ImportOptions {
  /** The function's name; the image record is named after it (see {@linkcode containerdImageName}). */
  name: string;
  /** Limit of the tarball's size in bytes (of the tar stream, after undoing a whole-archive gzip), and of what the
   * image's layers unpack to. */
  maxBytes: number;
  /** The snapshotter to unpack into. */
  snapshotter?: string;
  /** Extra labels of the image record. */
  labels?: Record<string, string>;
  /** Limit of the number of archive entries (default 10 000). */
  maxEntries?: number;
  /** Limit of the number of layers of the image (default {@linkcode MAX_LAYERS}). */
  maxLayers?: number;
  /** An upload sending nothing for this long (ms) is abandoned; default 60 s. */
  stallMs?: number;
  /** Where the image is mounted to read its `/etc/passwd` for a named USER (default: the system's temp dir). */
  mountDir?: string;
}

/** What an import left in containerd. */
export interface ImportedImage {
  /** The reference the tarball gave the image (docker `RepoTags[0]`, OCI ref name), else the function name. */
  imageRef: string;
  /** The containerd image record faasd keeps for the function, e.g. `faasd.local/functions/hello:latest`. */
  containerdName: string;
  manifestDigest: string;
  configDigest: string;
  /** The top committed snapshot of the unpacked image: prepare each container's snapshot on it. */
  chainId: string;
  /** What the container's process needs from the image config. */
  config: DeployedProcess;
}

/**
 * The containerd image record name of function `name` running manifest `manifestDigest`. One record per function and
 * image, so functions never share a record, and a redeploy can switch the registry to the new record before the old
 * one (and the snapshots requests in flight are prepared on) goes.
 */
export function containerdImageName(name: string, manifestDigest: string): string {
  return `faasd.local/functions/${name}:${manifestDigest.replace(/^sha256:/, "").slice(0, 16)}`;
}

/**
 * Imports an image tarball streamed in `body` as function `options.name`'s image, replacing its previous one (whose
 * content and snapshots become garbage unless shared).
 *
 * @throws {TypeError} for an invalid function name; {@linkcode RangeError} for a non-positive `maxBytes` or
 *   `maxLayers`.
 * @throws {ImageTooLargeError} (`kind: "too-large"`) when the tarball exceeds `maxBytes`.
 * @throws {ImageImportError} `kind: "invalid"` for anything that is not a complete, safe image archive, an image of
 *   more than `maxLayers` layers among them (refused as soon as the archive shows it);
 *   `kind: "internal"` when containerd fails (its message names no host path; the full error is logged). Either way
 *   nothing written is left behind.
 */
export async function importImage(
  client: Containerd,
  body: ReadableStream<Uint8Array>,
  options: ImportOptions,
): Promise<ImportedImage> {
  const name = assertValidName(options.name);
  if (!(options.maxBytes > 0)) throw new RangeError("importImage: maxBytes must be positive");
  const maxLayers = options.maxLayers ?? MAX_LAYERS;
  if (!(maxLayers >= 1)) throw new RangeError("importImage: maxLayers must be positive");
  try {
    const finish = {
      name,
      maxBytes: options.maxBytes,
      maxLayers,
      snapshotter: options.snapshotter,
      labels: options.labels,
      mountDir: options.mountDir,
    };
    return await importWith(client, finish, async ({ lease, refPrefix }) => {
      const contents = await traced("image.upload", {}, () =>
        ingestArchive(client, body, {
          lease,
          refPrefix,
          maxBytes: options.maxBytes,
          maxEntries: options.maxEntries ?? DEFAULT_MAX_ENTRIES,
          maxLayers,
          stallMs: options.stallMs,
        }));
      const image = await traced("image.resolve", {}, () =>
        resolveImage(client, contents, {
          lease,
          ref: `${refPrefix}-manifest`,
          labels: { [LABELS.managed]: "true" },
          maxLayers,
        }));
      return { ...image, scans: layerScans(contents) };
    });
  } catch (err) {
    await body.cancel().catch(() => {});
    throw toImportError(err, name);
  }
}

/** Options of {@linkcode importWith}. */
export interface ImportWithOptions {
  /** The function's name (already validated). */
  name: string;
  /** Limit of what the image's layers unpack to. */
  maxBytes: number;
  /** Most layers the image may have. */
  maxLayers: number;
  /** The snapshotter to unpack into (default overlayfs). */
  snapshotter?: string;
  /** Extra labels of the image record. */
  labels?: Record<string, string>;
  /** Where the image is mounted to read its `/etc/passwd` for a named USER. */
  mountDir?: string;
  /** Gives up between steps once aborted, throwing its reason (a stage watches it itself). */
  signal?: AbortSignal;
  /** Names the lease and ingest refs: `faasd-<what>-…` (default `import`). */
  what?: string;
}

/** Where a stage of {@linkcode importWith} writes. */
export interface StageContext {
  /** The lease every blob is written under. */
  lease: string;
  /** Prefix of the stage's ingest refs (`<refPrefix>-…`): those left behind by a failure are aborted. */
  refPrefix: string;
}

/** What a stage of {@linkcode importWith} put in the content store, under its lease. */
export interface StagedImage {
  /** The image's own reference, if its source gave one (else the function name is used). */
  imageRef: string | undefined;
  /** The manifest, committed and labelled with the GC references to its config and layers. */
  manifest: Descriptor;
  config: Descriptor;
  layers: Descriptor[];
  /** The uncompressed digest of each layer, from the config. */
  diffIds: string[];
  process: ProcessConfig;
  /** What each layer blob (by digest) was found to be as it streamed into containerd. */
  scans: ReadonlyMap<string, LayerScan>;
}

/**
 * Brings an image into containerd as function `options.name`'s image: `stage` writes its blobs and manifest under a
 * fresh import lease; then the image is checked runnable and within `maxBytes` unpacked, its layers are unpacked
 * into snapshots, its USER is resolved, and its image record ({@linkcode containerdImageName}) is created or updated
 * with GC labels that hold it all once the lease is gone. The path {@linkcode importImage} (from a tarball) and the
 * cluster's pull (from a registry) share.
 *
 * @throws {ImageImportError} for an image no request could run, one that unpacks past `maxBytes`, or a layer that is
 *   not an unpackable tar; whatever `stage` throws, {@linkcode ContainerdError}s and an abort's reason, all unchanged
 *   (callers turn them into their own errors, e.g. with {@linkcode toImportError}). On any failure nothing written
 *   stays: the stage's ingests are aborted and the lease deleted with a synchronous GC.
 */
export async function importWith(
  client: Containerd,
  options: ImportWithOptions,
  stage: (context: StageContext) => Promise<StagedImage>,
): Promise<ImportedImage> {
  const { name, signal } = options;
  const snapshotter = options.snapshotter ?? "overlayfs";
  const what = options.what ?? "import";
  const id = randomHex(6);
  const refPrefix = `faasd-${what}-${id}`;
  const lease = await client.createLease({
    id: `faasd-${what}-${name}-${id}`,
    labels: { [LABELS.managed]: "true", [LABELS.lease]: "import", [LABELS.function]: name },
    expireAfterSeconds: LEASE_EXPIRY_SECONDS,
  });
  try {
    const image = await stage({ lease, refPrefix });
    signal?.throwIfAborted();
    checkRunnable(image.process);
    checkLayers(image.scans, image.layers, options.maxBytes);
    const chainId = await unpackLayers(client, image.layers, image.diffIds, {
      snapshotter,
      lease,
      keyPrefix: `faasd-extract-${id}`,
      labels: { [LABELS.managed]: "true" },
    });
    signal?.throwIfAborted();
    // The config's snapshot reference is what keeps the unpacked snapshots once the lease is gone.
    await client.updateContentLabels(image.config.digest, {
      [`containerd.io/gc.ref.snapshot.${snapshotter}`]: chainId,
    });
    for (const [i, layer] of image.layers.entries()) {
      await client.updateContentLabels(layer.digest, { "containerd.io/uncompressed": image.diffIds[i]! });
    }
    const process = {
      ...image.process,
      resolvedUser: await resolveImageUser(client, image.process.user, {
        snapshotter,
        chainId,
        lease,
        key: `faasd-user-${id}`,
        mountDir: options.mountDir,
      }),
    };
    signal?.throwIfAborted();
    const imageRef = image.imageRef ?? name;
    const record = {
      name: containerdImageName(name, image.manifest.digest),
      target: image.manifest,
      labels: { ...options.labels, [LABELS.managed]: "true", [LABELS.function]: name, [LABELS.imageRef]: imageRef },
    };
    try {
      await client.createImage(record);
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      await client.updateImage(record);
    }
    // Best effort: the image record holds everything now, and a lease left behind expires by itself.
    await client.deleteLease(lease, { sync: false }).catch(() => {});
    return {
      imageRef,
      containerdName: record.name,
      manifestDigest: image.manifest.digest,
      configDigest: image.config.digest,
      chainId,
      config: process,
    };
  } catch (err) {
    await discard(client, lease, refPrefix);
    throw err;
  }
}

/**
 * Deletes a function's image record, with a synchronous GC so that its content and snapshots are gone unless shared.
 *
 * @returns whether there was such a record.
 * @throws {ContainerdError} when containerd fails.
 */
export async function removeImage(client: Containerd, containerdName: string): Promise<boolean> {
  try {
    await client.deleteImage(containerdName, { sync: true });
    return true;
  } catch (err) {
    if (isNotFound(err)) return false;
    throw err;
  }
}

/**
 * Refuses layers that faasd could not scan (not a plain or gzip tar, sparse files), and an image whose layers unpack
 * past `maxBytes` (a layer listed twice is unpacked, and counted, twice).
 *
 * @throws {ImageImportError} for an unusable layer; {@linkcode ImageTooLargeError} past the limit.
 */
function checkLayers(
  scans: ReadonlyMap<string, LayerScan>,
  layers: readonly Descriptor[],
  maxBytes: number,
): void {
  const unpacked = new SizeBudget(maxBytes, "unpacked");
  for (const [i, layer] of layers.entries()) {
    const scan = scans.get(layer.digest);
    if (!scan) throw new ImageImportError(`layer ${i + 1} (${layer.digest}) was not scanned`);
    if (scan.kind === "unusable") throw new ImageImportError(`layer ${i + 1} (${layer.digest}) ${scan.reason}`);
    unpacked.charge(scan.unpackedBytes);
  }
}

/** The scan of every blob of an archive, by digest. */
function layerScans(contents: ArchiveContents): Map<string, LayerScan> {
  const scans = new Map<string, LayerScan>();
  for (const entry of contents.entries.values()) if (entry.kind === "blob") scans.set(entry.digest, entry.scan);
  return scans;
}

/** Refuses at deploy time an image that no request could run: no command. */
function checkRunnable(process: ProcessConfig): void {
  if (process.entrypoint.length + process.cmd.length === 0) {
    throw new ImageImportError("the image has neither ENTRYPOINT nor CMD: nothing to run");
  }
}

/** Removes what a failed import wrote: its ingests, then (with a synchronous GC) everything its lease held. */
async function discard(client: Containerd, lease: string, refPrefix: string): Promise<void> {
  const ingests = await client.listIngests().catch(() => []);
  for (const ingest of ingests) {
    if (ingest.ref.startsWith(`${refPrefix}-`)) await client.abortIngest(ingest.ref).catch(() => {});
  }
  await client.deleteLease(lease, { sync: true }).catch(() => {});
}

/**
 * The error the client sees. Ours pass through; anything else is containerd's or the system's failure, whose message
 * may name host paths: the client gets it without them, the operator's log the whole error.
 */
export function toImportError(err: unknown, name: string): ImageImportError {
  if (err instanceof ImageImportError) return err;
  if (err instanceof ContainerdError) {
    log.error("deploy failed", { function: name, error: err.message });
    return new ImageImportError(`containerd failed while importing the image: ${withoutHostPaths(err.message)}`, {
      kind: "internal",
      cause: err,
    });
  }
  // Not containerd's (the system's, or a bug): the stack tells more.
  log.error("deploy failed", { function: name, error: errorText(err), stack: (err as Error).stack });
  const message = err instanceof Error ? err.message : String(err);
  return new ImageImportError(`image import failed: ${withoutHostPaths(message)}`, { kind: "internal", cause: err });
}
