/**
 * Turns what an archive held into one image: its manifest (written for a docker-archive, which has none; taken from
 * the layout for OCI), config and layers, with the garbage-collection labels that tie them together in containerd.
 *
 * @module
 */

import { type Containerd, type Descriptor, isNotFound } from "../containerd/client.ts";
import type { ArchiveBlob, ArchiveContents } from "./archive.ts";
import { MAX_JSON_BYTES, normalizeEntryName } from "./archive.ts";
import { isDigest } from "./digest.ts";
import { ImageImportError, TooManyLayersError } from "./errors.ts";
import {
  detectCompression,
  DOCKER_CONFIG,
  DOCKER_MANIFEST,
  dockerLayerType,
  isIndexType,
  isLayerType,
  isManifestType,
  OCI_CONFIG,
  OCI_MANIFEST,
} from "./mediatypes.ts";
import type { ProcessConfig } from "../serve/spec.ts";

export type { ProcessConfig } from "../serve/spec.ts";

/** One image of an archive, its manifest committed and labelled. */
export interface ResolvedImage {
  format: "docker-archive" | "oci-layout";
  /** The reference the archive gives the image, if any. */
  imageRef: string | undefined;
  manifest: Descriptor;
  config: Descriptor;
  layers: Descriptor[];
  /** The uncompressed digest of each layer, from the config. */
  diffIds: string[];
  process: ProcessConfig;
}

/** How deep nested indexes are followed. */
const MAX_INDEX_DEPTH = 3;

/** Options of {@linkcode resolveImage}. */
export interface ResolveOptions {
  /** Lease holding the manifest written for a docker-archive. */
  lease: string;
  /** Ingest ref of that manifest. */
  ref: string;
  /** Labels of the manifest. */
  labels: Record<string, string>;
  /** Most layers the image may have. */
  maxLayers: number;
}

/**
 * Finds the image in the archive and makes sure its manifest is committed with labels referencing config and layers.
 *
 * @throws {ImageImportError} when the archive does not describe a complete, usable image.
 * @throws {TooManyLayersError} when its manifest lists more than `maxLayers` layers (before anything is looked up).
 * @throws {ContainerdError} when containerd fails.
 */
export async function resolveImage(
  client: Containerd,
  contents: ArchiveContents,
  options: ResolveOptions,
): Promise<ResolvedImage> {
  for (const name of ["index.json", "manifest.json"]) {
    const entry = contents.entries.get(name);
    if (entry?.kind === "other") throw new ImageImportError(`${name} is a ${entry.type} entry, not a regular file`);
  }
  if (contents.indexFiles.has("index.json")) return await resolveOci(client, contents, options);
  if (contents.indexFiles.has("manifest.json")) return await resolveDocker(client, contents, options);
  throw new ImageImportError(
    "image archive has neither manifest.json (docker save) nor index.json (OCI layout): is it an image tarball?",
  );
}

async function resolveDocker(
  client: Containerd,
  contents: ArchiveContents,
  options: ResolveOptions,
): Promise<ResolvedImage> {
  const list = parseJson(contents.indexFiles.get("manifest.json")!, "manifest.json");
  if (!Array.isArray(list) || list.length === 0 || !isObject(list[0])) {
    throw new ImageImportError("manifest.json lists no image");
  }
  const entry = list[0];
  if (typeof entry.Config !== "string") throw new ImageImportError("manifest.json has no Config");
  if (!Array.isArray(entry.Layers) || !entry.Layers.every((l) => typeof l === "string")) {
    throw new ImageImportError("manifest.json has no Layers list");
  }
  if (entry.Layers.length > options.maxLayers) throw new TooManyLayersError(options.maxLayers, entry.Layers.length);
  const configBlob = lookup(contents, entry.Config, "image config");
  const configJson = await loadJson(client, configBlob, "image config");
  const config: Descriptor = { mediaType: DOCKER_CONFIG, digest: configBlob.digest, size: configBlob.size };
  const layers = (entry.Layers as string[]).map((path, i): Descriptor => {
    const blob = lookup(contents, path, `layer ${i + 1}`);
    return { mediaType: dockerLayerType(detectCompression(blob.head)), digest: blob.digest, size: blob.size };
  });
  const { diffIds, process } = readImageConfig(configJson, layers.length);
  const manifestBytes = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: DOCKER_MANIFEST,
    config: { mediaType: config.mediaType, size: config.size, digest: config.digest },
    layers: layers.map((l) => ({ mediaType: l.mediaType, size: l.size, digest: l.digest })),
  }));
  const written = await client.writeBlob([manifestBytes], {
    ref: options.ref,
    lease: options.lease,
    total: manifestBytes.length,
  });
  // Labelled after the write: the same manifest may exist already (an earlier import), and the write keeps its labels.
  await client.updateContentLabels(written.digest, { ...options.labels, ...gcLabels(config, layers) });
  const tags = Array.isArray(entry.RepoTags) ? entry.RepoTags.filter((t) => typeof t === "string") : [];
  return {
    format: "docker-archive",
    imageRef: tags[0],
    manifest: { mediaType: DOCKER_MANIFEST, digest: written.digest, size: written.size },
    config,
    layers,
    diffIds,
    process,
  };
}

async function resolveOci(
  client: Containerd,
  contents: ArchiveContents,
  options: ResolveOptions,
): Promise<ResolvedImage> {
  const index = parseJson(contents.indexFiles.get("index.json")!, "index.json");
  const found = await selectManifest(client, contents, index, "index.json", 0);
  if (!found) throw new ImageImportError("index.json lists no image manifest for this platform");
  const { descriptor, annotations } = found;
  const manifestBlob = blobOf(contents, descriptor, "image manifest");
  const manifest = await loadJson(client, manifestBlob, "image manifest");
  const { config, layers } = manifestContents(manifest, options.maxLayers);
  const configJson = await loadJson(client, blobOf(contents, config, "image config"), "image config");
  layers.forEach((layer, i) => blobOf(contents, layer, `layer ${i + 1}`));
  const { diffIds, process } = readImageConfig(configJson, layers.length);
  await client.updateContentLabels(manifestBlob.digest, { ...options.labels, ...gcLabels(config, layers) });
  const mediaType = typeof manifest.mediaType === "string" && isManifestType(manifest.mediaType)
    ? manifest.mediaType
    : descriptor.mediaType;
  return {
    format: "oci-layout",
    imageRef: refName(annotations),
    manifest: { mediaType, digest: manifestBlob.digest, size: manifestBlob.size },
    config: { mediaType: config.mediaType || OCI_CONFIG, digest: config.digest, size: config.size },
    layers,
    diffIds,
    process,
  };
}

/** Picks the image manifest for this host from an index, following nested indexes. */
async function selectManifest(
  client: Containerd,
  contents: ArchiveContents,
  index: unknown,
  what: string,
  depth: number,
): Promise<{ descriptor: Descriptor; annotations: Record<string, string> } | null> {
  if (!isObject(index) || !Array.isArray(index.manifests)) throw new ImageImportError(`${what} has no manifests list`);
  const candidates = index.manifests.filter((m: unknown) => isObject(m) && forThisPlatform(m));
  for (const raw of candidates) {
    const descriptor = toDescriptor(raw, `${what} entry`);
    const annotations = stringRecord((raw as Record<string, unknown>).annotations);
    if (annotations["vnd.docker.reference.type"] === "attestation-manifest") continue;
    if (isIndexType(descriptor.mediaType)) {
      if (depth >= MAX_INDEX_DEPTH) throw new ImageImportError(`${what} nests indexes too deeply`);
      const nested = await loadJson(client, blobOf(contents, descriptor, "image index"), "image index");
      const found = await selectManifest(client, contents, nested, "image index", depth + 1);
      if (found) return { descriptor: found.descriptor, annotations: { ...found.annotations, ...annotations } };
    } else if (isManifestType(descriptor.mediaType) || descriptor.mediaType === "") {
      return { descriptor: { ...descriptor, mediaType: descriptor.mediaType || OCI_MANIFEST }, annotations };
    }
  }
  return null;
}

const HOST_ARCH: Record<string, string> = { x86_64: "amd64", aarch64: "arm64" };

function forThisPlatform(descriptor: Record<string, unknown>): boolean {
  const platform = descriptor.platform;
  if (!isObject(platform)) return true;
  const arch = HOST_ARCH[Deno.build.arch] ?? Deno.build.arch;
  return platform.os === "linux" && platform.architecture === arch;
}

/** The image's own name from OCI annotations; a bare tag (`latest`) does not name an image. */
function refName(annotations: Record<string, string>): string | undefined {
  const containerd = annotations["io.containerd.image.name"];
  if (containerd) return containerd;
  const ref = annotations["org.opencontainers.image.ref.name"];
  return ref && /[/:]/.test(ref) ? ref : undefined;
}

/**
 * The config and layer descriptors of a single-platform image manifest (OCI or docker schema 2).
 *
 * @throws {ImageImportError} when it lacks either, has an invalid descriptor, or a layer of a media type containerd
 *   cannot unpack.
 * @throws {TooManyLayersError} when it lists more than `maxLayers` layers (checked first).
 */
export function manifestContents(
  manifest: Record<string, unknown>,
  maxLayers: number,
): { config: Descriptor; layers: Descriptor[] } {
  if (!isObject(manifest.config)) throw new ImageImportError("image manifest has no config");
  if (!Array.isArray(manifest.layers)) throw new ImageImportError("image manifest has no layers list");
  if (manifest.layers.length > maxLayers) throw new TooManyLayersError(maxLayers, manifest.layers.length);
  const config = toDescriptor(manifest.config, "image config");
  const layers = manifest.layers.map((l: unknown, i: number) => {
    const layer = toDescriptor(l, `layer ${i + 1}`);
    if (!isLayerType(layer.mediaType)) {
      throw new ImageImportError(`layer ${i + 1} has an unsupported media type ${JSON.stringify(layer.mediaType)}`);
    }
    return layer;
  });
  return { config, layers };
}

/** The labels of a manifest blob that keep its config and layers from containerd's garbage collection. */
export function gcLabels(config: Descriptor, layers: readonly Descriptor[]): Record<string, string> {
  const labels: Record<string, string> = { "containerd.io/gc.ref.content.config": config.digest };
  layers.forEach((l, i) => labels[`containerd.io/gc.ref.content.l.${i}`] = l.digest);
  return labels;
}

/**
 * The layers' diff ids and the process settings of an image config.
 *
 * @throws {ImageImportError} when the config does not list one valid diff id per layer (and at least one), or a
 *   process setting has the wrong type.
 */
export function readImageConfig(
  config: Record<string, unknown>,
  layerCount: number,
): { diffIds: string[]; process: ProcessConfig } {
  const rootfs = config.rootfs;
  if (!isObject(rootfs) || !Array.isArray(rootfs.diff_ids)) {
    throw new ImageImportError("image config has no rootfs.diff_ids");
  }
  const diffIds = rootfs.diff_ids;
  if (!diffIds.every(isDigest)) throw new ImageImportError("image config has an invalid diff id");
  if (diffIds.length !== layerCount) {
    throw new ImageImportError(`image config lists ${diffIds.length} layer diff ids, but the image has ${layerCount}`);
  }
  if (layerCount === 0) throw new ImageImportError("image has no layers: nothing to run");
  const c = isObject(config.config) ? config.config : {};
  return {
    diffIds,
    process: {
      entrypoint: stringList(c.Entrypoint, "Entrypoint"),
      cmd: stringList(c.Cmd, "Cmd"),
      env: stringList(c.Env, "Env"),
      workingDir: typeof c.WorkingDir === "string" ? c.WorkingDir : "",
      user: typeof c.User === "string" ? c.User : "",
    },
  };
}

/** How many links one lookup follows before giving up. */
const MAX_LINKS = 8;

/**
 * The blob at `path`. Symbolic and hard links inside the archive are followed (older `docker save` writes a
 * duplicate layer as a link to the first copy): only to entries of the same archive, never outside it — nothing is
 * written to disk, so a link can only name another entry.
 */
function lookup(contents: ArchiveContents, path: string, what: string): ArchiveBlob {
  let name = normalizeEntryName(path);
  for (let hops = 0; hops <= MAX_LINKS; hops++) {
    const entry = contents.entries.get(name);
    if (!entry) throw new ImageImportError(`${what} ${JSON.stringify(path)} is missing from the archive`);
    if (entry.kind === "blob") return entry;
    if ((entry.type !== "symlink" && entry.type !== "link") || !entry.linkname) {
      throw new ImageImportError(`${what} ${JSON.stringify(path)} is a ${entry.type} entry, not a regular file`);
    }
    // A symlink is relative to its own directory; a hard link names an entry from the archive's root.
    const base = entry.type === "symlink" ? name.slice(0, name.lastIndexOf("/") + 1) : "";
    const target = entry.linkname.startsWith("/") ? null : resolveInArchive(base + entry.linkname);
    if (target === null) {
      throw new ImageImportError(`${what} ${JSON.stringify(path)} links outside the archive`);
    }
    name = target;
  }
  throw new ImageImportError(`${what} ${JSON.stringify(path)}: too many links`);
}

/** Normalises a relative archive path with `.` and `..` segments; null when it climbs above the archive's root. */
function resolveInArchive(path: string): string | null {
  const out: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (out.length === 0) return null;
      out.pop();
    } else out.push(part);
  }
  return out.join("/");
}

function blobOf(contents: ArchiveContents, descriptor: Descriptor, what: string): ArchiveBlob {
  const blob = lookup(contents, `blobs/sha256/${descriptor.digest.slice("sha256:".length)}`, what);
  if (blob.size !== descriptor.size) {
    throw new ImageImportError(
      `${what} ${descriptor.digest} has ${blob.size} bytes, its descriptor says ${descriptor.size}`,
    );
  }
  return blob;
}

function toDescriptor(raw: unknown, what: string): Descriptor {
  if (!isObject(raw) || !isDigest(raw.digest) || !Number.isSafeInteger(raw.size) || (raw.size as number) < 0) {
    throw new ImageImportError(`${what} has an invalid descriptor (sha256 digest and size required)`);
  }
  return {
    mediaType: typeof raw.mediaType === "string" ? raw.mediaType : "",
    digest: raw.digest,
    size: raw.size as number,
  };
}

async function loadJson(client: Containerd, blob: ArchiveBlob, what: string): Promise<Record<string, unknown>> {
  if (blob.size > MAX_JSON_BYTES) throw new ImageImportError(`${what} is larger than ${MAX_JSON_BYTES} bytes`);
  let bytes = blob.json;
  if (!bytes) {
    try {
      bytes = await client.readBlob(blob.digest, { maxBytes: MAX_JSON_BYTES });
    } catch (err) {
      if (isNotFound(err)) {
        throw new ImageImportError(`${what} ${blob.digest} vanished from containerd`, { cause: err });
      }
      throw err;
    }
  }
  return parseJsonObject(bytes, what);
}

/**
 * Parses `bytes` as a JSON object; `what` names it in errors.
 *
 * @throws {ImageImportError} when it is not valid JSON or not an object.
 */
export function parseJsonObject(bytes: Uint8Array, what: string): Record<string, unknown> {
  const value = parseJson(bytes, what);
  if (!isObject(value)) throw new ImageImportError(`${what} is not a JSON object`);
  return value;
}

function parseJson(bytes: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (err) {
    throw new ImageImportError(`${what} is not valid JSON`, { cause: err });
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function stringList(v: unknown, what: string): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((s) => typeof s === "string")) {
    throw new ImageImportError(`image config ${what} is not a list of strings`);
  }
  return v;
}

function stringRecord(v: unknown): Record<string, string> {
  if (!isObject(v)) return {};
  return Object.fromEntries(Object.entries(v).filter((e): e is [string, string] => typeof e[1] === "string"));
}
