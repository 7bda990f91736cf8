/**
 * The warm pool, measured against baselines in the same run (private containerd, a faasd daemon, loopback only):
 *
 * 1. Pooled latency: sequential requests to a function with ready containers (each request waits, untimed, until one
 *    is ready), against a host process that forks and execs the same static handler per connection (inetd style: the
 *    cost of a fresh process without a container) and against a persistent host server answering the same bytes (the
 *    floor). Goal: pooled p50 ≤ 1.5 × fork-and-exec.
 * 2. Fresh containers per second, sustained for `--seconds` at concurrency 8 (and `--high`), against as many parallel
 *    `ctr run --rm` loops of the same image. Goal ≥ 2×.
 * 3. A burst of `--burst` connections at once to an idle function (min_ready 0): how many got 200, p50/p99; repeated
 *    `--burst-rounds` times, each with a fresh daemon.
 * 4. Memory: faasd's RSS, and RSS per ready container (its shim and handler) with `--ready` ready containers.
 *
 *     deno run -A bench/pool.ts [--requests 100] [--seconds 30] [--high 32] [--burst 200] [--burst-rounds 1] [--ready 64]
 *
 * Prints the figures with ratios and writes bench/out/pool.json. Asserts nothing about time.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startContainerd, testNamespace } from "../tests/harness/containerd.ts";
import { buildHandlerImage, compileHandler } from "../tests/harness/images.ts";
import { type Daemon, freePort, startDaemon } from "../tests/harness/platform.ts";
import { ctrRun, deploy, httpGet, percentile, run, type Sample } from "./common.ts";

const EXPECTED_BODY = "hello from faasd\n";
const { values } = parseArgs({
  args: Deno.args,
  options: {
    requests: { type: "string", default: "100" },
    seconds: { type: "string", default: "30" },
    high: { type: "string", default: "32" },
    burst: { type: "string", default: "200" },
    "burst-rounds": { type: "string", default: "1" },
    ready: { type: "string", default: "64" },
  },
});
const requests = Number(values.requests);
const seconds = Number(values.seconds);
const high = Number(values.high);
const burst = Number(values.burst);
const burstRounds = Number(values["burst-rounds"]);
const readyCount = Number(values.ready);

const stats = (xs: Sample[]) => {
  const ok = xs.filter((s) => !s.error).map((s) => s.ms);
  return { n: xs.length, ok: ok.length, p50: percentile(ok, 50), p99: percentile(ok, 99) };
};

/** RSS in KiB of `pid` and, with `tree`, of all its descendants. */
async function rssKiB(pids: number[]): Promise<number> {
  let total = 0;
  for (const pid of pids) {
    try {
      const status = await Deno.readTextFile(`/proc/${pid}/status`);
      total += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    } catch { /* gone */ }
  }
  return total;
}

async function pgrep(pattern: string): Promise<number[]> {
  const out = await new Deno.Command("pgrep", { args: ["-f", pattern], stdout: "piped" }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean).map(Number);
}

async function list(daemon: Daemon): Promise<Record<string, { ready: number }>> {
  return await (await fetch(`${daemon.url}/api/list`)).json();
}

async function untilReady(daemon: Daemon, name: string, n: number, ms = 120_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if ((await list(daemon))[name]!.ready >= n) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

/** Python's forking server: per connection fork, dup the socket onto 0 and 1, exec the handler's stdio mode. */
const INETD = `
import os, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    if os.fork() == 0:
        os.dup2(c.fileno(), 0); os.dup2(c.fileno(), 1)
        os.execv(sys.argv[2], [sys.argv[2], "stdio"])
    c.close()
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0: break
        except ChildProcessError: break
`;

/** A persistent server answering the same bytes: the floor. */
const PERSISTENT = `
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
body = b"hello from faasd\\n"
head = b"HTTP/1.1 200 OK\\r\\nContent-Length: 17\\r\\nConnection: close\\r\\nX-Handler: persistent\\r\\nContent-Type: text/plain\\r\\n\\r\\n"
print("ready", flush=True)
while True:
    c, _ = s.accept()
    data = b""
    while b"\\r\\n\\r\\n" not in data:
        chunk = c.recv(65536)
        if not chunk: break
        data += chunk
    c.sendall(head + body); c.close()
`;

async function hostServer(script: string, args: string[]): Promise<{ port: number; stop: () => Promise<void> }> {
  const port = freePort();
  const child = new Deno.Command("python3", { args: ["-c", script, String(port), ...args], stdout: "piped" }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  await reader.read(); // "ready"
  return {
    port,
    stop: async () => {
      child.kill("SIGKILL");
      await child.status;
      await reader.cancel().catch(() => {});
    },
  };
}

console.log("building images with podman (cached after the first time)…");
const tarball = await buildHandlerImage("hello");
const binary = await compileHandler();
await using ctd = await startContainerd();
const port = freePort();
const out: Record<string, unknown> = {};

// 1. Pooled latency against fork-and-exec and a persistent server.
{
  await using daemon = await startDaemon(ctd, { port, flags: ["--pool-idle", "10m"] });
  const ip = await deploy(daemon, "hello", tarball, "min_ready=2&max_ready=2");
  const inetd = await hostServer(INETD, [binary]);
  const persistent = await hostServer(PERSISTENT, []);
  try {
    const samples: Record<string, Sample[]> = { pooled: [], "fork+exec": [], persistent: [] };
    for (let i = 0; i < requests + 5; i++) {
      if (!await untilReady(daemon, "hello", 1)) throw new Error("no container became ready");
      const keep = i >= 5;
      const a = await httpGet(ip, port, EXPECTED_BODY);
      const b = await httpGet("127.0.0.1", inetd.port, EXPECTED_BODY);
      const c = await httpGet("127.0.0.1", persistent.port, EXPECTED_BODY);
      if (keep) samples.pooled!.push(a), samples["fork+exec"]!.push(b), samples.persistent!.push(c);
    }
    const s = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, stats(v)]));
    console.log(`\n1. sequential latency, ${requests} requests each (ms)`);
    for (const [k, v] of Object.entries(s)) {
      console.log(
        `   ${k.padEnd(12)} p50 ${v.p50.toFixed(2).padStart(7)}  p99 ${
          v.p99.toFixed(2).padStart(7)
        }  ok ${v.ok}/${v.n}`,
      );
    }
    const ratio = s.pooled!.p50 / s["fork+exec"]!.p50;
    console.log(
      `   pooled / fork+exec: p50 ${ratio.toFixed(2)} (goal ≤ 1.5), p99 ${
        (s.pooled!.p99 / s["fork+exec"]!.p99).toFixed(2)
      }`,
    );
    out.latency = { ...s, ratioP50: ratio };
    await fetch(`${daemon.url}/api/functions/hello`, { method: "DELETE" }).then((r) => r.body?.cancel());
  } finally {
    await inetd.stop();
    await persistent.stop();
  }
}

// 2. Fresh containers per second, sustained, against parallel ctr run --rm loops.
{
  const ns = testNamespace("faasd-bench-ctr");
  await run("ctr", ["-a", ctd.socket, "-n", ns, "images", "import", tarball]);
  const image = (await run("ctr", ["-a", ctd.socket, "-n", ns, "images", "ls", "-q"])).trim().split("\n")[0]!;
  const rates: Record<string, unknown> = {};
  for (const concurrency of [8, high]) {
    await using daemon = await startDaemon(ctd, {
      port,
      flags: ["--max-concurrency", String(concurrency), "--queue-timeout", "60s"],
    });
    const ip = await deploy(daemon, "hello", tarball);
    const loop = async (task: () => Promise<Sample>, until: number, into: Sample[]) => {
      while (performance.now() < until) into.push(await task());
    };
    const faasd: Sample[] = [];
    let until = performance.now() + seconds * 1000;
    await Promise.all(
      Array.from({ length: concurrency }, () => loop(() => httpGet(ip, port, EXPECTED_BODY), until, faasd)),
    );
    const ctr: Sample[] = [];
    until = performance.now() + seconds * 1000;
    await Promise.all(Array.from({ length: concurrency }, () => loop(() => ctrRun(ctd, ns, image), until, ctr)));
    const f = stats(faasd).ok / seconds;
    const c = stats(ctr).ok / seconds;
    console.log(
      `\n2. fresh containers per second, concurrency ${concurrency}, ${seconds} s: faasd ${f.toFixed(1)}/s ` +
        `(${stats(faasd).n - stats(faasd).ok} failed), ctr run --rm ${c.toFixed(1)}/s: ${
          (f / c).toFixed(2)
        }× (goal ≥ 2)`,
    );
    rates[concurrency] = { faasd: f, ctr: c, ratio: f / c, faasdFailed: stats(faasd).n - stats(faasd).ok };
    await fetch(`${daemon.url}/api/functions/hello`, { method: "DELETE" }).then((r) => r.body?.cancel());
  }
  out.throughput = rates;
}

// 3. A burst to an idle function, default flags (but the queue timeout, reported as is).
const bursts = [];
for (let round = 1; round <= burstRounds; round++) {
  await using daemon = await startDaemon(ctd, { port, flags: ["--pool-idle", "5m"] });
  const ip = await deploy(daemon, "hello", tarball);
  const began = performance.now();
  const samples = await Promise.all(Array.from({ length: burst }, () => httpGet(ip, port, EXPECTED_BODY)));
  const wall = performance.now() - began;
  const s = stats(samples);
  const errors = samples.flatMap((x) => x.error ? [x.error] : []);
  console.log(
    `\n3. burst of ${burst} at once to an idle function (default --queue-timeout 10s)` +
      (burstRounds > 1 ? `, round ${round}` : "") + `: ${s.ok} answered 200 in ` +
      `${(wall / 1000).toFixed(1)} s; p50 ${s.p50.toFixed(0)} ms, p99 ${s.p99.toFixed(0)} ms` +
      (errors.length ? `; first failure: ${errors[0]}` : ""),
  );
  bursts.push({ ...s, wallMs: wall, failures: errors.length });
  await fetch(`${daemon.url}/api/functions/hello`, { method: "DELETE" }).then((r) => r.body?.cancel());
}
out.burst = bursts[0];
out.bursts = bursts;

// 4. Memory with ready containers.
{
  await using daemon = await startDaemon(ctd, { port, flags: ["--pool-max", String(readyCount)] });
  const before = await rssKiB([daemon.pid]);
  const shimsBefore = await rssKiB(await pgrep("containerd-shim-runc-v2"));
  await deploy(daemon, "hello", tarball, `min_ready=${readyCount}&max_ready=${readyCount}`);
  const got = await untilReady(daemon, "hello", readyCount, 180_000);
  const ready = (await list(daemon)).hello!.ready;
  const faasd = await rssKiB([daemon.pid]);
  const shims = (await rssKiB(await pgrep("containerd-shim-runc-v2"))) - shimsBefore;
  const handlers = await rssKiB(await pgrep(`${"/handler"} hello`));
  console.log(
    `\n4. memory with ${ready} ready containers${got ? "" : " (fewer than asked became ready)"}: faasd RSS ` +
      `${(before / 1024).toFixed(0)} → ${(faasd / 1024).toFixed(0)} MiB; per ready container: shim ` +
      `${(shims / ready / 1024).toFixed(1)} MiB + handler ${(handlers / ready / 1024).toFixed(2)} MiB`,
  );
  out.memory = {
    ready,
    faasdKiBBefore: before,
    faasdKiB: faasd,
    shimKiBPerReady: shims / ready,
    handlerKiBPerReady: handlers / ready,
  };
  await fetch(`${daemon.url}/api/functions/hello`, { method: "DELETE" }).then((r) => r.body?.cancel());
}

await Deno.mkdir(new URL("./out", import.meta.url), { recursive: true });
await Deno.writeTextFile(new URL("./out/pool.json", import.meta.url), JSON.stringify(out, null, 2));
console.log("\nwrote bench/out/pool.json");
