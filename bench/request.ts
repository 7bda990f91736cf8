/**
 * Per-request benchmark: serving one HTTP request through faasd (a fresh container per connection) against the
 * baseline "start and reap one container with `ctr run --rm`", on the same private containerd, with the same image
 * (the test handler, `buildHandlerImage("hello")`), in the same run.
 *
 * faasd's side: a daemon process (`startDaemon`), the image deployed with `faas new --tar`, and each request a new
 * TCP connection (`Deno.connect`, `GET / HTTP/1.1` with `Connection: close`, read to EOF) to the function's loopback
 * IP; every answer must be `200` with body `hello from faasd\n` (failures are counted and printed). The baseline runs
 * `ctr run --rm IMAGE ID /handler exit`: the handler exits 3 at once without connecting anywhere (ctr returns that
 * code; 3 counts as success). That is the least a container per request can cost, and what faasd must beat.
 *
 * Measures (a) sequential latency p50/p99 over `--requests` requests, (b) sequential throughput, (c) throughput at
 * `--concurrency` for `--concurrency × 10` requests. Throughput clocks stop when faasd has also cleaned up every
 * container (its in-flight gauge is back to 0), since `ctr run --rm` includes its cleanup.
 *
 *     deno run -A bench/request.ts [--requests 50] [--concurrency 8]
 *
 * Prints a table with ratios faasd/ctr and writes bench/out/request.json.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startContainerd, testNamespace } from "../tests/harness/containerd.ts";
import { buildHandlerImage } from "../tests/harness/images.ts";
import { type Daemon, freePort, startDaemon } from "../tests/harness/platform.ts";
import { ctrRun, httpGet, percentile, run, type Sample } from "./common.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const EXPECTED_BODY = "hello from faasd\n";
/** Bound of each measured phase; a phase past it stops early and says so. */
const PHASE_BUDGET_MS = 120_000;
const WARMUP = 3;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    requests: { type: "string", default: "50" },
    concurrency: { type: "string", default: "8" },
    total: { type: "string" },
  },
});
const requests = Number(values.requests);
const concurrency = Number(values.concurrency);
const concurrentTotal = Number(values.total ?? concurrency * 10);
for (const [name, v] of [["requests", requests], ["concurrency", concurrency], ["total", concurrentTotal]] as const) {
  if (!Number.isInteger(v) || v < 1) throw new RangeError(`--${name} must be a positive integer, got ${v}`);
}

/** Reads a gauge/counter value of the daemon's /metrics. */
async function metric(daemon: Daemon, series: string): Promise<number> {
  const text = await (await fetch(`${daemon.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

/** Waits until faasd has removed every request container (in-flight gauge 0), bounded. */
async function settled(daemon: Daemon, fn: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (await metric(daemon, `faasd_requests_inflight{function="${fn}"}`) > 0) {
    if (Date.now() > deadline) throw new Error("faasd did not finish its requests within 30 s");
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Results of one measured phase. */
interface Phase {
  samples: Sample[];
  wallMs: number;
  /** True when the phase hit its time budget before doing every request. */
  cut: boolean;
}

/** Runs `task` `count` times with `workers` at once, within the phase budget; `after` runs inside the clock. */
async function phase(
  count: number,
  workers: number,
  task: () => Promise<Sample>,
  after: () => Promise<void> = () => Promise.resolve(),
): Promise<Phase> {
  const samples: Sample[] = [];
  let next = 0;
  const start = performance.now();
  const deadline = start + PHASE_BUDGET_MS;
  const worker = async () => {
    while (next < count && performance.now() < deadline) {
      next++;
      samples.push(await task());
    }
  };
  await Promise.all(Array.from({ length: workers }, worker));
  await after();
  return { samples, wallMs: performance.now() - start, cut: samples.length < count };
}

function failures(p: Phase): string[] {
  return p.samples.flatMap((s) => s.error ? [s.error] : []);
}

// ---------------------------------------------------------------------------------------------------------------

console.log("building the hello handler image with podman (cached after the first time)…");
const tarball = await buildHandlerImage("hello");
await using ctd = await startContainerd();
using probe = ctd.client("default");
const containerdVersion = (await probe.version()).version;
const port = freePort();
await using daemon = await startDaemon(ctd, { port });
const ip = (await run(Deno.execPath(), [
  "run",
  "-A",
  `${ROOT}cli.ts`,
  "--url",
  daemon.url,
  "new",
  "--tar",
  tarball,
  "--name",
  "hello",
])).trim();
if (!ip.startsWith("127.")) throw new Error(`faas new printed ${JSON.stringify(ip)}, not a loopback address`);

const ctrNamespace = testNamespace("faasd-bench-ctr");
await run("ctr", ["-a", ctd.socket, "-n", ctrNamespace, "images", "import", tarball]);
const image = (await run("ctr", ["-a", ctd.socket, "-n", ctrNamespace, "images", "ls", "-q"])).trim().split("\n")[0]!;

console.log(
  `containerd ${containerdVersion}; faasd serves ${ip}:${port}; baseline: ctr run --rm ${image} ID /handler exit\n` +
    `(the baseline is "start and reap one container with ctr", the cost faasd must beat per request)\n`,
);

// The function's /32 on lo outlives a stopped daemon: `faas delete` releases it, on every path.
await using _deployed = {
  [Symbol.asyncDispose]: async () => {
    await run(Deno.execPath(), ["run", "-A", `${ROOT}cli.ts`, "--url", daemon.url, "delete", "hello"]);
  },
};

const faasdRequest = () => httpGet(ip, port, EXPECTED_BODY);
const ctrRequest = () => ctrRun(ctd, ctrNamespace, image);
const settle = () => settled(daemon, "hello");

console.log(`warm-up: ${WARMUP} requests each`);
const warmup = [
  await phase(WARMUP, 1, faasdRequest, settle),
  await phase(WARMUP, 1, ctrRequest),
];

console.log(`sequential: ${requests} requests each`);
const seqFaasd = await phase(requests, 1, faasdRequest, settle);
const seqCtr = await phase(requests, 1, ctrRequest);
console.log(`concurrent: ${concurrentTotal} requests each, ${concurrency} at a time`);
const conFaasd = await phase(concurrentTotal, concurrency, faasdRequest, settle);
const conCtr = await phase(concurrentTotal, concurrency, ctrRequest);

const okCount = await metric(daemon, `faasd_requests_total{function="hello",outcome="ok"}`);
const sent = [warmup[0]!, seqFaasd, conFaasd].reduce((n, p) => n + p.samples.length, 0);

const ok = (p: Phase) => p.samples.filter((s) => !s.error);
const lat = (p: Phase, q: number) => percentile(ok(p).map((s) => s.ms), q);
const rps = (p: Phase) => ok(p).length / (p.wallMs / 1000);
const rows: [string, number, number, string][] = [
  ["sequential latency p50 (ms)", lat(seqFaasd, 50), lat(seqCtr, 50), "lower is better; goal ≤ 1.0, platform ≤ 0.6"],
  ["sequential latency p99 (ms)", lat(seqFaasd, 99), lat(seqCtr, 99), "lower is better"],
  ["sequential throughput (req/s)", rps(seqFaasd), rps(seqCtr), "higher is better"],
  [`concurrent(${concurrency}) throughput (req/s)`, rps(conFaasd), rps(conCtr), "higher is better"],
  [`concurrent(${concurrency}) latency p50 (ms)`, lat(conFaasd, 50), lat(conCtr, 50), "lower is better"],
];
const pad = (s: string, n: number) => s.padStart(n);
console.log(`\n${"".padEnd(34)}${pad("faasd", 10)}${pad("ctr run --rm", 14)}${pad("faasd/ctr", 11)}`);
for (const [name, f, c, note] of rows) {
  console.log(
    `${name.padEnd(34)}${pad(f.toFixed(1), 10)}${pad(c.toFixed(1), 14)}${pad((f / c).toFixed(2), 11)}  ${note}`,
  );
}

const phases = { seqFaasd, seqCtr, conFaasd, conCtr };
let failed = 0;
for (const [name, p] of Object.entries(phases)) {
  const f = failures(p);
  failed += f.length;
  if (f.length) {
    console.log(`\n${name}: ${f.length} failure(s) of ${p.samples.length}; first: ${f.slice(0, 5).join(" | ")}`);
  }
  if (p.cut) console.log(`${name}: stopped at the ${PHASE_BUDGET_MS / 1000} s budget after ${p.samples.length}`);
}
console.log(
  `\ncorrectness: ${failed} failure(s); faasd counted ${okCount} ok of ${sent} requests sent ` +
    `(every faasd answer checked: 200, body ${JSON.stringify(EXPECTED_BODY)})`,
);

await Deno.mkdir(new URL("./out", import.meta.url), { recursive: true });
const summary = (p: Phase) => ({
  count: p.samples.length,
  failures: failures(p),
  wallMs: p.wallMs,
  cut: p.cut,
  p50Ms: lat(p, 50),
  p99Ms: lat(p, 99),
  rps: rps(p),
  ms: p.samples.map((s) => s.ms),
});
await Deno.writeTextFile(
  new URL("./out/request.json", import.meta.url),
  JSON.stringify(
    {
      containerd: containerdVersion,
      baseline: "ctr run --rm IMAGE ID /handler exit (start and reap one container)",
      requests,
      concurrency,
      concurrentTotal,
      sequential: { faasd: summary(seqFaasd), ctr: summary(seqCtr) },
      concurrent: { faasd: summary(conFaasd), ctr: summary(conCtr) },
      ratios: Object.fromEntries(rows.map(([name, f, c]) => [name, f / c])),
      faasdOkCounted: okCount,
      faasdSent: sent,
    },
    null,
    2,
  ),
);
console.log("wrote bench/out/request.json");
if (failed) Deno.exitCode = 1;
