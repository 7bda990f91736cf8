/**
 * Serving: a listener per function address, and for each accepted connection a fresh container that receives the
 * client socket. faasd's duties to the client (DESIGN.md) live here: a connection costs a container only once its
 * first bytes arrived (within `--header-timeout`); faasd keeps its reference to the socket until the container exits,
 * then drains unread request bytes and closes cleanly; it answers 502 when the container exited having sent nothing,
 * 504 when it overran the request timeout (and kills it), 503 when no container could be had (queue full or timed
 * out, the function failing, faasd stopping).
 *
 * One connection crosses the files of `lib/serve/` in this order:
 *
 * 1. `listeners.ts` — one listening socket per function address, all on one epoll loop; accepts and hands each
 *    connection to {@linkcode Server} (this file), which waits for its first bytes.
 * 2. `pool.ts` — the function's warm pool: the connection waits in the function's FIFO queue for a ready container
 *    (within the concurrency limit, the queue's bounds and the breaker), and the pool starts replacements.
 * 3. `shim_groups.ts` — how the pool's starts happen in production: a function's containers share one runc shim.
 * 4. `container.ts` — one request's container through containerd: snapshot, task, control socket, the handoff of the
 *    client socket (`SCM_RIGHTS`), its exit, and its removal.
 * 5. `spec.ts` — the OCI spec each container runs with: namespaces, read-only root, seccomp, limits.
 *
 * Beside the path: `socket_guard.ts` (the firewall rule that keeps a handed-over socket to its client) and `reap.ts`
 * (what a crashed faasd left). The server knows containers only as {@linkcode ServedContainer} and takes their start
 * as a dependency, so it is tested without containerd (server_test.ts).
 *
 * @module
 */

import { errorText, log } from "../log.ts";
import { ErrnoError } from "../../ffi/errno.ts";
import { isUnavailable } from "../containerd/errors.ts";
import type { TcpConn } from "../../ffi/socket.ts";
import { Listeners } from "./listeners.ts";
import type { Metrics } from "../metrics.ts";
import { type Lease, type PoolContainer, type PoolOptions, Pools, PoolUnavailableError, type Sizing } from "./pool.ts";
import type { FunctionRecord } from "../registry.ts";
import { ShimGroups } from "./shim_groups.ts";
import { randomHex } from "../random.ts";
import { detached, failed, recordSpan, type Span, startSpan } from "../trace.ts";
import { type ContainerDeps, RequestContainer } from "./container.ts";
import type { Poller } from "../../ffi/epoll.ts";

/** How long a function's shim group outlives its last container, for the next one. */
const SHIM_GROUP_LINGER_MS = 1000;
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

/** A container as the server uses it: the pool's view, plus the handoff and the end of its request. */
export interface ServedContainer extends PoolContainer {
  readonly function: string;
  /** Settles when the task has exited. */
  readonly exited: Promise<unknown>;
  /** Hands the client socket over; throws when the container's control connection is gone. */
  handoff(fd: number): void;
  /** Kills what runs (the request overran its time). */
  kill(): Promise<void>;
  /** When its start began and when it connected (epoch ms), for traces; absent for stand-ins. */
  readonly startedAt?: number;
  readonly connectedAt?: number;
}

/** Starts a container for `record` (created and started, not yet connected). */
export type StartServed = (record: FunctionRecord, signal: AbortSignal) => Promise<ServedContainer>;

/** What the server needs whoever starts its containers. */
export interface ServerOptions {
  poller: Poller;
  metrics: Metrics;
  port: number;
  /**
   * The pool's bounds and timings; `maxConcurrency` counts connections being served per function; `shimGroupSize`
   * containers of a function share a runc shim (shim_groups.ts).
   */
  pool: PoolOptions & { headerTimeoutMs: number; shimGroupSize: number };
  /** A function's pool sizing, from its settings. */
  sizing: (record: FunctionRecord) => Sizing;
  /** The mark set on every accepted socket before it is handed over (see socket_guard.ts); null: none. */
  socketMark: number | null;
  /** Called once per connection with its outcome and how long it took (stats.ts). */
  onRequest?: (fn: string, outcome: Outcome, seconds: number) => void;
}

/**
 * What the server needs, handed in by the composition root: either `start` (tests hand in stand-ins), or what
 * {@linkcode RequestContainer}s through containerd need (then started in shim groups).
 */
export type ServerDeps = ServerOptions & ({ start: StartServed } | (ContainerDeps & { start?: undefined }));

/** Handoffs tried per connection: a container found dead at the handoff is replaced by the next ready one. */
const HANDOFF_ATTEMPTS = 3;

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

/** Now, in epoch milliseconds with the monotonic clock's precision. */
function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Hands the client socket to `c`; false when its control connection is gone (EPIPE, ECONNRESET). */
function tryHandoff(c: ServedContainer, conn: TcpConn): boolean {
  try {
    c.handoff(conn.fd);
    return true;
  } catch (e) {
    if (e instanceof ErrnoError) return false;
    throw e;
  }
}

/** The outcome of one connection, as counted in metrics. */
export type Outcome =
  | "ok"
  | "exited-early"
  | "empty"
  | "request-timeout"
  | "overloaded"
  | "failing"
  | "idle"
  | "error";

/** Serves every deployed function on its address. */
export class Server {
  readonly #deps: ServerDeps;
  readonly #listeners: Listeners;
  readonly #pools: Pools<ServedContainer>;
  /** The shim groups of RequestContainers; null when the containers' start was handed in. */
  readonly #shims: ShimGroups<RequestContainer> | null = null;
  /** Connections in progress (accepted, not yet closed). */
  readonly #tasks = new Set<Promise<void>>();
  readonly #shutdown = new AbortController();

  constructor(deps: ServerDeps) {
    this.#deps = deps;
    // Connections start traces of their own, whatever was active when the listener began (a deploy, for one).
    this.#listeners = new Listeners(deps.poller, (name, conn) => detached(() => this.#track(this.#handle(name, conn))));
    let start: StartServed;
    if (deps.start) start = deps.start;
    else {
      const shims = new ShimGroups((record, options) => RequestContainer.start(deps, record, options), {
        size: deps.pool.shimGroupSize,
        lingerMs: SHIM_GROUP_LINGER_MS,
        // One shim creates one task at a time: as many groups as cores can create in parallel.
        parallel: Math.max(1, Math.min(deps.pool.maxStarting, navigator.hardwareConcurrency)),
      });
      this.#shims = shims;
      start = (record, signal) => shims.start(record, signal);
    }
    const { metrics } = deps;
    this.#pools = new Pools(start, { ...deps.pool, transient: isUnavailable }, {
      started: (fn, outcome, seconds) => {
        metrics.starts.inc({ function: fn, outcome });
        if (outcome === "ok") metrics.containerStartSeconds.observe({ function: fn }, seconds);
      },
      lost: (fn) => metrics.lost.inc({ function: fn }),
      acquired: (fn, waited, seconds) => {
        metrics.acquired.inc({ function: fn, from: waited ? "start" : "pool" });
        metrics.queueSeconds.observe({ function: fn }, seconds);
      },
      breaker: (fn, open) => metrics.breakerOpen.set({ function: fn }, open ? 1 : 0),
      ready: (fn, count) => metrics.ready.set({ function: fn }, count),
    });
  }

  /**
   * Connections in progress plus containers that still exist (shim group anchors included): 0 once everything is
   * served and removed.
   */
  get outstanding(): number {
    return this.#tasks.size + this.#pools.containers + (this.#shims?.size ?? 0);
  }

  /** Request containers that exist now (starting, ready, serving or being removed). */
  get containers(): number {
    return this.#pools.containers;
  }

  /** Ready containers of `name`. */
  ready(name: string): number {
    return this.#pools.ready(name);
  }

  /** Connections `name` is serving (handed over, not yet ended). */
  serving(name: string): number {
    return this.#pools.serving(name);
  }

  /** Connections of `name` waiting for a container. */
  waiting(name: string): number {
    return this.#pools.waiting(name);
  }

  /** `failing` while `name`'s breaker is open, else null. */
  status(name: string): "failing" | null {
    return this.#pools.status(name);
  }

  /**
   * Serves `record` from the next connection on: starts listening on its address unless already listening (a
   * redeploy keeps its address). A new image or new limits drain the function's ready containers.
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
    this.#pools.serve(record, this.#deps.sizing(record));
  }

  /** Stops accepting for `name` and removes its ready containers; connections being served finish. */
  stop(name: string): void {
    this.#listeners.remove(name);
    this.#pools.stop(name);
    this.#shims?.retire(name);
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    // #handle answers its own failures; anything escaping it is a bug, logged rather than crashing the daemon.
    task.catch((e) => log.error("internal error serving a connection", { error: errorText(e), stack: e?.stack }))
      .finally(() => this.#tasks.delete(task));
  }

  /** Serves one connection, from its first bytes to its clean close. */
  async #handle(name: string, conn: TcpConn): Promise<void> {
    const { metrics, socketMark } = this.#deps;
    const request = randomHex(8);
    // Costless when tracing is off: the API's span records nothing, and the steps are recorded only when it does.
    const span = startSpan("connection", { function: name, request });
    // When each step happened (epoch ms, sub-ms precision): the log line's timings and the trace's steps alike.
    const at: Record<string, number> = { accept: epochMs() };
    let outcome: Outcome = "error";
    let lease: Lease<ServedContainer> | null = null;
    metrics.inflight.add({ function: name }, 1);
    try {
      if (socketMark !== null) {
        try {
          conn.setMark(socketMark);
        } catch (e) {
          // Without its mark the socket could be reconnected anywhere by the handler: never hand it over unmarked.
          log.error("cannot mark the socket", { function: name, error: errorText(e) });
          answer(conn, 503, `function ${name} cannot be served safely now`);
          return;
        }
      }
      if (!await this.#firstBytes(conn)) {
        outcome = "idle";
        return;
      }
      at.firstBytes = epochMs();
      for (let attempt = 0;; attempt++) {
        try {
          lease = await this.#pools.acquire(name, attempt > 0);
        } catch (e) {
          if (!(e instanceof PoolUnavailableError)) throw e;
          outcome = e.reason === "breaker" ? "failing" : "overloaded";
          answer(conn, 503, e.message);
          return;
        }
        at.acquired = epochMs();
        if (tryHandoff(lease.container, conn)) {
          at.handedOff = epochMs();
          break;
        }
        // Its control connection is gone: it died after it was ready. The next one, a bounded number of times.
        lease.failed();
        lease = null;
        if (attempt + 1 >= HANDOFF_ATTEMPTS) {
          answer(conn, 502, `function ${name} exited without handling the request`);
          outcome = "exited-early";
          return;
        }
      }
      const c = lease.container;
      if (span.isRecording()) this.#traceStart(span, c, at);
      outcome = await this.#serve(c, conn);
      at.exited = epochMs();
    } catch (e) {
      log.error("serving failed", { function: name, request, error: errorText(e) });
      if (conn.bytesSent() === 0n) answer(conn, 502, `function ${name} could not be served`);
    } finally {
      // The request is decided: the container goes (off the client's path), the client is closed cleanly.
      lease?.release();
      at.closing = epochMs();
      const ms = at.closing - at.accept!;
      const container = lease?.container.id; // set only once handed over (a failed handoff drops its lease)
      metrics.requestSeconds.observe({ function: name }, ms / 1000);
      metrics.requests.inc({ function: name, outcome });
      this.#deps.onRequest?.(name, outcome, ms / 1000);
      await this.#closeClient(conn);
      metrics.inflight.add({ function: name }, -1);
      if (span.isRecording()) this.#traceEnd(span, at, outcome, container);
      // The one line a request writes at info: its outcome and timings (never a byte of the request).
      log.info("request", {
        function: name,
        request,
        outcome,
        ms: Math.round(ms * 10) / 10,
        waited_ms: at.handedOff === undefined ? undefined : Math.round((at.handedOff - at.firstBytes!) * 10) / 10,
        container,
      });
    }
  }

  /** Records how the connection got its container: the start it waited for, or a take from the pool. */
  #traceStart(span: Span, c: ServedContainer, at: Record<string, number>): void {
    span.setAttribute("container", c.id);
    const waitedForStart = c.connectedAt !== undefined && c.connectedAt > at.firstBytes!;
    if (waitedForStart && c.startedAt !== undefined) {
      recordSpan(span, "container.start", c.startedAt, c.connectedAt!, { container: c.id });
    }
    recordSpan(span, "queued", at.firstBytes!, at.acquired!, { from: waitedForStart ? "start" : "pool" });
    recordSpan(span, "handoff", at.acquired!, at.handedOff!, { container: c.id });
  }

  /** Records the steps after the handoff and ends the connection's span. */
  #traceEnd(span: Span, at: Record<string, number>, outcome: Outcome, container: string | undefined): void {
    if (at.firstBytes !== undefined) recordSpan(span, "first_bytes", at.accept!, at.firstBytes);
    if (at.handedOff !== undefined && at.exited !== undefined) {
      recordSpan(span, "handler", at.handedOff, at.exited, { container });
    }
    const closed = epochMs();
    recordSpan(span, "close", at.closing!, closed);
    span.setAttribute("outcome", outcome);
    if (outcome !== "ok") failed(span, outcome);
    span.end(closed);
  }

  /**
   * Waits for the connection's first bytes: false when none came within the header timeout, the client closed, or
   * faasd is stopping. faasd only looks; the bytes stay for the handler.
   */
  async #firstBytes(conn: TcpConn): Promise<boolean> {
    const timeoutMs = this.#deps.pool.headerTimeoutMs;
    const ready = await this.#deps.poller.wait(conn.fd, "read", { timeoutMs, signal: this.#shutdown.signal })
      .catch(() => "aborted" as const);
    try {
      return ready === "ready" && !conn.peekEof();
    } catch {
      return false; // reset by the client
    }
  }

  /** Waits for the handed-over container's exit, within its request timeout; answers failures itself. */
  async #serve(c: ServedContainer, conn: TcpConn): Promise<Outcome> {
    const name = c.function;
    // The listener is removed once the race is decided: while one is attached, Deno keeps the process alive until
    // the timeout fires (minutes, after a faasd that stopped).
    const deadline = AbortSignal.any([AbortSignal.timeout(c.timeoutMs), this.#shutdown.signal]);
    let onDeadline = () => {};
    const overran = new Promise<"timeout">((resolve) => {
      onDeadline = () => resolve("timeout");
      if (deadline.aborted) resolve("timeout");
      else deadline.addEventListener("abort", onDeadline, { once: true });
    });
    const exited = c.exited.then(() => "exited" as const, () => "exited" as const);
    const end = await Promise.race([exited, overran]).finally(() => deadline.removeEventListener("abort", onDeadline));
    if (end === "timeout") {
      await c.kill().catch((e) => log.error("kill failed", { function: name, container: c.id, error: errorText(e) }));
      await exited;
      const why = this.#shutdown.signal.aborted ? "faasd is stopping" : `it ran past its ${c.timeoutMs} ms`;
      if (conn.bytesSent() === 0n) answer(conn, 504, `function ${name} did not answer: ${why}`);
      return "request-timeout";
    }
    if (conn.bytesSent() === 0n) {
      answer(conn, 502, `function ${name} exited without answering`);
      return "empty";
    }
    return "ok";
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
   * Stops accepting everywhere; waits up to `graceMs` for connections in progress, then kills their containers,
   * refuses the ones still waiting, removes the ready containers and waits for the cleanup.
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
    const pools = this.#pools.close();
    await within(CLEANUP_AFTER_ABORT_MS);
    // Connections that ended meanwhile released their containers: their removals are awaited too.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const removed = pools.then(() => this.#pools.settled()).then(() => this.#shims?.close());
    await Promise.race([removed, new Promise((r) => timer = setTimeout(r, CLEANUP_AFTER_ABORT_MS))]);
    clearTimeout(timer);
  }
}
