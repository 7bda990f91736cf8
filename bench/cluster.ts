/**
 * Many hosts: fresh containers per second through the router with one host and then two (every request a new
 * connection, so a new container), and the time from a deploy on host 1 to the function answering on every host.
 * All hosts share this machine's cores, so the two-host figure shows what spreading costs, not a speed-up.
 *
 * `deno run -A bench/cluster.ts [--seconds 20] [--concurrency 8]`
 *
 * @module
 */

import { parseArgs } from "node:util";
import { buildHandlerImage } from "../tests/harness/images.ts";
import { Cluster } from "../tests/harness/faasd_cluster.ts";
import { waitUntil } from "../tests/harness/wait.ts";
import { httpGet, percentile } from "./common.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { seconds: { type: "string", default: "20" }, concurrency: { type: "string", default: "8" } },
});
const seconds = Number(values.seconds);
const concurrency = Number(values.concurrency);
const BODY = "hello from faasd\n";

/** Requests at `concurrency` for `seconds` through the router; answers/s and latency percentiles. */
async function load(ip: string): Promise<{ perSecond: number; p50: number; p99: number; errors: number }> {
  const end = performance.now() + seconds * 1000;
  const times: number[] = [];
  let errors = 0;
  const start = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      const sample = await httpGet(ip, 80, BODY);
      if (sample.error) errors++;
      else times.push(sample.ms);
    }
  }));
  const elapsed = (performance.now() - start) / 1000;
  return { perSecond: times.length / elapsed, p50: percentile(times, 50), p99: percentile(times, 99), errors };
}

/** Deploys `name` on host 1 and times until every host answers it from inside its namespace. */
async function deployEverywhere(cluster: Cluster, hosts: number, name: string, tarball: string): Promise<number> {
  const start = performance.now();
  const res = await cluster.deploy(1, name, tarball);
  if (res.status !== 201) throw new Error(`deploy: ${res.status} ${await res.text()}`);
  const { ip } = await res.json();
  for (let i = 1; i <= hosts; i++) {
    if (!await waitUntil(() => cluster.answersOn(i, ip), 120_000)) throw new Error(`host ${i} never answered ${ip}`);
  }
  return performance.now() - start;
}

const tarball = await buildHandlerImage("hello");
const other = await buildHandlerImage("hello", { env: { VARIANT: "bench" } });
await using cluster = await Cluster.up(1);

const toOne = await deployEverywhere(cluster, 1, "hello", tarball);
const ip = (await cluster.list(1)).hello!.ip;
await load(ip); // warm-up: the pool sizes itself to the arrival rate
const one = await load(ip);

await cluster.sh("add");
if (!await waitUntil(async () => (await cluster.nextHops(ip)).length === 2, 120_000)) {
  throw new Error("host 2 was never announced");
}
await load(ip);
const two = await load(ip);
const toTwo = await deployEverywhere(cluster, 2, "other", other);

const rows = [
  ["fresh containers/s through the router", one.perSecond.toFixed(1), two.perSecond.toFixed(1)],
  ["p50 ms", one.p50.toFixed(1), two.p50.toFixed(1)],
  ["p99 ms", one.p99.toFixed(1), two.p99.toFixed(1)],
  ["errors", String(one.errors), String(two.errors)],
  ["deploy on host 1 → answering on every host (ms)", toOne.toFixed(0), toTwo.toFixed(0)],
];
console.log(`concurrency ${concurrency}, ${seconds} s per figure; both hosts share this machine's cores`);
console.log("| measure | 1 host | 2 hosts |\n| --- | --- | --- |");
for (const row of rows) console.log(`| ${row.join(" | ")} |`);
console.log(`2 hosts / 1 host, containers/s: ${(two.perSecond / one.perSecond).toFixed(2)}`);
await Deno.mkdir(new URL("out", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  new URL("out/cluster.json", import.meta.url),
  JSON.stringify({ seconds, concurrency, one, two, deployToAllMs: { one: toOne, two: toTwo } }, null, 2),
);
