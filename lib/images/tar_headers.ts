/**
 * A conservative look at a tar stream the way containerd's Go reader (archive/tar) could frame it, independent of
 * how `tar-stream` frames it. The two disagree on malformed input (a link header with a size, a size field padded
 * with NULs), so a header that `tar-stream` reads as file data can be a header to Go. Go reads headers only at
 * 512-byte boundaries, so every such block that passes Go's checksum test is treated as a header Go may see:
 *
 * - a GNU sparse header (type `S`), or a PAX header (`x`, `g`) whose records mention `GNU.sparse.`, would make Go
 *   write out holes: the layer is refused;
 * - each one may become a file or directory on disk, which takes a filesystem block however small: counted.
 *
 * This is not a tar parser (tar-stream reads the archive); it only finds what must not reach containerd.
 *
 * @module
 */

import { Buffer } from "node:buffer";

const BLOCK = 512;
/** Go refuses PAX and GNU long-name data larger than this, so only this much of it is searched. */
const MAX_SPECIAL = 1 << 20;
const SPARSE_KEY = new TextEncoder().encode("GNU.sparse.");
const TYPE_GNU_SPARSE = 0x53; // 'S'
const TYPE_PAX = 0x78; // 'x'
const TYPE_PAX_GLOBAL = 0x67; // 'g'

/** What the blocks showed. */
export interface TarHeaderFindings {
  /** Blocks that Go may read as a header. */
  headers: number;
  /** Why Go could unpack a sparse file from this stream; null when it cannot. */
  sparse: string | null;
}

/**
 * Go's numeric field reading: spaces and NULs trimmed at both ends, cut at the first NUL left, octal; base-256 when
 * the first bit is set. -1 for what Go would refuse (or read as 0 from an empty field, which no header sums to).
 */
function goNumeric(field: Uint8Array): number {
  if (field[0]! & 0x80) {
    let n = 0;
    for (const [i, b] of field.entries()) n = n * 256 + (i === 0 ? b & 0x7f : b);
    return n;
  }
  return goOctal(field);
}

/** Go's octal field reading (the checksum is only ever octal). */
function goOctal(field: Uint8Array): number {
  let start = 0;
  let end = field.length;
  while (start < end && (field[start] === 0x20 || field[start] === 0)) start++;
  while (end > start && (field[end - 1] === 0x20 || field[end - 1] === 0)) end--;
  let n = 0;
  for (let i = start; i < end; i++) {
    const b = field[i]!;
    if (b === 0) break; // Go cuts the field at its first NUL
    if (b < 0x30 || b > 0x37) return -1; // not octal: Go rejects the header
    n = n * 8 + (b - 0x30);
  }
  return end > start ? n : -1;
}

/** Whether the block passes Go's header checksum (unsigned or signed sum, checksum field read as spaces). */
function isHeader(block: Uint8Array): boolean {
  const stored = goOctal(block.subarray(148, 156));
  if (stored < 0) return false;
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : block[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

/** Scans a tar stream block by block. Write its bytes in order, then read {@linkcode findings}. */
export class TarHeaderScanner {
  readonly #block = new Uint8Array(BLOCK);
  #filled = 0;
  #headers = 0;
  #sparse: string | null = null;
  /** PAX bytes still to search, and the tail of the previous block (a key may straddle two). */
  #paxLeft = 0;
  #tail = new Uint8Array(0);

  /** Scans `chunk`. */
  write(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length && this.#sparse === null) {
      if (this.#filled === 0 && chunk.length - at >= BLOCK) {
        this.#scanBlock(chunk.subarray(at, at + BLOCK)); // whole blocks in place, without a copy
        at += BLOCK;
        continue;
      }
      const n = Math.min(BLOCK - this.#filled, chunk.length - at);
      this.#block.set(chunk.subarray(at, at + n), this.#filled);
      this.#filled += n;
      at += n;
      if (this.#filled === BLOCK) {
        this.#scanBlock(this.#block);
        this.#filled = 0;
      }
    }
  }

  /** What the blocks so far showed. */
  get findings(): TarHeaderFindings {
    return { headers: this.#headers, sparse: this.#sparse };
  }

  #scanBlock(block: Uint8Array): void {
    if (this.#paxLeft > 0) {
      const part = block.subarray(0, Math.min(BLOCK, this.#paxLeft));
      this.#paxLeft -= part.length;
      const window = new Uint8Array(this.#tail.length + part.length);
      window.set(this.#tail);
      window.set(part, this.#tail.length);
      if (indexOf(window, SPARSE_KEY) >= 0) {
        this.#sparse = "a sparse file (GNU.sparse PAX records)";
        return;
      }
      this.#tail = window.slice(Math.max(0, window.length - SPARSE_KEY.length + 1));
    }
    if (!isHeader(block)) return;
    this.#headers++;
    const type = block[156];
    if (type === TYPE_GNU_SPARSE) this.#sparse = "a sparse file (GNU sparse header)";
    else if (type === TYPE_PAX || type === TYPE_PAX_GLOBAL) {
      this.#paxLeft = Math.min(Math.max(0, goNumeric(block.subarray(124, 136))), MAX_SPECIAL);
      this.#tail = new Uint8Array(0);
    }
  }
}

function indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  return Buffer.from(haystack.buffer, haystack.byteOffset, haystack.byteLength).indexOf(needle);
}
