/**
 * Bounds what an image unpacks to. The tar stream's size is capped as it arrives, but a compressed layer is only
 * inflated later, by containerd, straight onto disk: a few hundred KiB of gzip can unpack into gigabytes. So every
 * blob that looks compressed is inflated here too, as it streams past on its way to containerd, and what it inflates
 * to is charged against the same {@linkcode SizeBudget} as the tar stream; the import stops as soon as it is spent.
 *
 * node:zlib is used rather than `DecompressionStream` because, like containerd's Go readers, it reads concatenated
 * gzip members (and it knows zstd).
 *
 * @module
 */

import { Buffer } from "node:buffer";
import zlib from "node:zlib";
import { ImageImportError, ImageTooLargeError } from "./errors.ts";
import { detectCompression } from "./mediatypes.ts";

/** Bytes an import may still produce: the tar stream plus what its compressed blobs inflate to. */
export class SizeBudget {
  /** The limit in bytes. */
  readonly max: number;
  #used = 0;

  /** @throws {RangeError} when `max` is not positive. */
  constructor(max: number) {
    if (!(max > 0)) throw new RangeError("SizeBudget: max must be positive");
    this.max = max;
  }

  /** Bytes charged so far. */
  get used(): number {
    return this.#used;
  }

  /**
   * Charges `bytes` of tar stream or of inflated layer.
   *
   * @throws {ImageTooLargeError} once the total is over the limit.
   */
  charge(bytes: number, what: "tar" | "inflated" = "tar"): void {
    this.#used += bytes;
    if (this.#used > this.max) throw new ImageTooLargeError(this.max, { unpacked: what === "inflated" });
  }
}

/**
 * Counts what one blob inflates to, when its first bytes say it is compressed (gzip or zstd); any other blob passes
 * uncounted, since its bytes are already charged as tar. The output is dropped. Write the blob's bytes in order,
 * then {@linkcode end}; after a failure every call throws the same error.
 */
export class InflateMeter {
  readonly #budget: SizeBudget;
  readonly #name: string;
  /** Bytes written before the compression is known (at most the first few chunks). */
  #pending: Uint8Array[] | null = [];
  #head = new Uint8Array(0);
  #inflater: zlib.Gunzip | zlib.ZstdDecompress | null = null;
  #failed: Promise<never> | null = null;
  #failure: unknown = null;

  /**
   * @param budget charged with every inflated byte
   * @param name the archive entry, for error messages
   */
  constructor(budget: SizeBudget, name: string) {
    this.#budget = budget;
    this.#name = name;
  }

  /**
   * Feeds the blob's next bytes; resolves once the inflater can take more.
   *
   * @throws {ImageTooLargeError} when the budget is spent.
   * @throws {ImageImportError} when a compressed blob does not inflate.
   */
  async write(chunk: Uint8Array): Promise<void> {
    if (this.#failure) throw this.#failure;
    if (this.#pending) {
      this.#pending.push(chunk);
      if (this.#head.length < 4) this.#head = Uint8Array.from([...this.#head, ...chunk.subarray(0, 4)].slice(0, 4));
      if (this.#head.length < 4) return;
      return await this.#decide();
    }
    if (this.#inflater) await this.#feed(chunk);
  }

  /**
   * Waits until everything written is inflated and counted.
   *
   * @throws {ImageTooLargeError} when the budget is spent.
   * @throws {ImageImportError} when a compressed blob does not inflate (corrupt or truncated).
   */
  async end(): Promise<void> {
    if (this.#failure) throw this.#failure;
    if (this.#pending) await this.#decide();
    const inflater = this.#inflater;
    if (!inflater) return;
    await Promise.race([
      new Promise<void>((resolve) => {
        inflater.once("end", resolve);
        inflater.end();
      }),
      this.#failed!,
    ]);
  }

  /** Stops inflating; idempotent. */
  close(): void {
    this.#inflater?.destroy();
    this.#pending = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async #decide(): Promise<void> {
    const pending = this.#pending!;
    this.#pending = null;
    const compression = detectCompression(this.#head);
    if (compression === "none") return;
    const inflater = compression === "gzip" ? zlib.createGunzip() : zlib.createZstdDecompress();
    this.#inflater = inflater;
    this.#failed = new Promise<never>((_, reject) => {
      inflater.on("error", (err) => {
        this.#failure ??= new ImageImportError(
          `archive entry ${this.#name} is not valid ${compression}: ${err.message}`,
          { cause: err },
        );
        reject(this.#failure);
      });
    });
    this.#failed.catch(() => {}); // observed through write() and end()
    inflater.on("data", (out: Buffer) => {
      try {
        this.#budget.charge(out.length, "inflated");
      } catch (err) {
        this.#failure ??= err;
        inflater.destroy(err as Error);
      }
    });
    for (const chunk of pending) await this.#feed(chunk);
  }

  async #feed(chunk: Uint8Array): Promise<void> {
    if (this.#failure) throw this.#failure;
    const inflater = this.#inflater!;
    if (inflater.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength))) return;
    await Promise.race([new Promise((resolve) => inflater.once("drain", resolve)), this.#failed!]);
  }
}
