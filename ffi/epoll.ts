/**
 * {@linkcode Poller}: one epoll instance driving readiness callbacks without ever blocking Deno's event loop.
 *
 * How it runs: at most one `epoll_wait` is outstanding at a time, through the `nonblocking` FFI symbol, so it
 * sleeps on a Deno worker thread while JS keeps running. When it returns, the JS thread dispatches the events and
 * starts the next wait. An `eventfd` in the same epoll set wakes the sleeping wait when the last registration goes
 * away or the poller closes; then the loop ends, so an idle poller keeps no operation pending and does not hold
 * the process open.
 *
 * Thread safety: the JS thread calls `epoll_ctl` while the worker may be inside `epoll_wait` on the same epoll
 * descriptor. The kernel supports this (epoll(7)): an added descriptor is reported by the wait already in progress,
 * a deleted one no longer is. The event buffer is only read by JS after the wait returned and is not handed to the
 * next wait before dispatch finished. errno of the worker-thread call is not readable, so a -1 result (EINTR) is
 * simply retried. The epoll and eventfd descriptors are closed only after the outstanding wait returned, so their
 * numbers cannot be reused under it.
 *
 * Every registration, persistent ones included, is armed `EPOLLONESHOT` and re-armed after its callback; each
 * carries a generation number in the event data. So an event that raced with `unwatch` and a reuse of the same
 * descriptor number is recognised and dropped, and a descriptor closed without `unwatch` while a duplicate of it
 * lives on (e.g. in a container) fires at most once instead of spinning the loop. Still: unwatch before closing.
 *
 * Readiness is a hint: callers must expect the following call to report EAGAIN.
 *
 * @example
 * ```ts ignore
 * await using poller = new Poller();
 * using listener = TcpListener.bind("127.0.0.1", 0);
 * if (await poller.wait(listener.fd, "read", { timeoutMs: 5000 }) === "ready") listener.accept()?.close();
 * ```
 *
 * @module
 */

import { check, EBADF, ENOENT, lastError } from "./errno.ts";
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  EPOLL_CLOEXEC,
  EPOLL_CTL_ADD,
  EPOLL_CTL_DEL,
  EPOLLIN,
  EPOLLONESHOT,
  EPOLLOUT,
  EPOLLRDHUP,
  libc,
} from "./libc.ts";

/** The epoll event bits of a readiness callback (`EPOLLIN`, `EPOLLERR`, `EPOLLHUP`, …). */
export type EpollEvents = number;

/** Options of {@linkcode Poller.wait}. */
export interface WaitOptions {
  /** Abort the wait; the promise then rejects with `signal.reason`. */
  signal?: AbortSignal;
  /** Resolve with `"timeout"` after this many milliseconds. */
  timeoutMs?: number;
}

// struct epoll_event { uint32_t events; epoll_data_t data; } is packed on x86_64 (12 bytes), padded elsewhere.
const PACKED = Deno.build.arch === "x86_64";
const EVENT_SIZE = PACKED ? 12 : 16;
const DATA_OFFSET = PACKED ? 4 : 8;
const MAX_EVENTS = 64;
// Event data: low 32 bits the descriptor, high 32 bits a generation; generation 0 marks the wake eventfd.
const WAKE_GENERATION = 0;
// EPOLL_CTL_MOD, only needed here to re-arm one-shot registrations.
const EPOLL_CTL_MOD = 3;

interface Registration {
  readonly generation: number;
  readonly events: number;
  /** Whether to re-arm after dispatch (watch) or forget (wait). */
  readonly persistent: boolean;
  dispatch(events: EpollEvents): void;
  /** Ends a pending wait when the poller closes. */
  cancel?(reason: unknown): void;
}

/** An epoll loop: persistent read watches and one-shot waits on descriptors. */
export class Poller implements Disposable, AsyncDisposable {
  #epfd: number;
  #wakefd: number;
  #registrations = new Map<number, Registration>();
  #generation = WAKE_GENERATION;
  #events = new Uint8Array(MAX_EVENTS * EVENT_SIZE);
  #eventsView = new DataView(this.#events.buffer);
  #loop: Promise<void> | undefined;
  #closed = false;

  /**
   * Creates the epoll instance and its wake eventfd.
   *
   * @throws {ErrnoError} from `epoll_create1`, `eventfd` or `epoll_ctl` (e.g. `EMFILE`).
   * @throws {Deno.errors.NotCapable} without `--allow-ffi`.
   */
  constructor() {
    const c = libc();
    this.#epfd = check(c.epoll_create1(EPOLL_CLOEXEC), "epoll_create1");
    try {
      this.#wakefd = check(c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "eventfd");
    } catch (error) {
      c.close(this.#epfd);
      throw error;
    }
    try {
      this.#control(EPOLL_CTL_ADD, this.#wakefd, EPOLLIN, WAKE_GENERATION);
    } catch (error) {
      this.#release();
      throw error;
    }
  }

  /** Whether {@linkcode Poller.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Calls `onReady` whenever `fd` is readable (level-triggered: again and again until drained), until
   * {@linkcode Poller.unwatch}. An error thrown by `onReady` is logged and does not stop the loop.
   *
   * @throws {RangeError} when `fd` is not a non-negative integer.
   * @throws {Deno.errors.AlreadyExists} when `fd` is already watched or waited on.
   * @throws {Deno.errors.BadResource} when the poller is closed.
   * @throws {ErrnoError} from `epoll_ctl`, e.g. `EBADF`, or `EPERM` for a regular file.
   */
  watch(fd: number, onReady: (events: EpollEvents) => void): void {
    this.#register(fd, EPOLLIN, true, onReady);
  }

  /** Stops watching `fd`. Does nothing when `fd` is not watched (or is waited on by {@linkcode Poller.wait}). */
  unwatch(fd: number): void {
    const registration = this.#registrations.get(fd);
    if (registration?.persistent) this.#forget(fd, registration.generation);
  }

  /**
   * Waits once until `fd` is readable (`"read"`, including end of stream) or writable (`"write"`); an error or
   * hang-up on `fd` also counts as ready.
   *
   * @returns `"ready"`, or `"timeout"` when `options.timeoutMs` passed first.
   * @throws {RangeError} (as a rejection) when `fd` or `timeoutMs` is invalid.
   * @throws {TypeError} (as a rejection) when `events` is neither `"read"` nor `"write"`.
   * @throws {Deno.errors.AlreadyExists} (as a rejection) when `fd` is already watched or waited on.
   * @throws {Deno.errors.BadResource} (as a rejection) when the poller is or gets closed.
   * @throws {ErrnoError} (as a rejection) from `epoll_ctl`.
   * @throws the signal's reason (as a rejection) when `options.signal` aborts.
   */
  wait(fd: number, events: "read" | "write", options: WaitOptions = {}): Promise<"ready" | "timeout"> {
    try {
      return this.#wait(fd, events, options);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #wait(fd: number, events: "read" | "write", options: WaitOptions): Promise<"ready" | "timeout"> {
    const { signal, timeoutMs } = options;
    if (events !== "read" && events !== "write") throw new TypeError(`Invalid events: ${events}`);
    if (timeoutMs !== undefined && !(timeoutMs >= 0 && timeoutMs <= 2 ** 31 - 1)) {
      throw new RangeError(`Invalid timeoutMs: ${timeoutMs}`);
    }
    signal?.throwIfAborted();
    const mask = events === "read" ? EPOLLIN | EPOLLRDHUP : EPOLLOUT;
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      let generation = 0;
      const finish = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.#forget(fd, generation);
      };
      const onAbort = () => {
        finish();
        reject(signal!.reason);
      };
      generation = this.#register(fd, mask, false, () => {
        finish();
        resolve("ready");
      }, (reason) => {
        finish();
        reject(reason);
      });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          finish();
          resolve("timeout");
        }, timeoutMs);
      }
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * Ends the loop and releases the epoll and eventfd descriptors (once the outstanding wait returned, which the
   * eventfd makes immediate). Pending {@linkcode Poller.wait} calls reject with `Deno.errors.BadResource`; watches
   * simply stop. Later calls do nothing. Watched descriptors stay open: they belong to the caller.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const registrations = [...this.#registrations.values()];
    this.#registrations.clear();
    for (const registration of registrations) registration.cancel?.(new Deno.errors.BadResource("Poller closed"));
    if (this.#loop === undefined) this.#release();
    else this.#wake();
  }

  /** Same as {@linkcode Poller.close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** Closes and resolves once the loop ended and the poller's descriptors are closed. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
    await this.#loop;
  }

  #register(
    fd: number,
    events: number,
    persistent: boolean,
    dispatch: (events: EpollEvents) => void,
    cancel?: (reason: unknown) => void,
  ): number {
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`Invalid file descriptor: ${fd}`);
    if (this.#closed) throw new Deno.errors.BadResource("Poller closed");
    if (this.#registrations.has(fd)) throw new Deno.errors.AlreadyExists(`fd ${fd} is already registered`);
    this.#generation = this.#generation >= 0xffff_ffff ? 1 : this.#generation + 1;
    const generation = this.#generation;
    this.#control(EPOLL_CTL_ADD, fd, events | EPOLLONESHOT, generation);
    this.#registrations.set(fd, { generation, events, persistent, dispatch, cancel });
    this.#start();
    return generation;
  }

  /** Removes `fd`'s registration if it is still the one of `generation`. */
  #forget(fd: number, generation: number): void {
    if (this.#registrations.get(fd)?.generation !== generation) return;
    this.#registrations.delete(fd);
    if (libc().epoll_ctl(this.#epfd, EPOLL_CTL_DEL, fd, null) === -1) {
      // EBADF/ENOENT: the caller closed fd first; the kernel dropped it with its last reference, or the one-shot
      // generation check makes any leftover fire at most once.
      // Anything else cannot happen with valid descriptors; log rather than throw so a wait still settles.
      const error = lastError("epoll_ctl", `EPOLL_CTL_DEL ${fd}`);
      if (error.errno !== EBADF && error.errno !== ENOENT) console.error("Poller:", error);
    }
    // Wake the outstanding wait so the loop can end and stop holding the process open.
    if (this.#registrations.size === 0 && this.#loop !== undefined) this.#wake();
  }

  #control(op: number, fd: number, events: number, generation: number): void {
    const event = new Uint8Array(EVENT_SIZE);
    const view = new DataView(event.buffer);
    view.setUint32(0, events, true);
    view.setUint32(DATA_OFFSET, fd, true);
    view.setUint32(DATA_OFFSET + 4, generation, true);
    check(libc().epoll_ctl(this.#epfd, op, fd, event), "epoll_ctl", `fd ${fd}`);
  }

  #start(): void {
    if (this.#loop !== undefined || this.#closed || this.#registrations.size === 0) return;
    this.#loop = this.#run();
  }

  async #run(): Promise<void> {
    const c = libc();
    try {
      while (!this.#closed && this.#registrations.size > 0) {
        const count = await c.epoll_wait_nonblocking(this.#epfd, this.#events, MAX_EVENTS, -1);
        // count is -1 only for EINTR here (the arguments are valid by construction): just wait again.
        for (let i = 0; i < count && !this.#closed; i++) this.#dispatch(i);
      }
    } finally {
      this.#loop = undefined;
      if (this.#closed) this.#release();
    }
  }

  #dispatch(index: number): void {
    const base = index * EVENT_SIZE;
    const events = this.#eventsView.getUint32(base, true);
    const fd = this.#eventsView.getUint32(base + DATA_OFFSET, true);
    const generation = this.#eventsView.getUint32(base + DATA_OFFSET + 4, true);
    if (generation === WAKE_GENERATION) {
      libc().read(this.#wakefd, new Uint8Array(8), 8n); // reset the counter; EAGAIN if already read is fine
      return;
    }
    const registration = this.#registrations.get(fd);
    if (registration?.generation !== generation) return; // stale: raced with unwatch or descriptor reuse
    try {
      registration.dispatch(events);
    } catch (error) {
      console.error(`Poller: callback for fd ${fd} threw:`, error);
    }
    if (registration.persistent && this.#registrations.get(fd) === registration) {
      try {
        this.#control(EPOLL_CTL_MOD, fd, registration.events | EPOLLONESHOT, generation);
      } catch (error) {
        // Only possible when the callback closed fd without unwatching it; drop the registration.
        console.error(`Poller: cannot re-arm fd ${fd}:`, error);
        this.#registrations.delete(fd);
      }
    }
  }

  #wake(): void {
    const one = new Uint8Array(8);
    new DataView(one.buffer).setBigUint64(0, 1n, true);
    libc().write(this.#wakefd, one, 8n); // EAGAIN (counter saturated) still leaves it readable
  }

  #release(): void {
    const c = libc();
    c.close(this.#epfd);
    c.close(this.#wakefd);
    this.#epfd = -1;
    this.#wakefd = -1;
  }
}
