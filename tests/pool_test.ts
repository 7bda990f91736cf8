/**
 * The warm pool end to end (real containerd, podman images, loopback traffic): containers are started before their
 * connection arrives, each still serves exactly one connection, the pool follows its settings, shrinks when idle,
 * never serves an image that was replaced, replaces ready containers that die, opens its breaker on an image that
 * cannot start, and idle connections cost no container.
 */

import { waitUntil } from "./harness/wait.ts";
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildHandlerImage, type HandlerImageOptions } from "./harness/images.ts";
import { leftovers, NONE, openFds, startTestPlatform, type TestPlatform } from "./harness/platform.ts";
import { curl } from "./curl.ts";
import { LABELS } from "../lib/labels.ts";

async function deploy(
  p: TestPlatform,
  name: string,
  mode: string,
  opts: HandlerImageOptions = {},
  query = "",
): Promise<{ url: string; status: number }> {
  const tarball = await buildHandlerImage(mode, opts);
  const res = await p.request("POST", `/api/new${query}`, {
    headers: { "x-image-name": name },
    body: (await Deno.open(tarball)).readable,
  });
  const body = await res.json();
  if (res.status !== 201 && res.status !== 200) {
    throw new Error(`deploy ${name}: ${res.status} ${JSON.stringify(body)}`);
  }
  return { url: `http://${body.ip}:${p.port}/`, status: res.status };
}

const runningTasks = async (p: TestPlatform) =>
  (await p.client.listTasks()).filter((t) => t.status === "running").length;

Deno.test("a pooled request is served by a container started before it, and used by no other", async (t) => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd, { flags: ["--pool-idle", "1s"] });
  const { url } = await deploy(p, "marker", "marker", {}, "?min_ready=2&max_ready=4");

  await t.step("min_ready containers wait ready, connected, before any connection", async () => {
    assert(await waitUntil(() => p.platform.server.ready("marker") === 2), "2 ready");
    assertEquals(await runningTasks(p), 2);
    const list = await (await p.request("GET", "/api/list")).json();
    assertEquals([list.marker.ready, list.marker.min_ready, list.marker.max_ready], [2, 2, 4]);
  });

  await t.step("50 requests: each container is fresh (never sees another request's marker)", async () => {
    for (let i = 0; i < 50; i++) {
      const r = await curl(url);
      assertEquals([r.exit, r.status, r.body], [0, 200, "fresh"], `request ${i}`);
    }
    const metrics = await (await p.request("GET", "/metrics")).text();
    assertStringIncludes(metrics, 'faasd_connections_acquired_total{function="marker",from="pool"}');
  });

  await t.step("min_ready is held after the traffic", async () => {
    assert(await waitUntil(() => p.platform.server.ready("marker") === 2), "back to 2 ready");
  });

  await t.step("scaled to 0, an idle function keeps nothing: no task, container or snapshot", async () => {
    const res = await p.request("PATCH", "/api/functions/marker", { body: JSON.stringify({ min_ready: 0 }) });
    assertEquals(res.status, 200);
    assert(await waitUntil(() => p.platform.server.outstanding === 0), "pool drained");
    assertEquals(await leftovers(p.client), NONE);
  });
});

Deno.test("a ready container killed from outside is replaced and never handed a client", async () => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const { url } = await deploy(p, "hello", "hello", {}, "?min_ready=1&max_ready=1");
  assert(await waitUntil(() => p.platform.server.ready("hello") === 1), "1 ready");
  const [victim] = (await p.client.listTasks()).filter((t) => t.status === "running");
  await p.client.killTask(victim!.containerId, 9);
  assert(
    await waitUntil(async () =>
      p.platform.server.ready("hello") === 1 &&
      !(await p.client.listTasks()).some((t) => t.containerId === victim!.containerId)
    ),
    "replaced",
  );
  const r = await curl(url);
  assertEquals([r.exit, r.status, r.body], [0, 200, "hello from faasd\n"]);
  const metrics = await (await p.request("GET", "/metrics")).text();
  assertStringIncludes(metrics, 'faasd_ready_lost_total{function="hello"} 1');
});

Deno.test("a redeploy under load: no connection accepted after it answered is served by the old image", async () => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const v1 = { env: { VERSION: "1" } };
  const v2 = { env: { VERSION: "2" } };
  const { url } = await deploy(p, "ver", "echo-env", v1, "?min_ready=3&max_ready=6");
  assert(await waitUntil(() => p.platform.server.ready("ver") === 3), "3 ready");
  let deployedAt = Infinity;
  const wrong: string[] = [];
  let served = 0;
  const stop = AbortSignal.timeout(8000);
  const worker = async () => {
    while (!stop.aborted) {
      const sent = performance.now();
      const r = await curl(url);
      if (r.status !== 200) {
        wrong.push(`${r.status} ${r.body}`);
        continue;
      }
      served++;
      const version = JSON.parse(r.body).env.VERSION;
      if (sent > deployedAt && version !== "2") wrong.push(`sent after the deploy, served by VERSION=${version}`);
    }
  };
  const workers = Array.from({ length: 4 }, worker);
  await new Promise((r) => setTimeout(r, 1500));
  const { status } = await deploy(p, "ver", "echo-env", v2);
  deployedAt = performance.now();
  assertEquals(status, 200);
  await Promise.all(workers);
  assertEquals(wrong, []);
  assert(served > 10, `only ${served} served`);
});

Deno.test("the breaker opens on an image that cannot start, answers fast, and closes on a redeploy", async () => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const { url } = await deploy(p, "broken", "exit");
  const first = await curl(url);
  assertEquals([first.exit, first.status], [0, 503]);
  assertStringIncludes(first.body, "failing");
  const list = await (await p.request("GET", "/api/list")).json();
  assertEquals(list.broken.status, "failing");
  const began = performance.now();
  const fast = await curl(url);
  assertEquals(fast.status, 503);
  assert(performance.now() - began < 5000, "refused without waiting for a start");
  await deploy(p, "broken", "hello");
  const fixed = await curl(url);
  assertEquals([fixed.status, fixed.body], [200, "hello from faasd\n"]);
  assertEquals((await (await p.request("GET", "/api/list")).json()).broken.status, "active");
});

Deno.test("connections that send nothing cost no container and are closed after --header-timeout", async () => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd, { flags: ["--header-timeout", "1s", "--max-concurrency", "2"] });
  // max_ready 0: no start ahead of demand, so every start counted below is one a connection asked for.
  const { url } = await deploy(p, "hello", "hello", {}, "?max_ready=0");
  const { hostname, port } = new URL(url);
  const idle = await Promise.all(Array.from({ length: 20 }, () => Deno.connect({ hostname, port: Number(port) })));
  try {
    // Meanwhile the function serves others: idle connections hold no container and no concurrency slot.
    for (let i = 0; i < 3; i++) assertEquals((await curl(url)).status, 200);
    const metrics = await (await p.request("GET", "/metrics")).text();
    assertStringIncludes(metrics, 'faasd_container_starts_total{function="hello",outcome="ok"} 3');
    // Each idle one is closed by faasd: reading gives end of stream.
    for (const c of idle) assertEquals(await c.read(new Uint8Array(16)), null);
    assertStringIncludes(
      await (await p.request("GET", "/metrics")).text(),
      'faasd_requests_total{function="hello",outcome="idle"} 20',
    );
  } finally {
    for (const c of idle) c.close();
  }
});

Deno.test("a burst of 200 connections to an idle function is answered 200 every time", async () => {
  await using ctd = await startContainerd();
  // The default --queue-timeout is 10 s; containers start at 5-10 a second on this shared two-core machine, so the
  // last of 200 waits longer than that here (see the pool's note in bench/README.md).
  await using p = await startTestPlatform(ctd, { flags: ["--queue-timeout", "90s"] });
  const { url } = await deploy(p, "hello", "hello");
  const results = await Promise.all(Array.from({ length: 200 }, () => curl(url, { timeoutS: 120 })));
  const failed = results.filter((r) => r.exit !== 0 || r.status !== 200).map((r) => `${r.exit} ${r.status} ${r.body}`);
  assertEquals(failed, []);
  assert(await waitUntil(() => p.platform.server.outstanding === 0, 30_000), "all removed");
  assertEquals(await leftovers(p.client), NONE);
});

Deno.test("connections that arrive while containerd restarts wait for it, then are served", async () => {
  await using ctd = await startContainerd();
  if (ctd.external) return; // cannot restart a containerd the tests did not start
  await using p = await startTestPlatform(ctd);
  const { url } = await deploy(p, "hello", "hello");
  assertEquals((await curl(url)).status, 200);
  assert(await waitUntil(() => p.platform.server.ready("hello") === 0, 10_000), "no ready container left");
  let pending: Promise<Awaited<ReturnType<typeof curl>>[]> | null = null;
  await ctd.restart(async () => {
    // containerd is down: starts fail as unavailable; the connections wait in the queue instead of failing.
    pending = Promise.all(Array.from({ length: 5 }, () => curl(url, { timeoutS: 30 })));
    await new Promise((r) => setTimeout(r, 1500));
  });
  const results = await pending!;
  assertEquals(results.map((r) => `${r.status} ${r.body}`), Array(5).fill("200 hello from faasd\n"));
  assertEquals((await (await p.request("GET", "/api/list")).json()).hello.status, "active");
});

Deno.test("containerd restarting while containers start leaves no task, container, shim or mount behind", async () => {
  await using ctd = await startContainerd();
  if (ctd.external) return; // cannot restart a containerd the tests did not start
  await using p = await startTestPlatform(ctd, { flags: ["--queue-timeout", "30s", "--pool-idle", "1s"] });
  const { url } = await deploy(p, "hello", "hello");
  const requests = Promise.all(Array.from({ length: 12 }, () => curl(url, { timeoutS: 60 })));
  // Restart while starts are in flight: some Tasks.Create calls die with the connection.
  assert(await waitUntil(async () => (await p.client.listContainers()).length > 0, 10_000), "starts began");
  await ctd.restart();
  const results = await requests;
  assert(results.every((r) => r.exit === 0 && [200, 503].includes(r.status)), results.map((r) => r.status).join());
  assert(await waitUntil(() => p.platform.server.outstanding === 0, 30_000), "everything removed");
  assertEquals(await leftovers(p.client), NONE);
  const shims = await new Deno.Command("pgrep", { args: ["-f", `containerd-shim.*-namespace ${p.namespace}`] })
    .output();
  assertEquals(new TextDecoder().decode(shims.stdout).trim(), "", "no shim of this namespace is left");
});

/** Shim processes serving `namespace` (each runc v2 shim names its namespace on its command line). */
async function shimPids(namespace: string): Promise<number[]> {
  const out = await new Deno.Command("pgrep", { args: ["-f", `containerd-shim-runc-v2 -namespace ${namespace} `] })
    .output();
  const pids = new TextDecoder().decode(out.stdout).split("\n").filter(Boolean).map(Number);
  // The shims themselves, not the short-lived `start` and `delete` commands containerd runs per task.
  return pids.filter((pid) => {
    try {
      const argv = Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0").filter(Boolean);
      return !["start", "delete"].includes(argv.at(-1)!);
    } catch {
      return false; // gone meanwhile
    }
  });
}

Deno.test("a function's containers share a shim per group, whose shims go when the function goes idle", async () => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd, { flags: ["--pool-idle", "1s"] });
  const { url } = await deploy(p, "hello", "hello", {}, "?min_ready=3&max_ready=3");
  assert(await waitUntil(() => p.platform.server.ready("hello") === 3), "3 ready");
  // Starts in flight together go to up to one open group per core (shim_groups.ts); each group is one shim.
  const groupsAtMost = Math.min(4, navigator.hardwareConcurrency);
  const anchors = await p.client.listContainers(`labels."${LABELS.role}"==shim-anchor`);
  assert(anchors.length >= 1 && anchors.length <= groupsAtMost, `${anchors.length} anchors`);
  assertEquals((await shimPids(p.namespace)).length, anchors.length, "one shim per group, none per container");
  for (const a of anchors) {
    assertEquals((await p.client.getTask(a.id))?.status, "created", "an anchor never runs the function");
  }
  for (let i = 0; i < 5; i++) assertEquals((await curl(url)).status, 200);
  assert((await shimPids(p.namespace)).length <= groupsAtMost, "still a shim per group");

  const res = await p.request("PATCH", "/api/functions/hello", { body: JSON.stringify({ min_ready: 0 }) });
  assertEquals(res.status, 200);
  assert(await waitUntil(() => p.platform.server.outstanding === 0), "drained, anchor included");
  assertEquals(await leftovers(p.client), NONE);
  assert(await waitUntil(async () => (await shimPids(p.namespace)).length === 0, 5000), "the shim exited");
});

Deno.test("a shared shim killed from outside: its containers are replaced and the function keeps answering", async () => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const { url } = await deploy(p, "hello", "hello", {}, "?min_ready=2&max_ready=2");
  assert(await waitUntil(() => p.platform.server.ready("hello") === 2), "2 ready");
  const [shim] = await shimPids(p.namespace);
  Deno.kill(shim!, "SIGKILL");
  assert(
    await waitUntil(async () => {
      const pids = await shimPids(p.namespace);
      return p.platform.server.ready("hello") === 2 && pids.length >= 1 && !pids.includes(shim!);
    }),
    "2 ready again, none under the killed shim",
  );
  for (let i = 0; i < 3; i++) {
    const r = await curl(url);
    assertEquals([r.exit, r.status, r.body], [0, 200, "hello from faasd\n"]);
  }
  const res = await p.request("PATCH", "/api/functions/hello", { body: JSON.stringify({ min_ready: 0 }) });
  assertEquals(res.status, 200);
  assert(await waitUntil(() => p.platform.server.outstanding === 0), "drained");
  assertEquals(await leftovers(p.client), NONE);
});

/** Requests of the soak test below: `FAASD_SOAK_REQUESTS` (the issue asks for 2,000; CI runs fewer to stay brief). */
const SOAK_REQUESTS = Number(Deno.env.get("FAASD_SOAK_REQUESTS") ?? "300");

/** Mount points that name `needle` (a namespace's task rootfs, a state directory's scratch). */
async function mountsNaming(needle: string): Promise<string[]> {
  return (await Deno.readTextFile("/proc/self/mountinfo")).split("\n").filter((l) => l.includes(needle));
}

/** Container-level cgroups left under `<root>/<namespace>/<fn>` in every hierarchy. */
function containerCgroups(namespace: string, fn: string): string[] {
  const left: string[] = [];
  const roots = [...Deno.readDirSync("/sys/fs/cgroup")].filter((e) => e.isDirectory).map((e) => e.name);
  for (const dir of ["", ...roots].map((r) => `/sys/fs/cgroup/${r}/${namespace}/${fn}`.replace("//", "/"))) {
    try {
      for (const e of Deno.readDirSync(dir)) if (e.isDirectory) left.push(`${dir}/${e.name}`);
    } catch { /* no such level in this hierarchy */ }
  }
  return left;
}

Deno.test(`${SOAK_REQUESTS} requests leave no task, container, snapshot, lease, shim, mount, cgroup, socket or fd`, async () => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd, { flags: ["--pool-idle", "1s", "--queue-timeout", "120s"] });
  const { url } = await deploy(p, "hello", "hello");
  const idle = async () => {
    assert(await waitUntil(() => p.platform.server.outstanding === 0, 60_000), "everything served and removed");
    assert(await waitUntil(async () => (await shimPids(p.namespace)).length === 0, 10_000), "no shim left");
  };
  // A few requests first, so that what faasd opens once (connections, the function's log) is in the baseline.
  for (let i = 0; i < 3; i++) assertEquals((await curl(url)).status, 200);
  await idle();
  assertEquals(await leftovers(p.client), NONE); // also opens the test's own containerd connection before the baseline
  const fds = openFds();

  let next = 0;
  const failures: string[] = [];
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (next < SOAK_REQUESTS) {
      next++;
      const r = await curl(url, { timeoutS: 120 });
      if (r.exit !== 0 || r.status !== 200 || r.body !== "hello from faasd\n") {
        failures.push(`${r.exit} ${r.status} ${r.body}`);
      }
    }
  }));
  assertEquals(failures, []);
  await idle();
  assertEquals(await leftovers(p.client), NONE);
  // Compared as what is open, not under which number: a containerd connection that was reopened is not a leak.
  const kinds = (list: string[]) => list.map((f) => f.replace(/^\d+ -> /, "").replace(/socket:\[\d+\] /, "")).sort();
  assertEquals(kinds(openFds()), kinds(fds), "faasd's descriptors are back to what they were");
  assertEquals(await mountsNaming(p.namespace), [], "no task rootfs mounted");
  assertEquals(await mountsNaming(p.stateDir), [], "no scratch or image mount");
  assertEquals(containerCgroups(p.namespace, "hello"), [], "no container cgroup");
  const run = [...Deno.readDirSync(`${p.stateDir}/run`)].map((e) => e.name).filter((n) => /\.(sock|log)$/.test(n));
  assertEquals(run, [], "no control socket or output FIFO");
});
