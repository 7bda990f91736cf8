/**
 * Image import benchmark: faasd's streaming `importImage()` against `ctr images import`, both into the same private
 * containerd, on a podman-built docker-archive with one incompressible random layer (~100 MiB by default). Each run
 * imports into a fresh namespace and is cleaned (image removed with a synchronous GC) untimed, so no run finds
 * another's blobs or snapshots. Then faasd's peak RSS while importing a ~1 GiB image.
 *
 * faasd's side calls `importImage()` directly (the control API adds only the request body plumbing around it).
 *
 *     deno run -A bench/import.ts [--runs 5] [--size 100] [--big 1024]   (--big 0 skips the RSS run)
 *
 * Prints medians, the ratio faasd/ctr, and writes bench/out/import.json.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startContainerd, testNamespace } from "../tests/harness/containerd.ts";
import { buildPaddedImage } from "../tests/harness/images.ts";
import { importImage, removeImage } from "../lib/images/import.ts";
import type { Containerd } from "../lib/containerd/client.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "5" },
    size: { type: "string", default: "100" },
    big: { type: "string", default: "1024" },
  },
});
const runs = Number(values.runs);
const sizeMiB = Number(values.size);
const bigMiB = Number(values.big);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function vmHwmMiB(): number {
  const line = Deno.readTextFileSync("/proc/self/status").split("\n").find((l) => l.startsWith("VmHWM:"));
  return Number(line?.match(/\d+/)?.[0] ?? 0) / 1024;
}

async function ctr(socket: string, namespace: string, ...args: string[]): Promise<void> {
  const out = await new Deno.Command("ctr", { args: ["-a", socket, "-n", namespace, ...args] }).output();
  if (!out.success) throw new Error(`ctr ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
}

/** Removes every image of the namespace with a synchronous GC, and checks nothing stayed. */
async function clean(client: Containerd): Promise<void> {
  for (const image of await client.listImages()) await removeImage(client, image.name);
  const left = (await client.listContent()).length + (await client.listSnapshots("overlayfs")).length;
  if (left) throw new Error(`namespace ${client.namespace} kept ${left} blobs/snapshots after cleaning`);
}

console.log(`building a ${sizeMiB} MiB image with podman (cached after the first time)…`);
const tarball = await buildPaddedImage(sizeMiB);
const tarballBytes = (await Deno.stat(tarball)).size;
await using ctd = await startContainerd();
console.log(`containerd ${(await (async () => {
  using c = ctd.client("default");
  return (await c.version()).version;
})())}, tarball ${(tarballBytes / 2 ** 20).toFixed(1)} MiB, ${runs} runs each\n`);

const faasdMs: number[] = [];
const ctrMs: number[] = [];
for (let run = 0; run < runs; run++) {
  // Alternate which goes first, so that drift (page cache, disk) does not favour one side.
  const order = run % 2 === 0 ? ["faasd", "ctr"] : ["ctr", "faasd"];
  for (const side of order) {
    using client = ctd.client(testNamespace("faasd-bench"));
    const start = performance.now();
    if (side === "faasd") {
      using file = await Deno.open(tarball);
      await importImage(client, file.readable, { name: "bench", maxBytes: 8 * 2 ** 30 });
      faasdMs.push(performance.now() - start);
    } else {
      await ctr(ctd.socket, client.namespace, "images", "import", tarball);
      ctrMs.push(performance.now() - start);
    }
    await clean(client);
  }
  console.log(`run ${run + 1}: faasd ${faasdMs.at(-1)!.toFixed(0)} ms, ctr ${ctrMs.at(-1)!.toFixed(0)} ms`);
}

const mbps = (ms: number) => (tarballBytes / 2 ** 20 / (ms / 1000)).toFixed(1);
const faasdMedian = median(faasdMs);
const ctrMedian = median(ctrMs);
console.log(`\nmedian faasd importImage: ${faasdMedian.toFixed(0)} ms (${mbps(faasdMedian)} MiB/s)`);
console.log(`median ctr images import: ${ctrMedian.toFixed(0)} ms (${mbps(ctrMedian)} MiB/s)`);
console.log(`ratio faasd/ctr: ${(faasdMedian / ctrMedian).toFixed(2)}`);

let big: { tarballMiB: number; ms: number; peakRssMiB: number; vmHwmMiB: number; rssBeforeMiB: number } | null = null;
if (bigMiB > 0) {
  console.log(`\nbuilding a ${bigMiB} MiB image…`);
  const bigTarball = await buildPaddedImage(bigMiB);
  const bigBytes = (await Deno.stat(bigTarball)).size;
  using client = ctd.client(testNamespace("faasd-bench"));
  const rssBefore = Deno.memoryUsage().rss;
  let peak = rssBefore;
  const sampler = setInterval(() => peak = Math.max(peak, Deno.memoryUsage().rss), 20);
  const start = performance.now();
  try {
    using file = await Deno.open(bigTarball);
    await importImage(client, file.readable, { name: "bench-big", maxBytes: 8 * 2 ** 30 });
  } finally {
    clearInterval(sampler);
  }
  const ms = performance.now() - start;
  peak = Math.max(peak, Deno.memoryUsage().rss);
  await clean(client);
  big = {
    tarballMiB: bigBytes / 2 ** 20,
    ms,
    peakRssMiB: peak / 2 ** 20,
    vmHwmMiB: vmHwmMiB(),
    rssBeforeMiB: rssBefore / 2 ** 20,
  };
  console.log(
    `${big.tarballMiB.toFixed(0)} MiB import: ${ms.toFixed(0)} ms; faasd RSS before ${
      big.rssBeforeMiB.toFixed(0)
    } MiB, peak during import ${big.peakRssMiB.toFixed(0)} MiB (sampled every 20 ms), VmHWM ${
      big.vmHwmMiB.toFixed(0)
    } MiB`,
  );
}

await Deno.mkdir(new URL("./out", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  new URL("./out/import.json", import.meta.url),
  JSON.stringify(
    {
      tarballMiB: tarballBytes / 2 ** 20,
      runs,
      faasdMs,
      ctrMs,
      faasdMedianMs: faasdMedian,
      ctrMedianMs: ctrMedian,
      ratio: faasdMedian / ctrMedian,
      big,
    },
    null,
    2,
  ),
);
