/**
 * Resource use per function end to end (real containerd, podman images, loopback traffic): `GET /api/stats/NAME`
 * counts a function's requests and what their containers used (CPU, peak memory from the cgroup), counts an OOM
 * kill, feeds the Prometheus series, answers 404 for an unknown function, and forgets a deleted one.
 */

import type { FunctionSnapshot } from "../lib/stats.ts";
import { waitUntil } from "./harness/wait.ts";
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildHandlerImage, type HandlerImageOptions } from "./harness/images.ts";
import { leftovers, NONE, startTestPlatform, type TestPlatform } from "./harness/platform.ts";
import { curl } from "./curl.ts";

const MiB = 1024 ** 2;

async function deploy(p: TestPlatform, name: string, mode: string, opts: HandlerImageOptions = {}, query = "") {
  const tarball = await buildHandlerImage(mode, opts);
  const res = await p.request("POST", `/api/new${query}`, {
    headers: { "x-image-name": name },
    body: (await Deno.open(tarball)).readable,
  });
  const body = await res.json();
  assertEquals(res.status, 201, JSON.stringify(body));
  return `http://${body.ip}:${p.port}/`;
}

/** The answer of `GET /api/stats/NAME`. */
type Stats = FunctionSnapshot & { name: string };

async function stats(p: TestPlatform, name: string): Promise<Stats> {
  const res = await p.request("GET", `/api/stats/${name}`);
  assertEquals(res.status, 200);
  return await res.json();
}

Deno.test("stats: requests, latency, CPU and peak memory per request, and an OOM kill", async (t) => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);

  await t.step("an unknown function is a 404", async () => {
    const res = await p.request("GET", "/api/stats/nobody");
    assertEquals(res.status, 404);
    assertStringIncludes((await res.json()).error, "nobody");
  });

  await t.step("3 requests allocating 32 MiB each: 3 ok, CPU > 0, peak memory ≥ 32 MiB", async () => {
    const url = await deploy(p, "alloc", "alloc", { args: ["32"] });
    assertEquals(await stats(p, "alloc"), {
      name: "alloc",
      requests: 0,
      outcomes: {},
      latency: { p50Ms: null, p99Ms: null },
      cpuPerRequestMs: { mean: null, p99: null },
      peakMemoryBytes: { mean: null, max: null },
      oomKills: 0,
      measured: 0,
    });
    for (let i = 0; i < 3; i++) {
      const r = await curl(url);
      assertEquals([r.exit, r.status, r.body], [0, 200, "allocated 32 MiB\n"]);
    }
    // A container's usage is read when it is removed, just after its request was answered.
    assert(await waitUntil(async () => (await stats(p, "alloc")).measured === 3), "3 containers measured");
    const s = await stats(p, "alloc");
    assertEquals([s.requests, s.outcomes], [3, { ok: 3 }]);
    assert(s.latency.p50Ms! > 0 && s.latency.p99Ms! >= s.latency.p50Ms!, JSON.stringify(s.latency));
    assert(s.cpuPerRequestMs.mean! > 0 && s.cpuPerRequestMs.p99! >= s.cpuPerRequestMs.mean! / 3, JSON.stringify(s));
    assert(s.peakMemoryBytes.mean! >= 32 * MiB, `mean peak ${s.peakMemoryBytes.mean}`);
    assert(s.peakMemoryBytes.max! >= s.peakMemoryBytes.mean!, JSON.stringify(s.peakMemoryBytes));
    assertEquals(s.oomKills, 0);
  });

  await t.step("64 MiB under a 16 MiB limit: killed, answered 502, counted as an OOM kill", async () => {
    const url = await deploy(p, "hog", "alloc", { args: ["64"] }, "?memory=16MiB");
    const r = await curl(url);
    assertEquals([r.exit, r.status], [0, 502]);
    assert(await waitUntil(async () => (await stats(p, "hog")).oomKills >= 1), "an OOM kill counted");
    const s = await stats(p, "hog");
    assertEquals([s.requests, s.outcomes], [1, { empty: 1 }]);
    assert(s.peakMemoryBytes.max! <= 16 * MiB, `peak ${s.peakMemoryBytes.max} above the limit`);
  });

  await t.step("the Prometheus series (every container counts, ready ones that never served too)", async () => {
    const metrics = await (await p.request("GET", "/metrics")).text();
    const value = (series: string) => {
      const line = metrics.split("\n").find((l) => l.startsWith(`${series} `));
      assert(line, `no ${series} in /metrics`);
      return Number(line.slice(series.length + 1));
    };
    assert(value('faasd_container_cpu_seconds_total{function="alloc"}') > 0, "cpu seconds");
    const bucket = (le: number) => value(`faasd_container_peak_memory_bytes_bucket{function="alloc",le="${le}"}`);
    assert(bucket(64 * MiB) - bucket(32 * MiB) >= 3, "3 peaks between 32 and 64 MiB");
    assert(value('faasd_container_oom_kills_total{function="hog"}') >= 1, "an OOM kill");
    assertEquals(value('faasd_container_oom_kills_total{function="alloc"}'), 0);
  });

  await t.step("a deleted function is forgotten: a redeploy starts from zero", async () => {
    assertEquals((await p.request("DELETE", "/api/functions/alloc")).status, 200);
    assertEquals((await p.request("GET", "/api/stats/alloc")).status, 404);
    await deploy(p, "alloc", "alloc", { args: ["32"] });
    const s = await stats(p, "alloc");
    assertEquals([s.requests, s.measured], [0, 0]);
  });

  await t.step("nothing is left", async () => {
    assert(await waitUntil(() => p.platform.server.outstanding === 0), "all containers removed");
    assertEquals(await leftovers(p.client), NONE);
  });
});
