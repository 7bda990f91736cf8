/**
 * Process metrics in the Prometheus text exposition format: counters and gauges with labels, and histograms with
 * fixed buckets. Small on purpose: faasd exports a handful of series.
 *
 * @module
 */

type Labels = Record<string, string>;

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) =>
    `${k}="${v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n")}"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

abstract class Metric {
  constructor(readonly name: string, readonly help: string, readonly type: string) {}
  abstract lines(): string[];
  render(): string {
    return [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} ${this.type}`, ...this.lines()].join("\n");
  }
}

/** A monotonically increasing count per label set. */
export class Counter extends Metric {
  readonly #values = new Map<string, number>();
  constructor(name: string, help: string) {
    super(name, help, "counter");
  }
  inc(labels: Labels = {}, by = 1): void {
    const key = labelText(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }
  get(labels: Labels = {}): number {
    return this.#values.get(labelText(labels)) ?? 0;
  }
  lines(): string[] {
    return [...this.#values].map(([key, v]) => `${this.name}${key} ${v}`);
  }
}

/** A value that goes up and down per label set. */
export class Gauge extends Metric {
  readonly #values = new Map<string, number>();
  constructor(name: string, help: string) {
    super(name, help, "gauge");
  }
  add(labels: Labels, by: number): void {
    const key = labelText(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + by);
  }
  set(labels: Labels, value: number): void {
    this.#values.set(labelText(labels), value);
  }
  get(labels: Labels = {}): number {
    return this.#values.get(labelText(labels)) ?? 0;
  }
  lines(): string[] {
    return [...this.#values].map(([key, v]) => `${this.name}${key} ${v}`);
  }
}

/** Observations in cumulative buckets (seconds, typically). */
export class Histogram extends Metric {
  readonly #series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(name: string, help: string, readonly buckets: readonly number[]) {
    super(name, help, "histogram");
  }
  observe(labels: Labels, value: number): void {
    const key = labelText(labels);
    let s = this.#series.get(key);
    if (!s) this.#series.set(key, s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 });
    this.buckets.forEach((b, i) => {
      if (value <= b) s.counts[i]!++;
    });
    s.sum += value;
    s.count++;
  }
  lines(): string[] {
    const out: string[] = [];
    for (const { labels, counts, sum, count } of this.#series.values()) {
      this.buckets.forEach((b, i) =>
        out.push(`${this.name}_bucket${labelText({ ...labels, le: String(b) })} ${counts[i]}`)
      );
      out.push(`${this.name}_bucket${labelText({ ...labels, le: "+Inf" })} ${count}`);
      out.push(`${this.name}_sum${labelText(labels)} ${sum}`);
      out.push(`${this.name}_count${labelText(labels)} ${count}`);
    }
    return out;
  }
}

const SECONDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** 1 MiB to 4 GiB, doubling. */
const BYTES = Array.from({ length: 13 }, (_, i) => 2 ** (20 + i));

/** The series faasd exports. */
export class Metrics {
  readonly requests = new Counter("faasd_requests_total", "Connections served, by function and outcome.");
  readonly inflight = new Gauge("faasd_requests_inflight", "Connections being served now, by function.");
  readonly requestSeconds = new Histogram(
    "faasd_request_duration_seconds",
    "From accept to the client socket closed.",
    SECONDS,
  );
  readonly containerStartSeconds = new Histogram(
    "faasd_container_ready_seconds",
    "From a container's start until it connected to /control.sock (ready).",
    SECONDS,
  );
  readonly starts = new Counter(
    "faasd_container_starts_total",
    "Container starts, by function and outcome (ok, error, exited, timeout before connecting).",
  );
  readonly lost = new Counter(
    "faasd_ready_lost_total",
    "Ready containers that exited or hung up before they got a connection (removed, never handed a client).",
  );
  readonly ready = new Gauge("faasd_ready_containers", "Ready containers waiting for a connection, by function.");
  readonly acquired = new Counter(
    "faasd_connections_acquired_total",
    "Connections that got a container, by function and from: pool (one was ready) or start (waited for one).",
  );
  readonly queueSeconds = new Histogram(
    "faasd_queue_wait_seconds",
    "Time a connection waited for a container after its first bytes.",
    [0.001, ...SECONDS],
  );
  readonly breakerOpen = new Gauge("faasd_breaker_open", "1 while a function's breaker is open (failing), else 0.");
  readonly deploys = new Counter("faasd_deploys_total", "Deploys, by outcome.");
  readonly functions = new Gauge("faasd_functions", "Deployed functions.");
  readonly containerCpuSeconds = new Counter(
    "faasd_container_cpu_seconds_total",
    "CPU time of request containers (runc's init included), by function; read from the cgroup at removal.",
  );
  readonly containerPeakMemory = new Histogram(
    "faasd_container_peak_memory_bytes",
    "The most memory a request container was charged at once, by function.",
    BYTES,
  );
  readonly containerOomKills = new Counter(
    "faasd_container_oom_kills_total",
    "Processes of request containers killed by the OOM killer, by function.",
  );

  /** The exposition text. */
  render(): string {
    return [
      this.requests,
      this.inflight,
      this.requestSeconds,
      this.containerStartSeconds,
      this.starts,
      this.lost,
      this.ready,
      this.acquired,
      this.queueSeconds,
      this.breakerOpen,
      this.deploys,
      this.functions,
      this.containerCpuSeconds,
      this.containerPeakMemory,
      this.containerOomKills,
    ].map((m) => m.render()).join("\n") + "\n";
  }
}
