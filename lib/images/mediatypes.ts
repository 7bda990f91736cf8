/**
 * The media types of image manifests, configs and layers that import understands, and the layer compression guess
 * from a blob's first bytes.
 *
 * @module
 */

export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
export const DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
export const DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json";
export const DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar";
export const DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip";
export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
export const OCI_LAYER = "application/vnd.oci.image.layer.v1.tar";
export const OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";
export const OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd";

/** Layer media types containerd's differ can apply (including the non-distributable variants). */
const LAYER_TYPES = new Set([
  DOCKER_LAYER,
  DOCKER_LAYER_GZIP,
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
  OCI_LAYER,
  OCI_LAYER_GZIP,
  OCI_LAYER_ZSTD,
  "application/vnd.oci.image.layer.nondistributable.v1.tar",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
]);

/** Whether containerd can unpack a layer of this media type. */
export function isLayerType(mediaType: string): boolean {
  return LAYER_TYPES.has(mediaType);
}

/** Whether the media type names an image index / manifest list. */
export function isIndexType(mediaType: string): boolean {
  return mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST;
}

/** Whether the media type names a single-platform image manifest. */
export function isManifestType(mediaType: string): boolean {
  return mediaType === OCI_MANIFEST || mediaType === DOCKER_MANIFEST;
}

/** A layer's compression, told by its magic bytes. */
export type Compression = "none" | "gzip" | "zstd";

/** Guesses a blob's compression from its first bytes (gzip `1f 8b`, zstd `28 b5 2f fd`). */
export function detectCompression(head: Uint8Array): Compression {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return "gzip";
  if (head.length >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) return "zstd";
  return "none";
}

/** The media type of a docker-archive layer with this compression (docker's own types; zstd only exists in OCI). */
export function dockerLayerType(compression: Compression): string {
  switch (compression) {
    case "gzip":
      return DOCKER_LAYER_GZIP;
    case "zstd":
      return OCI_LAYER_ZSTD;
    case "none":
      return DOCKER_LAYER;
  }
}
