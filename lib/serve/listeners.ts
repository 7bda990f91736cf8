/**
 * {@linkcode Listeners}: one listening TCP socket per function address, all driven by one {@linkcode Poller}.
 * Every accepted connection goes to a single callback with the name it arrived for.
 *
 * @example
 * ```ts ignore
 * await using poller = new Poller();
 * using listeners = new Listeners(poller, (name, conn) => serve(name, conn));
 * listeners.add("hello", "127.10.0.10", 80);
 * ```
 *
 * @module
 */

import { errorText, log } from "../log.ts";
import type { Poller } from "../../ffi/epoll.ts";
import { ErrnoError } from "../../ffi/errno.ts";
import { type InetAddress, type TcpConn, TcpListener } from "../../ffi/socket.ts";

/** Receives each accepted connection and owns it from then on. */
export type ConnectionHandler = (name: string, conn: TcpConn) => void;

/** Connections accepted per readiness event before yielding to other work; the rest wait for the next event. */
const ACCEPT_BATCH = 64;
/** How long a listener rests after an accept error such as EMFILE, instead of spinning on it. */
const BACKOFF_MS = 100;
/** accept() errors that concern one aborted connection only: accept the next one straight away (see accept(2)). */
const TRANSIENT = new Set([
  "ECONNABORTED",
  "EINTR",
  "EPROTO",
  "ENETDOWN",
  "ENOPROTOOPT",
  "EHOSTDOWN",
  "ENONET",
  "EHOSTUNREACH",
  "EOPNOTSUPP",
  "ENETUNREACH",
  "EPERM", // a firewall rule refused the connection
]);

interface Entry {
  readonly name: string;
  readonly listener: TcpListener;
  /** Set while the listener is paused after an accept error. */
  backoff?: ReturnType<typeof setTimeout>;
}

/** Named TCP listeners on one poller. */
export class Listeners implements Disposable {
  #poller: Poller;
  #onConnection: ConnectionHandler;
  #entries = new Map<string, Entry>();
  #closed = false;

  /**
   * @param poller the loop to watch the listening sockets on; it stays owned by the caller.
   * @param onConnection called with the listener's name for each accepted connection, which it then owns. If it
   * throws, the error is logged and the connection closed.
   */
  constructor(poller: Poller, onConnection: ConnectionHandler) {
    this.#poller = poller;
    this.#onConnection = onConnection;
  }

  /**
   * Starts listening on `ip:port` under `name`.
   *
   * @param port TCP port; 0 lets the kernel choose (see {@linkcode Listeners.address}).
   * @throws {Deno.errors.AlreadyExists} when `name` is already listening.
   * @throws {Deno.errors.BadResource} when closed.
   * @throws {ErrnoError} from binding, e.g. code `"EADDRNOTAVAIL"` when no interface has `ip` yet (add it and call
   * again) or `"EADDRINUSE"`.
   * @throws {TypeError} / {RangeError} for an invalid `ip` or `port`.
   */
  add(name: string, ip: string, port: number): void {
    if (this.#closed) throw new Deno.errors.BadResource("Listeners closed");
    if (this.#entries.has(name)) throw new Deno.errors.AlreadyExists(`Already listening for ${name}`);
    const listener = TcpListener.bind(ip, port);
    const entry: Entry = { name, listener };
    try {
      this.#watch(entry);
    } catch (error) {
      listener.close();
      throw error;
    }
    this.#entries.set(name, entry);
  }

  /** Stops listening for `name` and closes its socket; does nothing when `name` is not listening. */
  remove(name: string): void {
    const entry = this.#entries.get(name);
    if (entry === undefined) return;
    this.#entries.delete(name);
    clearTimeout(entry.backoff);
    this.#poller.unwatch(entry.listener.fd); // before close: the number may be reused right after
    entry.listener.close();
  }

  /** Whether `name` is listening. */
  has(name: string): boolean {
    return this.#entries.has(name);
  }

  /** The names listening, in the order they were added. */
  names(): string[] {
    return [...this.#entries.keys()];
  }

  /** The address `name` listens on (with the actual port when 0 was asked for), or `undefined`. */
  address(name: string): InetAddress | undefined {
    const address = this.#entries.get(name)?.listener.address;
    return address && { ...address };
  }

  /** Removes every listener; later calls, and {@linkcode Listeners.add}, do nothing / throw. */
  close(): void {
    this.#closed = true;
    for (const name of this.names()) this.remove(name);
  }

  /** Same as {@linkcode Listeners.close}. */
  [Symbol.dispose](): void {
    this.close();
  }

  #watch(entry: Entry): void {
    this.#poller.watch(entry.listener.fd, () => this.#acceptAll(entry));
  }

  #acceptAll(entry: Entry): void {
    for (let i = 0; i < ACCEPT_BATCH && this.#entries.get(entry.name) === entry; i++) {
      let conn: TcpConn | null;
      try {
        conn = entry.listener.accept();
      } catch (error) {
        if (error instanceof ErrnoError && TRANSIENT.has(error.code)) continue;
        // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays queued and the socket readable, so pause this
        // listener rather than being woken for it again and again.
        log.error("accept failed; pausing the listener", {
          function: entry.name,
          pause_ms: BACKOFF_MS,
          error: errorText(error),
        });
        this.#pause(entry);
        return;
      }
      if (conn === null) return;
      try {
        this.#onConnection(entry.name, conn);
      } catch (error) {
        log.error("connection handler threw", { function: entry.name, error: errorText(error) });
        conn.close();
      }
    }
  }

  #pause(entry: Entry): void {
    this.#poller.unwatch(entry.listener.fd);
    entry.backoff = setTimeout(() => {
      entry.backoff = undefined;
      if (this.#entries.get(entry.name) !== entry) return;
      try {
        this.#watch(entry);
      } catch (error) {
        log.error("cannot resume the listener", { function: entry.name, error: errorText(error) });
      }
    }, BACKOFF_MS);
  }
}
