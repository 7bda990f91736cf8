/**
 * {@linkcode FifoReader}: the read end of a named pipe (FIFO) that another process — containerd's runc shim — opens
 * for writing, read by faasd without ever blocking: the descriptor is non-blocking and meant to be watched with the
 * {@linkcode Poller} of `epoll.ts`.
 *
 * End of stream: a FIFO reports end of stream (`read` returns 0) whenever it has no writer, including before the
 * first writer opened it, and epoll then reports it readable (`EPOLLHUP`) for as long as that lasts — a level-
 * triggered watch would spin. So the reader keeps a write end of its own, opened right after the read end: while
 * it is open the FIFO always has a writer, `read` only ever returns data or "nothing yet" (`null`), and the watch
 * fires only for data, whether the shim has not opened the FIFO yet, is writing, or has closed it.
 * {@linkcode FifoReader.release} closes that write end once the caller knows the other writers are done (the
 * container's task is gone); from then on `read` returns 0 when the FIFO is empty and no writer is left.
 *
 * containerd's runc shim, given a FIFO's path as a task's stdout or stderr, opens it for writing (and for reading,
 * which it never does, only so its writes never fail with `EPIPE`) and copies the container's output into it in
 * writes of 4 KiB; given the same path for both, it opens it twice.
 *
 * @example Drain a FIFO on a poller
 * ```ts ignore
 * using reader = FifoReader.create("/run/faasd/abc.log");
 * const buffer = new Uint8Array(1 << 20);
 * poller.watch(reader.fd, () => {
 *   for (let n = reader.read(buffer); n !== null && n > 0; n = reader.read(buffer)) consume(buffer.subarray(0, n));
 * });
 * ```
 *
 * @module
 */

import { check, EAGAIN, EINTR, lastError } from "./errno.ts";
import { F_GETPIPE_SZ, F_SETPIPE_SZ, libc, O_CLOEXEC, O_NONBLOCK, O_RDONLY, O_WRONLY } from "./libc.ts";
import { Fd } from "./socket.ts";

/** The pipe buffer asked for: a flood is then drained in few large reads. */
export const FIFO_PIPE_SIZE = 1 << 20;
/** The smallest buffer tried when the kernel refuses larger ones (the Linux default is 64 KiB). */
const MIN_PIPE_SIZE = 1 << 16;

/** The read end of a FIFO it created, non-blocking and close-on-exec; {@linkcode FifoReader.close} removes the FIFO. */
export class FifoReader extends Fd {
  /** The FIFO's filesystem path. */
  readonly path: string;
  /** The pipe's buffer size in bytes, as the kernel set it. */
  readonly pipeSize: number;
  /** faasd's own write end (see the module doc), or -1 once released. */
  #writer: number;

  private constructor(fd: number, writer: number, path: string, pipeSize: number) {
    super(fd);
    this.#writer = writer;
    this.path = path;
    this.pipeSize = pipeSize;
  }

  /**
   * Creates a FIFO at `path` (mode 0600), opens its read end and a write end of its own (see the module doc), and
   * enlarges its buffer to {@linkcode FIFO_PIPE_SIZE}, or to the largest power of two the kernel allows
   * (`/proc/sys/fs/pipe-max-size`, per-user pipe limits) without failing.
   *
   * @throws {TypeError} when `path` is empty or contains NUL.
   * @throws {ErrnoError} from `mkfifo` (`EEXIST` when something is at `path`, `ENOENT` when its directory is
   * missing, `EACCES`) or `open` (e.g. `EMFILE`). Nothing is left behind on failure.
   * @throws {Deno.errors.NotCapable} without `--allow-ffi`.
   */
  static create(path: string): FifoReader {
    const name = cstring(path);
    const c = libc();
    check(c.mkfifo(name, 0o600), "mkfifo", path);
    let reader = -1;
    let writer = -1;
    try {
      // Non-blocking open of a read end succeeds without a writer; the write end then finds this reader.
      reader = check(c.open(name, O_RDONLY | O_NONBLOCK | O_CLOEXEC, 0), "open", path);
      writer = check(c.open(name, O_WRONLY | O_NONBLOCK | O_CLOEXEC, 0), "open", path);
      return new FifoReader(reader, writer, path, enlarge(reader));
    } catch (error) {
      if (writer !== -1) c.close(writer);
      if (reader !== -1) c.close(reader);
      removeIfPresent(path);
      throw error;
    }
  }

  /**
   * Reads what the FIFO holds, up to `buffer.byteLength` bytes.
   *
   * @returns the number of bytes read; `null` when nothing is available now; 0 at end of stream, which only comes
   * after {@linkcode FifoReader.release}, once the FIFO is empty and every writer closed it.
   * @throws {ErrnoError} from `read`, e.g. `EBADF` after {@linkcode FifoReader.close}.
   */
  read(buffer: Uint8Array): number | null {
    for (;;) {
      const n = Number(libc().read(this.fd, buffer, BigInt(buffer.byteLength)));
      if (n >= 0) return n;
      const error = lastError("read", this.path);
      if (error.errno === EAGAIN) return null;
      if (error.errno !== EINTR) throw error;
    }
  }

  /**
   * Closes faasd's own write end, so that end of stream can come: call it once the other writers are done. Later
   * calls do nothing.
   */
  release(): void {
    if (this.#writer === -1) return;
    const writer = this.#writer;
    this.#writer = -1;
    libc().close(writer);
  }

  /** Whether {@linkcode FifoReader.release} (or close) was called. */
  get released(): boolean {
    return this.#writer === -1;
  }

  /**
   * Closes both ends and removes the FIFO from the filesystem; later calls do nothing. Unwatch the descriptor
   * first. A writer that still holds the FIFO open gets `EPIPE` on its next write, unless it also holds a read end:
   * containerd's shim does (so that it never gets `EPIPE`), and its writes then block once the pipe is full.
   *
   * @throws {Deno.errors.PermissionDenied} (or another filesystem error except NotFound) when the path cannot be
   * removed; the descriptors are closed regardless.
   */
  override close(): void {
    if (this.closed) return;
    this.release();
    super.close();
    removeIfPresent(this.path);
  }
}

/** Sets the pipe buffer of `fd` as large as allowed, up to FIFO_PIPE_SIZE; returns the size in effect. */
function enlarge(fd: number): number {
  const c = libc();
  for (let size = FIFO_PIPE_SIZE; size >= MIN_PIPE_SIZE; size /= 2) {
    // EPERM: above pipe-max-size or past the user's pipe quota without CAP_SYS_RESOURCE. Try smaller.
    const set = c.fcntl(fd, F_SETPIPE_SZ, size);
    if (set !== -1) return set;
  }
  return check(c.fcntl(fd, F_GETPIPE_SZ, 0), "fcntl", "F_GETPIPE_SZ");
}

function cstring(path: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(path);
  if (bytes.length === 0 || bytes.includes(0)) {
    throw new TypeError(`FIFO path must be non-empty and without NUL: ${JSON.stringify(path)}`);
  }
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

function removeIfPresent(path: string): void {
  try {
    Deno.removeSync(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}
