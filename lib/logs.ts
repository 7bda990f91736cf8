/**
 * Per-function log files, written by faasd. Each request's container writes its stdout and stderr into a FIFO of
 * its own ({@linkcode ContainerOutput}); faasd reads the FIFO on its epoll loop and appends to the function's log
 * `<state-dir>/logs/<name>.log` ({@linkcode FunctionLog}). Since every byte passes through faasd, the caps hold while
 * a request runs:
 *
 * - per function: before a write would take the file past half of the cap, the file moves to `<name>.log.1`
 *   (replacing the previous one), so the two together stay within the cap;
 * - per container: past its budget, a container's output is still read, so the shim never blocks, but dropped,
 *   with one marker line when dropping starts and one with the count when the output ends.
 *
 * A flooding handler costs faasd bounded CPU: the FIFO's pipe holds 1 MiB and, while output keeps coming, is drained
 * every few milliseconds rather than on every write, in reads of up to 1 MiB; dropped bytes are never copied out of
 * the read buffer. {@linkcode Logs} owns it all for the daemon.
 *
 * Order of use per container: {@linkcode Logs.open} before the task is created (containerd's shim checks that the
 * path is a FIFO), its path as both stdout and stderr, and {@linkcode ContainerOutput.close} once the task is deleted.
 * Closing earlier loses what the shim has not copied yet, and blocks the shim once the pipe is full.
 *
 * @example
 * ```ts ignore
 * await using logs = new Logs({ stateDir, maxBytes: 10 << 20, poller });
 * const output = logs.open("hello", containerId, `${stateDir}/run/${containerId}.log`);
 * // … give output.path to containerd as the task's stdout and stderr, run the task, delete it …
 * await output.close();
 * ```
 *
 * @module
 */

import { errorText, log } from "./log.ts";
import type { Poller } from "../ffi/epoll.ts";
import { FifoReader } from "../ffi/fifo.ts";
import { assertValidName } from "./names.ts";

/** Size of the read buffer: one read takes what a full 1 MiB pipe holds. */
const READ_SIZE = 1 << 20;
/** Reads per turn, so that a flood leaves the event loop time for the rest. */
const READS_PER_TURN = 4;
/**
 * Pause between turns while output keeps coming. The shim copies output into the FIFO in 4 KiB writes: waking for
 * each would cost faasd an epoll round trip (~20 µs) per 4 KiB of a flood. Polling instead bounds a container to
 * 200 turns a second, each draining what the 1 MiB pipe holds, and slows a flood to a few hundred MiB/s.
 */
const TURN_MS = 5;
/**
 * Pause between turns once a container's output passed its budget: what it writes now is only dropped, and reading
 * it slowly (at most one pipe, 1 MiB, per turn) makes a flooding handler wait in write() instead of costing the shim
 * that copies its output CPU outside every limit.
 */
const DROPPING_TURN_MS = 100;
/** Reads when closing: what is left in the pipe, bounded in case a writer is (wrongly) still alive. */
const READS_ON_CLOSE = 64;
/** A container's bytes waiting to be written past which reading pauses (so a slow disk bounds memory)… */
const HIGH_WATER = 4 << 20;
/** …and below which it resumes. */
const LOW_WATER = 1 << 20;
/** A line longer than this is written in pieces rather than held back until its end. */
const MAX_HELD_LINE = 64 << 10;
const NEWLINE = 0x0a;
const encoder = new TextEncoder();

/** One read buffer for every container: callbacks run one at a time and copy out what they keep before returning. */
let scratch: Uint8Array | undefined;

function readBuffer(): Uint8Array {
  return scratch ??= new Uint8Array(READ_SIZE);
}

/** Path of function `name`'s current log file. */
export function logPath(stateDir: string, name: string): string {
  return `${stateDir}/logs/${name}.log`;
}

/**
 * One function's log file, appended to by all of its containers. Writes are serialized and asynchronous; the file
 * is opened on the first write. Before a write would take the file past half of `maxBytes`, the file is renamed to
 * `<path>.1` (replacing it) and a new one is started, so `<path>` and `<path>.1` each stay within half of the cap (a
 * write larger than half is split across rotations). The directory must exist; it is never created.
 */
export class FunctionLog implements AsyncDisposable {
  /** The current log file's path. */
  readonly path: string;
  /** The cap of the file and its rotated part together. */
  readonly maxBytes: number;
  #file: Deno.FsFile | null = null;
  #size = 0;
  #tail: Promise<void> = Promise.resolve();
  #closing: Promise<void> | null = null;
  #failing = false;

  /**
   * @param path the log file, e.g. from {@linkcode logPath}.
   * @param maxBytes the cap of the file and its rotated part together.
   * @throws {TypeError} when `path` is empty.
   * @throws {RangeError} when `maxBytes` is not an integer of at least 2.
   */
  constructor(path: string, maxBytes: number) {
    if (typeof path !== "string" || path === "") throw new TypeError("log path must be a non-empty string");
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 2) throw new RangeError(`invalid log size cap: ${maxBytes}`);
    this.path = path;
    this.maxBytes = maxBytes;
  }

  /** Whether {@linkcode FunctionLog.close} was called. */
  get closed(): boolean {
    return this.#closing !== null;
  }

  /**
   * Queues `bytes` to be appended; after {@linkcode FunctionLog.close} they are dropped. The caller must not change
   * `bytes` until the promise settles.
   *
   * @returns a promise settled once the bytes are written (or failed to be: the error is logged to stderr, the
   * bytes are lost and the file is reopened on the next write). It never rejects.
   */
  append(bytes: Uint8Array): Promise<void> {
    if (this.closed || bytes.byteLength === 0) return Promise.resolve();
    const written = this.#tail.then(() => this.#write(bytes));
    this.#tail = written;
    return written;
  }

  /**
   * Lets the writes queued so far finish, then closes the file. Nothing writes to or creates the file afterwards.
   * Later calls return the same promise, which never rejects.
   */
  close(): Promise<void> {
    return this.#closing ??= this.#tail.then(() => this.#release());
  }

  /** Same as {@linkcode FunctionLog.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #write(bytes: Uint8Array): Promise<void> {
    const half = Math.floor(this.maxBytes / 2);
    try {
      let rest = bytes;
      while (rest.byteLength > 0) {
        const file = this.#file ?? await this.#open();
        if (this.#size > 0 && this.#size + rest.byteLength > half) {
          await this.#rotate();
          continue;
        }
        const piece = rest.subarray(0, half - this.#size);
        for (let done = 0; done < piece.byteLength;) done += await file.write(piece.subarray(done));
        this.#size += piece.byteLength;
        rest = rest.subarray(piece.byteLength);
      }
      this.#failing = false;
    } catch (e) {
      // Report the first failure of a run only: a full disk would otherwise print one line per write.
      if (!this.#failing) log.error("cannot write a function log", { path: this.path, error: errorText(e) });
      this.#failing = true;
      this.#release();
    }
  }

  async #open(): Promise<Deno.FsFile> {
    const file = await Deno.open(this.path, { append: true, create: true, mode: 0o600 });
    try {
      this.#size = (await file.stat()).size;
    } catch (e) {
      file.close();
      throw e;
    }
    this.#file = file;
    return file;
  }

  async #rotate(): Promise<void> {
    try {
      await Deno.rename(this.path, `${this.path}.1`);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e; // removed behind faasd's back: start a new file anyway
    }
    this.#release();
    await this.#open();
  }

  #release(): void {
    const file = this.#file;
    this.#file = null;
    this.#size = 0;
    try {
      file?.close();
    } catch {
      // Already closed: nothing to release.
    }
  }
}

/** What a {@linkcode ContainerOutput} needs. */
export interface ContainerOutputOptions {
  /** The function's log, shared by its containers. */
  log: FunctionLog;
  /** The epoll loop that watches the FIFO. */
  poller: Poller;
  /** Where to create the FIFO; nothing may exist there yet. */
  fifoPath: string;
  /** The container's id, named in the marker lines. */
  containerId: string;
  /** Bytes of the container's output that are written to the log; the rest is dropped. */
  budget: number;
  /** Called once when {@linkcode ContainerOutput.close} finished. */
  onClosed?: () => void | Promise<void>;
}

/**
 * One container's stdout and stderr: a FIFO (give {@linkcode ContainerOutput.path} to containerd as the task's
 * stdout and stderr) read on the poller and appended to the function's log, up to the container's budget. Past the
 * budget the output is read and dropped, and one line `[faasd] <id>: output past <budget> bytes dropped` is written;
 * {@linkcode ContainerOutput.close} adds `[faasd] <id>: <n> bytes of output dropped`.
 *
 * Output is written in whole lines where possible (a line is held back until its end, up to 64 KiB), so lines of
 * containers of the same function do not interleave mid-line.
 */
export class ContainerOutput implements AsyncDisposable {
  /** The container's id. */
  readonly containerId: string;
  /** Bytes of output written to the log at most. */
  readonly budget: number;
  readonly #log: FunctionLog;
  readonly #poller: Poller;
  readonly #reader: FifoReader;
  readonly #onClosed: (() => void | Promise<void>) | undefined;
  #kept = 0;
  #dropped = 0;
  /** The start of a line whose end has not been read yet. */
  #held: Uint8Array | null = null;
  /** Bytes handed to the log and not yet written. */
  #queued = 0;
  #written: Promise<void> = Promise.resolve();
  #watching = false;
  /** The next turn while output keeps coming (then the FIFO is not watched). */
  #turn: ReturnType<typeof setTimeout> | undefined;
  /** Reading paused for HIGH_WATER: neither watched nor polled. */
  #paused = false;
  /** End of stream or a read error: nothing more to read. */
  #ended = false;
  #closing: Promise<void> | null = null;

  /**
   * Creates the FIFO and starts watching it.
   *
   * @throws {TypeError} when `containerId` is empty or `fifoPath` is empty or contains NUL.
   * @throws {RangeError} when `budget` is not a non-negative integer.
   * @throws {ErrnoError} from creating the FIFO, e.g. `EEXIST`.
   * @throws {Deno.errors.BadResource} when the poller is closed.
   */
  constructor(options: ContainerOutputOptions) {
    const { log, poller, fifoPath, containerId, budget, onClosed } = options;
    if (typeof containerId !== "string" || containerId === "") throw new TypeError("container id must not be empty");
    if (!Number.isSafeInteger(budget) || budget < 0) throw new RangeError(`invalid output budget: ${budget}`);
    this.containerId = containerId;
    this.budget = budget;
    this.#log = log;
    this.#poller = poller;
    this.#onClosed = onClosed;
    this.#reader = FifoReader.create(fifoPath);
    try {
      this.#watch();
    } catch (e) {
      this.#reader.close();
      throw e;
    }
  }

  /** The FIFO's path: the task's stdout and stderr. */
  get path(): string {
    return this.#reader.path;
  }

  /** Bytes of output kept for the log so far. */
  get bytesKept(): number {
    return this.#kept;
  }

  /** Bytes of output dropped so far. */
  get bytesDropped(): number {
    return this.#dropped;
  }

  /**
   * Call once the container's task is gone: reads what is left in the FIFO, writes it and the final marker, stops
   * watching, closes and removes the FIFO, and resolves when this container's output is written. Later calls return
   * the same promise, which never rejects.
   */
  close(): Promise<void> {
    return this.#closing ??= this.#close();
  }

  /** Writes one line from faasd about this container into the function's log (e.g. why it failed to start). */
  note(text: string): void {
    if (this.#closing === null) this.#append(this.#marker(text));
  }

  /** Same as {@linkcode ContainerOutput.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #close(): Promise<void> {
    try {
      clearTimeout(this.#turn);
      this.#unwatch();
      this.#paused = false;
      this.#reader.release();
      for (let i = 0; i < READS_ON_CLOSE && this.#readOnce() === READ_SIZE; i++);
      if (this.#held) this.#append(concat(this.#held, encoder.encode("\n")));
      this.#held = null;
      if (this.#dropped > 0) this.#append(this.#marker(`${this.#dropped} bytes of output dropped`));
      this.#reader.close();
    } catch (e) {
      log.error("closing a container's output failed", { container: this.containerId, error: errorText(e) });
      try {
        this.#reader.close();
      } catch {
        // The FIFO's path could not be removed; its descriptors are closed regardless.
      }
    }
    await this.#written;
    await this.#onClosed?.();
  }

  #watch(): void {
    if (this.#watching) return;
    this.#poller.watch(this.#reader.fd, () => {
      this.#unwatch();
      this.#turnNow();
    });
    this.#watching = true;
  }

  #unwatch(): void {
    if (!this.#watching) return;
    this.#watching = false;
    this.#poller.unwatch(this.#reader.fd);
  }

  /** Times faasd woke up to read this output: a flood costs a few per 64 KiB, not one per write. */
  get turns(): number {
    return this.#turns;
  }

  #turns = 0;

  /**
   * Reads what the FIFO holds (up to READS_PER_TURN reads), then waits for more: by polling after TURN_MS when
   * something came, by watching the FIFO when it was empty, not at all when the disk is behind or the output ended.
   */
  #turnNow(): void {
    this.#turn = undefined;
    this.#turns++;
    try {
      let got = 0;
      const dropping = this.#dropped > 0;
      for (let i = 0; i < (dropping ? 1 : READS_PER_TURN); i++) {
        if (this.#queued >= HIGH_WATER) {
          // Stop reading (the shim then blocks on the full pipe) until the writes caught up: see #append.
          this.#paused = true;
          return;
        }
        const n = this.#readOnce();
        if (n < 0) return;
        got += n;
        if (n < READ_SIZE) break;
      }
      if (got > 0) this.#turn = setTimeout(() => this.#turnNow(), dropping ? DROPPING_TURN_MS : TURN_MS);
      else this.#watch();
    } catch (e) {
      // Only #watch can throw, once the poller is closed: the daemon is stopping.
      log.error("cannot keep reading a container's output", { container: this.containerId, error: errorText(e) });
    }
  }

  /**
   * Reads once and handles what came.
   *
   * @returns the number of bytes read: READ_SIZE when more may be waiting, less when the FIFO is empty now; -1 at
   * the end of the output or after a read error.
   */
  #readOnce(): number {
    if (this.#ended) return -1;
    const buffer = readBuffer();
    let n: number | null;
    try {
      n = this.#reader.read(buffer);
    } catch (e) {
      log.error("reading a container's output failed", { container: this.containerId, error: errorText(e) });
      n = 0;
    }
    if (n === null) return 0;
    if (n === 0) {
      this.#ended = true;
      return -1;
    }
    this.#take(buffer.subarray(0, n));
    return n;
  }

  /** Keeps what the budget allows of `chunk` (a view of the shared buffer) and counts the rest as dropped. */
  #take(chunk: Uint8Array): void {
    const room = this.budget - this.#kept;
    const kept = chunk.byteLength <= room ? chunk : chunk.subarray(0, room);
    if (kept.byteLength > 0) {
      this.#kept += kept.byteLength;
      this.#keep(kept);
    }
    const dropped = chunk.byteLength - kept.byteLength;
    if (dropped === 0) return;
    if (this.#dropped === 0) {
      if (this.#held) this.#append(concat(this.#held, encoder.encode("\n")));
      this.#held = null;
      this.#append(this.#marker(`output past ${this.budget} bytes dropped`));
    }
    this.#dropped += dropped;
  }

  /** Appends the whole lines of `bytes` (copied out of the shared buffer), holding back an unfinished last line. */
  #keep(bytes: Uint8Array): void {
    const end = bytes.lastIndexOf(NEWLINE) + 1;
    const held = this.#held;
    if (end === 0) {
      this.#held = held ? concat(held, bytes) : bytes.slice();
      if (this.#held.byteLength >= MAX_HELD_LINE) {
        this.#append(this.#held);
        this.#held = null;
      }
      return;
    }
    this.#append(held ? concat(held, bytes.subarray(0, end)) : bytes.slice(0, end));
    this.#held = end < bytes.byteLength ? bytes.slice(end) : null;
  }

  #marker(text: string): Uint8Array {
    return encoder.encode(`[faasd] ${this.containerId}: ${text}\n`);
  }

  #append(bytes: Uint8Array): void {
    this.#queued += bytes.byteLength;
    this.#written = this.#log.append(bytes).then(() => {
      this.#queued -= bytes.byteLength;
      if (this.#paused && this.#queued <= LOW_WATER && this.#closing === null) {
        this.#paused = false;
        this.#turnNow();
      }
    });
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}

/** What {@linkcode Logs} needs. */
export interface LogsOptions {
  /** faasd's state directory; logs go to `<stateDir>/logs`, which must exist. */
  stateDir: string;
  /** Cap of each function's log, its rotated part included. */
  maxBytes: number;
  /** The epoll loop that reads the containers' FIFOs. */
  poller: Poller;
  /** Bytes of each container's output written at most; default `maxBytes / 4`. */
  perContainerBytes?: number;
}

/**
 * The daemon's logs: one {@linkcode FunctionLog} per function, opened on demand, and the
 * {@linkcode ContainerOutput}s feeding them.
 */
export class Logs implements AsyncDisposable {
  readonly #stateDir: string;
  readonly #maxBytes: number;
  readonly #perContainerBytes: number;
  readonly #poller: Poller;
  readonly #logs = new Map<string, FunctionLog>();
  readonly #outputs = new Set<ContainerOutput>();
  /** Open outputs per log: a function with no container running holds no open file. */
  readonly #writers = new Map<FunctionLog, number>();
  #closing: Promise<void> | null = null;

  /**
   * @throws {TypeError} when `stateDir` is empty.
   * @throws {RangeError} when `maxBytes` is not an integer of at least 2, or `perContainerBytes` not a non-negative
   * integer.
   */
  constructor(options: LogsOptions) {
    const { stateDir, maxBytes, poller } = options;
    if (typeof stateDir !== "string" || stateDir === "") throw new TypeError("state directory must not be empty");
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 2) throw new RangeError(`invalid log size cap: ${maxBytes}`);
    const perContainerBytes = options.perContainerBytes ?? Math.floor(maxBytes / 4);
    if (!Number.isSafeInteger(perContainerBytes) || perContainerBytes < 0) {
      throw new RangeError(`invalid per-container output budget: ${perContainerBytes}`);
    }
    this.#stateDir = stateDir;
    this.#maxBytes = maxBytes;
    this.#perContainerBytes = perContainerBytes;
    this.#poller = poller;
  }

  /** Path of function `name`'s current log file. */
  path(name: string): string {
    return logPath(this.#stateDir, name);
  }

  /**
   * Creates the FIFO at `fifoPath` for container `containerId` of function `name` and starts copying what it
   * receives into the function's log. Close the result once the container's task is gone.
   *
   * @throws {TypeError} when `name` is not a valid function name, `containerId` is empty or `fifoPath` is invalid.
   * @throws {ErrnoError} from creating the FIFO, e.g. `EEXIST`.
   * @throws {Deno.errors.BadResource} when the logs or the poller are closed.
   */
  open(name: string, containerId: string, fifoPath: string): ContainerOutput {
    assertValidName(name);
    if (this.#closing) throw new Deno.errors.BadResource("logs closed");
    let log = this.#logs.get(name);
    if (log === undefined) {
      log = new FunctionLog(this.path(name), this.#maxBytes);
      this.#logs.set(name, log);
    }
    const output: ContainerOutput = new ContainerOutput({
      log,
      poller: this.#poller,
      fifoPath,
      containerId,
      budget: this.#perContainerBytes,
      onClosed: () => {
        this.#outputs.delete(output);
        const left = (this.#writers.get(log) ?? 1) - 1;
        if (left > 0) {
          this.#writers.set(log, left);
          return;
        }
        this.#writers.delete(log);
        if (this.#logs.get(name) === log) this.#logs.delete(name);
        return log.close();
      },
    });
    this.#outputs.add(output);
    this.#writers.set(log, (this.#writers.get(log) ?? 0) + 1);
    return output;
  }

  /**
   * Closes function `name`'s log (on delete, before {@linkcode removeLogs}): once this resolves nothing writes to or
   * recreates its files. Containers of the function still running keep being drained, their output dropped; a later
   * {@linkcode Logs.open} starts a new log. Never rejects.
   */
  async forget(name: string): Promise<void> {
    const log = this.#logs.get(name);
    this.#logs.delete(name);
    await log?.close();
  }

  /**
   * Closes every container output (removing the FIFOs), then every log; for shutdown, once the containers are gone.
   * Later calls return the same promise, which never rejects.
   */
  close(): Promise<void> {
    return this.#closing ??= (async () => {
      await Promise.all([...this.#outputs].map((output) => output.close()));
      await Promise.all([...this.#logs.values()].map((log) => log.close()));
      this.#logs.clear();
    })();
  }

  /** Same as {@linkcode Logs.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Removes a function's log files (on delete). */
export async function removeLogs(path: string): Promise<void> {
  for (const p of [path, `${path}.1`]) await Deno.remove(p).catch(() => {});
}

/** Reads up to 1 MiB of `path` from `offset`, with the inode read (the file, not the name); null when missing. */
async function readFrom(path: string, offset: number): Promise<{ ino: number | null; bytes: Uint8Array } | null> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  try {
    const { size, ino } = await file.stat();
    if (size <= offset) return { ino, bytes: new Uint8Array(0) };
    await file.seek(offset, Deno.SeekMode.Start);
    const buf = new Uint8Array(Math.min(size - offset, 1 << 20));
    const n = await file.read(buf);
    return { ino, bytes: buf.subarray(0, n ?? 0) };
  } finally {
    file.close();
  }
}

/**
 * The log as a stream: the rotated part, then the current file; with `follow`, keeps polling for new output (and
 * rotations) until `signal` aborts.
 */
export function logStream(
  path: string,
  opts: { follow: boolean; signal?: AbortSignal; pollMs?: number },
): ReadableStream<
  Uint8Array
> {
  const pollMs = opts.pollMs ?? 250;
  let phase: "rotated" | "current" = "rotated";
  let offset = 0;
  let ino: number | null = null;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      while (true) {
        if (opts.signal?.aborted) return controller.close();
        if (phase === "rotated") {
          const chunk = (await readFrom(`${path}.1`, offset))?.bytes;
          if (chunk && chunk.length) {
            offset += chunk.length;
            return controller.enqueue(chunk);
          }
          phase = "current";
          offset = 0;
          continue;
        }
        const read = await readFrom(path, offset);
        if (read && ino !== null && read.ino !== ino) {
          // Rotated while following: the file followed so far is `.1` now. Its rest first, then the new one.
          phase = "rotated";
          ino = null;
          continue;
        }
        if (read) ino = read.ino;
        if (read?.bytes.length) {
          offset += read.bytes.length;
          return controller.enqueue(read.bytes);
        }
        if (!opts.follow) return controller.close();
        await new Promise((resolve) => setTimeout(resolve, pollMs));
      }
    },
  });
}
