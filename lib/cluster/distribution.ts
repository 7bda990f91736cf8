/**
 * Moving a function's image between cluster hosts through an OCI registry: a client of the distribution API (v2,
 * plain `fetch`, no auth) that pushes an imported image from containerd's content store and pulls one into another
 * host's containerd. Blobs stream both ways and are never held whole; only manifests and configs are read into
 * memory.
 *
 * A pull ends exactly as an upload's import does (lib/images/import.ts, `importWith`): it is checked, unpacked and
 * recorded under the function's name, and gives the same {@linkcode ImportedImage} the import gave on the pushing
 * host. Everything it writes is held by an import lease until the image record holds it, so a failure (the registry,
 * a digest mismatch, containerd, an abort) leaves nothing behind.
 *
 * @module
 */

import { Code, type Containerd, ContainerdError, type Descriptor } from "../containerd/client.ts";
import { assertValidName } from "../names.ts";
import { concatBytes } from "../bytes.ts";
import { MAX_JSON_BYTES } from "../images/archive.ts";
import { isDigest, sha256Digest } from "../images/digest.ts";
import { ImageImportError, ImageTooLargeError } from "../images/errors.ts";
import {
  type ImportedImage,
  importWith,
  MAX_LAYERS,
  type StageContext,
  type StagedImage,
  toImportError,
} from "../images/import.ts";
import { type LayerScan, LayerScanner, SizeBudget } from "../images/layer_scan.ts";
import { gcLabels, manifestContents, parseJsonObject, readImageConfig } from "../images/manifest.ts";
import { DOCKER_MANIFEST, isIndexType, isManifestType, OCI_CONFIG, OCI_MANIFEST } from "../images/mediatypes.ts";
import { LABELS } from "../labels.ts";
import { traced } from "../trace.ts";

/** A registry answered with an error, wrong content, or not at all. */
export class RegistryError extends Error {
  /** The HTTP status of the registry's answer; undefined when it could not be reached (or the connection broke). */
  readonly status: number | undefined;

  constructor(message: string, options?: ErrorOptions & { status?: number }) {
    super(message, options);
    this.name = "RegistryError";
    this.status = options?.status;
  }
}

/** What the registry sent is not what its digest (or descriptor size) says: corrupt or tampered with. */
export class DigestMismatchError extends RegistryError {
  /** The digest asked for. */
  readonly expected: string;

  constructor(expected: string, message: string, options?: ErrorOptions & { status?: number }) {
    super(message, options);
    this.name = "DigestMismatchError";
    this.expected = expected;
  }
}

/** Options of {@linkcode pushImage}. */
export interface PushOptions {
  /** The registry's base URL, e.g. `http://10.0.0.1:5000`. */
  registry: string;
  /** The repository, e.g. `faasd/hello`. */
  repository: string;
  /** The image manifest to push (what `importImage` recorded as `manifestDigest`). */
  manifestDigest: string;
  /** A tag to point at the manifest as well. */
  tag?: string;
  signal?: AbortSignal;
}

/** What a push did. */
export interface PushResult {
  /** The pushed manifest. */
  manifest: Descriptor;
  /** Digests of the blobs uploaded. */
  uploaded: string[];
  /** Digests of the blobs the registry had already. */
  skipped: string[];
  /** Bytes of blobs uploaded. */
  uploadedBytes: number;
}

/** Options of {@linkcode pullImage}. */
export interface PullOptions {
  /** The registry's base URL, e.g. `http://10.0.0.1:5000`. */
  registry: string;
  /** The repository the image was pushed to. */
  repository: string;
  /** The image manifest to pull. */
  manifestDigest: string;
  /** The function's name; the image record is named after it and the digest (`containerdImageName`). */
  name: string;
  /** Limit of the image's blobs in bytes (refused before downloading), and of what its layers unpack to. */
  maxBytes: number;
  /** The snapshotter to unpack into (default overlayfs). */
  snapshotter?: string;
  /** Where the image is mounted to read its `/etc/passwd` for a named USER. */
  mountDir?: string;
  /** Limit of the number of layers (default `MAX_LAYERS`). */
  maxLayers?: number;
  /**
   * The reference the image was deployed from, as the pushing host's import gave it (`ImportedImage.imageRef`); a
   * registry does not keep it. Default: the function's name.
   */
  imageRef?: string;
  /** Extra labels of the image record. */
  labels?: Record<string, string>;
  signal?: AbortSignal;
}

/** A repository name as the distribution spec allows it: lowercase path components with inner separators. */
const REPOSITORY = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
/** What a manifest GET accepts: single-platform image manifests only (faasd pushes nothing else). */
const MANIFEST_ACCEPT = [DOCKER_MANIFEST, OCI_MANIFEST].join(", ");
/** Most bytes of a registry's error answer read for its message. */
const MAX_ERROR_BYTES = 16 << 10;

/**
 * Pushes image manifest `manifestDigest` with its config and layers from containerd's content store to the registry,
 * skipping the blobs it has (HEAD). Blobs are uploaded monolithically (POST, then one streamed PUT); the manifest is
 * put by its digest and, if given, `tag`, with its own media type.
 *
 * @throws {TypeError} for an invalid registry URL, repository, digest or tag, or a manifest that is not a
 *   single-platform image manifest.
 * @throws {RegistryError} when the registry refuses a request or cannot be reached.
 * @throws {ImageImportError} for a manifest that lacks its config or layers list.
 * @throws {ContainerdError} when containerd fails (`NotFound` for a manifest or blob it does not have).
 * @throws the signal's reason once `signal` aborts.
 */
export async function pushImage(client: Containerd, options: PushOptions): Promise<PushResult> {
  const base = registryBase(options.registry);
  const repository = assertRepository(options.repository);
  const digest = assertDigest(options.manifestDigest);
  if (options.tag !== undefined && !TAG.test(options.tag)) {
    throw new TypeError(`pushImage: invalid tag ${JSON.stringify(options.tag)}`);
  }
  const { signal } = options;
  const bytes = await client.readBlob(digest, { maxBytes: MAX_JSON_BYTES });
  const json = parseJsonObject(bytes, "image manifest");
  // docker schema 2 always states its media type; OCI may leave it out.
  const mediaType = typeof json.mediaType === "string" ? json.mediaType : OCI_MANIFEST;
  if (!isManifestType(mediaType)) {
    throw new TypeError(`pushImage: ${digest} is a ${mediaType}, not a single-platform image manifest`);
  }
  const { config, layers } = manifestContents(json, Infinity);
  const result: PushResult = {
    manifest: { mediaType, digest, size: bytes.length },
    uploaded: [],
    skipped: [],
    uploadedBytes: 0,
  };
  const blobs = new Map([config, ...layers].map((d) => [d.digest, d]));
  for (const blob of blobs.values()) {
    const url = `${base}/v2/${repository}/blobs/${blob.digest}`;
    const head = await send(url, { method: "HEAD", signal }, `blob ${blob.digest}`);
    if (head.status === 200) {
      result.skipped.push(blob.digest);
      continue;
    }
    if (head.status !== 404) throw await failure(head, `checking blob ${blob.digest}`);
    await traced(
      "image.push.blob",
      { "blob.digest": blob.digest, "blob.bytes": blob.size },
      () => uploadBlob(client, base, repository, blob, signal),
    );
    result.uploaded.push(blob.digest);
    result.uploadedBytes += blob.size;
  }
  for (const reference of options.tag === undefined ? [digest] : [digest, options.tag]) {
    const res = await send(`${base}/v2/${repository}/manifests/${reference}`, {
      method: "PUT",
      headers: { "content-type": mediaType },
      body: bytes as Uint8Array<ArrayBuffer>,
      signal,
    }, `manifest ${reference}`);
    if (res.status !== 201) throw await failure(res, `putting manifest ${reference}`);
    await res.body?.cancel();
    const stored = res.headers.get("docker-content-digest");
    if (stored && stored !== digest) {
      throw new DigestMismatchError(digest, `the registry stored manifest ${digest} as ${stored}`, { status: 201 });
    }
  }
  return result;
}

/** POST, then one PUT streaming the blob out of containerd. */
async function uploadBlob(
  client: Containerd,
  base: string,
  repository: string,
  blob: Descriptor,
  signal: AbortSignal | undefined,
): Promise<void> {
  const started = await send(`${base}/v2/${repository}/blobs/uploads/`, { method: "POST", signal }, "blob upload");
  if (started.status !== 202) throw await failure(started, `starting the upload of blob ${blob.digest}`);
  await started.body?.cancel();
  const location = started.headers.get("location");
  if (!location) {
    throw new RegistryError(`starting the upload of blob ${blob.digest}: the registry gave no upload location`, {
      status: started.status,
    });
  }
  const url = new URL(location, `${base}/`);
  url.searchParams.set("digest", blob.digest);
  // What containerd failed with, kept apart from what fetch makes of it.
  let sourceError: unknown;
  const reader = client.readBlobStream(blob.digest, { signal }).getReader();
  const body = new ReadableStream<Uint8Array>({
    pull: async (controller) => {
      try {
        const next = await reader.read();
        if (next.done) controller.close();
        else controller.enqueue(next.value);
      } catch (err) {
        sourceError = err;
        throw err;
      }
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
  let res: Response;
  try {
    res = await send(url, {
      method: "PUT",
      headers: { "content-type": "application/octet-stream" },
      body,
      signal,
    }, `blob ${blob.digest}`);
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    throw sourceError ?? err;
  }
  if (res.status !== 201) throw await failure(res, `uploading blob ${blob.digest}`);
  await res.body?.cancel();
}

/**
 * Pulls image manifest `manifestDigest` from the registry into containerd as function `options.name`'s image: the
 * manifest is checked against its digest, refused past `maxLayers` layers or `maxBytes` of blobs before any blob is
 * downloaded, and every blob containerd lacks is streamed into its content store (which verifies each digest and
 * size); layers are scanned on the way as an upload's are. Then, as an import ends: unpacked, labelled, USER
 * resolved, image record `containerdImageName(name, manifestDigest)` created or updated.
 *
 * @returns the image, as `importImage` gave it on the pushing host (`imageRef` is `options.imageRef`).
 * @throws {TypeError} for an invalid function name, registry URL, repository or digest; {@linkcode RangeError} for a
 *   non-positive `maxBytes` or `maxLayers`.
 * @throws {RegistryError} when the registry refuses a request (e.g. status 404 for an unknown manifest) or cannot be
 *   reached; {@linkcode DigestMismatchError} when a manifest or blob it sends does not match its digest or size.
 * @throws {ImageImportError} as `importImage` does: `invalid` for an image faasd cannot run (too many layers among
 *   them), `too-large` past `maxBytes`, `internal` when containerd fails.
 * @throws the signal's reason once `signal` aborts. Whatever the failure, nothing written is left behind.
 */
export async function pullImage(client: Containerd, options: PullOptions): Promise<ImportedImage> {
  const name = assertValidName(options.name);
  const base = registryBase(options.registry);
  const repository = assertRepository(options.repository);
  const digest = assertDigest(options.manifestDigest);
  if (!(options.maxBytes > 0)) throw new RangeError("pullImage: maxBytes must be positive");
  const maxLayers = options.maxLayers ?? MAX_LAYERS;
  if (!(maxLayers >= 1)) throw new RangeError("pullImage: maxLayers must be positive");
  const { signal } = options;
  const source: Source = { client, base, repository, signal };
  const wanted = { digest, maxBytes: options.maxBytes, maxLayers, imageRef: options.imageRef };
  try {
    return await traced("image.pull", { "image.digest": digest }, () =>
      importWith(client, {
        name,
        maxBytes: options.maxBytes,
        maxLayers,
        snapshotter: options.snapshotter,
        labels: options.labels,
        mountDir: options.mountDir,
        signal,
        what: "pull",
      }, (context) => stagePull(source, context, wanted)));
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    if (err instanceof RegistryError) throw err;
    throw toImportError(err, name);
  }
}

/** Where a pull reads from. */
interface Source {
  client: Containerd;
  base: string;
  repository: string;
  signal: AbortSignal | undefined;
}

/** Downloads the manifest and every blob containerd lacks, under the pull's lease. */
async function stagePull(
  source: Source,
  context: StageContext,
  wanted: { digest: string; maxBytes: number; maxLayers: number; imageRef: string | undefined },
): Promise<StagedImage> {
  const { client } = source;
  const { digest, maxBytes } = wanted;
  const manifest = await fetchManifest(source, digest);
  const { config, layers } = manifestContents(manifest.json, wanted.maxLayers);
  const unique = new Map(layers.map((l) => [l.digest, l]));
  const total = manifest.bytes.length + config.size + [...unique.values()].reduce((sum, l) => sum + l.size, 0);
  if (total > maxBytes) throw new ImageTooLargeError(maxBytes);
  if (config.size > MAX_JSON_BYTES) throw new ImageImportError(`image config is larger than ${MAX_JSON_BYTES} bytes`);

  // The config first: one that does not describe the layers refuses the image before they are downloaded.
  const configBytes = await hold(client, context.lease, config.digest)
    ? await client.readBlob(config.digest, { maxBytes: MAX_JSON_BYTES })
    : (await fetchBlob(source, config, { lease: context.lease, ref: `${context.refPrefix}-config` })).kept!;
  const { diffIds, process } = readImageConfig(parseJsonObject(configBytes, "image config"), layers.length);

  // Scanned as an upload's layers are: what they unpack to counts against maxBytes, unsafe tars are refused.
  const inflated = new SizeBudget(maxBytes, "unpacked");
  const scans = new Map<string, LayerScan>();
  let i = 0;
  for (const layer of unique.values()) {
    const ref = `${context.refPrefix}-layer-${++i}`;
    const scan = await traced(
      "layer.pull",
      { "layer.digest": layer.digest, "layer.bytes": layer.size },
      async (span) => {
        if (await hold(client, context.lease, layer.digest)) {
          span.setAttribute("layer.reused", true);
          return await scanLocal(client, layer.digest, inflated, source.signal);
        }
        return (await fetchBlob(source, layer, { lease: context.lease, ref, inflated })).scan!;
      },
    );
    scans.set(layer.digest, scan);
  }

  // The manifest last, with the references that keep config and layers once the image record holds it.
  await client.writeBlob([manifest.bytes], {
    ref: `${context.refPrefix}-manifest`,
    lease: context.lease,
    expected: digest,
    total: manifest.bytes.length,
  });
  await client.updateContentLabels(digest, { [LABELS.managed]: "true", ...gcLabels(config, layers) });
  return {
    imageRef: wanted.imageRef,
    manifest: { mediaType: manifest.mediaType, digest, size: manifest.bytes.length },
    config: { ...config, mediaType: config.mediaType || OCI_CONFIG },
    layers,
    diffIds,
    process,
    scans,
  };
}

/**
 * Holds blob `digest` in the lease if containerd has it; false when it has not. The lease comes before the check: a
 * garbage collection of whatever used the blob may be under way until the lease holds it.
 */
async function hold(client: Containerd, lease: string, digest: string): Promise<boolean> {
  await client.addLeaseResource(lease, { type: "content", id: digest });
  return (await client.contentInfo(digest)) !== null;
}

/** GETs a manifest by digest and checks its bytes against it. */
async function fetchManifest(
  source: Source,
  digest: string,
): Promise<{ bytes: Uint8Array; json: Record<string, unknown>; mediaType: string }> {
  const what = `manifest ${digest}`;
  const res = await send(`${source.base}/v2/${source.repository}/manifests/${digest}`, {
    headers: { accept: MANIFEST_ACCEPT },
    signal: source.signal,
  }, what);
  if (res.status !== 200) throw await failure(res, `getting ${what} of ${source.repository}`);
  const bytes = await readBounded(res, MAX_JSON_BYTES, what, source.signal);
  const actual = sha256Digest(bytes);
  if (actual !== digest) {
    throw new DigestMismatchError(digest, `the registry sent ${what} with digest ${actual}`, { status: res.status });
  }
  const json = parseJsonObject(bytes, "image manifest");
  const contentType = res.headers.get("content-type")?.split(";")[0]?.trim() ?? "";
  const mediaType = typeof json.mediaType === "string" ? json.mediaType : contentType || OCI_MANIFEST;
  if (isIndexType(mediaType)) {
    throw new ImageImportError(`${what} is an image index; faasd pulls single-platform image manifests only`);
  }
  if (!isManifestType(mediaType)) {
    throw new ImageImportError(`${what} has an unsupported media type ${JSON.stringify(mediaType)}`);
  }
  return { bytes, json, mediaType };
}

/**
 * GETs `blob` and streams it into containerd (which checks digest and size on commit), scanning it as a layer when
 * `inflated` is given, else keeping its bytes (a config).
 */
async function fetchBlob(
  source: Source,
  blob: Descriptor,
  options: { lease: string; ref: string; inflated?: SizeBudget },
): Promise<{ scan?: LayerScan; kept?: Uint8Array }> {
  const { client, signal } = source;
  const what = `blob ${blob.digest}`;
  const res = await send(`${source.base}/v2/${source.repository}/blobs/${blob.digest}`, { signal }, what);
  if (res.status !== 200) throw await failure(res, `getting ${what}`);
  const length = res.headers.get("content-length");
  if (length !== null && Number(length) !== blob.size) {
    await res.body?.cancel();
    throw new DigestMismatchError(blob.digest, `the registry sends ${what} with ${length} bytes, not ${blob.size}`, {
      status: res.status,
    });
  }
  const reader = res.body!.getReader();
  using scanner = options.inflated ? new LayerScanner(options.inflated) : undefined;
  const kept: Uint8Array[] | undefined = scanner ? undefined : [];
  let seen = 0;
  const read = async () => {
    try {
      return await reader.read();
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      throw new RegistryError(`reading ${what} from the registry failed: ${(err as Error).message}`, { cause: err });
    }
  };
  /** Counts, keeps or scans the next chunk; the scan's promise resolves once the scanner can take more. */
  const take = (chunk: Uint8Array): Promise<void> | undefined => {
    seen += chunk.length;
    if (seen > blob.size) {
      throw new DigestMismatchError(blob.digest, `the registry sends more than ${blob.size} bytes of ${what}`, {
        status: res.status,
      });
    }
    kept?.push(chunk);
    return scanner?.write(chunk);
  };
  // Reads through `reader` without closing it: containerd stops early when it has the blob already, and the rest is
  // still needed (to scan or keep).
  const observed = (async function* () {
    for (let next = await read(); !next.done; next = await read()) {
      const scanning = take(next.value);
      scanning?.catch(() => {}); // awaited below, unless the write failed meanwhile
      // containerd takes the chunk while it is scanned here.
      yield next.value;
      await scanning;
    }
  })();
  try {
    try {
      await client.writeBlob(observed, {
        ref: options.ref,
        lease: options.lease,
        expected: blob.digest,
        total: blob.size,
        signal,
      });
    } catch (err) {
      if (err instanceof ContainerdError && (err.code === Code.FailedPrecondition || err.code === Code.DataLoss)) {
        throw new DigestMismatchError(blob.digest, `the registry sent ${what} with other content: ${err.message}`, {
          status: res.status,
          cause: err,
        });
      }
      throw err;
    }
    for (let next = await read(); !next.done; next = await read()) await take(next.value);
    return scanner ? { scan: await scanner.end() } : { kept: concatBytes(kept!, seen) };
  } finally {
    await reader.cancel().catch(() => {});
  }
}

/** Scans a layer containerd has already, reading it back from the content store. */
async function scanLocal(
  client: Containerd,
  digest: string,
  inflated: SizeBudget,
  signal: AbortSignal | undefined,
): Promise<LayerScan> {
  using scanner = new LayerScanner(inflated);
  for await (const chunk of client.readBlobStream(digest, { signal })) await scanner.write(chunk);
  return await scanner.end();
}

/** `fetch`, with a failure to connect as a {@linkcode RegistryError} without status and an abort as its reason. */
async function send(url: string | URL, init: RequestInit, what: string): Promise<Response> {
  try {
    return await fetch(url, init);
  } catch (err) {
    if (init.signal?.aborted) throw init.signal.reason;
    throw new RegistryError(`${what}: the registry cannot be reached: ${(err as Error).message}`, { cause: err });
  }
}

/** The error for an answer of the wrong status, with the registry's own error code and message when it gave one. */
async function failure(res: Response, doing: string): Promise<RegistryError> {
  let detail = "";
  if (res.body) {
    try {
      const text = new TextDecoder().decode(await readBounded(res, MAX_ERROR_BYTES, "error", undefined));
      const first = JSON.parse(text)?.errors?.[0];
      if (first && typeof first.code === "string") {
        detail = `: ${first.code}${first.message ? ` (${first.message})` : ""}`;
      }
    } catch {
      // not the distribution API's error JSON: the status says enough
    }
  }
  return new RegistryError(`${doing}: the registry answered ${res.status}${detail}`, { status: res.status });
}

/**
 * Reads a whole answer of at most `maxBytes`.
 *
 * @throws {RegistryError} past `maxBytes`, or when the connection breaks; the signal's reason once it aborts.
 */
async function readBounded(
  res: Response,
  maxBytes: number,
  what: string,
  signal: AbortSignal | undefined,
): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = res.body!.getReader();
  try {
    for (;;) {
      let next;
      try {
        next = await reader.read();
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        throw new RegistryError(`reading ${what} from the registry failed: ${(err as Error).message}`, { cause: err });
      }
      if (next.done) break;
      size += next.value.length;
      if (size > maxBytes) {
        throw new RegistryError(`the registry sends ${what} of more than ${maxBytes} bytes`, { status: res.status });
      }
      chunks.push(next.value);
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  return concatBytes(chunks, size);
}

/** The registry's base URL without a trailing slash. */
function registryBase(registry: string): string {
  let url: URL;
  try {
    url = new URL(registry);
  } catch {
    throw new TypeError(`invalid registry URL ${JSON.stringify(registry)}`);
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || url.search || url.hash || url.username) {
    throw new TypeError(`invalid registry URL ${JSON.stringify(registry)}: give http(s)://HOST:PORT`);
  }
  return url.href.replace(/\/+$/, "");
}

function assertRepository(repository: string): string {
  if (!REPOSITORY.test(repository) || repository.length > 255) {
    throw new TypeError(`invalid registry repository ${JSON.stringify(repository)}`);
  }
  return repository;
}

function assertDigest(digest: string): string {
  if (!isDigest(digest)) throw new TypeError(`invalid digest ${JSON.stringify(digest)}: sha256:<64 hex> expected`);
  return digest;
}
