/**
 * Serving end to end: real listeners, real containers through containerd, the client socket handed over with
 * SCM_RIGHTS; curl as the client. Covers the handler contract and faasd's duties to the client, isolation between
 * requests, the failure answers (502/503/504), concurrency, and that nothing is left behind afterwards.
 */

import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildHandlerImage, type HandlerImageOptions } from "./harness/images.ts";
import { leftovers, NONE, openFds, startTestPlatform, type TestPlatform } from "./harness/platform.ts";
import { curl, type CurlResult } from "./curl.ts";

async function deployMode(
  p: TestPlatform,
  name: string,
  mode: string,
  env?: Record<string, string>,
  options: HandlerImageOptions = {},
): Promise<string> {
  const tarball = await buildHandlerImage(mode, { ...options, ...(env ? { env } : {}) });
  const res = await p.request("POST", "/api/new", {
    headers: { "x-image-name": name },
    body: (await Deno.open(tarball)).readable,
  });
  const body = await res.json();
  if (res.status !== 201) throw new Error(`deploy ${name}: ${res.status} ${JSON.stringify(body)}`);
  return `http://${body.ip}:${p.port}/`;
}

/** Polls until containerd holds nothing from requests (cleanup runs right after the client is answered). */
async function settled(p: TestPlatform): Promise<void> {
  for (let i = 0; i < 100 && p.platform.server.outstanding > 0; i++) await new Promise((r) => setTimeout(r, 100));
  assertEquals(p.platform.server.outstanding, 0);
}

Deno.test("every connection is served by a fresh container that receives the socket", async (t) => {
  await using ctd = await startContainerd();
  // Default timeouts: on a loaded two-core machine, starting 50 containers at once can take seconds. The timeout
  // answers have their own test with short timeouts.
  // They queue for containers; on a loaded two-core machine the last of 50 may wait longer than the default 10 s.
  await using p = await startTestPlatform(ctd, { flags: ["--max-concurrency", "64", "--queue-timeout", "60s"] });
  const urls: Record<string, string> = {};
  for (const mode of ["hello", "noread", "marker", "crash", "exit", "hangup", "big"]) {
    urls[mode] = await deployMode(p, mode, mode);
  }
  const listenerAddr = new URL(urls.hello!).host;
  urls.netprobe = await deployMode(p, "netprobe", "netprobe", { PROBE_ADDR: listenerAddr });
  assertEquals(await leftovers(p.client), NONE); // also opens the test's own containerd connection before counting
  const fdsBefore = openFds();

  await t.step("a hello handler answers", async () => {
    const r = await curl(urls.hello!);
    assertEquals([r.exit, r.status, r.body], [0, 200, "hello from faasd\n"]);
  });

  await t.step("a handler that answers without reading the request gets a clean close (curl exit 0)", async () => {
    const r = await curl(urls.noread!, { data: "x".repeat(200_000) });
    assertEquals(r.exit, 0, r.stderr);
    assertEquals([r.status, r.body], [200, "Hello World!"]);
    const get = await curl(urls.noread!);
    assertEquals([get.exit, get.body], [0, "Hello World!"]);
  });

  await t.step("a large answer arrives whole", async () => {
    const r = await curl(urls.big!);
    assertEquals([r.exit, r.status, r.body.length], [0, 200, 1024 * 1024]);
  });

  await t.step("a request never sees another request's files", async () => {
    for (let i = 0; i < 3; i++) {
      const r = await curl(urls.marker!);
      assertEquals([r.exit, r.status, r.body], [0, 200, "fresh"]);
    }
  });

  await t.step("a handler in its netns cannot open a connection to faasd's listener", async () => {
    const r = await curl(urls.netprobe!);
    assertEquals(r.status, 200);
    assertMatch(r.body, /^blocked: E[A-Z]+/);
  });

  await t.step("a crash after receiving the socket is answered 502", async () => {
    const r = await curl(urls.crash!);
    assertEquals([r.exit, r.status], [0, 502]);
    assertStringIncludes(r.body, "without answering");
  });

  await t.step("containers that exit before connecting open the breaker: a fast 503 that says why", async () => {
    // Failures before the handoff are the pool's to absorb: it starts others, until the breaker opens.
    const r = await curl(urls.exit!);
    assertEquals([r.exit, r.status], [0, 503]);
    assertStringIncludes(r.body, "failing");
    const list = await (await p.request("GET", "/api/list")).json();
    assertEquals(list.exit.status, "failing");
  });

  await t.step("a container that connects, then exits without taking the socket, never answers 200", async () => {
    for (let i = 0; i < 3; i++) {
      const r = await curl(urls.hangup!);
      assertEquals(r.exit, 0);
      // Lost while ready (replaced, and in the end the breaker), or gone between the handoff and its exit.
      assert([502, 503].includes(r.status), `${r.status} ${r.body}`);
    }
  });

  await t.step("50 concurrent requests are all answered", async () => {
    const results = await Promise.all(Array.from({ length: 50 }, () => curl(urls.hello!, { timeoutS: 60 })));
    const failed = results.filter((r) => r.exit !== 0 || r.status !== 200);
    assertEquals(failed.map((r) => `${r.exit} ${r.status} ${r.body}${r.stderr}`), []);
  });

  await t.step("the container output lands in the function's log", async () => {
    const res = await p.request("GET", "/api/logs/hello");
    assertEquals(res.status, 200);
    assertStringIncludes(await res.text(), "handler hello");
  });

  await t.step("afterwards no fd, container, task, snapshot or control socket is left", async () => {
    await settled(p);
    assertEquals(openFds(), fdsBefore);
    assertEquals(await leftovers(p.client), NONE);
    assertEquals([...Deno.readDirSync(`${p.stateDir}/run`)].length, 0);
    // Only root reaches the control sockets: whoever connects first would get the client's connection.
    assertEquals(Deno.statSync(`${p.stateDir}/run`).mode! & 0o777, 0o700);
    const metrics = await (await p.request("GET", "/metrics")).text();
    assertStringIncludes(metrics, 'faasd_requests_total{function="hello",outcome="ok"}');
    assertStringIncludes(metrics, 'faasd_requests_total{function="crash",outcome="empty"} 1');
    assertStringIncludes(metrics, 'faasd_requests_total{function="exit",outcome="failing"} 1');
  });
});

Deno.test("a container that never connects or never answers is answered 504 and killed", async (t) => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd, { flags: ["--connect-timeout", "1s", "--request-timeout", "3s"] });
  const noconnect = await deployMode(p, "noconnect", "noconnect");
  const hang = await deployMode(p, "hang", "hang");
  assertEquals(await leftovers(p.client), NONE);
  const fdsBefore = openFds();

  await t.step("containers that never connect are killed after the connect timeout; the client gets 503", async () => {
    const r = await curl(noconnect);
    assertEquals([r.exit, r.status], [0, 503]);
    // The breaker opens after 5 connect timeouts of 1 s, two starts at a time at least: within the 10 s the
    // connection may wait, unless the machine is very slow.
    assertMatch(r.body, /failing|no container free/);
  });

  await t.step("a handler that hangs is answered 504 after the request timeout", async () => {
    const r = await curl(hang);
    assertEquals([r.exit, r.status], [0, 504]);
    assertStringIncludes(r.body, "did not answer");
  });

  await t.step("both containers were killed and nothing is left", async () => {
    await settled(p);
    assertEquals((await p.client.listTasks()).length, 0);
    assertEquals(openFds(), fdsBefore);
    assertEquals(await leftovers(p.client), NONE);
    const metrics = await (await p.request("GET", "/metrics")).text();
    assertMatch(metrics, /faasd_requests_total\{function="noconnect",outcome="(failing|overloaded)"\} 1/);
    assertStringIncludes(metrics, 'faasd_container_starts_total{function="noconnect",outcome="timeout"}');
    assertStringIncludes(metrics, 'faasd_requests_total{function="hang",outcome="request-timeout"} 1');
  });
});

Deno.test("past the per-function concurrency limit connections wait; past the queue's bounds they get 503", async () => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd, {
    flags: ["--max-concurrency", "1", "--max-queue", "1", "--queue-timeout", "2s"],
  });
  const tarball = await buildHandlerImage("sleep", { args: ["5000"] });
  const res = await p.request("POST", "/api/new", {
    headers: { "x-image-name": "slow" },
    body: (await Deno.open(tarball)).readable,
  });
  const url = `http://${(await res.json()).ip}:${p.port}/`;
  const first = curl(url);
  // The second connection must arrive while the first is being served, however slowly curl starts.
  for (let i = 0; i < 1500 && p.platform.server.serving("slow") === 0; i++) await new Promise((r) => setTimeout(r, 20));
  assertEquals(p.platform.server.serving("slow"), 1, "the first request is served");
  // The second waits in the queue (past its 2 s timeout: the first sleeps 5 s); the third finds the queue full.
  const second = curl(url);
  for (let i = 0; i < 200 && p.platform.server.waiting("slow") < 1; i++) await new Promise((r) => setTimeout(r, 10));
  assertEquals(p.platform.server.waiting("slow"), 1);
  const third = await curl(url);
  assertEquals([third.exit, third.status], [0, 503]);
  assertStringIncludes(third.body, "waiting already");
  const waited = await second;
  assertEquals([waited.exit, waited.status], [0, 503]);
  assertStringIncludes(waited.body, "no container free within 2000 ms");
  assertEquals((await first).status, 200);
  await settled(p);
  assertEquals(await leftovers(p.client), NONE);
});

Deno.test("a deleted function stops accepting connections", async () => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const url = await deployMode(p, "gone", "hello");
  assertEquals((await curl(url)).status, 200);
  assertEquals((await p.request("DELETE", "/api/functions/gone")).status, 200);
  const r = await curl(url, { timeoutS: 5 });
  assert(r.exit !== 0, "connection refused after delete");
});

Deno.test("requests in flight finish across a delete, a redeploy and a containerd restart", async (t) => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const slow = await buildHandlerImage("sleep", { args: ["1500"] });
  const upload = async (name: string, tarball: string) => {
    const res = await p.request("POST", "/api/new", {
      headers: { "x-image-name": name },
      body: (await Deno.open(tarball)).readable,
    });
    return `http://${(await res.json()).ip}:${p.port}/`;
  };
  /** Waits until `n` tasks run, then a little more so that each has its socket (it connects right away). */
  const running = async (n: number) => {
    const count = async () => (await p.client.listTasks()).filter((t) => t.status === "running").length;
    for (let i = 0; i < 100 && await count() < n; i++) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 300));
  };

  await t.step("a request in flight when its function is deleted is answered, then cleaned up", async () => {
    const url = await upload("doomed", slow);
    const pending = curl(url);
    await running(1);
    assertEquals((await p.request("DELETE", "/api/functions/doomed")).status, 200);
    const r = await pending;
    assertEquals([r.exit, r.status, r.body], [0, 200, "slept\n"]);
    await settled(p);
    assertEquals(await leftovers(p.client), NONE);
    assertEquals((await p.client.listImages()).length, 0);
  });

  await t.step("a redeploy while requests flow loses none of them", async () => {
    const url = await upload("rolling", await buildHandlerImage("hello"));
    const results: Promise<CurlResult>[] = [];
    let deploying = true;
    // A steady stream with at most 8 in flight: on a loaded machine requests slow down, and an unbounded stream
    // would run into the concurrency limit (503) rather than test the redeploy.
    const traffic = (async () => {
      while (deploying) {
        if (results.length >= 8) await results[results.length - 8];
        results.push(curl(url));
        await new Promise((r) => setTimeout(r, 40));
      }
    })();
    await upload("rolling", await buildHandlerImage("noread"));
    await upload("rolling", await buildHandlerImage("hello"));
    deploying = false;
    await traffic;
    const all = await Promise.all(results);
    const failed = all.filter((r) => r.exit !== 0 || r.status !== 200);
    assertEquals(failed, []);
    assert(all.length > 3, `only ${all.length} requests`);
    await settled(p);
    assertEquals(await leftovers(p.client), NONE);
  });

  await t.step("a request in flight survives a containerd restart, and serving goes on", async () => {
    if (ctd.external) return; // cannot restart a containerd the tests did not start
    const url = await upload("steady", slow);
    const pending = curl(url);
    await running(1);
    await ctd.restart();
    const r = await pending;
    assertEquals([r.exit, r.status, r.body], [0, 200, "slept\n"]);
    const after = await curl(url);
    assertEquals([after.exit, after.status], [0, 200]);
    await settled(p);
    assertEquals(await leftovers(p.client), NONE);
  });
});

Deno.test("the OCI runtime is configurable; one that fails opens the breaker (503) and leaves nothing", async (t) => {
  await using ctd = await startContainerd();
  const runc = new TextDecoder().decode(
    (await new Deno.Command("sh", { args: ["-c", "command -v runc"], stdout: "piped" }).output()).stdout,
  ).trim();
  for (const [runtime, status] of [[runc, 200], ["/nonexistent/runtime", 503]] as const) {
    await t.step(`--runtime ${runtime} answers ${status}`, async () => {
      await using p = await startTestPlatform(ctd, { flags: ["--runtime", runtime] });
      const url = await deployMode(p, "rt", "hello");
      const r = await curl(url);
      assertEquals([r.exit, r.status], [0, status], r.body);
      await settled(p);
      assertEquals(await leftovers(p.client), NONE);
      assertEquals([...Deno.readDirSync(`${p.stateDir}/run`)].length, 0);
    });
  }
});

Deno.test("the image's USER is resolved through its own /etc/passwd and /etc/group", async (t) => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const files = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    "etc/group": "root:x:0:\napp:x:1000:\nstaff:x:50:app\naudio:x:63:app\n",
  };
  let deployed = 0;
  const ids = async (user: string) => {
    const url = await deployMode(p, `whoami-${++deployed}`, "echo-env", undefined, { files, user });
    const r = await curl(url);
    assertEquals([r.exit, r.status], [0, 200], r.body);
    const { uid, gid, groups } = JSON.parse(r.body);
    return { uid, gid, groups };
  };

  await t.step("a name runs as its uid, primary group and supplementary groups", async () => {
    assertEquals(await ids("app"), { uid: 1000, gid: 1000, groups: [50, 63] });
  });

  await t.step("a name with a group runs with that group only", async () => {
    assertEquals(await ids("app:staff"), { uid: 1000, gid: 50, groups: [] });
  });

  await t.step("a numeric uid takes its primary group from passwd", async () => {
    assertEquals(await ids("1000"), { uid: 1000, gid: 1000, groups: [50, 63] });
  });

  await t.step("a user the image does not know is refused at deploy, leaving nothing", async () => {
    const tarball = await buildHandlerImage("echo-env", { files, user: "ghost" });
    const res = await p.request("POST", "/api/new", {
      headers: { "x-image-name": "ghost" },
      body: (await Deno.open(tarball)).readable,
    });
    assertEquals(res.status, 400);
    assertStringIncludes((await res.json()).error, `"ghost" is not in the image's /etc/passwd`);
  });

  await t.step("the lookups left no view, mount or directory behind", async () => {
    await settled(p);
    const snapshots = (await p.client.listSnapshots("overlayfs")).filter((s) => s.kind !== "committed");
    assertEquals(snapshots.map((s) => s.name), []);
    assertEquals(Deno.readTextFileSync("/proc/self/mountinfo").includes(`${p.stateDir}/mnt/`), false);
    assertEquals([...Deno.readDirSync(`${p.stateDir}/mnt`)], []);
    assertEquals(await leftovers(p.client), NONE);
  });
});

Deno.test("each container is held to --memory-limit and --pids-limit", async (t) => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd, { flags: ["--memory-limit", "64MiB", "--pids-limit", "32"] });
  const deploy = async (name: string, mode: string, args: string[]) => {
    const tarball = await buildHandlerImage(mode, { args });
    const res = await p.request("POST", "/api/new", {
      headers: { "x-image-name": name },
      body: (await Deno.open(tarball)).readable,
    });
    assertEquals(res.status, 201);
    return `http://${(await res.json()).ip}:${p.port}/`;
  };

  await t.step("fork() fails once the pids limit is reached", async () => {
    const r = await curl(await deploy("forker", "fork", ["1000"]));
    assertEquals([r.exit, r.status], [0, 200]);
    const forked = Number(/^forked (\d+)\n$/.exec(r.body)?.[1]);
    assert(forked > 0 && forked < 32, r.body);
  });

  await t.step("a container within the memory limit answers; one past it is killed and answered 502", async () => {
    const small = await curl(await deploy("small", "alloc", ["16"]));
    assertEquals([small.exit, small.status, small.body], [0, 200, "allocated 16 MiB\n"]);
    const big = await curl(await deploy("hog", "alloc", ["256"]));
    assertEquals([big.exit, big.status], [0, 502]);
  });

  await t.step("nothing is left", async () => {
    await settled(p);
    assertEquals(await leftovers(p.client), NONE);
  });
});
