/**
 * What containment costs per request: the same request (the `hello` test handler, a new connection each, read to
 * EOF, every answer checked) against faasd daemons that differ only in their containment flags, all on one private
 * containerd, in interleaved rounds (one request to each variant per round, so that load on this shared machine falls
 * on every variant alike; the order rotates each round). The baseline is `ctr run --rm` of the same image, measured in the same rounds.
 *
 * Variants: `hardened` (the defaults: seccomp, read-only root with a /tmp tmpfs, CPU quota, socket guard),
 * `no-seccomp` (`--seccomp unconfined`), `bare` (seccomp unconfined, no CPU limit, socket guard off), and
 * `writable-root` (the defaults, the function deployed with `?rootfs=writable`: a tmpfs-backed upper layer).
 *
 *     deno run -A bench/containment.ts [--rounds 40]
 *
 * Separate daemons differ by tens of milliseconds among themselves on this machine, so the cost of seccomp alone is
 * measured apart too: `ctr run --rm` with faasd's default profile (`--seccomp-profile`) against without.
 *
 * Prints p50/p99 per variant with ratios to `bare` and to ctr, and writes bench/out/containment.json.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startContainerd, testNamespace } from "../tests/harness/containerd.ts";
import { buildHandlerImage } from "../tests/harness/images.ts";
import { type Daemon, freePort, startDaemon } from "../tests/harness/platform.ts";
import { ctrRun, httpGet, percentile, run, type Sample } from "./common.ts";
import { loadSeccompProfile } from "../lib/seccomp.ts";
import { CAPABILITIES } from "../lib/serve/spec.ts";

const EXPECTED_BODY = "hello from faasd\n";
const { values } = parseArgs({ args: Deno.args, options: { rounds: { type: "string", default: "40" } } });
const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1) throw new RangeError(`--rounds must be a positive integer`);

const VARIANTS: { name: string; flags: string[]; query: string }[] = [
  { name: "hardened", flags: [], query: "" },
  { name: "no-seccomp", flags: ["--seccomp", "unconfined"], query: "" },
  { name: "bare", flags: ["--seccomp", "unconfined", "--cpu-limit", "0", "--socket-guard", "off"], query: "" },
  { name: "writable-root", flags: [], query: "?rootfs=writable" },
];

console.log("building the hello handler image with podman (cached after the first time)…");
const tarball = await buildHandlerImage("hello");
await using ctd = await startContainerd();

interface Running {
  name: string;
  daemon: Daemon;
  ip: string;
  port: number;
}
const running: Running[] = [];
try {
  for (const v of VARIANTS) {
    const port = freePort();
    const daemon = await startDaemon(ctd, { port, flags: v.flags });
    const res = await fetch(`${daemon.url}/api/new${v.query}`, {
      method: "POST",
      headers: { "x-image-name": "hello" },
      body: (await Deno.open(tarball)).readable,
    });
    const { ip } = await res.json();
    if (res.status !== 201) throw new Error(`deploy to ${v.name}: ${res.status}`);
    running.push({ name: v.name, daemon, ip, port });
  }
  const ctrNamespace = testNamespace("faasd-bench-ctr");
  await run("ctr", ["-a", ctd.socket, "-n", ctrNamespace, "images", "import", tarball]);
  const image = (await run("ctr", ["-a", ctd.socket, "-n", ctrNamespace, "images", "ls", "-q"])).trim().split("\n")[0]!;

  // faasd's default profile, as runc gets it, for `ctr run --seccomp-profile`: the same container start with and
  // without it, measured apart from any faasd instance.
  const profile = await loadSeccompProfile("default", { capabilities: CAPABILITIES });
  const profileFile = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(profileFile, JSON.stringify(profile));
  const samples = new Map<string, Sample[]>([
    ...running.map((r) => [r.name, []] as [string, Sample[]]),
    ["ctr", []],
    ["ctr+seccomp", []],
  ]);
  console.log(`${rounds} rounds, one request to each of ${[...samples.keys()].join(", ")} per round`);
  // Each variant's cleanup runs after its client has the answer, overlapping the next request: the order rotates
  // every round so that no variant always follows the same one.
  const tasks: [string, () => Promise<Sample>][] = [
    ...running.map((r) => [r.name, () => httpGet(r.ip, r.port, EXPECTED_BODY)] as [string, () => Promise<Sample>]),
    ["ctr", () => ctrRun(ctd, ctrNamespace, image)],
    ["ctr+seccomp", () => ctrRun(ctd, ctrNamespace, image, ["--seccomp", "--seccomp-profile", profileFile])],
  ];
  for (let i = 0; i < rounds + 2; i++) {
    for (let k = 0; k < tasks.length; k++) {
      const [name, task] = tasks[(i + k) % tasks.length]!;
      const s = await task();
      if (i >= 2) samples.get(name)!.push(s); // two warm-up rounds
    }
  }

  const ok = (name: string) => samples.get(name)!.filter((s) => !s.error).map((s) => s.ms);
  const p = (name: string, q: number) => percentile(ok(name), q);
  console.log(
    `\n${"variant".padEnd(16)}${"p50 ms".padStart(9)}${"p99 ms".padStart(9)}${"/bare".padStart(8)}${
      "/ctr".padStart(8)
    }`,
  );
  const table: Record<string, unknown> = {};
  for (const name of samples.keys()) {
    const row = {
      p50: p(name, 50),
      p99: p(name, 99),
      vsBare: p(name, 50) / p("bare", 50),
      vsCtr: p(name, 50) / p("ctr", 50),
      failures: samples.get(name)!.flatMap((s) => s.error ? [s.error] : []),
    };
    table[name] = row;
    console.log(
      `${name.padEnd(16)}${row.p50.toFixed(1).padStart(9)}${row.p99.toFixed(1).padStart(9)}` +
        `${row.vsBare.toFixed(2).padStart(8)}${row.vsCtr.toFixed(2).padStart(8)}` +
        (row.failures.length ? `  ${row.failures.length} failure(s): ${row.failures[0]}` : ""),
    );
  }
  const delta = p("hardened", 50) - p("bare", 50);
  const seccomp = p("ctr+seccomp", 50) - p("ctr", 50);
  console.log(
    `\nhardened - bare: ${delta.toFixed(1)} ms at p50 (separate daemons: their spread is part of it); ` +
      `seccomp alone (ctr with and without faasd's profile): ${seccomp.toFixed(1)} ms`,
  );
  await Deno.remove(profileFile);
  await Deno.mkdir(new URL("./out", import.meta.url), { recursive: true });
  await Deno.writeTextFile(
    new URL("./out/containment.json", import.meta.url),
    JSON.stringify({ rounds, variants: table }, null, 2),
  );
  console.log("wrote bench/out/containment.json");
  if (Object.values(table).some((r) => (r as { failures: string[] }).failures.length)) Deno.exitCode = 1;
} finally {
  for (const r of running) {
    await fetch(`${r.daemon.url}/api/functions/hello`, { method: "DELETE" }).then((res) => res.body?.cancel());
    await r.daemon[Symbol.asyncDispose]();
  }
}
