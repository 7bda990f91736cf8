/**
 * Image import benchmark, through the real user path: a faasd daemon process and the CLI
 * (`deno run -A cli.ts --url URL new --tar FILE --name NAME`, a subprocess timed end to end) against
 * `ctr images import FILE`, both into the same private containerd, on a podman-built docker-archive with one
 * incompressible random layer (~100 MiB by default). A third side uploads the same file to the same daemon with
 * `curl -T` (streamed, with a Content-Length), which tells the daemon's cost from the CLI's. Every side stores the
 * blobs and unpacks the layers into the overlayfs snapshotter (`ctr images import` unpacks unless `--no-unpack`), so
 * like is compared with like. Runs are interleaved, rotating which side goes first; after each import the side is
 * cleaned untimed (`faas delete` / image removal with a synchronous GC) and checked empty, so no run finds another's
 * blobs or snapshots.
 *
 * Then the daemon's peak RSS (VmHWM of a freshly started daemon) while importing a ~1 GiB image, once through
 * `faas new --tar` and once through `curl -T`, each stopped after `--big-timeout` seconds if unfinished.
 *
 *     deno run -A bench/import.ts [--runs 5] [--size 100] [--big 1024] [--big-timeout 45]   (--big 0 skips it)
 *
 * Prints medians and the ratio faasd/ctr (goal ≤ 1.0), and writes bench/out/import.json.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { type ContainerdInstance, startContainerd, testNamespace } from "../tests/harness/containerd.ts";
import { buildPaddedImage } from "../tests/harness/images.ts";
import { type Daemon, freePort, startDaemon } from "../tests/harness/platform.ts";
import { removeImage } from "../lib/images/import.ts";
import type { Containerd } from "../lib/containerd/client.ts";

const ROOT = new URL("..", import.meta.url).pathname;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    runs: { type: "string", default: "5" },
    size: { type: "string", default: "100" },
    big: { type: "string", default: "1024" },
    "big-timeout": { type: "string", default: "45" },
  },
});
const runs = Number(values.runs);
const sizeMiB = Number(values.size);
const bigMiB = Number(values.big);
const bigTimeoutS = Number(values["big-timeout"]);
if (!Number.isInteger(runs) || runs < 1) throw new RangeError(`--runs must be a positive integer, got ${values.runs}`);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** A line of /proc/<pid>/status in MiB, e.g. `VmHWM` (peak resident set) or `VmRSS`. */
function procStatusMiB(pid: number, field: "VmHWM" | "VmRSS"): number {
  const line = Deno.readTextFileSync(`/proc/${pid}/status`).split("\n").find((l) => l.startsWith(`${field}:`));
  return Number(line?.match(/\d+/)?.[0] ?? 0) / 1024;
}

/** How a timed subprocess ended. */
interface Timed {
  ms: number;
  ok: boolean;
  timedOut: boolean;
  stderr: string;
}

/** Runs a command to completion (killed past `timeoutMs`), timing it end to end. */
async function timed(cmd: string, args: string[], timeoutMs = 600_000): Promise<Timed> {
  const start = performance.now();
  const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "piped" }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, timeoutMs);
  const [status, stderr] = await Promise.all([child.status, new Response(child.stderr).text()]);
  clearTimeout(timer);
  return { ms: performance.now() - start, ok: status.success, timedOut, stderr };
}

/** Runs a command to completion; throws with its stderr when it fails. */
async function run(cmd: string, args: string[]): Promise<number> {
  const t = await timed(cmd, args);
  if (!t.ok) throw new Error(`${cmd} ${args.join(" ")} failed${t.timedOut ? " (timed out)" : ""}: ${t.stderr}`);
  return t.ms;
}

/** The CLI as a user runs it: a fresh Deno process. */
function faasArgs(daemon: Daemon, ...args: string[]): string[] {
  return ["run", "-A", `${ROOT}cli.ts`, "--url", daemon.url, ...args];
}

function faas(daemon: Daemon, ...args: string[]): Promise<number> {
  return run(Deno.execPath(), faasArgs(daemon, ...args));
}

/** The same upload with curl: streamed from the file with a Content-Length (`-T`), no CLI in between. */
function curlArgs(daemon: Daemon, file: string, name: string): string[] {
  return ["-sSf", "-o", "/dev/null", "-X", "POST", "-H", `X-Image-Name: ${name}`, "-T", file, `${daemon.url}/api/new`];
}

function ctr(ctd: ContainerdInstance, namespace: string, ...args: string[]): Promise<number> {
  return run("ctr", ["-a", ctd.socket, "-n", namespace, ...args]);
}

/** Counts what a namespace holds: images, blobs, snapshots. */
async function holdings(client: Containerd): Promise<{ images: number; blobs: number; snapshots: number }> {
  return {
    images: (await client.listImages()).length,
    blobs: (await client.listContent()).length,
    snapshots: (await client.listSnapshots("overlayfs")).length,
  };
}

/** Checks a side imported and unpacked (some snapshot exists); untimed. */
async function assertUnpacked(client: Containerd, side: string): Promise<void> {
  const h = await holdings(client);
  if (!h.images || !h.snapshots) throw new Error(`${side} left ${JSON.stringify(h)} after importing: not unpacked?`);
}

/** Removes every image of the namespace with a synchronous GC. */
async function clean(client: Containerd): Promise<void> {
  for (const image of await client.listImages()) await removeImage(client, image.name);
}

/** Checks the namespace holds nothing, so that the next run starts from scratch. */
async function assertEmpty(client: Containerd): Promise<void> {
  const h = await holdings(client);
  if (h.images + h.blobs + h.snapshots) throw new Error(`namespace ${client.namespace} kept ${JSON.stringify(h)}`);
}

console.log(`building a ${sizeMiB} MiB image with podman (cached after the first time)…`);
const tarball = await buildPaddedImage(sizeMiB);
const tarballBytes = (await Deno.stat(tarball)).size;
await using ctd = await startContainerd();
using probe = ctd.client("default");
const containerdVersion = (await probe.version()).version;

// CLI start-up (a Deno process) plus one API call: the fixed part of every `faas` command, shown for context.
const cliOverheadMs: number[] = [];
const ctrNamespace = testNamespace("faasd-bench-ctr");
using ctrClient = ctd.client(ctrNamespace);
type Side = "faas" | "curl" | "ctr";
const SIDES: Side[] = ["faas", "curl", "ctr"];
const ms: Record<Side, number[]> = { faas: [], curl: [], ctr: [] };
{
  await using daemon = await startDaemon(ctd, { port: freePort() });
  using daemonClient = ctd.client(daemon.namespace);
  console.log(
    `containerd ${containerdVersion}, tarball ${(tarballBytes / 2 ** 20).toFixed(1)} MiB, ${runs} runs each, ` +
      `every side unpacks into overlayfs (ctr images import unpacks unless --no-unpack)\n` +
      `  faas: deno run -A cli.ts new --tar FILE (CLI process + daemon), the user path\n` +
      `  curl: curl -T FILE to POST /api/new of the same daemon (streamed, with Content-Length; no CLI)\n` +
      `  ctr:  ctr images import FILE\n`,
  );
  for (let i = 0; i < 3; i++) cliOverheadMs.push(await faas(daemon, "list"));
  for (let i = 0; i < runs; i++) {
    // Rotate which goes first, so that drift (page cache, disk) does not favour one side.
    const order = [...SIDES.slice(i % 3), ...SIDES.slice(0, i % 3)];
    for (const side of order) {
      const name = `bench-${side}-${i}`;
      if (side === "ctr") {
        ms.ctr.push(await ctr(ctd, ctrNamespace, "images", "import", tarball));
        await assertUnpacked(ctrClient, "ctr images import");
        await clean(ctrClient);
        await assertEmpty(ctrClient);
        continue;
      }
      ms[side].push(
        side === "faas"
          ? await faas(daemon, "new", "--tar", tarball, "--name", name)
          : await run("curl", curlArgs(daemon, tarball, name)),
      );
      await assertUnpacked(daemonClient, side);
      await faas(daemon, "delete", name);
      await assertEmpty(daemonClient);
    }
    console.log(`run ${i + 1}: ${SIDES.map((side) => `${side} ${ms[side].at(-1)!.toFixed(0)} ms`).join(", ")}`);
  }
}

const mibps = (t: number) => (tarballBytes / 2 ** 20 / (t / 1000)).toFixed(1);
const medians = Object.fromEntries(SIDES.map((side) => [side, median(ms[side])])) as Record<Side, number>;
const cliMedian = median(cliOverheadMs);
console.log();
for (const side of SIDES) {
  console.log(`median ${side.padEnd(4)}: ${medians[side].toFixed(0).padStart(6)} ms (${mibps(medians[side])} MiB/s)`);
}
console.log(`ratio faasd/ctr, faas new --tar (user path): ${(medians.faas / medians.ctr).toFixed(2)} (goal ≤ 1.0)`);
console.log(`ratio faasd/ctr, curl -T to the API:         ${(medians.curl / medians.ctr).toFixed(2)}`);
console.log(`(of the CLI's time, ~${cliMedian.toFixed(0)} ms is its start-up and one API call: median of faas list)`);

/** One ~1 GiB import into a fresh daemon, so that its VmHWM holds nothing but start-up and this import. */
interface BigRun {
  via: string;
  ms: number;
  finished: boolean;
  /** Largest amount of the layer seen in containerd's ingest while it ran (sampled every 500 ms). */
  ingestedMiB: number;
  /** VmHWM of the freshly started daemon before the upload. */
  hwmBeforeMiB: number;
  /** VmHWM after the upload: the peak resident set of the whole run. */
  hwmAfterMiB: number;
  /** Highest VmRSS seen while sampling every 50 ms. */
  sampledPeakRssMiB: number;
}

async function bigImport(via: "faas" | "curl", file: string, timeoutMs: number): Promise<BigRun> {
  await using daemon = await startDaemon(ctd, { port: freePort() });
  using client = ctd.client(daemon.namespace);
  const hwmBefore = procStatusMiB(daemon.pid, "VmHWM");
  let sampled = procStatusMiB(daemon.pid, "VmRSS");
  let ingested = 0;
  const rss = setInterval(() => sampled = Math.max(sampled, procStatusMiB(daemon.pid, "VmRSS")), 50);
  const ingest = setInterval(async () => {
    const statuses = await client.listIngests().catch(() => []);
    ingested = Math.max(ingested, statuses.reduce((n, s) => n + s.offset, 0) / 2 ** 20);
  }, 500);
  let t: Timed;
  try {
    t = via === "faas"
      ? await timed(Deno.execPath(), faasArgs(daemon, "new", "--tar", file, "--name", "bench-big"), timeoutMs)
      : await timed("curl", curlArgs(daemon, file, "bench-big"), timeoutMs);
  } finally {
    clearInterval(rss);
    clearInterval(ingest);
  }
  const hwmAfter = procStatusMiB(daemon.pid, "VmHWM");
  if (!t.ok && !t.timedOut) throw new Error(`${via} upload failed: ${t.stderr}`);
  if (t.ok) {
    await assertUnpacked(client, via);
    await faas(daemon, "delete", "bench-big");
  } else {
    // The upload was cut: faasd discards the import; give it a moment, then check.
    for (let i = 0; i < 100 && (await holdings(client)).blobs; i++) await new Promise((r) => setTimeout(r, 100));
  }
  await assertEmpty(client);
  return {
    via,
    ms: t.ms,
    finished: t.ok,
    ingestedMiB: t.ok ? bigBytes / 2 ** 20 : ingested,
    hwmBeforeMiB: hwmBefore,
    hwmAfterMiB: hwmAfter,
    sampledPeakRssMiB: sampled,
  };
}

let bigBytes = 0;
const big: BigRun[] = [];
if (bigMiB > 0) {
  console.log(`\nbuilding a ${bigMiB} MiB image…`);
  const bigTarball = await buildPaddedImage(bigMiB);
  bigBytes = (await Deno.stat(bigTarball)).size;
  for (const via of ["faas", "curl"] as const) {
    const r = await bigImport(via, bigTarball, bigTimeoutS * 1000);
    big.push(r);
    const what = r.finished
      ? `${r.ms.toFixed(0)} ms (${(bigBytes / 2 ** 20 / (r.ms / 1000)).toFixed(1)} MiB/s)`
      : `stopped after ${(r.ms / 1000).toFixed(0)} s with ${r.ingestedMiB.toFixed(0)} MiB ingested`;
    console.log(
      `${(bigBytes / 2 ** 20).toFixed(0)} MiB via ${via}: ${what}; daemon peak RSS (VmHWM) ${
        r.hwmBeforeMiB.toFixed(0)
      } MiB after start-up → ${r.hwmAfterMiB.toFixed(0)} MiB (VmRSS sampled every 50 ms peaked at ${
        r.sampledPeakRssMiB.toFixed(0)
      } MiB)`,
    );
  }
}

await Deno.mkdir(new URL("./out", import.meta.url), { recursive: true });
await Deno.writeTextFile(
  new URL("./out/import.json", import.meta.url),
  JSON.stringify(
    {
      containerd: containerdVersion,
      tarballMiB: tarballBytes / 2 ** 20,
      runs,
      unpack: "every side unpacks into overlayfs",
      sides: {
        faas: "deno run -A cli.ts new --tar FILE (CLI process + daemon)",
        curl: "curl -T FILE to POST /api/new (same daemon, no CLI)",
        ctr: "ctr images import FILE",
      },
      ms,
      medianMs: medians,
      ratio: medians.faas / medians.ctr,
      ratioCurl: medians.curl / medians.ctr,
      cliOverheadMedianMs: cliMedian,
      bigMiB: bigBytes / 2 ** 20,
      big,
    },
    null,
    2,
  ),
);
console.log("\nwrote bench/out/import.json");
