/**
 * Deploy end to end through the control API (in-process handler, real containerd, podman-built images): both
 * tarball formats, the API's shapes, redeploy, delete, restart, and bad input — each bad upload must get a clear
 * error and leave no registry entry, image, lease, ingest, blob or snapshot behind.
 */

import { assert, assertEquals, assertMatch, assertStringIncludes } from "./assert.ts";
import { startContainerd } from "./harness/containerd.ts";
import { buildHandlerImage } from "./harness/images.ts";
import { leftovers, NONE, startTestPlatform, type TestPlatform } from "./harness/platform.ts";
import { importImage } from "../lib/images/import.ts";
import { LABELS, LEGACY_LABELS } from "../lib/labels.ts";
import { curl } from "./curl.ts";
import tar from "tar-stream";

async function fileBody(path: string): Promise<ReadableStream<Uint8Array>> {
  return (await Deno.open(path)).readable;
}

async function deploy(
  p: TestPlatform,
  name: string,
  body: BodyInit,
): Promise<{ status: number; json: Record<string, string> }> {
  const res = await p.request("POST", "/api/new", { headers: { "x-image-name": name }, body });
  return { status: res.status, json: await res.json() };
}

/** A tarball from entries, for hand-made bad input. */
async function makeTar(entries: Array<{ name: string; body?: string; type?: "file" | "symlink"; linkname?: string }>) {
  const pack = tar.pack();
  for (const e of entries) {
    if (e.type === "symlink") pack.entry({ name: e.name, type: "symlink", linkname: e.linkname ?? "/etc/passwd" });
    else pack.entry({ name: e.name }, e.body ?? "");
  }
  pack.finalize();
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  for await (const c of pack as AsyncIterable<Uint8Array>) chunks.push(Uint8Array.from(c));
  return new Uint8Array(await new Blob(chunks).arrayBuffer());
}

/** What containerd holds that a failed deploy could have added: images, blobs and all leftovers. */
async function snapshotOfStore(p: TestPlatform) {
  return {
    images: (await p.client.listImages()).map((i) => i.name).sort(),
    content: (await p.client.listContent()).map((c) => c.digest).sort(),
    committed: (await p.client.listSnapshots("overlayfs")).map((s) => s.name).sort(),
    functions: p.platform.registry.list().map((f) => f.name),
    // A failed USER lookup must leave no mount point (nor mount) behind.
    mountPoints: [...Deno.readDirSync(`${p.stateDir}/mnt`)].map((e) => e.name),
    ...(await leftovers(p.client)),
  };
}

Deno.test("POST /api/new deploys images and the API reports them", async (t) => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const base = p.pool.replace(/0\/24$/, "");
  const dockerTar = await buildHandlerImage("hello");
  const ociTar = await buildHandlerImage("hello", { format: "oci-archive", tag: "localhost/oci-hello:1" });

  await t.step("a docker-archive gets the first address from host .10", async () => {
    const r = await deploy(p, "hello", await fileBody(dockerTar));
    assertEquals(r.status, 201);
    assertEquals(r.json, { name: "hello", ip: `${base}10` });
  });

  await t.step("an OCI archive gets the next address", async () => {
    const r = await deploy(p, "oci", await fileBody(ociTar));
    assertEquals(r.status, 201);
    assertEquals(r.json, { name: "oci", ip: `${base}11` });
  });

  await t.step("GET /api/ip/<name> and GET /api/list have the seed's shapes", async () => {
    assertEquals(await (await p.request("GET", "/api/ip/hello")).json(), { name: "hello", ip: `${base}10` });
    const list = await (await p.request("GET", "/api/list")).json();
    assertEquals(Object.keys(list).sort(), ["hello", "oci"]);
    assertEquals(list.oci.ip, `${base}11`);
    assertEquals(list.oci.image_ref, "localhost/oci-hello:1");
    assertEquals(list.oci.status, "active");
    assertMatch(list.hello.image_ref, /^localhost\/faasd-test-hello:/);
    assertMatch(list.hello.digest, /^sha256:[0-9a-f]{64}$/);
  });

  await t.step("containerd holds each function's image, unpacked, and nothing in progress", async () => {
    const images = (await p.client.listImages()).map((i) => i.name).sort();
    const expected = p.platform.registry.list().map((f) => f.image!.containerdName).sort();
    assertEquals(images, expected);
    for (const name of images) assertMatch(name, /^faasd\.local\/functions\/(hello|oci):[0-9a-f]{16}$/);
    for (const f of p.platform.registry.list()) {
      assert(await p.client.statSnapshot("overlayfs", f.image!.chainId), `snapshot of ${f.name}`);
    }
    assertEquals(await leftovers(p.client), NONE);
  });

  await t.step("redeploying a name replaces its image and keeps its IP", async () => {
    const r = await deploy(p, "hello", await fileBody(ociTar));
    assertEquals(r.status, 200);
    assertEquals(r.json.ip, `${base}10`);
    const list = await (await p.request("GET", "/api/list")).json();
    assertEquals(list.hello.image_ref, "localhost/oci-hello:1");
    // The previous image is gone; each function has exactly its current one.
    const images = (await p.client.listImages()).map((i) => i.name).sort();
    assertEquals(images, p.platform.registry.list().map((f) => f.image!.containerdName).sort());
  });

  await t.step("concurrent deploys of one name are serialised: one IP, one image left", async () => {
    const [a, b] = await Promise.all([
      deploy(p, "twin", await fileBody(dockerTar)),
      deploy(p, "twin", await fileBody(await buildHandlerImage("noread"))),
    ]);
    assertEquals([a.status, b.status].sort(), [200, 201]);
    assertEquals(a.json.ip, b.json.ip);
    const twin = (await p.client.listImages()).filter((i) => i.name.startsWith("faasd.local/functions/twin:"));
    assertEquals(twin.map((i) => i.name), [p.platform.registry.get("twin")!.image!.containerdName]);
    assertEquals((await p.request("DELETE", "/api/functions/twin")).status, 200);
  });

  await t.step("GET /api/ip of an unknown name is a 404 with an error", async () => {
    const res = await p.request("GET", "/api/ip/nope");
    assertEquals(res.status, 404);
    assertStringIncludes((await res.json()).error, "nope");
  });

  await t.step("DELETE removes the function and its image and frees the IP", async () => {
    const res = await p.request("DELETE", "/api/functions/oci");
    assertEquals(res.status, 200);
    assertEquals(await res.json(), { name: "oci", ip: `${base}11`, deleted: true });
    assertEquals((await p.request("GET", "/api/ip/oci")).status, 404);
    assertEquals((await p.request("DELETE", "/api/functions/oci")).status, 404);
    assertEquals((await p.client.listImages()).map((i) => i.name), [
      p.platform.registry.get("hello")!.image!.containerdName,
    ]);
    const again = await deploy(p, "again", await fileBody(dockerTar));
    assertEquals(again.json.ip, `${base}11`);
  });

  await t.step("GET /healthz and /metrics answer", async () => {
    const health = await (await p.request("GET", "/healthz")).json();
    assertEquals(health.status, "ok");
    assertEquals(health.containerd, "1.6.20~ds1");
    const metrics = await (await p.request("GET", "/metrics")).text();
    assertStringIncludes(metrics, 'faasd_deploys_total{outcome="ok"} 6');
  });
});

Deno.test("POST /api/new refuses bad input with a clear error and leaves nothing behind", async (t) => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd, { pool: "127.99.0.0/28", flags: ["--max-image-size", "4MiB"] });
  const good = await Deno.readFile(await buildHandlerImage("hello"));
  const namedUser = await Deno.readFile(await buildHandlerImage("hello", { user: "app" }));
  await deploy(p, "existing", good);
  const before = await snapshotOfStore(p);

  const cases: Array<{ what: string; name?: string; body: BodyInit | null; status: number; error: string }> = [
    { what: "random bytes", body: crypto.getRandomValues(new Uint8Array(64 * 1024)), status: 400, error: "tar" },
    { what: "a truncated tarball", body: good.slice(0, Math.floor(good.length / 2)), status: 400, error: "truncated" },
    {
      what: "an entry with ../",
      body: await makeTar([{ name: "../evil", body: "x" }, { name: "manifest.json", body: "[]" }]),
      status: 400,
      error: "..",
    },
    {
      what: "a layer that links outside the archive",
      body: await makeTar([
        {
          name: "config.json",
          body: JSON.stringify({ rootfs: { type: "layers", diff_ids: ["sha256:" + "a".repeat(64)] } }),
        },
        { name: "evil/layer.tar", type: "symlink", linkname: "/etc/passwd" },
        { name: "manifest.json", body: JSON.stringify([{ Config: "config.json", Layers: ["evil/layer.tar"] }]) },
      ]),
      status: 400,
      error: "links outside the archive",
    },
    {
      what: "a tarball without a manifest",
      body: await makeTar([{ name: "hello.txt", body: "hi" }]),
      status: 400,
      error: "manifest",
    },
    { what: "an image whose USER is not in its /etc/passwd", body: namedUser, status: 400, error: "/etc/passwd" },
    { what: "a missing X-Image-Name header", name: "", body: good, status: 400, error: "X-Image-Name" },
    { what: "an invalid name", name: "Bad_Name", body: good, status: 400, error: "invalid function name" },
    { what: "an empty body", body: null, status: 400, error: "empty body" },
    { what: "an oversized body", body: new Uint8Array(5 * 1024 * 1024), status: 413, error: "limit" },
    {
      what: "an oversized body without Content-Length",
      body: new Blob([new Uint8Array(5 * 1024 * 1024)]).stream(),
      status: 413,
      error: "limit",
    },
  ];
  for (const c of cases) {
    await t.step(`${c.what} is answered ${c.status}`, async () => {
      const headers: Record<string, string> = {};
      if (c.name !== "") headers["x-image-name"] = c.name ?? "bad";
      const res = await p.request("POST", "/api/new", { headers, body: c.body });
      const body = await res.json();
      assertEquals(res.status, c.status, JSON.stringify(body));
      assertStringIncludes(body.error, c.error);
      assertEquals(await snapshotOfStore(p), before);
    });
  }

  await t.step("a full pool (/28 holds 5) is answered 503 and the image is not imported", async () => {
    for (const n of ["b", "c", "d", "e"]) assertEquals((await deploy(p, n, good)).status, 201);
    const full = await snapshotOfStore(p);
    const r = await deploy(p, "f", good);
    assertEquals(r.status, 503);
    assertStringIncludes(r.json.error, "no free IP");
    assertEquals(await snapshotOfStore(p), full);
  });
});

Deno.test("the registry survives a restart of the platform, which reaps orphaned images", async () => {
  await using ctd = await startContainerd();
  const p = await startTestPlatform(ctd);
  const tarball = await buildHandlerImage("hello");
  const r = await deploy(p, "keep", await fileBody(tarball));
  await p.close({ keepState: true });
  // As if a faasd died between importing an image and recording it.
  const orphan = await importImage(p.client, await fileBody(await buildHandlerImage("noread")), {
    name: "orphan",
    maxBytes: 1 << 30,
  });
  // And as if one died midway through an import: its lease is still there.
  await p.client.createLease({ labels: { [LABELS.lease]: "import" } });
  // And what a faasd from before the labels module left: its image and import labels were named `faasd.*`.
  const legacy = await importImage(p.client, await fileBody(await buildHandlerImage("hello")), {
    name: "legacy",
    maxBytes: 1 << 30,
  });
  const record = (await p.client.getImage(legacy.containerdName))!;
  await p.client.updateImage({ ...record, labels: { [LEGACY_LABELS.function]: "legacy" } });
  await p.client.createLease({ labels: { [LEGACY_LABELS.lease]: "import" } });
  assertEquals((await p.client.listImages()).length, 3);
  await using again = await startTestPlatform(ctd, { stateDir: p.stateDir, namespace: p.namespace, pool: p.pool });
  assertEquals(await (await again.request("GET", "/api/ip/keep")).json(), { name: "keep", ip: r.json.ip });
  const images = (await again.client.listImages()).map((i) => i.name);
  assertEquals(images, [again.platform.registry.get("keep")!.image!.containerdName]);
  assertEquals(await again.client.contentInfo(orphan.manifestDigest), null);
  assertEquals(await leftovers(again.client), NONE);
});

Deno.test("a delete that cannot remove the image keeps the function served, and can be retried", async () => {
  await using ctd = await startContainerd();
  await using p = await startTestPlatform(ctd);
  const r = await deploy(p, "sticky", await fileBody(await buildHandlerImage("hello")));
  assertEquals(r.status, 201);
  const url = `http://${r.json.ip}:${p.port}/`;
  assertEquals((await curl(url)).status, 200);

  await ctd.restart(async () => {
    const res = await p.request("DELETE", "/api/functions/sticky");
    assertEquals(res.status, 503);
    assertMatch((await res.json()).error, /containerd/);
  });
  // Nothing was given up: the registry entry, its address and its listener are all still there.
  assertEquals(await (await p.request("GET", "/api/ip/sticky")).json(), { name: "sticky", ip: r.json.ip });
  const again = await curl(url);
  assertEquals([again.exit, again.status, again.body], [0, 200, "hello from faasd\n"]);

  assertEquals((await p.request("DELETE", "/api/functions/sticky")).status, 200);
  assertEquals(await (await p.request("GET", "/api/list")).json(), {});
  assertEquals(await p.client.listImages(), []);
  // The requests' containers are removed after their clients were answered.
  for (let i = 0; i < 100 && p.platform.server.outstanding > 0; i++) await new Promise((r) => setTimeout(r, 100));
  assertEquals(await leftovers(p.client), NONE);
});
