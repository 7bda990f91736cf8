/**
 * What tracing costs: pooled sequential requests against two daemons that differ only in Deno's OpenTelemetry (off,
 * and `OTEL_DENO=true` exporting OTLP/JSON to a sink in this process), interleaved request by request; each request
 * waits, untimed, until its function has a ready container. Also the JSON log line's cost is in both (it is always on).
 *
 *     deno run -A bench/trace.ts [--requests 100]
 *
 * Prints p50/p99 and the ratio, writes bench/out/trace.json. Asserts nothing about time.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startContainerd } from "../tests/harness/containerd.ts";
import { buildHandlerImage } from "../tests/harness/images.ts";
import { type Daemon, freePort, startDaemon } from "../tests/harness/platform.ts";
import { deploy, httpGet, percentile, type Sample } from "./common.ts";

const { values } = parseArgs({ args: Deno.args, options: { requests: { type: "string", default: "100" } } });
const requests = Number(values.requests);
const EXPECTED = "hello from faasd\n";

let received = 0;
const sinkPort = freePort();
const sink = Deno.serve({ hostname: "127.0.0.1", port: sinkPort, onListen: () => {} }, async (req) => {
  await req.arrayBuffer();
  received++;
  return Response.json({});
});

async function ready(daemon: Daemon): Promise<void> {
  for (let i = 0; i < 2000; i++) {
    const list = await (await fetch(`${daemon.url}/api/list`)).json();
    if (list.hello?.ready >= 1) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error("no container became ready");
}

console.log("building the image (cached after the first time)…");
const tarball = await buildHandlerImage("hello");
await using ctd = await startContainerd();
const flags = ["--pool-idle", "10m"];
await using off = await startDaemon(ctd, { port: freePort(), flags });
await using on = await startDaemon(ctd, {
  port: freePort(),
  flags,
  env: {
    OTEL_DENO: "true",
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${sinkPort}`,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
  },
});
const ips = {
  off: await deploy(off, "hello", tarball, "min_ready=1&max_ready=1"),
  on: await deploy(on, "hello", tarball, "min_ready=1&max_ready=1"),
};
const samples: Record<"off" | "on", Sample[]> = { off: [], on: [] };
const daemons: Record<"off" | "on", Daemon> = { off, on };
for (let i = 0; i < requests + 5; i++) {
  const order: ("off" | "on")[] = i % 2 ? ["on", "off"] : ["off", "on"];
  for (const key of order) {
    await ready(daemons[key]);
    const sample = await httpGet(ips[key], daemons[key].port, EXPECTED);
    if (i >= 5) samples[key].push(sample);
  }
}
const stats = (xs: Sample[]) => {
  const ok = xs.filter((s) => !s.error).map((s) => s.ms);
  return { n: xs.length, ok: ok.length, p50: percentile(ok, 50), p99: percentile(ok, 99) };
};
const s = { off: stats(samples.off), on: stats(samples.on) };
console.log(`\npooled sequential latency, ${requests} requests each (ms)`);
for (const [k, v] of Object.entries(s)) {
  console.log(
    `  tracing ${k.padEnd(4)} p50 ${v.p50.toFixed(2).padStart(7)}  p99 ${
      v.p99.toFixed(2).padStart(7)
    }  ok ${v.ok}/${v.n}`,
  );
}
console.log(`  on / off: p50 ${(s.on.p50 / s.off.p50).toFixed(2)}, p99 ${(s.on.p99 / s.off.p99).toFixed(2)}`);
console.log(`  OTLP exports received so far: ${received}`);
await sink.shutdown();
await Deno.mkdir(new URL("./out", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  new URL("./out/trace.json", import.meta.url),
  JSON.stringify({ ...s, exports: received }, null, 2),
);
