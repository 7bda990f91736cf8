/**
 * Bounds what an image unpacks to. containerd unpacks layers straight onto disk, and a layer's size on disk is not
 * its size in the upload: a few hundred KiB of gzip can inflate into gigabytes, and a tar's sparse file can claim
 * more disk than the tar holds. So every blob of an upload is scanned as it streams past on its way to containerd:
 * gzip is inflated here too (only to look), the tar inside is walked with `tar-stream`, and the scan reports how
 * many tar bytes the layer holds, or why it is not a layer faasd lets containerd unpack.
 *
 * - gzip goes through node:zlib, which, like containerd's Go reader, reads concatenated members.
 * - zstd is refused: Deno's decoder stops after the first frame (containerd reads them all) and cannot be trusted
 *   with hostile input.
 * - Sparse tar entries (GNU or PAX) are refused: containerd would write out their holes. tar-stream and Go's reader
 *   can frame a malformed tar differently, so the blocks are also checked as Go could read them
 *   ({@linkcode TarHeaderScanner}).
 * - Every entry is counted with a filesystem block besides its tar bytes: a layer of tiny files or directories
 *   takes far more disk than its tar.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import zlib from "node:zlib";
import tar from "tar-stream";
import { ImageTooLargeError } from "./errors.ts";
import { drained } from "./drained.ts";
import { detectCompression } from "./mediatypes.ts";
import { TarHeaderScanner } from "./tar_headers.ts";

/** What one file or directory may take on disk beyond its tar bytes: a filesystem block. */
const FS_BLOCK = 4096;

/** Bytes an import may still use, charged as they are seen; throws once spent. */
export class SizeBudget {
  /** The limit in bytes. */
  readonly max: number;
  readonly #unpacked: boolean;
  #used = 0;

  /**
   * @param max the limit in bytes
   * @param what `upload`: the archive's own bytes; `unpacked`: what layers inflate or unpack to (for the message)
   * @throws {RangeError} when `max` is not positive.
   */
  constructor(max: number, what: "upload" | "unpacked" = "upload") {
    if (!(max > 0)) throw new RangeError("SizeBudget: max must be positive");
    this.max = max;
    this.#unpacked = what === "unpacked";
  }

  /** Bytes charged so far. */
  get used(): number {
    return this.#used;
  }

  /**
   * Charges `bytes`.
   *
   * @throws {ImageTooLargeError} once the total is over the limit.
   */
  charge(bytes: number): void {
    this.#used += bytes;
    if (this.#used > this.max) throw new ImageTooLargeError(this.max, { unpacked: this.#unpacked });
  }
}

/** What a blob is, as far as unpacking goes. */
export type LayerScan =
  /**
   * A tar (plain or gzip) that containerd may unpack: `tarBytes` bytes of tar, taking at most about `unpackedBytes`
   * of disk (every entry may take a filesystem block beyond its tar bytes).
   */
  | { kind: "layer"; tarBytes: number; unpackedBytes: number }
  /** Not something faasd lets containerd unpack, and why (fine for a config or manifest). */
  | { kind: "unusable"; reason: string };

/**
 * Scans one blob. Write its bytes in order, then {@linkcode end}. Inflated bytes are charged to the `inflated`
 * budget as they come, so that a compression bomb stops at the limit rather than burning CPU to its end.
 */
export class LayerScanner {
  readonly #inflated: SizeBudget;
  /** Bytes before the compression is known. */
  #pending: Uint8Array[] | null = [];
  #head = new Uint8Array(0);
  #inflater: zlib.Gunzip | null = null;
  #inflaterDone: Promise<void> = Promise.resolve();
  readonly #extract = tar.extract();
  /** Go's possible view of the same tar. */
  readonly #headers = new TarHeaderScanner();
  readonly #walked: Promise<void>;
  #tarBytes = 0;
  /** Why the blob cannot be a layer, once known; scanning stops then. */
  #unusable: string | null = null;
  /** An error to throw from write()/end(). */
  #failure: unknown = null;

  /** @param inflated charged with every byte gzip inflates to */
  constructor(inflated: SizeBudget) {
    this.#inflated = inflated;
    // A blob that is not a tar (a config, a manifest) simply ends the walk.
    this.#walked = this.#walk().catch((err) => this.#give(`is not a tar archive (${(err as Error).message})`));
  }

  /**
   * Feeds the blob's next bytes; resolves once the scanner can take more.
   *
   * @throws {ImageTooLargeError} when the inflated budget is spent.
   */
  async write(chunk: Uint8Array): Promise<void> {
    if (this.#failure) throw this.#failure;
    if (this.#unusable) return;
    if (this.#pending) {
      this.#pending.push(chunk);
      if (this.#head.length < 4) this.#head = Uint8Array.from([...this.#head, ...chunk.subarray(0, 4)].slice(0, 4));
      if (this.#head.length >= 4) await this.#decide();
      return;
    }
    await this.#feed(chunk);
  }

  /**
   * Finishes the scan.
   *
   * @throws {ImageTooLargeError} when the inflated budget is spent.
   */
  async end(): Promise<LayerScan> {
    if (this.#failure) throw this.#failure;
    if (this.#pending) await this.#decide();
    if (!this.#unusable && this.#inflater) {
      this.#inflater.end();
      await this.#inflaterDone;
      if (this.#failure) throw this.#failure;
    }
    if (!this.#unusable) this.#extract.end(undefined);
    await this.#walked;
    if (this.#failure) throw this.#failure;
    this.close();
    if (this.#unusable) return { kind: "unusable", reason: this.#unusable };
    const unpackedBytes = this.#tarBytes + this.#headers.findings.headers * FS_BLOCK;
    return { kind: "layer", tarBytes: this.#tarBytes, unpackedBytes };
  }

  /** Stops scanning; idempotent. */
  close(): void {
    this.#pending = null;
    this.#inflater?.destroy();
    this.#extract.destroy();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Gives up on the blob as a layer. */
  #give(reason: string): void {
    this.#unusable ??= reason;
    this.#inflater?.destroy();
    this.#extract.destroy();
  }

  async #decide(): Promise<void> {
    const pending = this.#pending!;
    this.#pending = null;
    const compression = detectCompression(this.#head);
    if (compression === "zstd") {
      return this.#give("is zstd-compressed, which faasd does not unpack (export the image uncompressed or gzip)");
    }
    if (compression === "gzip") {
      const inflater = zlib.createGunzip();
      this.#inflater = inflater;
      // Listened to from the start, so that no ending is missed: end() waits for it.
      this.#inflaterDone = new Promise<void>((resolve) => {
        inflater.once("end", resolve);
        inflater.once("close", resolve);
        inflater.once("error", (err: Error) => {
          this.#give(`is not valid gzip (${err.message})`);
          resolve();
        });
      });
      inflater.on("data", (out: Buffer) => {
        try {
          this.#inflated.charge(out.length);
        } catch (err) {
          this.#failure ??= err;
          this.close();
          return;
        }
        // The tar walk paces the inflater.
        if (!this.#toTar(out)) {
          inflater.pause();
          this.#extract.once("drain", () => inflater.resume());
        }
      });
    }
    for (const chunk of pending) await this.#feed(chunk);
  }

  async #feed(chunk: Uint8Array): Promise<void> {
    if (this.#failure) throw this.#failure;
    if (this.#unusable) return;
    const buffer = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const inflater = this.#inflater;
    if (inflater) {
      if (inflater.write(buffer)) return;
      await drained(inflater); // or destroyed: an error, a spent budget, or close()
      if (this.#failure) throw this.#failure;
      return;
    }
    // A walker that failed may have destroyed the stream before its catch ran: drained() then resolves at once.
    if (!this.#toTar(buffer) && !this.#unusable) await drained(this.#extract);
  }

  /** Writes tar bytes to the walker; false when it wants a pause. */
  #toTar(bytes: Buffer): boolean {
    if (this.#unusable) return true;
    this.#tarBytes += bytes.length;
    this.#headers.write(bytes);
    const sparse = this.#headers.findings.sparse;
    if (sparse) {
      this.#give(`holds ${sparse}`);
      return true;
    }
    return this.#extract.write(bytes);
  }

  /**
   * Walks the tar's entries: a blob tar-stream cannot read is no layer, and an entry type it does not know is
   * refused (sparse files are found by the header scan, which sees them however the tar is framed).
   */
  async #walk(): Promise<void> {
    for await (const entry of this.#extract) {
      if (entry.header.type === null) return this.#give(`holds an entry of an unknown type (${entry.header.name})`);
      for await (const _ of entry);
    }
  }
}
