/**
 * FunctionStats: outcomes, latency percentiles over a bounded window, usage per served request, OOM kills of every
 * container, forgetting, unknown names, and the Prometheus series it feeds.
 */

import { assertEquals, assertStringIncludes, assertThrows } from "../tests/assert.ts";
import { Counter, Histogram } from "./metrics.ts";
import { FunctionStats, SAMPLES } from "./stats.ts";
import type { ContainerUsage } from "./usage.ts";

const MiB = 1024 ** 2;

function usage(cpuMs: number, peakMiB: number, oomKills = 0): ContainerUsage {
  return {
    cpuSeconds: cpuMs / 1000,
    peakMemoryBytes: peakMiB * MiB,
    oomKilled: oomKills > 0,
    oomKills,
    memorySource: "memory.max_usage_in_bytes",
  };
}

Deno.test("a function with no figures yet: zeros and nulls", () => {
  assertEquals(new FunctionStats().snapshot("hello"), {
    requests: 0,
    outcomes: {},
    latency: { p50Ms: null, p99Ms: null },
    cpuPerRequestMs: { mean: null, p99: null },
    peakMemoryBytes: { mean: null, max: null },
    oomKills: 0,
    measured: 0,
  });
});

Deno.test("requests by outcome; latency percentiles leave idle connections out", () => {
  const stats = new FunctionStats();
  for (let i = 1; i <= 100; i++) stats.recordRequest("hello", "ok", i / 1000);
  stats.recordRequest("hello", "empty", 0.5);
  stats.recordRequest("hello", "idle", 10);
  stats.recordRequest("other", "ok", 1);
  const s = stats.snapshot("hello");
  assertEquals(s.requests, 102);
  assertEquals(s.outcomes, { ok: 100, empty: 1, idle: 1 });
  // 101 samples: 1..100 ms and 500 ms; nearest rank.
  assertEquals(s.latency, { p50Ms: 51, p99Ms: 100 });
  assertEquals(stats.snapshot("other").requests, 1);
});

Deno.test("percentiles cover the last SAMPLES samples; counts cover all", () => {
  const stats = new FunctionStats({ samples: 4 });
  for (const ms of [1000, 1000, 1000, 1, 2, 3, 4]) stats.recordRequest("f", "ok", ms / 1000);
  const s = stats.snapshot("f");
  assertEquals(s.requests, 7);
  assertEquals(s.latency, { p50Ms: 2, p99Ms: 4 });
  assertEquals(SAMPLES, 1024);
  assertThrows(() => new FunctionStats({ samples: 0 }), RangeError);
});

Deno.test("usage per served request: CPU mean and p99, peak memory mean and max", () => {
  const stats = new FunctionStats();
  stats.recordUsage("f", usage(10, 32), true);
  stats.recordUsage("f", usage(20, 40), true);
  stats.recordUsage("f", usage(30, 36), true);
  // A ready container drained without a connection: not a request.
  stats.recordUsage("f", usage(500, 2), false);
  const s = stats.snapshot("f");
  assertEquals(s.measured, 3);
  assertEquals(s.cpuPerRequestMs, { mean: 20, p99: 30 });
  assertEquals(s.peakMemoryBytes, { mean: 36 * MiB, max: 40 * MiB });
  assertEquals(s.oomKills, 0);
});

Deno.test("OOM kills count for every container, served or not", () => {
  const stats = new FunctionStats();
  stats.recordUsage("hog", usage(5, 16, 1), true);
  stats.recordUsage("hog", usage(5, 16, 2), false);
  assertEquals(stats.snapshot("hog").oomKills, 3);
  assertEquals(stats.snapshot("hog").measured, 1);
});

Deno.test("a peak without a memory file is not counted as 0 bytes", () => {
  const stats = new FunctionStats();
  stats.recordUsage("f", { ...usage(1, 0), memorySource: null }, true);
  assertEquals(stats.snapshot("f").peakMemoryBytes, { mean: null, max: null });
  assertEquals(stats.snapshot("f").cpuPerRequestMs.mean, 1);
});

Deno.test("forget drops a function's figures; names not known are never recorded", () => {
  const deployed = new Set(["a"]);
  const stats = new FunctionStats({ known: (name) => deployed.has(name) });
  stats.recordRequest("a", "ok", 0.1);
  stats.recordRequest("gone", "ok", 0.1);
  stats.recordUsage("gone", usage(1, 1, 1), true);
  assertEquals(stats.snapshot("a").requests, 1);
  assertEquals(stats.snapshot("gone").requests, 0);
  assertEquals(stats.snapshot("gone").oomKills, 0);
  deployed.delete("a");
  stats.forget("a");
  // Its last container, removed after the delete, does not bring it back.
  stats.recordUsage("a", usage(1, 1), true);
  assertEquals(stats.snapshot("a").measured, 0);
});

Deno.test("container usage goes to the Prometheus series, served or not", () => {
  const metrics = {
    containerCpuSeconds: new Counter("faasd_container_cpu_seconds_total", "cpu"),
    containerPeakMemory: new Histogram("faasd_container_peak_memory_bytes", "peak", [16 * MiB, 64 * MiB]),
    containerOomKills: new Counter("faasd_container_oom_kills_total", "oom"),
  };
  const stats = new FunctionStats({ metrics, known: () => false });
  stats.recordUsage("f", usage(250, 32), true);
  stats.recordUsage("f", usage(250, 8, 1), false);
  stats.recordUsage("f", { ...usage(500, 0), memorySource: null }, true);
  assertEquals(metrics.containerCpuSeconds.get({ function: "f" }), 1);
  assertEquals(metrics.containerOomKills.get({ function: "f" }), 1);
  const text = metrics.containerPeakMemory.render();
  assertStringIncludes(text, `faasd_container_peak_memory_bytes_bucket{function="f",le="${16 * MiB}"} 1`);
  assertStringIncludes(text, `faasd_container_peak_memory_bytes_bucket{function="f",le="${64 * MiB}"} 2`);
  assertStringIncludes(text, 'faasd_container_peak_memory_bytes_count{function="f"} 2');
});
