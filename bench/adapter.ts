/**
 * Adapter mode, measured against baselines in the same run (private containerd, a faasd daemon, loopback only):
 *
 * 1. Pooled latency: sequential requests to a plain HTTP server image run through faasd's adapter (the test
 *    handler's `server` mode, `http_port=8080`, min_ready 2) against the same daemon's contract handler (`hello`
 *    mode, min_ready 2), interleaved; each request waits, untimed, until both pools are full again. The adapter adds
 *    a connection to the server inside the container and a relay; the ratio says what that costs. The same `server`
 *    binary on the host (fork per connection) is the floor.
 * 2. Relay throughput: a 100 MB `GET /big/N` through the adapter against the same `server` binary run on the host
 *    (127.0.0.1), interleaved, `--runs` times each; curl is the client. Reported end to end and for the body alone
 *    (from the first byte on), since the pooled request's handoff is in the former; under the default
 *    `--cpu-limit 1` (the server and the adapter share one CPU, the host server has no limit) and without a limit.
 *
 *     deno run -A bench/adapter.ts [--requests 100] [--runs 5] [--size 104857600]
 *
 * Prints the figures with ratios and writes bench/out/adapter.json. Asserts nothing about time.
 *
 * @module
 */

import { untilListening } from "../tests/harness/wait.ts";
import { parseArgs } from "node:util";
import { startContainerd } from "../tests/harness/containerd.ts";
import { buildHandlerImage, compileHandler } from "../tests/harness/images.ts";
import { type Daemon, freePort, startDaemon } from "../tests/harness/platform.ts";
import { deploy, httpGet, percentile, type Sample } from "./common.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    requests: { type: "string", default: "100" },
    runs: { type: "string", default: "5" },
    size: { type: "string", default: String(100 * 1024 * 1024) },
  },
});
const requests = Number(values.requests);
const runs = Number(values.runs);
const size = Number(values.size);
const MB = 1e6;
const SERVER_BODY = "hello from a server\n";
const HELLO_BODY = "hello from faasd\n";

const stats = (xs: Sample[]) => {
  const ok = xs.filter((s) => !s.error).map((s) => s.ms);
  const errors = xs.flatMap((s) => s.error ? [s.error] : []);
  return { n: xs.length, ok: ok.length, p50: percentile(ok, 50), p99: percentile(ok, 99), firstError: errors[0] };
};

async function ready(daemon: Daemon, name: string): Promise<number> {
  return (await (await fetch(`${daemon.url}/api/list`)).json())[name]!.ready;
}

async function untilReady(daemon: Daemon, name: string, n: number, ms = 120_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (await ready(daemon, name) < n) {
    if (Date.now() > deadline) throw new Error(`${name}: fewer than ${n} ready containers after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** One download with curl to /dev/null: bytes, seconds in all, and seconds from the first byte on. */
async function download(url: string): Promise<{ bytes: number; total: number; body: number; error: string | null }> {
  const out = await new Deno.Command("curl", {
    args: [
      "-sS",
      "-m",
      "120",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code} %{size_download} %{time_total} %{time_starttransfer}",
      url,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const [status, bytes, total, first] = new TextDecoder().decode(out.stdout).split(" ").map(Number);
  const error = out.code !== 0 || status !== 200 || bytes !== size
    ? `curl exit ${out.code}, status ${status}, ${bytes} bytes: ${new TextDecoder().decode(out.stderr).trim()}`
    : null;
  return { bytes: bytes!, total: total!, body: total! - first!, error };
}

/** The `server` binary on the host, on 127.0.0.1:port, until stopped. */
async function hostServer(binary: string): Promise<{ port: number; stop: () => Promise<void> }> {
  const port = freePort();
  const child = new Deno.Command(binary, {
    args: ["server", String(port)],
    env: { FAASD_SERVER_ADDR: "127.0.0.1" },
    stdin: "null",
    stdout: "null",
  }).spawn();
  await untilListening(port);
  return {
    port,
    stop: async () => {
      child.kill("SIGTERM"); // its connection children exit with their connections; none is open now
      await child.status;
    },
  };
}

const median = (xs: number[]) => percentile(xs, 50);

console.log("building images with podman (cached after the first time)…");
const serverImage = await buildHandlerImage("server", { args: ["8080"] });
const helloImage = await buildHandlerImage("hello");
const binary = await compileHandler();
await using ctd = await startContainerd();
const port = freePort();
const out: Record<string, unknown> = {};

/** Waits until `names` each have `n` ready containers, then a little more for the used one's removal to end. */
async function settled(daemon: Daemon, names: string[], n = 2): Promise<void> {
  for (const name of names) await untilReady(daemon, name, n);
  await new Promise((r) => setTimeout(r, 150));
}

const host = await hostServer(binary);
try {
  // 1. Pooled latency: adapter mode against the contract handler, interleaved, alternating which goes first, each
  // sent when both pools are full and idle (a replacement starting meanwhile would slow whichever came second).
  {
    await using daemon = await startDaemon(ctd, { port, flags: ["--pool-idle", "10m"] });
    const webIp = await deploy(daemon, "web", serverImage, "http_port=8080&min_ready=2&max_ready=2");
    const helloIp = await deploy(daemon, "hello", helloImage, "min_ready=2&max_ready=2");
    const samples: Record<string, Sample[]> = { adapter: [], contract: [], "host server": [] };
    const measure: Record<string, () => Promise<Sample>> = {
      adapter: () => httpGet(webIp, port, SERVER_BODY),
      contract: () => httpGet(helloIp, port, HELLO_BODY),
      "host server": () => httpGet("127.0.0.1", host.port, SERVER_BODY),
    };
    for (let i = 0; i < requests + 5; i++) {
      const order = i % 2 ? ["adapter", "contract", "host server"] : ["contract", "adapter", "host server"];
      for (const kind of order) {
        await settled(daemon, ["web", "hello"]);
        const sample = await measure[kind]!();
        if (i >= 5) samples[kind]!.push(sample);
      }
    }
    const s = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, stats(v)]));
    console.log(`\n1. sequential pooled latency, ${requests} requests each (ms)`);
    for (const [k, v] of Object.entries(s)) {
      console.log(
        `   ${k.padEnd(12)} p50 ${v.p50.toFixed(2).padStart(7)}  p99 ${
          v.p99.toFixed(2).padStart(7)
        }  ok ${v.ok}/${v.n}` +
          (v.firstError ? `  first error: ${v.firstError}` : ""),
      );
    }
    const ratio = { p50: s.adapter!.p50 / s.contract!.p50, p99: s.adapter!.p99 / s.contract!.p99 };
    console.log(`   adapter / contract: p50 ${ratio.p50.toFixed(2)}, p99 ${ratio.p99.toFixed(2)}`);
    out.latency = { ...s, ratio };
    for (const name of ["web", "hello"]) {
      await fetch(`${daemon.url}/api/functions/${name}`, { method: "DELETE" }).then((r) => r.body?.cancel());
    }
  }

  // 2. Relay throughput: /big through the adapter against the same binary on the host, interleaved; under the
  // default per-container CPU limit (1 CPU for the server and the adapter together) and without one.
  const throughput: Record<string, unknown> = {};
  console.log(`\n2. relay throughput, ${(size / 2 ** 20).toFixed(0)} MiB GET /big, median of ${runs} (MB/s)`);
  const variants: [string, string[]][] = [["cpu-limit 1", []], ["no cpu limit", [
    "--cpu-limit",
    "0",
    "--total-cpu",
    "0",
  ]]];
  for (const [variant, flags] of variants) {
    await using daemon = await startDaemon(ctd, { port, flags: ["--pool-idle", "10m", ...flags] });
    const webIp = await deploy(daemon, "web", serverImage, "http_port=8080&min_ready=1&max_ready=1");
    const through: Awaited<ReturnType<typeof download>>[] = [];
    const direct: Awaited<ReturnType<typeof download>>[] = [];
    for (let i = 0; i < runs + 1; i++) {
      await settled(daemon, ["web"], 1);
      const a = await download(`http://${webIp}:${port}/big/${size}`);
      const d = await download(`http://127.0.0.1:${host.port}/big/${size}`);
      if (a.error) throw new Error(`through the adapter: ${a.error}`);
      if (d.error) throw new Error(`direct: ${d.error}`);
      if (i > 0) through.push(a), direct.push(d); // the first of each warms caches up
    }
    const rate = (xs: typeof through, key: "total" | "body") => median(xs.map((x) => size / MB / x[key]));
    const t = {
      adapter: { total: rate(through, "total"), body: rate(through, "body") },
      direct: { total: rate(direct, "total"), body: rate(direct, "body") },
    };
    const ratio = { total: t.adapter.total / t.direct.total, body: t.adapter.body / t.direct.body };
    console.log(
      `   ${variant.padEnd(13)} adapter ${t.adapter.total.toFixed(0).padStart(5)} (body ${
        t.adapter.body.toFixed(0).padStart(5)
      })  host direct ${t.direct.total.toFixed(0).padStart(5)} (body ${t.direct.body.toFixed(0).padStart(5)})  ` +
        `adapter / direct ${ratio.total.toFixed(2)} (body ${ratio.body.toFixed(2)})`,
    );
    throughput[variant] = { mbPerSecond: t, ratio };
    await fetch(`${daemon.url}/api/functions/web`, { method: "DELETE" }).then((r) => r.body?.cancel());
  }
  out.throughput = { sizeBytes: size, runs, ...throughput };
} finally {
  await host.stop();
}

await Deno.mkdir(new URL("./out", import.meta.url), { recursive: true });
await Deno.writeTextFile(new URL("./out/adapter.json", import.meta.url), JSON.stringify(out, null, 2));
console.log("\nwrote bench/out/adapter.json");
