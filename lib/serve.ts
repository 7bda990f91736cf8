/**
 * Serving: a listener per function address, and for each accepted connection a fresh container that receives the
 * client socket. faasd's duties to the client (DESIGN.md) live here: it keeps its reference to the socket until the
 * container exits, then drains unread request bytes and closes cleanly; it answers 502 when the container exited
 * having sent nothing, 504 when it never connected or overran the request timeout (and kills it), 503 past the
 * per-function concurrency limit.
 *
 * @module
 */

import { ErrnoError } from "../ffi/errno.ts";
import { isNotFound } from "./containerd/errors.ts";
import type { TcpConn } from "../ffi/socket.ts";
import { Listeners } from "./listen.ts";
import type { Metrics } from "./metrics.ts";
import type { FunctionRecord } from "./registry.ts";
import { RequestContainer, type SpawnDeps } from "./spawn.ts";

/** How long shutdown waits for the cleanup of killed requests. */
const CLEANUP_AFTER_ABORT_MS = 15_000;
/** How long to wait for the client's end of stream after closing ours. */
const LINGER_MS = 2000;

/** Raised when a function's address cannot be listened on (taken, or not local); the API answers 409. */
export class ListenError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ListenError";
  }
}

/** What the server needs, handed in by the composition root. */
export interface ServerDeps extends SpawnDeps {
  metrics: Metrics;
  port: number;
  connectTimeoutMs: number;
  maxConcurrency: number;
  /** The mark set on every accepted socket before it is handed over (see socket_guard.ts); null: none. */
  socketMark: number | null;
}

const REASONS: Record<number, string> = {
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};

/** Writes a short complete HTTP answer; the socket's send buffer always has room for it on a fresh connection. */
function answer(conn: TcpConn, status: number, text: string): void {
  const body = `${text}\n`;
  const head = `HTTP/1.1 ${status} ${REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
    `Content-Length: ${new TextEncoder().encode(body).length}\r\nConnection: close\r\n\r\n`;
  try {
    conn.write(new TextEncoder().encode(head + body));
  } catch { /* client already gone */ }
}

/** Hands the client socket to `c`; false when its control connection is gone (EPIPE, ECONNRESET). */
function tryHandoff(c: RequestContainer, conn: TcpConn): boolean {
  try {
    c.handoff(conn.fd);
    return true;
  } catch (e) {
    if (e instanceof ErrnoError) return false;
    throw e;
  }
}

/** The outcome of one connection, as counted in metrics. */
export type Outcome = "ok" | "exited-early" | "empty" | "connect-timeout" | "request-timeout" | "overloaded" | "error";

/** Serves every deployed function on its address. */
export class Server {
  readonly #deps: ServerDeps;
  readonly #listeners: Listeners;
  /** What each served function runs now, as last handed to serve(): read per connection without the database. */
  readonly #records = new Map<string, FunctionRecord>();
  readonly #inflight = new Map<string, number>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #shutdown = new AbortController();

  constructor(deps: ServerDeps) {
    this.#deps = deps;
    this.#listeners = new Listeners(deps.poller, (name, conn) => this.#track(this.#handle(name, conn)));
  }

  /** Connections being served now, across functions. */
  get inflight(): number {
    return this.#tasks.size;
  }

  /**
   * Serves `record` from the next connection on: starts listening on its address unless already listening (a
   * redeploy keeps its address and only changes the image).
   *
   * @throws {ListenError} when the address cannot be bound.
   */
  serve(record: FunctionRecord): void {
    if (!this.#listeners.has(record.name)) {
      try {
        this.#listeners.add(record.name, record.ip, this.#deps.port);
      } catch (e) {
        if (e instanceof ErrnoError) {
          throw new ListenError(`cannot listen on ${record.ip}:${this.#deps.port}: ${e.message}`, { cause: e });
        }
        throw e;
      }
    }
    this.#records.set(record.name, record);
  }

  /** Stops accepting for `name`; connections in flight finish. */
  stop(name: string): void {
    this.#listeners.remove(name);
    this.#records.delete(name);
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    // #handle answers its own failures; anything escaping it is a bug, logged rather than crashing the daemon.
    task.catch((e) => console.error("faasd: internal error serving a connection:", e))
      .finally(() => this.#tasks.delete(task));
  }

  /** Serves one connection; the per-function limit counts running containers, not lingering client closes. */
  async #handle(name: string, conn: TcpConn): Promise<void> {
    const { metrics, maxConcurrency, socketMark } = this.#deps;
    const started = performance.now();
    if (socketMark !== null) {
      try {
        conn.setMark(socketMark);
      } catch (e) {
        // Without its mark the socket could be reconnected anywhere by the handler: never hand it over unmarked.
        console.error(`faasd: ${name}: ${(e as Error).message}`);
        answer(conn, 503, `function ${name} cannot be served safely now`);
        metrics.requests.inc({ function: name, outcome: "error" });
        return await this.#closeClient(conn);
      }
    }
    const running = this.#inflight.get(name) ?? 0;
    if (running >= maxConcurrency) {
      answer(conn, 503, `function ${name} is at its limit of ${maxConcurrency} concurrent requests`);
      metrics.requests.inc({ function: name, outcome: "overloaded" });
      return await this.#closeClient(conn);
    }
    this.#inflight.set(name, running + 1);
    metrics.inflight.add({ function: name }, 1);
    let outcome: Outcome = "error";
    let container: RequestContainer | null = null;
    const removed = Promise.withResolvers<void>();
    const closed = this.#closeClientAfter(conn, removed.promise);
    try {
      container = await this.#start(name);
      if (!container) {
        answer(conn, 503, `function ${name} is no longer served`);
        return;
      }
      ({ outcome } = await this.#run(container, conn, started));
    } catch (e) {
      console.error(`faasd: ${name}: ${(e as Error).message}`);
      if (conn.bytesSent() === 0n) answer(conn, 502, `function ${name} could not be started`);
    } finally {
      metrics.requestSeconds.observe({ function: name }, (performance.now() - started) / 1000);
      metrics.requests.inc({ function: name, outcome });
      removed.resolve();
      await container?.remove();
      this.#inflight.set(name, this.#inflight.get(name)! - 1);
      metrics.inflight.add({ function: name }, -1);
      await closed;
    }
  }

  /**
   * Starts a container on the function's current image; null when it is no longer served (deleted since the
   * connection was accepted). A redeploy can remove the image between reading the record and preparing the
   * snapshot on it: then the record has moved on, and the start is tried once more on the new image.
   */
  async #start(name: string): Promise<RequestContainer | null> {
    const record = this.#records.get(name);
    if (!record?.image) return null;
    try {
      return await RequestContainer.start(this.#deps, record, this.#shutdown.signal);
    } catch (e) {
      const now = this.#records.get(name);
      if (!isNotFound(e) || !now?.image || now.image.chainId === record.image.chainId) throw e;
      return await RequestContainer.start(this.#deps, now, this.#shutdown.signal);
    }
  }

  /** Closes the client once `ready` settles (the request is decided), alongside the container's removal. */
  async #closeClientAfter(conn: TcpConn, ready: Promise<void>): Promise<void> {
    await ready;
    await this.#closeClient(conn);
  }

  /** Waits for the container's connection, hands the socket over, waits for the exit; answers failures itself. */
  async #run(c: RequestContainer, conn: TcpConn, started: number): Promise<{ outcome: Outcome }> {
    const { connectTimeoutMs, metrics } = this.#deps;
    const requestTimeoutMs = c.timeoutMs;
    const name = c.function;
    const state = await c.waitConnected(connectTimeoutMs, this.#shutdown.signal);
    if (state === "timeout") {
      // Killed by its removal, right after the client has this answer.
      answer(conn, 504, `function ${name} did not connect to /control.sock within ${connectTimeoutMs} ms`);
      return { outcome: "connect-timeout" };
    }
    if (state === "connected") {
      metrics.containerStartSeconds.observe({ function: name }, (performance.now() - started) / 1000);
    }
    // A container that hung up its control connection (it exited) cannot take the socket: the same answer as one
    // that exited before connecting.
    if (state === "exited" || !tryHandoff(c, conn)) {
      answer(conn, 502, `function ${name} exited without handling the request`);
      return { outcome: "exited-early" };
    }

    const left = Math.max(0, requestTimeoutMs - (performance.now() - started));
    // Ends early on the request timeout or on shutdown; the listener is removed so finished requests leave none.
    const stop = Promise.withResolvers<"timeout">();
    const timer = setTimeout(() => stop.resolve("timeout"), left);
    const onShutdown = () => stop.resolve("timeout");
    if (this.#shutdown.signal.aborted) onShutdown();
    else this.#shutdown.signal.addEventListener("abort", onShutdown, { once: true });
    const exited = c.exited.then(() => "exited" as const, () => "exited" as const);
    const end = await Promise.race([exited, stop.promise]).finally(() => {
      clearTimeout(timer);
      this.#shutdown.signal.removeEventListener("abort", onShutdown);
    });
    if (end === "timeout") {
      await c.kill();
      await exited;
      if (conn.bytesSent() === 0n) answer(conn, 504, `function ${name} did not answer within ${requestTimeoutMs} ms`);
      return { outcome: "request-timeout" };
    }
    if (conn.bytesSent() === 0n) {
      answer(conn, 502, `function ${name} exited without answering`);
      return { outcome: "empty" };
    }
    return { outcome: "ok" };
  }

  /**
   * Ends faasd's side of the client connection without a reset: discard unread request bytes, send FIN, then wait
   * briefly for the client's FIN (discarding anything it still sends) before closing.
   */
  async #closeClient(conn: TcpConn): Promise<void> {
    try {
      if (conn.drain() !== "eof") {
        conn.shutdown("write");
        const deadline = Date.now() + LINGER_MS;
        while (Date.now() < deadline) {
          const r = await this.#deps.poller.wait(conn.fd, "read", { timeoutMs: deadline - Date.now() });
          if (r === "timeout" || conn.drain() === "eof") break;
        }
      }
    } catch {
      /* the client reset or vanished: nothing more to do */
    } finally {
      conn.close();
    }
  }

  /**
   * Stops accepting everywhere; waits up to `graceMs` for connections in flight, then kills their containers and
   * waits for the cleanup.
   */
  async close(graceMs: number): Promise<void> {
    this.#listeners.close();
    const within = (ms: number) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const wait = new Promise((resolve) => timer = setTimeout(resolve, ms));
      return Promise.race([Promise.allSettled([...this.#tasks]), wait]).finally(() => clearTimeout(timer));
    };
    await within(graceMs);
    this.#shutdown.abort();
    // Killing and cleaning up takes a few containerd calls each; a containerd that does not answer cannot hold
    // shutdown forever (what is left is reaped at the next start).
    await within(CLEANUP_AFTER_ABORT_MS);
  }
}
