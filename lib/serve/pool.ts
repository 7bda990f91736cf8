/**
 * The warm pool: per function, containers that are started and connected to their control socket before a
 * connection arrives, so that a connection is handed to one at once. A container still serves exactly one connection
 * and is never reused: the pool only moves its start off the request's path.
 *
 * Per function, connections wait in a FIFO queue ({@linkcode Pools.acquire}) until a ready container is free and the
 * function serves fewer than `maxConcurrency` connections; a connection waits at most `queueTimeoutMs`, and at most
 * `maxQueue` wait. How many containers a function keeps ready follows demand: about as many as connections arrive
 * during one container start (arrival rate × start time, both smoothed), between its `minReady` and `maxReady`; a
 * function idle for `idleMs` shrinks to `minReady`. Globally, at most `maxStarting` starts run at once, at most
 * `poolMax` containers wait ready, and at most `maxContainers` exist (starting, ready or serving).
 *
 * A function whose containers keep failing before the handoff (`BREAKER_FAILURES` in a row) stops starting them for
 * a back-off that doubles from 1 s to 60 s (the breaker); meanwhile its connections are refused at once. A redeploy
 * closes the breaker.
 *
 * The pool knows containers only through {@linkcode PoolContainer} and a start function, so it is tested without
 * containerd.
 *
 * @module
 */

import { errorText, log } from "../log.ts";
import type { FunctionRecord } from "../registry.ts";

/** What the pool needs of a container (container.ts's RequestContainer in production). */
export interface PoolContainer {
  readonly id: string;
  /** How long it may serve its request once handed a connection. */
  readonly timeoutMs: number;
  /** How long it may take to connect, when it needs longer than the pool's `connectTimeoutMs`. */
  readonly connectTimeoutMs?: number;
  /** Waits until the container connected to its control socket, exited, or `timeoutMs` passed. */
  waitConnected(timeoutMs: number, signal?: AbortSignal): Promise<"connected" | "exited" | "timeout">;
  /** Settles when a connected container hung up its control connection or exited; never rejects. */
  lost(signal: AbortSignal): Promise<void>;
  /** Removes it (kills what runs). Idempotent, never throws. */
  remove(): Promise<void>;
}

/** Starts a container for `record` (created and started, not yet connected). */
export type StartContainer<C extends PoolContainer = PoolContainer> = (
  record: FunctionRecord,
  signal: AbortSignal,
) => Promise<C>;

/** Pool sizing of one function. */
export interface Sizing {
  minReady: number;
  maxReady: number;
}

/** The pool's bounds and timings. */
export interface PoolOptions {
  connectTimeoutMs: number;
  maxConcurrency: number;
  maxStarting: number;
  poolMax: number;
  maxContainers: number;
  idleMs: number;
  maxAgeMs: number;
  queueTimeoutMs: number;
  maxQueue: number;
  /**
   * Whether a failed start is the platform's passing fault (containerd restarting), not the function's: such a
   * start is retried shortly and does not count towards the breaker.
   */
  transient?: (error: unknown) => boolean;
}

/** Counters and gauges the pool reports (metrics.ts in production). */
export interface PoolEvents {
  /** A start finished: `ok`, or why it failed (`error`, `exited`, `timeout`). */
  started?(fn: string, outcome: string, seconds: number): void;
  /** A ready container was lost before use (it exited or hung up). */
  lost?(fn: string): void;
  /** A connection got its container: from the pool at once, or after waiting `seconds`. */
  acquired?(fn: string, waited: boolean, seconds: number): void;
  /** The breaker opened (true) or closed (false). */
  breaker?(fn: string, open: boolean): void;
  /** The function's ready containers changed to `count`. */
  ready?(fn: string, count: number): void;
}

/** Raised by {@linkcode Pools.acquire} when a connection cannot get a container; answered 503 with the message. */
export class PoolUnavailableError extends Error {
  /** Why: the function is gone, the queue is full, the wait timed out, or the breaker is open. */
  readonly reason: "stopped" | "queue-full" | "queue-timeout" | "breaker";
  constructor(reason: PoolUnavailableError["reason"], message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PoolUnavailableError";
    this.reason = reason;
  }
}

/** Consecutive failures before the handoff that open the breaker. */
export const BREAKER_FAILURES = 5;
const BACKOFF_FIRST_MS = 1000;
const BACKOFF_MAX_MS = 60_000;
/** Weight of the newest observation in the smoothed rate and start time. */
const SMOOTHING = 0.2;
/** How soon a start that failed because containerd did not answer is tried again. */
const TRANSIENT_RETRY_MS = 250;
/** How often idle shrinking and the age limit are applied. */
const SWEEP_MS = 1000;

/** A connection's container, once acquired: release it when the request is decided. */
export interface Lease<C extends PoolContainer = PoolContainer> {
  readonly container: C;
  /** The request is decided: the function serves one fewer, and the container is removed. Idempotent. */
  release(): void;
  /** The container failed before the handoff (its control connection was gone): counts towards the breaker. */
  failed(): void;
}

interface Ready<C extends PoolContainer> {
  container: C;
  since: number;
  /** Stops watching for its loss (it was taken or removed). */
  stopWatching: AbortController;
}

interface Waiter<C extends PoolContainer> {
  since: number;
  resolve(lease: Lease<C>): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

/** One function's pool. */
class FunctionPool<C extends PoolContainer> {
  record: FunctionRecord;
  sizing: Sizing;
  /** Bumped when the image or limits change: containers of an older generation are never handed out. */
  generation = 0;
  readonly ready: Ready<C>[] = [];
  readonly waiters: Waiter<C>[] = [];
  starting = 0;
  serving = 0;
  lastArrival = -Infinity;
  /** Smoothed arrivals per millisecond and start time in milliseconds. */
  rate = 0;
  startMs = 0;
  failures = 0;
  openUntil = 0;
  backoffMs = BACKOFF_FIRST_MS;
  reopen: ReturnType<typeof setTimeout> | undefined;
  stopped = false;

  constructor(record: FunctionRecord, sizing: Sizing) {
    this.record = record;
    this.sizing = sizing;
  }

  get name(): string {
    return this.record.name;
  }

  breakerOpen(now: number): boolean {
    return this.openUntil > now;
  }
}

/** Every function's pool, under the global bounds. */
export class Pools<C extends PoolContainer = PoolContainer> {
  readonly #start: StartContainer<C>;
  readonly #opts: PoolOptions;
  readonly #events: PoolEvents;
  readonly #now: () => number;
  readonly #pools = new Map<string, FunctionPool<C>>();
  readonly #closing = new AbortController();
  /** Removals and starts in flight, awaited by close(). */
  readonly #removals = new Set<Promise<void>>();
  readonly #starts = new Set<Promise<void>>();
  /** Starts not yet settled (connected or failed): ready containers to be, counted against `poolMax`. */
  #starting = 0;
  /** Starts inside containerd (created, not yet started): bounded by `maxStarting`. */
  #inContainerd = 0;
  #readyCount = 0;
  /** Containers that exist: starting, ready, serving or being removed. */
  #containers = 0;
  readonly #sweep: ReturnType<typeof setInterval>;

  constructor(
    start: StartContainer<C>,
    opts: PoolOptions,
    events: PoolEvents = {},
    now: () => number = performance.now.bind(performance),
  ) {
    this.#start = start;
    this.#opts = opts;
    this.#events = events;
    this.#now = now;
    this.#sweep = setInterval(() => this.#sweepAll(), SWEEP_MS);
  }

  /** Containers that exist now (starting, ready, serving or being removed). */
  get containers(): number {
    return this.#containers;
  }

  /** Ready containers of `name`. */
  ready(name: string): number {
    return this.#pools.get(name)?.ready.length ?? 0;
  }

  /** Connections of `name` waiting for a container now. */
  waiting(name: string): number {
    return this.#pools.get(name)?.waiters.length ?? 0;
  }

  /** Connections `name` is serving now (handed over, not yet ended). */
  serving(name: string): number {
    return this.#pools.get(name)?.serving ?? 0;
  }

  /** `failing` while the function's breaker is open; null otherwise. */
  status(name: string): "failing" | null {
    const p = this.#pools.get(name);
    return p && p.breakerOpen(this.#now()) ? "failing" : null;
  }

  /**
   * Serves `record` with `sizing` from now on. A new image or new limits drain the ready containers (none of them is
   * handed out again) and close the breaker; a new sizing alone keeps them.
   */
  serve(record: FunctionRecord, sizing: Sizing): void {
    let p = this.#pools.get(record.name);
    if (!p) {
      p = new FunctionPool(record, sizing);
      this.#pools.set(record.name, p);
    } else {
      const changed = JSON.stringify([record.image, limitsOf(record)]) !==
        JSON.stringify([p.record.image, limitsOf(p.record)]);
      p.record = record;
      p.sizing = sizing;
      if (changed) {
        p.generation++;
        this.#drain(p);
        this.#closeBreaker(p);
      } else this.#trim(p);
    }
    this.#fill(p);
  }

  /** Stops serving `name`: its ready containers are removed, its waiting connections refused. */
  stop(name: string): void {
    const p = this.#pools.get(name);
    if (!p) return;
    this.#pools.delete(name);
    p.stopped = true;
    clearTimeout(p.reopen);
    this.#drain(p);
    this.#rejectWaiters(p, new PoolUnavailableError("stopped", `function ${name} is no longer served`));
  }

  /**
   * A container for a new connection of `name`: a ready one at once, else after waiting in the function's queue.
   *
   * @param again true for a second try after a failed handoff (not counted as a new arrival).
   * @throws {PoolUnavailableError} when the function is not served, its queue is full, the wait passed
   * `queueTimeoutMs`, or its breaker is open.
   */
  acquire(name: string, again = false): Promise<Lease<C>> {
    const p = this.#pools.get(name);
    if (!p) return Promise.reject(new PoolUnavailableError("stopped", `function ${name} is no longer served`));
    const now = this.#now();
    if (!again) this.#arrived(p, now);
    if (p.breakerOpen(now)) return Promise.reject(this.#breakerError(p, now));
    if (p.waiters.length >= this.#opts.maxQueue) {
      return Promise.reject(
        new PoolUnavailableError("queue-full", `function ${name} has ${p.waiters.length} connections waiting already`),
      );
    }
    return new Promise<Lease<C>>((resolve, reject) => {
      const waiter: Waiter<C> = {
        since: now,
        resolve,
        reject,
        timer: setTimeout(() => {
          const i = p.waiters.indexOf(waiter);
          if (i >= 0) p.waiters.splice(i, 1);
          reject(
            new PoolUnavailableError(
              "queue-timeout",
              `function ${name} had no container free within ${this.#opts.queueTimeoutMs} ms`,
            ),
          );
        }, this.#opts.queueTimeoutMs),
      };
      p.waiters.push(waiter);
      this.#dispatch(p);
      this.#fill(p);
    });
  }

  /** Removes every ready container and refuses every waiting connection; resolves when all removals are done. */
  async close(): Promise<void> {
    clearInterval(this.#sweep);
    this.#closing.abort();
    for (const name of [...this.#pools.keys()]) this.stop(name);
    await this.settled();
  }

  /** Resolves once no start and no removal is in flight (those that begin meanwhile included). */
  async settled(): Promise<void> {
    while (this.#removals.size || this.#starts.size) await Promise.all([...this.#removals, ...this.#starts]);
  }

  #arrived(p: FunctionPool<C>, now: number): void {
    if (Number.isFinite(p.lastArrival)) {
      const gap = Math.max(1, now - p.lastArrival);
      p.rate = p.rate === 0 ? 1 / gap : (1 - SMOOTHING) * p.rate + SMOOTHING / gap;
    }
    p.lastArrival = now;
  }

  /** How many ready containers `p` should keep: arrivals during one start, within its sizing; minReady when idle. */
  #target(p: FunctionPool<C>, now: number): number {
    const { minReady, maxReady } = p.sizing;
    if (now - p.lastArrival > this.#opts.idleMs) return minReady;
    // The rate decays with the time since the last arrival, so a stream that stopped stops asking for containers.
    const rate = Math.min(p.rate, 1 / Math.max(1, now - p.lastArrival));
    const demand = Math.ceil(rate * Math.max(p.startMs, 1));
    return Math.max(minReady, Math.min(maxReady, demand));
  }

  /** Hands ready containers to waiting connections, oldest of each first, within the concurrency limit. */
  #dispatch(p: FunctionPool<C>): void {
    while (p.waiters.length && p.ready.length && p.serving < this.#opts.maxConcurrency) {
      const waiter = p.waiters.shift()!;
      const ready = p.ready.shift()!;
      this.#readyCount--;
      ready.stopWatching.abort();
      clearTimeout(waiter.timer);
      p.serving++;
      const waited = this.#now() - waiter.since;
      this.#events.acquired?.(p.name, waited > 1, waited / 1000);
      waiter.resolve(this.#lease(p, ready.container));
      this.#readyChanged(p);
    }
  }

  #lease(p: FunctionPool<C>, container: C): Lease<C> {
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      p.serving--;
      this.#remove(container);
      this.#dispatch(p);
      this.#fill(p);
    };
    return {
      container,
      release,
      failed: () => {
        this.#failed(p);
        release();
      },
    };
  }

  /** Starts containers while `p` has fewer ready or starting than it needs, within the global bounds. */
  #fill(p: FunctionPool<C>): void {
    if (p.stopped || this.#closing.signal.aborted) return;
    const now = this.#now();
    if (p.breakerOpen(now)) return;
    const servable = Math.min(p.waiters.length, Math.max(0, this.#opts.maxConcurrency - p.serving));
    const forWaiters = Math.max(0, servable - p.ready.length);
    const missing = Math.max(forWaiters, this.#target(p, now) + servable - p.ready.length) - p.starting;
    for (let i = 0; i < missing; i++) {
      if (this.#inContainerd >= this.#opts.maxStarting || this.#containers >= this.#opts.maxContainers) break;
      // Starts ahead of demand are bounded by --pool-max; starts for waiting connections are not.
      const ahead = i >= forWaiters - p.starting;
      if (ahead && this.#readyCount + this.#starting >= this.#opts.poolMax) break;
      const start = this.#startOne(p).finally(() => this.#starts.delete(start));
      this.#starts.add(start);
    }
  }

  /** Every pool that may still miss containers, once a global slot frees up. */
  #fillAll(): void {
    for (const p of this.#pools.values()) this.#fill(p);
  }

  async #startOne(p: FunctionPool<C>): Promise<void> {
    p.starting++;
    this.#starting++;
    this.#inContainerd++;
    this.#containers++;
    const generation = p.generation;
    const began = this.#now();
    let container: C | null = null;
    let outcome: string;
    let transient = false;
    // The global slot bounds containerd's work; waiting for the container to connect (an adapter-mode server may take
    // its ready timeout to listen) costs nothing, so it must not hold other functions' starts back.
    let slot = true;
    const freeSlot = () => {
      if (!slot) return;
      slot = false;
      this.#inContainerd--;
      this.#fillAll();
    };
    try {
      container = await this.#start(p.record, this.#closing.signal);
      freeSlot();
      const connectMs = Math.max(this.#opts.connectTimeoutMs, container.connectTimeoutMs ?? 0);
      outcome = await container.waitConnected(connectMs, this.#closing.signal);
    } catch (e) {
      transient = this.#opts.transient?.(e) ?? false;
      if (!this.#closing.signal.aborted && !transient) {
        log.warn("container start failed", { function: p.name, error: errorText(e) });
      }
      outcome = "error";
    } finally {
      p.starting--;
      this.#starting--;
      if (slot) {
        slot = false;
        this.#inContainerd--;
      }
    }
    const seconds = (this.#now() - began) / 1000;
    this.#events.started?.(p.name, outcome === "connected" ? "ok" : outcome, seconds);
    if (outcome !== "connected" || !container) {
      if (container) this.#remove(container);
      else this.#containers--;
      const counts = !this.#closing.signal.aborted && !p.stopped && generation === p.generation;
      if (counts && transient) {
        // containerd is restarting: waiting connections keep waiting (up to their queue timeout) for the retry.
        setTimeout(() => this.#fill(p), TRANSIENT_RETRY_MS);
        return;
      } else if (counts) this.#failed(p);
    } else if (p.stopped || generation !== p.generation || this.#closing.signal.aborted) {
      this.#remove(container); // an image or limits that changed meanwhile: never handed out
    } else {
      p.startMs = p.startMs === 0 ? seconds * 1000 : (1 - SMOOTHING) * p.startMs + SMOOTHING * seconds * 1000;
      this.#succeeded(p);
      this.#addReady(p, container);
      this.#dispatch(p);
    }
    this.#fillAll();
  }

  #addReady(p: FunctionPool<C>, container: C): void {
    const entry: Ready<C> = { container, since: this.#now(), stopWatching: new AbortController() };
    p.ready.push(entry);
    this.#readyCount++;
    this.#readyChanged(p);
    container.lost(entry.stopWatching.signal).then(() => {
      const i = p.ready.indexOf(entry);
      if (i < 0) return; // taken or removed meanwhile
      p.ready.splice(i, 1);
      this.#readyCount--;
      this.#readyChanged(p);
      this.#events.lost?.(p.name);
      this.#remove(container);
      this.#failed(p);
      this.#fill(p);
    });
  }

  #readyChanged(p: FunctionPool<C>): void {
    this.#events.ready?.(p.name, p.ready.length);
  }

  #remove(container: C): void {
    const removal = container.remove().finally(() => {
      this.#containers--;
      this.#removals.delete(removal);
      this.#fillAll();
    });
    this.#removals.add(removal);
  }

  /** Removes every ready container of `p`. */
  #drain(p: FunctionPool<C>): void {
    for (const r of p.ready.splice(0)) {
      this.#readyCount--;
      r.stopWatching.abort();
      this.#remove(r.container);
    }
    this.#readyChanged(p);
  }

  /** Removes ready containers past what `p` may keep now (its maxReady, or minReady once idle). */
  #trim(p: FunctionPool<C>): void {
    const keep = Math.max(this.#target(p, this.#now()), Math.min(p.waiters.length, p.sizing.maxReady));
    while (p.ready.length > keep) {
      const r = p.ready.pop()!; // the newest: the oldest go first to waiting connections
      this.#readyCount--;
      r.stopWatching.abort();
      this.#remove(r.container);
      this.#readyChanged(p);
    }
  }

  #sweepAll(): void {
    const now = this.#now();
    for (const p of this.#pools.values()) {
      for (const r of [...p.ready]) {
        if (now - r.since <= this.#opts.maxAgeMs) continue;
        p.ready.splice(p.ready.indexOf(r), 1);
        this.#readyCount--;
        r.stopWatching.abort();
        this.#remove(r.container);
        this.#readyChanged(p);
      }
      this.#trim(p);
      this.#fill(p);
    }
  }

  #failed(p: FunctionPool<C>): void {
    p.failures++;
    // openUntil stays set once the breaker opened, until a success closes it: after the back-off (half-open), one
    // more failure opens it again, for twice as long.
    const halfOpen = p.openUntil > 0;
    if (!halfOpen && p.failures < BREAKER_FAILURES) return;
    const now = this.#now();
    p.openUntil = now + p.backoffMs;
    const openFor = p.backoffMs;
    p.backoffMs = Math.min(BACKOFF_MAX_MS, p.backoffMs * 2);
    this.#events.breaker?.(p.name, true);
    this.#rejectWaiters(p, this.#breakerError(p, now));
    clearTimeout(p.reopen);
    p.reopen = setTimeout(() => this.#fill(p), openFor);
  }

  #succeeded(p: FunctionPool<C>): void {
    if (p.openUntil > 0 || p.failures > 0) {
      const wasOpen = p.openUntil > 0;
      p.failures = 0;
      p.openUntil = 0;
      p.backoffMs = BACKOFF_FIRST_MS;
      if (wasOpen) this.#events.breaker?.(p.name, false);
    }
  }

  #closeBreaker(p: FunctionPool<C>): void {
    clearTimeout(p.reopen);
    this.#succeeded(p);
  }

  #breakerError(p: FunctionPool<C>, now: number): PoolUnavailableError {
    const s = Math.ceil((p.openUntil - now) / 1000);
    return new PoolUnavailableError(
      "breaker",
      `function ${p.name} is failing: its containers keep failing before they get a connection; ` +
        `new ones are tried again in ${s} s (or after a redeploy)`,
    );
  }

  #rejectWaiters(p: FunctionPool<C>, error: PoolUnavailableError): void {
    for (const w of p.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(error);
    }
  }
}

/** What of a record decides how its containers are made (its settings but the pool's own sizing). */
function limitsOf(record: FunctionRecord): unknown {
  const { minReady: _min, maxReady: _max, ...rest } = record.settings as Record<string, unknown>;
  return rest;
}
