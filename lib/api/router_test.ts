/**
 * The control API's settings, through the router as main.ts serves it: query parameters of `POST /api/new`,
 * `PATCH /api/functions/<name>`, and what `GET /api/list` shows. Functions runs on the real registry (in memory)
 * with stand-ins for containerd, the listeners and the host addresses.
 */

import { Secrets } from "../secrets.ts";
import { assert, assertEquals, assertStringIncludes } from "../../tests/assert.ts";
import type { DaemonLimits } from "../config.ts";
import { Functions } from "../functions.ts";
import { IpPool } from "../ipam.ts";
import { Metrics } from "../metrics.ts";
import { type FunctionRecord, Registry } from "../registry.ts";
import type { PoolState } from "./list.ts";
import { createApi } from "./router.ts";
import { deployedImage } from "../../tests/fixtures/deployed.ts";

const MiB = 1024 ** 2;
const limits: DaemonLimits = {
  memoryBytes: 512 * MiB,
  pids: 256,
  cpus: 1,
  scratchBytes: 64 * MiB,
  timeoutMs: 60_000,
  poolMax: 16,
};

/** The API over stand-ins; `bodiesRead` counts uploads the image store read from. */
function api(pool?: PoolState) {
  const registry = new Registry(":memory:");
  const served = new Map<string, FunctionRecord>();
  const state = { bodiesRead: 0 };
  const functions = new Functions({
    registry,
    pool: new IpPool("127.77.0.0/24"),
    images: {
      import: async (name, body) => {
        state.bodiesRead++;
        await new Response(body).arrayBuffer();
        return deployedImage(`example/${name}`, `faasd.local/functions/${name}:1`);
      },
      remove: () => Promise.resolve(),
    },
    serving: { serve: (record) => void served.set(record.name, record), stop: (name) => void served.delete(name) },
    addresses: { ensure: () => Promise.resolve(false), release: () => Promise.resolve() },
  });
  const secretsDir = Deno.makeTempDirSync({ prefix: "faasd-router-test-" });
  const handle = createApi({
    functions,
    metrics: new Metrics(),
    maxImageBytes: 1 << 30,
    limits,
    logPath: () => "/nonexistent",
    probe: () => Promise.resolve({}),
    pool,
    secrets: Secrets.open(secretsDir),
  });
  const request = (method: string, path: string, body?: BodyInit) =>
    handle(new Request(`http://faasd.test${path}`, { method, body, headers: { "x-image-name": "fn" } }));
  const dispose = () => {
    registry.close();
    Deno.removeSync(secretsDir, { recursive: true });
  };
  return { request, registry, served, state, [Symbol.dispose]: dispose };
}

const tarball = () => new Uint8Array(1024);

Deno.test("POST /api/new sets the settings given as query parameters", async () => {
  using a = api();
  const res = await a.request("POST", "/api/new?memory=256MiB&cpu=0.5&pids=64&timeout=30s&rootfs=writable", tarball());
  assertEquals(res.status, 201, await res.clone().text());
  assertEquals(a.registry.get("fn")?.settings, {
    memoryBytes: 256 * MiB,
    cpus: 0.5,
    pids: 64,
    timeoutMs: 30_000,
    rootfs: "writable",
  });
  // A redeploy keeps them, merging in what it sets.
  const again = await a.request("POST", "/api/new?pids=32", tarball());
  assertEquals(again.status, 200, await again.clone().text());
  assertEquals(a.registry.get("fn")?.settings.pids, 32);
  assertEquals(a.registry.get("fn")?.settings.memoryBytes, 256 * MiB);
  assertEquals(a.served.get("fn")?.settings.pids, 32);
});

Deno.test("POST /api/new refuses bad settings with 400 before reading the body", async () => {
  using a = api();
  const cases: [string, string][] = [
    ["?memory=1GiB", "memory 1GiB is above the daemon's --memory-limit of 512MiB"],
    ["?cpu=0", "cpu 0 (no limit) cannot be set for a function"],
    ["?rootfs=rw", 'invalid rootfs "rw"'],
    ["?memroy=64MiB", 'unknown setting "memroy"'],
    ["?pids=8&pids=9", 'query parameter "pids" given twice'],
  ];
  for (const [query, message] of cases) {
    const res = await a.request("POST", `/api/new${query}`, tarball());
    assertEquals(res.status, 400, query);
    assertStringIncludes((await res.json()).error, message);
  }
  assertEquals(a.state.bodiesRead, 0);
  assertEquals(a.registry.list(), []);
});

Deno.test("PATCH /api/functions/NAME merges settings and answers the function's list entry", async () => {
  using a = api();
  await (await a.request("POST", "/api/new?timeout=10s&rootfs=writable", tarball())).body?.cancel();
  const res = await a.request(
    "PATCH",
    "/api/functions/fn",
    JSON.stringify({ memory: "256MiB", cpu: 0.5, timeout: null }),
  );
  assertEquals(res.status, 200);
  const entry = await res.json();
  assertEquals(entry.name, "fn");
  assertEquals(entry.settings, { memory: "256MiB", cpu: 0.5, rootfs: "writable" });
  assertEquals([entry.memory_bytes, entry.cpus, entry.pids, entry.timeout_ms, entry.rootfs], [
    256 * MiB,
    0.5,
    256,
    60_000,
    "writable",
  ]);
  const list = await (await a.request("GET", "/api/list")).json();
  const { name: _, ...listed } = entry;
  assertEquals(list.fn, listed);
  assertEquals(a.served.get("fn")?.settings, { memoryBytes: 256 * MiB, cpus: 0.5, rootfs: "writable" });
});

Deno.test("PATCH /api/functions/NAME answers 400 for a bad body or value and 404 for an unknown function", async () => {
  using a = api();
  await (await a.request("POST", "/api/new?pids=8", tarball())).body?.cancel();
  const cases: [string, number, string][] = [
    ["{", 400, "body is not valid JSON"],
    ["[1]", 400, "body must be a JSON object"],
    ["{}", 400, "nothing to change"],
    ['{"pids": 1000}', 400, "pids 1000 is above the daemon's --pids-limit of 256"],
    ['{"memory": "lots"}', 400, 'invalid size for memory: "lots"'],
    ['{"colour": "red"}', 400, 'unknown setting "colour"'],
    [" ".repeat(65 * 1024), 413, "body over"],
  ];
  for (const [body, status, message] of cases) {
    const res = await a.request("PATCH", "/api/functions/fn", body);
    assertEquals(res.status, status, body.slice(0, 20));
    assertStringIncludes((await res.json()).error, message);
  }
  assertEquals(a.registry.get("fn")?.settings, { pids: 8 });
  const missing = await a.request("PATCH", "/api/functions/nope", '{"pids": 8}');
  assertEquals(missing.status, 404);
  assertEquals((await missing.json()).error, 'no function named "nope"');
});

Deno.test("GET /api/list shows each function's effective limits and what was set for it", async () => {
  using a = api();
  await (await a.request("POST", "/api/new?memory=64MiB&timeout=500ms", tarball())).body?.cancel();
  const list = await (await a.request("GET", "/api/list")).json();
  const fn = list.fn;
  assert(fn, JSON.stringify(list));
  assertEquals(fn.ip, "127.77.0.10");
  assertEquals(fn.status, "active");
  assertEquals([fn.memory_bytes, fn.cpus, fn.pids, fn.timeout_ms, fn.rootfs], [64 * MiB, 1, 256, 500, "readonly"]);
  assertEquals([fn.min_ready, fn.max_ready, fn.ready], [0, 8, 0]);
  assertEquals(fn.settings, { memory: "64MiB", timeout: "500ms" });
});

Deno.test("POST /api/new and PATCH set min_ready and max_ready; the list shows them and what the pool has", async () => {
  const pool: PoolState = {
    ready: (name) => name === "fn" ? 3 : 0,
    status: (name) => name === "fn" ? "failing" : null,
  };
  using a = api(pool);
  const res = await a.request("POST", "/api/new?min_ready=1&max_ready=4", tarball());
  assertEquals(res.status, 201, await res.clone().text());
  assertEquals(a.registry.get("fn")?.settings, { minReady: 1, maxReady: 4 });
  let fn = (await (await a.request("GET", "/api/list")).json()).fn;
  assertEquals([fn.min_ready, fn.max_ready, fn.ready, fn.status], [1, 4, 3, "failing"]);
  assertEquals(fn.settings, { min_ready: 1, max_ready: 4 });

  const patched = await a.request("PATCH", "/api/functions/fn", JSON.stringify({ max_ready: 6, min_ready: null }));
  assertEquals(patched.status, 200);
  const entry = await patched.json();
  assertEquals([entry.min_ready, entry.max_ready, entry.ready, entry.status], [0, 6, 3, "failing"]);
  assertEquals(a.served.get("fn")?.settings, { maxReady: 6 });
  // null returns max_ready to its default.
  await (await a.request("PATCH", "/api/functions/fn", '{"max_ready": null}')).body?.cancel();
  fn = (await (await a.request("GET", "/api/list")).json()).fn;
  assertEquals([fn.min_ready, fn.max_ready, fn.settings], [0, 8, {}]);
});

Deno.test("min_ready and max_ready are refused with 400 when malformed, past --pool-max, or out of order", async () => {
  using a = api();
  const refusedNew: [string, string][] = [
    ["?min_ready=-1", 'invalid min_ready "-1": a whole number of containers, 0 or more'],
    ["?max_ready=1.5", 'invalid max_ready "1.5"'],
    ["?min_ready=x", 'invalid min_ready "x"'],
    ["?max_ready=17", "max_ready 17 is above the daemon's --pool-max of 16"],
    ["?min_ready=3&max_ready=2", "min_ready 3 is above max_ready 2: min_ready must be at most max_ready"],
    ["?min_ready=9", "min_ready 9 is above max_ready 8 (the default)"],
  ];
  for (const [query, message] of refusedNew) {
    const res = await a.request("POST", `/api/new${query}`, tarball());
    assertEquals(res.status, 400, query);
    assertStringIncludes((await res.json()).error, message);
  }
  assertEquals(a.state.bodiesRead, 0);
  assertEquals(a.registry.list(), []);

  await (await a.request("POST", "/api/new?max_ready=2", tarball())).body?.cancel();
  const refusedPatch: [unknown, string][] = [
    [{ min_ready: -1 }, "invalid min_ready -1"],
    [{ min_ready: 1.5 }, "invalid min_ready 1.5"],
    [{ max_ready: "x" }, 'invalid max_ready "x"'],
    [{ min_ready: 20 }, "min_ready 20 is above the daemon's --pool-max of 16"],
    [{ min_ready: 3 }, "min_ready 3 is above max_ready 2 (set before)"],
    [{ min_ready: 4, max_ready: 3 }, "min_ready 4 is above max_ready 3"],
  ];
  for (const [body, message] of refusedPatch) {
    const res = await a.request("PATCH", "/api/functions/fn", JSON.stringify(body));
    assertEquals(res.status, 400, JSON.stringify(body));
    assertStringIncludes((await res.json()).error, message);
  }
  // A redeploy is checked against what the function has, before its body is read.
  const redeploy = await a.request("POST", "/api/new?min_ready=5", tarball());
  assertEquals(redeploy.status, 400);
  assertStringIncludes((await redeploy.json()).error, "min_ready 5 is above max_ready 2 (set before)");
  assertEquals(a.state.bodiesRead, 1);
  assertEquals(a.registry.get("fn")?.settings, { maxReady: 2 });
  // Both at once in order is fine.
  const ok = await a.request("PATCH", "/api/functions/fn", '{"min_ready": 5, "max_ready": 5}');
  assertEquals(ok.status, 200);
  assertEquals([(await ok.json()).min_ready, a.registry.get("fn")?.settings], [5, { minReady: 5, maxReady: 5 }]);
});

Deno.test("the router allows PATCH and DELETE on /api/functions/NAME", async () => {
  using a = api();
  const res = await a.request("PUT", "/api/functions/fn", "{}");
  assertEquals(res.status, 405);
  assertEquals(res.headers.get("allow"), "PATCH, DELETE");
  await res.body?.cancel();
});

Deno.test("POST /api/new takes repeated env and secret parameters, and refuses a missing secret before the body", async () => {
  using a = api();
  const missing = await a.request("POST", "/api/new?secret=db", tarball());
  assertEquals(missing.status, 400);
  assertStringIncludes((await missing.json()).error, 'secret "db" does not exist');
  assertEquals(a.state.bodiesRead, 0);
  for (
    const [query, message] of [["?env=NOEQUALS", "KEY=VALUE"], ["?http_port=0", "http_port"], [
      "?secret=../x",
      "secret name",
    ]]
  ) {
    const res = await a.request("POST", `/api/new${query}`, tarball());
    assertEquals(res.status, 400, query);
    assertStringIncludes((await res.json()).error, message!);
  }
  assertEquals((await a.request("POST", "/api/secrets/db", "pw")).status, 201);
  const res = await a.request("POST", "/api/new?env=A=1&env=B=2&secret=db&http_port=8080", tarball());
  assertEquals(res.status, 201, await res.clone().text());
  assertEquals(a.registry.get("fn")?.settings, { env: { A: "1", B: "2" }, secrets: ["db"], httpPort: 8080 });
  const listed = await (await a.request("GET", "/api/list")).json();
  assertEquals(listed.fn.settings, { http_port: 8080, env: { A: "1", B: "2" }, secrets: ["db"] });
});

Deno.test("/api/secrets stores, lists (names only) and deletes secrets, refusing what it must", async () => {
  using a = api();
  assertEquals((await a.request("POST", "/api/secrets/db-password", "s3cret")).status, 201);
  const again = await a.request("POST", "/api/secrets/db-password", "other");
  assertEquals(again.status, 409);
  assertStringIncludes((await again.json()).error, "exists already");
  assertEquals((await a.request("POST", "/api/secrets/.bad", "x")).status, 400);
  assertEquals((await a.request("POST", "/api/secrets/empty", "")).status, 400);
  assertEquals((await a.request("POST", "/api/secrets/big", new Uint8Array(512 * 1024 + 1))).status, 413);
  const listed = await (await a.request("GET", "/api/secrets")).text();
  assertStringIncludes(listed, '"name":"db-password"');
  assertEquals(listed.includes("s3cret"), false, "a value is never answered");
  await (await a.request("POST", "/api/new?secret=db-password", tarball())).body?.cancel();
  const inUse = await a.request("DELETE", "/api/secrets/db-password");
  assertEquals(inUse.status, 409);
  assertStringIncludes((await inUse.json()).error, "used by fn");
  await (await a.request("DELETE", "/api/functions/fn")).body?.cancel();
  assertEquals((await a.request("DELETE", "/api/secrets/db-password")).status, 200);
  assertEquals((await a.request("DELETE", "/api/secrets/db-password")).status, 404);
  assertEquals(await (await a.request("GET", "/api/secrets")).json(), []);
});
