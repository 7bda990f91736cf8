/**
 * The daemon process: restart keeps the registry and restores serving; a daemon killed mid-request has its
 * leftovers reaped at the next start; SIGTERM lets a request in flight finish; the seed's 10.0.0.0/24 pool inside a
 * network namespace this test creates (addresses added to and removed from that namespace's loopback).
 */

import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildHandlerImage } from "./harness/images.ts";
import { freePort, leftovers, NONE, startDaemon, taskPermissions } from "./harness/platform.ts";
import { curl } from "./curl.ts";
import type { Containerd } from "../lib/containerd/client.ts";

async function upload(url: string, name: string, tarball: string, netns?: string): Promise<{ ip: string }> {
  const args = [
    "-sS",
    "-f",
    "-X",
    "POST",
    "-H",
    `X-Image-Name: ${name}`,
    "--data-binary",
    `@${tarball}`,
    `${url}/api/new`,
  ];
  const argv = netns ? ["ip", "netns", "exec", netns, "curl", ...args] : ["curl", ...args];
  const out = await new Deno.Command(argv[0]!, { args: argv.slice(1), stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`upload failed: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

async function sh(cmd: string[]): Promise<string> {
  const out = await new Deno.Command(cmd[0]!, { args: cmd.slice(1), stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(`${cmd.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout);
}

Deno.test("a restarted faasd keeps its functions and serves them again", async () => {
  await using ctd = await startContainerd();
  const tarball = await buildHandlerImage("hello");
  const first = await startDaemon(ctd);
  const { ip } = await upload(first.url, "hello", tarball);
  assertEquals((await curl(`http://${ip}:${first.port}/`)).status, 200);
  assertEquals(await first.stop("SIGTERM"), 0);

  await using second = await startDaemon(ctd, {
    stateDir: first.stateDir,
    namespace: first.namespace,
    pool: first.pool,
    port: first.port,
  });
  const r = await curl(`http://${ip}:${second.port}/`);
  assertEquals([r.exit, r.status, r.body], [0, 200, "hello from faasd\n"]);
  assertStringIncludes(second.output(), "serving 1 function(s)");
});

/** Tasks running (a shim group's anchor is only created: it never runs). */
async function running(client: Containerd): Promise<number> {
  return (await client.listTasks()).filter((t) => t.status === "running").length;
}

Deno.test("a faasd killed mid-request has its leftovers reaped at the next start", async () => {
  await using ctd = await startContainerd();
  const tarball = await buildHandlerImage("hang");
  const first = await startDaemon(ctd);
  const { ip } = await upload(first.url, "hang", tarball);
  const pending = curl(`http://${ip}:${first.port}/`, { timeoutS: 30 });
  const client = ctd.client(first.namespace);
  try {
    for (let i = 0; i < 100 && (await running(client)) === 0; i++) await new Promise((r) => setTimeout(r, 100));
    assertEquals(await running(client), 1);
    await first.stop("SIGKILL");
    // The container still holds the client socket; the next faasd reaps it, and then the client sees the end.
    await using second = await startDaemon(ctd, {
      stateDir: first.stateDir,
      namespace: first.namespace,
      pool: first.pool,
    });
    assertStringIncludes(second.output(), "reaped 1 container(s)");
    const r = await pending;
    // The connection ends when the reaper kills the container (an empty reply or a reset; faasd was not there to
    // close it cleanly), not by curl's own timeout (28).
    assert([52, 56].includes(r.exit), r.stderr);
    assertEquals(await leftovers(client), NONE);
    assertEquals([...Deno.readDirSync(`${first.stateDir}/run`)].length, 0);
  } finally {
    client.close();
  }
});

Deno.test("SIGTERM lets a request in flight finish before faasd exits", async () => {
  await using ctd = await startContainerd();
  const d = await startDaemon(ctd, { flags: ["--shutdown-grace", "10s"] });
  const { ip } = await upload(d.url, "slow", await buildHandlerImage("sleep", { args: ["1500"] }));
  const pending = curl(`http://${ip}:${d.port}/`);
  const client = ctd.client(d.namespace);
  try {
    for (let i = 0; i < 100 && (await client.listTasks()).length === 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assertEquals(await d.stop("SIGTERM"), 0);
    const r = await pending;
    assertEquals([r.exit, r.status, r.body], [0, 200, "slept\n"]);
    assertEquals(await leftovers(client), NONE);
  } finally {
    client.close();
    await Deno.remove(d.stateDir, { recursive: true });
  }
});

Deno.test("SIGTERM past the grace period kills what still runs, answers 504 and leaves nothing", async () => {
  await using ctd = await startContainerd();
  const d = await startDaemon(ctd, { flags: ["--shutdown-grace", "1s"] });
  const { ip } = await upload(d.url, "stuck", await buildHandlerImage("hang"));
  const pending = curl(`http://${ip}:${d.port}/`);
  const client = ctd.client(d.namespace);
  try {
    for (let i = 0; i < 100 && (await client.listTasks()).length === 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    await new Promise((r) => setTimeout(r, 300));
    assertEquals(await d.stop("SIGTERM"), 0);
    const r = await pending;
    assertEquals([r.exit, r.status], [0, 504]);
    assertEquals(await leftovers(client), NONE, d.output());
  } finally {
    client.close();
    await Deno.remove(d.stateDir, { recursive: true });
  }
});

Deno.test("the seed's 10.0.0.0/24 pool works inside a network namespace", async () => {
  await using ctd = await startContainerd();
  const netns = `faasd-t-${crypto.randomUUID().slice(0, 8)}`;
  await sh(["ip", "netns", "add", netns]);
  try {
    await sh(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"]);
    const port = freePort();
    // `ip netns exec` mounts a fresh /sys without the cgroup filesystem: no totals there (runc still limits each
    // container, since it runs beside containerd, outside this namespace).
    const flags = ["--total-memory", "0", "--total-cpu", "0", "--total-pids", "0"];
    await using d = await startDaemon(ctd, { netns, pool: "10.0.0.0/24", port, flags });
    const { ip } = await upload(d.url, "hello", await buildHandlerImage("hello"), netns);
    assertEquals(ip, "10.0.0.10");
    const addrs = await sh(["ip", "netns", "exec", netns, "ip", "-o", "-4", "addr", "show", "dev", "lo"]);
    assertStringIncludes(addrs, "inet 10.0.0.10/32");
    assertStringIncludes(addrs, "lo:faasd");
    const body = await sh(["ip", "netns", "exec", netns, "curl", "-sS", "-m", "20", `http://10.0.0.10:${port}/`]);
    assertEquals(body, "hello from faasd\n");
    await sh(["ip", "netns", "exec", netns, "curl", "-sS", "-f", "-X", "DELETE", `${d.url}/api/functions/hello`]);
    const after = await sh(["ip", "netns", "exec", netns, "ip", "-o", "-4", "addr", "show", "dev", "lo"]);
    assertEquals(after.includes("10.0.0.10"), false, after);
  } finally {
    await sh(["ip", "netns", "del", netns]).catch(() => {});
  }
});

Deno.test("a second faasd on a busy --api exits before touching the first one's containers and images", async () => {
  await using ctd = await startContainerd();
  await using first = await startDaemon(ctd, { flags: ["--shutdown-grace", "1s"] });
  const { ip } = await upload(first.url, "stuck", await buildHandlerImage("hang"));
  const pending = curl(`http://${ip}:${first.port}/`);
  using client = ctd.client(first.namespace);
  for (let i = 0; i < 100 && (await running(client)) === 0; i++) await new Promise((r) => setTimeout(r, 50));
  assertEquals(await running(client), 1);
  const images = await client.listImages();

  const stateDir = await Deno.makeTempDir({ prefix: "faasd-second-" });
  try {
    const second = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        ...taskPermissions("faasd"),
        new URL("../main.ts", import.meta.url).pathname,
        ...["--api", new URL(first.url).host, "--state-dir", stateDir, "--namespace", first.namespace],
        ...["--containerd", ctd.socket, "--ip-pool", "127.201.0.0/24"],
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(second.code, 1);
    assertStringIncludes(new TextDecoder().decode(second.stderr), "in use");
  } finally {
    await Deno.remove(stateDir, { recursive: true });
  }
  // The first one's request container and image are untouched, and it still ends that request itself.
  assertEquals(await running(client), 1);
  assertEquals(await client.listImages(), images);
  assertEquals(await first.stop("SIGTERM"), 0);
  assertEquals((await pending).status, 504);
});

Deno.test("faasd logs JSON lines: one per request with its outcome and timings, deploys and deletes, no request bytes", async () => {
  await using ctd = await startContainerd();
  const d = await startDaemon(ctd); // stderr is a pipe here: JSON by default
  const { ip } = await upload(d.url, "hello", await buildHandlerImage("hello"));
  const r = await curl(`http://${ip}:${d.port}/`, { data: "password=hunter2", args: ["-H", "X-Token: s3cr3t-t0ken"] });
  assertEquals(r.status, 200);
  const del = await fetch(`${d.url}/api/functions/hello`, { method: "DELETE" });
  assertEquals(del.status, 200);
  await del.body?.cancel();
  assertEquals(await d.stop("SIGTERM"), 0);
  const lines = d.output().split("\n").filter((l) => l.startsWith("{"));
  const events = lines.map((l) => JSON.parse(l));
  for (const e of events) {
    assert(typeof e.time === "string" && typeof e.level === "string" && typeof e.msg === "string");
  }
  const requests = events.filter((e) => e.msg === "request");
  assertEquals(requests.length, 1, lines.join("\n"));
  assertEquals([requests[0].function, requests[0].outcome, requests[0].level], ["hello", "ok", "info"]);
  assert(requests[0].ms > 0 && requests[0].waited_ms >= 0 && /^faasd-/.test(requests[0].container), lines.join("\n"));
  assertEquals(events.filter((e) => e.msg === "deployed").map((e) => [e.function, e.ip]), [["hello", ip]]);
  assertEquals(events.filter((e) => e.msg === "deleted").map((e) => e.function), ["hello"]);
  assert(!d.output().includes("hunter2") && !d.output().includes("s3cr3t-t0ken"), "no request byte is logged");
});
