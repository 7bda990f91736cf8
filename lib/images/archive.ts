/**
 * Reads an image tarball as a stream and moves every file that can be a blob straight into containerd's content
 * store, so that the tarball is never held whole in memory or on disk. What comes back is a map from entry name to
 * what became of it: a committed blob (digest, size, first bytes, and the bytes themselves for small JSON), or a
 * non-regular entry (which must not be used as a blob). The archive's own index files (`manifest.json`,
 * `index.json`, …) are kept in memory.
 *
 * Tar parsing is `tar-stream`'s; a whole-archive gzip (`docker save | gzip`) is undone on the fly.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import tar from "tar-stream";
import { Code, type Containerd, ContainerdError } from "../containerd/client.ts";
import { ImageImportError, TooManyLayersError } from "./errors.ts";
import { drained } from "./drained.ts";
import { type LayerScan, LayerScanner, SizeBudget } from "./layer_scan.ts";
import { detectCompression } from "./mediatypes.ts";

/** Index files of docker-archive and OCI layout, kept in memory and never written as blobs. */
const INDEX_FILES = new Set(["manifest.json", "index.json", "oci-layout", "repositories"]);
/** Per-layer files of the legacy docker v1 layout that nothing reads. */
const LEGACY_FILES = /^[^/]+\/(VERSION|json)$/;
/** An OCI layout blob: its name states its digest. */
const OCI_BLOB = /^blobs\/sha256\/([a-f0-9]{64})$/;

/** Largest JSON file (index, manifest, config) accepted in memory. */
export const MAX_JSON_BYTES = 4 << 20;
/** Total bytes of small JSON blobs kept in memory; past it they are read back from containerd when needed. */
const JSON_BUDGET = 32 << 20;

/** A regular file of the archive, now a committed blob. */
export interface ArchiveBlob {
  kind: "blob";
  name: string;
  digest: string;
  size: number;
  /** Up to the first 4 bytes, for telling compression. */
  head: Uint8Array;
  /** The bytes, when small and JSON-looking (else read them back from containerd). */
  json?: Uint8Array;
  /** Whether it can be a layer, and how many bytes of tar it unpacks from. */
  scan: LayerScan;
}

/** An entry that is not a regular file (symlink, hard link, device, fifo …): never a blob itself. */
export interface ArchiveOther {
  kind: "other";
  name: string;
  type: string;
  /** A link's target as written in the archive (older `docker save` links duplicate layers to one file). */
  linkname?: string;
}

/** What an archive held. */
export interface ArchiveContents {
  /** Blobs and non-regular entries by normalised name (no `./`, no trailing `/`). */
  entries: Map<string, ArchiveBlob | ArchiveOther>;
  /** The archive's index files by name. */
  indexFiles: Map<string, Uint8Array>;
}

/** Options of {@linkcode ingestArchive}. */
export interface IngestOptions {
  /** Lease holding every blob written. */
  lease: string;
  /** Prefix of the ingest refs, unique per import. */
  refPrefix: string;
  /** Limit in bytes of the tar stream, and of what its compressed blobs inflate to. */
  maxBytes: number;
  /** Limit of the number of entries. */
  maxEntries: number;
  /**
   * Limit of the number of layers. The archive is refused once more blobs that can be layers than this have streamed
   * past, or once a docker `manifest.json` lists more, without waiting for the rest of the upload.
   */
  maxLayers: number;
  /** An upload sending nothing for this long (ms) is abandoned; default 60 s. */
  stallMs?: number;
}

/**
 * Streams `body` (a tar, or a gzipped tar) into the content store.
 *
 * @throws {ImageTooLargeError} once the tar stream, or what its compressed blobs inflate to, passes `maxBytes`.
 * @throws {ImageImportError} for anything that is not a well-formed, safe archive (`kind: "invalid"`).
 * @throws {TooManyLayersError} once the archive is seen to hold more than `maxLayers` layers.
 * @throws {ContainerdError} when containerd fails; an ingest in progress is aborted first.
 */
export async function ingestArchive(
  client: Containerd,
  body: ReadableStream<Uint8Array>,
  options: IngestOptions,
): Promise<ArchiveContents> {
  const entries = new Map<string, ArchiveBlob | ArchiveOther>();
  const indexFiles = new Map<string, Uint8Array>();
  const stop = new AbortController();
  const extract = tar.extract();
  const budget = new SizeBudget(options.maxBytes);
  const inflated = new SizeBudget(options.maxBytes, "unpacked");
  const feeder = feed(extract, body, budget, options.stallMs ?? STALL_MS, stop.signal);
  // Its failure reaches us through the parser too; this only keeps it from counting as unhandled meanwhile.
  feeder.catch(() => {});
  let count = 0;
  let jsonKept = 0;
  let layerBlobs = 0;
  try {
    for await (const entry of extract) {
      if (++count > options.maxEntries) {
        throw new ImageImportError(`image archive has more than ${options.maxEntries} entries`);
      }
      const it = entry[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>;
      const result = await readEntry(client, entry.header, it, {
        ref: `${options.refPrefix}-${count}`,
        lease: options.lease,
        keepJson: jsonKept < JSON_BUDGET,
        inflated,
      });
      // Whatever the handler left unread goes too, so that the parser moves on (and reports truncation here).
      while (!(await it.next()).done);
      if (result?.kind === "index") {
        indexFiles.set(result.name, result.data);
        const listed = result.name === "manifest.json" ? layersListed(result.data) : 0;
        if (listed > options.maxLayers) throw new TooManyLayersError(options.maxLayers, listed);
      } else if (result) {
        entries.set(result.name, result);
        if (result.kind === "blob" && result.json) jsonKept += result.json.length;
        // docker save writes manifest.json last: without counting, a 10 000-layer upload is refused only at its end.
        if (result.kind === "blob" && mayBeLayer(result) && ++layerBlobs > options.maxLayers) {
          throw new TooManyLayersError(options.maxLayers, null);
        }
      }
    }
    await feeder;
    return { entries, indexFiles };
  } catch (err) {
    stop.abort(err);
    extract.destroy();
    await feeder.catch(() => {});
    throw classify(err);
  }
}

type EntryResult = ArchiveBlob | ArchiveOther | { kind: "index"; name: string; data: Uint8Array } | null;

async function readEntry(
  client: Containerd,
  header: tar.Header,
  it: AsyncIterator<Uint8Array>,
  options: { ref: string; lease: string; keepJson: boolean; inflated: SizeBudget },
): Promise<EntryResult> {
  const name = normalizeEntryName(header.name);
  const type = header.type ?? "file";
  if (name === "" || type === "directory") return null;
  if (type !== "file" && type !== "contiguous-file") {
    return { kind: "other", name, type, ...(header.linkname ? { linkname: header.linkname } : {}) };
  }
  if (INDEX_FILES.has(name)) return { kind: "index", name, data: await readSmall(it, name) };
  if (LEGACY_FILES.test(name)) return null;

  const size = header.size ?? 0;
  const expected = OCI_BLOB.exec(name)?.[1];
  let head = new Uint8Array(0);
  let seen = 0;
  const kept: Uint8Array[] | null = options.keepJson && size <= MAX_JSON_BYTES ? [] : null;
  // Scanned alongside: what it unpacks to, if it is a layer at all.
  using scanner = new LayerScanner(options.inflated);
  // Reads through `it` without ever closing it: the caller still owns (and drains) the entry after the write.
  const observed = (async function* () {
    for (;;) {
      const next = await it.next();
      if (next.done) break;
      const chunk = next.value;
      if (head.length < 4) head = Uint8Array.from([...head, ...chunk.subarray(0, 4 - head.length)]);
      seen += chunk.length;
      kept?.push(chunk);
      const scanning = scanner.write(chunk);
      scanning.catch(() => {}); // awaited below, unless the write failed meanwhile
      // containerd takes the chunk while it is scanned here.
      yield chunk;
      await scanning;
    }
  })();
  let written;
  try {
    written = await client.writeBlob(observed, {
      ref: options.ref,
      lease: options.lease,
      total: size,
      expected: expected ? `sha256:${expected}` : undefined,
    });
  } catch (err) {
    if (err instanceof ContainerdError && (err.code === Code.FailedPrecondition || err.code === Code.InvalidArgument)) {
      throw new ImageImportError(`archive entry ${name} does not match its name's digest or size`, { cause: err });
    }
    throw err;
  }
  // containerd stops reading early when it has the blob already; the scan still needs all of it.
  for (let next = await it.next(); !next.done; next = await it.next()) await scanner.write(next.value);
  const scan = await scanner.end();
  const complete = seen === size;
  const json = kept && complete && looksLikeJson(head) ? Buffer.concat(kept, size) : undefined;
  return { kind: "blob", name, digest: written.digest, size: written.size, head, json, scan };
}

/**
 * Normalises a tar entry name: drops `./` and empty segments and a trailing `/`.
 *
 * @throws {ImageImportError} for an absolute name or one with a `..` segment.
 */
export function normalizeEntryName(raw: string): string {
  if (raw.includes("\0")) throw new ImageImportError(`archive entry name ${JSON.stringify(raw)} contains NUL`);
  if (raw.startsWith("/")) {
    throw new ImageImportError(`archive entry ${JSON.stringify(raw)} has an absolute path`);
  }
  const parts = raw.split("/").filter((p) => p !== "" && p !== ".");
  if (parts.includes("..")) {
    throw new ImageImportError(`archive entry ${JSON.stringify(raw)} points outside the archive ("..")`);
  }
  return parts.join("/");
}

/** By default, an upload that sends nothing for this long is abandoned. */
const STALL_MS = 60_000;
/** Input piece size for gunzip: at most ~4 MiB out per piece. */
const GUNZIP_PIECE = 4096;

/** Reads the next chunk, or throws when none comes within `ms`. */
async function readWithin(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  ms: number,
): Promise<ReadableStreamReadResult<Uint8Array>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const stalled = new Promise<never>((_, reject) =>
    timer = setTimeout(
      () => reject(new ImageImportError(`upload stalled: no data for ${ms / 1000} s`)),
      ms,
    )
  );
  try {
    return await Promise.race([reader.read(), stalled]);
  } finally {
    clearTimeout(timer);
  }
}

/** Splits chunks into pieces of at most `size` bytes. */
function slicer(size: number): TransformStream<Uint8Array, Uint8Array> {
  return new TransformStream({
    transform(chunk, controller) {
      for (let at = 0; at < chunk.length; at += size) controller.enqueue(chunk.subarray(at, at + size));
    },
  });
}

/** Pumps `body` into the tar parser at the pace it accepts, charging `budget` with every byte of tar. */
async function feed(
  extract: tar.Extract,
  body: ReadableStream<Uint8Array>,
  budget: SizeBudget,
  stallMs: number,
  signal: AbortSignal,
): Promise<void> {
  const reader = body.getReader();
  // Cancelling is the only way to end a pending read when the upload stalls after we gave up.
  const onAbort = () => reader.cancel(signal.reason).catch(() => {});
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    // Enough bytes to tell gzip from tar, even when the upload starts with tiny chunks.
    const head: Uint8Array[] = [];
    let headSize = 0;
    let ended = false;
    while (headSize < 4) {
      const next = await readWithin(reader, stallMs);
      if (next.done) {
        ended = true;
        break;
      }
      head.push(next.value);
      headSize += next.value.length;
    }
    const first = Buffer.concat(head, headSize);
    const raw = new ReadableStream<Uint8Array>({
      start(controller) {
        if (headSize > 0) controller.enqueue(first);
        if (ended) controller.close();
      },
      async pull(controller) {
        const next = await readWithin(reader, stallMs);
        if (next.done) controller.close();
        else controller.enqueue(next.value);
      },
      cancel: (reason) => reader.cancel(reason),
    }, { highWaterMark: 0 });
    const gzipped = headSize > 0 && detectCompression(first) === "gzip";
    // DecompressionStream inflates each input chunk into one output chunk, however large: small input pieces bound
    // what one chunk of a gzip bomb can allocate (deflate expands at most ~1032×).
    const tarStream = gzipped
      ? raw.pipeThrough(slicer(GUNZIP_PIECE)).pipeThrough<Uint8Array>(
        new DecompressionStream("gzip") as ReadableWritablePair<Uint8Array, Uint8Array>,
      )
      : raw;
    const tarReader = tarStream.getReader();
    const onAbortTar = () => tarReader.cancel(signal.reason).catch(() => {});
    signal.addEventListener("abort", onAbortTar, { once: true });
    for (;;) {
      let next;
      try {
        next = await tarReader.read();
      } catch (err) {
        if (signal.aborted) return;
        if (!gzipped || err instanceof ImageImportError) throw err;
        throw new ImageImportError("image archive is not a valid gzip stream", { cause: err });
      }
      if (next.done || signal.aborted) break;
      budget.charge(next.value.length);
      const buffer = Buffer.from(next.value.buffer, next.value.byteOffset, next.value.byteLength);
      if (!extract.write(buffer)) await drained(extract);
    }
    if (!signal.aborted) extract.end(undefined);
  } catch (err) {
    extract.destroy(err as Error);
    throw err;
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

async function readSmall(it: AsyncIterator<Uint8Array>, name: string): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const next = await it.next();
    if (next.done) break;
    size += next.value.length;
    if (size > MAX_JSON_BYTES) throw new ImageImportError(`${name} is larger than ${MAX_JSON_BYTES} bytes`);
    chunks.push(next.value);
  }
  return Buffer.concat(chunks, size);
}

function looksLikeJson(head: Uint8Array): boolean {
  return head[0] === 0x7b; // "{"
}

/**
 * Whether a blob may be a layer: an image archive's other blobs are JSON (configs, manifests, indexes). The count is
 * only an early stop: an archive of several images counts all their layers, and a layer listed twice counts once;
 * the manifest's own list decides.
 */
function mayBeLayer(blob: ArchiveBlob): boolean {
  return !looksLikeJson(blob.head);
}

/**
 * How many layers a docker `manifest.json` lists for its first image (the one imported); 0 when it is not in the
 * expected shape, which is for resolving the image to report.
 */
function layersListed(data: Uint8Array): number {
  let list: unknown;
  try {
    list = JSON.parse(new TextDecoder().decode(data));
  } catch {
    return 0;
  }
  const layers = Array.isArray(list) && typeof list[0] === "object" && list[0] !== null ? list[0].Layers : null;
  return Array.isArray(layers) ? layers.length : 0;
}

/** Turns parser failures into user-facing errors; ours and containerd's pass through. */
function classify(err: unknown): unknown {
  if (err instanceof ImageImportError || err instanceof ContainerdError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (/unexpected end/i.test(message)) {
    return new ImageImportError("image archive is truncated (unexpected end of data)", { cause: err });
  }
  return new ImageImportError(`image archive is not a valid tar file: ${message}`, { cause: err });
}
