/**
 * Resource use per function, kept in memory since faasd started: requests by outcome and their latency (from
 * serve/server.ts), and what each request's container used (from its cgroup, usage.ts): CPU time, peak memory, OOM kills.
 * Percentiles come from the last {@linkcode SAMPLES} samples of each function; means, maxima and counts from all.
 *
 * A container that never served a request (a ready one drained or lost) counts towards the function's CPU time and
 * OOM kills in Prometheus, but not towards the per-request figures.
 *
 * @module
 */

import type { Outcome } from "./serve/server.ts";
import type { ContainerUsage } from "./usage.ts";

/** Samples kept per function and figure for its percentiles. */
export const SAMPLES = 1024;

type Labels = Record<string, string>;

/** The Prometheus series container usage goes to (lib/metrics.ts `Metrics` has them). */
export interface UsageMetrics {
  /** `faasd_container_cpu_seconds_total{function}` */
  containerCpuSeconds: { inc(labels: Labels, by: number): void };
  /** `faasd_container_peak_memory_bytes{function}` */
  containerPeakMemory: { observe(labels: Labels, value: number): void };
  /** `faasd_container_oom_kills_total{function}` */
  containerOomKills: { inc(labels: Labels, by: number): void };
}

/** One function's figures, as `GET /api/stats/NAME` answers them. Null: no sample yet. */
export interface FunctionSnapshot {
  /** Connections served (every outcome). */
  requests: number;
  /** Connections by outcome (serve/server.ts `Outcome`); outcomes not seen are left out. */
  outcomes: Record<string, number>;
  /** From accept to the client's socket closed; idle connections (no bytes sent) left out. */
  latency: { p50Ms: number | null; p99Ms: number | null };
  /** CPU time of a request's container, its start included (runc's init, the handler's start-up). */
  cpuPerRequestMs: { mean: number | null; p99: number | null };
  /** The most memory a request's container was charged at once. */
  peakMemoryBytes: { mean: number | null; max: number | null };
  /** Processes of the function's containers killed by the OOM killer (containers that never served included). */
  oomKills: number;
  /** Requests whose container's usage was read (the per-request figures' count). */
  measured: number;
}

/** The last `capacity` numbers pushed. */
class Ring {
  readonly #values: Float64Array;
  #next = 0;
  #size = 0;

  constructor(capacity: number) {
    this.#values = new Float64Array(capacity);
  }

  push(value: number): void {
    this.#values[this.#next] = value;
    this.#next = (this.#next + 1) % this.#values.length;
    this.#size = Math.min(this.#size + 1, this.#values.length);
  }

  /** The `p`th percentile (nearest rank), or null when empty. */
  percentile(p: number): number | null {
    if (this.#size === 0) return null;
    const sorted = this.#values.slice(0, this.#size).sort();
    return sorted[Math.max(0, Math.ceil((p / 100) * this.#size) - 1)]!;
  }
}

/** A running sum, count and maximum. */
class Tally {
  count = 0;
  sum = 0;
  max = 0;

  add(value: number): void {
    this.count++;
    this.sum += value;
    this.max = Math.max(this.max, value);
  }

  get mean(): number | null {
    return this.count ? this.sum / this.count : null;
  }
}

class Figures {
  requests = 0;
  readonly outcomes = new Map<string, number>();
  readonly latencyMs: Ring;
  readonly cpuMs: Ring;
  readonly cpuTally = new Tally();
  readonly memory = new Tally();
  oomKills = 0;

  constructor(samples: number) {
    this.latencyMs = new Ring(samples);
    this.cpuMs = new Ring(samples);
  }
}

/** Options of {@linkcode FunctionStats}. */
export interface FunctionStatsOptions {
  /** Samples kept per function for percentiles; default {@linkcode SAMPLES}. */
  samples?: number;
  /** Where container usage is also counted for Prometheus. */
  metrics?: UsageMetrics;
  /**
   * Whether `name` is deployed: figures of other names are dropped (a deleted function's last containers, removed
   * after it was forgotten, would otherwise bring it back). Default: every name is.
   */
  known?: (name: string) => boolean;
}

const round3 = (n: number | null) => n === null ? null : Math.round(n * 1000) / 1000;

/** Per-function requests, latency and container usage. */
export class FunctionStats {
  readonly #figures = new Map<string, Figures>();
  readonly #samples: number;
  readonly #metrics: UsageMetrics | undefined;
  readonly #known: (name: string) => boolean;

  constructor(options: FunctionStatsOptions = {}) {
    this.#samples = options.samples ?? SAMPLES;
    if (!(this.#samples >= 1)) throw new RangeError(`samples must be at least 1, not ${this.#samples}`);
    this.#metrics = options.metrics;
    this.#known = options.known ?? (() => true);
  }

  #of(name: string): Figures | null {
    let f = this.#figures.get(name);
    if (!f && this.#known(name)) this.#figures.set(name, f = new Figures(this.#samples));
    return f ?? null;
  }

  /** Counts one connection of `name`, ended with `outcome` after `seconds`. */
  recordRequest(name: string, outcome: Outcome, seconds: number): void {
    const f = this.#of(name);
    if (!f) return;
    f.requests++;
    f.outcomes.set(outcome, (f.outcomes.get(outcome) ?? 0) + 1);
    if (outcome !== "idle") f.latencyMs.push(seconds * 1000);
  }

  /**
   * Counts what one container of `name` used. `served`: it was handed a connection (only those count per request).
   */
  recordUsage(name: string, usage: ContainerUsage, served: boolean): void {
    const labels = { function: name };
    this.#metrics?.containerCpuSeconds.inc(labels, usage.cpuSeconds);
    if (usage.memorySource !== null) this.#metrics?.containerPeakMemory.observe(labels, usage.peakMemoryBytes);
    this.#metrics?.containerOomKills.inc(labels, usage.oomKills);
    const f = this.#of(name);
    if (!f) return;
    f.oomKills += usage.oomKills;
    if (!served) return;
    const cpuMs = usage.cpuSeconds * 1000;
    f.cpuMs.push(cpuMs);
    f.cpuTally.add(cpuMs);
    if (usage.memorySource !== null) f.memory.add(usage.peakMemoryBytes);
  }

  /** `name`'s figures; all 0 or null when it has none yet. */
  snapshot(name: string): FunctionSnapshot {
    const f = this.#figures.get(name) ?? new Figures(1);
    return {
      requests: f.requests,
      outcomes: Object.fromEntries(f.outcomes),
      latency: { p50Ms: round3(f.latencyMs.percentile(50)), p99Ms: round3(f.latencyMs.percentile(99)) },
      cpuPerRequestMs: { mean: round3(f.cpuTally.mean), p99: round3(f.cpuMs.percentile(99)) },
      peakMemoryBytes: {
        mean: f.memory.mean === null ? null : Math.round(f.memory.mean),
        max: f.memory.count ? f.memory.max : null,
      },
      oomKills: f.oomKills,
      measured: f.cpuTally.count,
    };
  }

  /** Drops `name`'s figures (it was deleted). Its Prometheus series stay, as counters do. */
  forget(name: string): void {
    this.#figures.delete(name);
  }
}
