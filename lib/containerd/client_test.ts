import tar from "tar-stream";
import { assert, assertEquals, assertMatch, assertRejects } from "../../tests/assert.ts";
import { startContainerd, testNamespace } from "../../tests/harness/containerd.ts";
import { Code, Containerd, ContainerdError, isAlreadyExists, isNotFound } from "./client.ts";
import { createHash } from "node:crypto";

// One private containerd for this file; every test works in a namespace of its own.
const ctd = await startContainerd();

function sha256(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

function randomBytes(size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(out.subarray(i, Math.min(size, i + 65536)));
  return out;
}

async function* chunks(data: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

/** A client of a fresh namespace, closed (and its namespace emptied of what tests leave) by `using`. */
function client(): Containerd {
  return ctd.client(testNamespace());
}

Deno.test("Containerd.version() answers with the daemon's version", async () => {
  using c = client();
  const v = await c.version();
  assertMatch(v.version, /^1\.\d+/);
});

Deno.test("Containerd.writeBlob() streams a source into the content store and commits it", async () => {
  using c = client();
  const data = randomBytes(3 * 1024 * 1024 + 123);
  // Held by a lease: an unreferenced blob goes at the next GC, which any other test's deletion may start.
  const lease = await c.createLease();
  const written = await c.writeBlob(chunks(data, 50_000), {
    ref: "test-write",
    total: data.length,
    labels: { "faasd.test": "yes" },
    lease,
  });
  assertEquals(written, { digest: sha256(data), size: data.length });
  const info = await c.contentInfo(written.digest);
  assertEquals(info?.size, data.length);
  assertEquals(info?.labels, { "faasd.test": "yes" });
  assertEquals(await c.readBlob(written.digest), data);
  assertEquals((await c.listContent(`labels."faasd.test"==yes`)).map((i) => i.digest), [written.digest]);
  assertEquals(await c.listIngests(), []);
  await c.deleteContent(written.digest);
  assertEquals(await c.contentInfo(written.digest), null);
  await c.deleteLease(lease);
});

Deno.test("Containerd.writeBlob() aborts the ingest on a digest mismatch", async () => {
  using c = client();
  const data = randomBytes(100_000);
  const err = await assertRejects(
    () => c.writeBlob(chunks(data, 10_000), { ref: "test-mismatch", expected: sha256(new Uint8Array(1)) }),
    ContainerdError,
    "containerd Content.Write:",
  ) as ContainerdError;
  assertEquals(err.code, Code.FailedPrecondition);
  assertEquals(err.codeName, "FailedPrecondition");
  assertEquals(await c.listIngests(), []);
  assertEquals(await c.listContent(), []);
});

Deno.test("Containerd.writeBlob() aborts the ingest when the source fails and rethrows its error", async () => {
  using c = client();
  const failure = new Error("upload broke");
  async function* failing() {
    yield randomBytes(3 << 20);
    throw failure;
  }
  const err = await assertRejects(() => c.writeBlob(failing(), { ref: "test-source-fails" }));
  assertEquals(err, failure);
  assertEquals(await c.listIngests(), []);
  assertEquals(await c.listContent(), []);
});

Deno.test("Containerd.writeBlob() returns an existing blob and adds it to the lease", async () => {
  using c = client();
  const data = randomBytes(10_000);
  const holder = await c.createLease();
  const first = await c.writeBlob([data], { ref: "test-first", lease: holder });
  const lease = await c.createLease();
  // Known digest: containerd answers at once; unknown: at commit.
  assertEquals(await c.writeBlob([data], { ref: "test-again", expected: first.digest, lease }), first);
  assertEquals(await c.writeBlob([data], { ref: "test-again2", lease: holder }), first);
  assertEquals(await c.listLeaseResources(lease), [{ id: first.digest, type: "content" }]);
  assertEquals(await c.listIngests(), []);
  // Held by nothing else, the blob goes with the leases.
  await c.deleteLease(holder);
  await c.deleteLease(lease, { sync: true });
  assertEquals(await c.contentInfo(first.digest), null);
});

Deno.test("Containerd.updateContentLabels() merges labels and removes empty ones", async () => {
  using c = client();
  const lease = await c.createLease();
  const { digest } = await c.writeBlob([randomBytes(100)], { ref: "test-labels", labels: { a: "1", b: "2" }, lease });
  const info = await c.updateContentLabels(digest, { b: "", c: "3" });
  assertEquals(info.labels, { a: "1", c: "3" });
  await c.deleteContent(digest);
  await c.deleteLease(lease);
});

Deno.test("Containerd.deleteLease() with sync collects what only the lease held", async () => {
  using c = client();
  const lease = await c.createLease({ labels: { "faasd.test": "lease" }, expireAfterSeconds: 600 });
  const leases = await c.listLeases(`labels."faasd.test"==lease`);
  assertEquals(leases.map((l) => l.id), [lease]);
  assertMatch(leases[0]!.labels["containerd.io/gc.expire"]!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  const { digest } = await c.writeBlob([randomBytes(1000)], { ref: "test-leased", lease });
  assert(await c.contentInfo(digest));
  await c.deleteLease(lease, { sync: true });
  assertEquals(await c.contentInfo(digest), null);
  assertEquals(await c.listLeases(), []);
});

Deno.test("Containerd image records can be created, read, updated, listed and deleted", async () => {
  using c = client();
  const lease = await c.createLease();
  const a = await c.writeBlob([new TextEncoder().encode("{}")], { ref: "test-img-a", lease });
  const target = { mediaType: "application/vnd.oci.image.manifest.v1+json", digest: a.digest, size: a.size };
  const created = await c.createImage({ name: "faasd.local/test:1", target, labels: { x: "1" } });
  await c.deleteLease(lease); // the image record holds the blob now
  assertEquals(created.target, target);
  const dup = await assertRejects(() => c.createImage({ name: "faasd.local/test:1", target }));
  assert(isAlreadyExists(dup));
  await c.updateImage({ name: "faasd.local/test:1", target, labels: { y: "2" } });
  assertEquals((await c.getImage("faasd.local/test:1"))?.labels, { y: "2" });
  assertEquals((await c.listImages()).map((i) => i.name), ["faasd.local/test:1"]);
  await c.deleteImage("faasd.local/test:1", { sync: true });
  assertEquals(await c.getImage("faasd.local/test:1"), null);
  const missing = await assertRejects(() => c.deleteImage("faasd.local/test:1"), ContainerdError, "Images.Delete");
  assert(isNotFound(missing));
  // The synchronous GC of the delete took the unreferenced blob too.
  assertEquals(await c.contentInfo(a.digest), null);
});

Deno.test("Containerd snapshots can be prepared, committed, listed and removed", async () => {
  using c = client();
  const lease = await c.createLease();
  const mounts = await c.prepareSnapshot("overlayfs", "test-active", "", { lease, labels: { "faasd.test": "s" } });
  assert(mounts.length > 0);
  assertEquals((await c.snapshotMounts("overlayfs", "test-active")).length, mounts.length);
  assertEquals((await c.statSnapshot("overlayfs", "test-active"))?.kind, "active");
  await c.commitSnapshot("overlayfs", "test-base", "test-active", { lease });
  assertEquals(await c.statSnapshot("overlayfs", "test-active"), null);
  await c.prepareSnapshot("overlayfs", "test-child", "test-base", { lease });
  const infos = await c.listSnapshots("overlayfs");
  assertEquals(infos.map((s) => [s.name, s.parent, s.kind]).sort(), [
    ["test-base", "", "committed"],
    ["test-child", "test-base", "active"],
  ]);
  await c.removeSnapshot("overlayfs", "test-child");
  await c.removeSnapshot("overlayfs", "test-base");
  await c.deleteLease(lease, { sync: true });
  assertEquals(await c.listSnapshots("overlayfs"), []);
});

/** A static binary that prints a line and exits 3, as a one-file layer tar. */
async function helloLayer(): Promise<Uint8Array> {
  const dir = await Deno.makeTempDir({ prefix: "faasd-client-test-" });
  try {
    await Deno.writeTextFile(
      `${dir}/hello.c`,
      '#include <unistd.h>\nint main(void){ write(1, "hello from runc\\n", 16); return 3; }\n',
    );
    const gcc = await new Deno.Command("gcc", { args: ["-static", "-Os", "-o", `${dir}/hello`, `${dir}/hello.c`] })
      .output();
    assert(gcc.success, new TextDecoder().decode(gcc.stderr));
    const binary = await Deno.readFile(`${dir}/hello`);
    const pack = tar.pack();
    pack.entry({ name: "hello", mode: 0o755, size: binary.length }, binary);
    pack.finalize();
    const parts: Uint8Array[] = [];
    for await (const chunk of pack) parts.push(chunk as Uint8Array);
    return new Uint8Array(await new Blob(parts as BlobPart[]).arrayBuffer());
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("Containerd runs a container: applyDiff, createContainer, createTask, startTask, waitTask", async () => {
  using c = client();
  const lease = await c.createLease();
  const outDir = await Deno.makeTempDir({ prefix: "faasd-client-test-out-" });
  const id = "hello-" + crypto.randomUUID().slice(0, 8);
  try {
    const layer = await helloLayer();
    const blob = await c.writeBlob([layer], { ref: "test-layer", lease });
    const mounts = await c.prepareSnapshot("overlayfs", "test-unpack", "", { lease });
    const applied = await c.applyDiff(
      { mediaType: "application/vnd.oci.image.layer.v1.tar", digest: blob.digest, size: blob.size },
      mounts,
      { lease },
    );
    assertEquals(applied.digest, sha256(layer));
    await c.commitSnapshot("overlayfs", "test-layer", "test-unpack", { lease });
    const rootfs = await c.prepareSnapshot("overlayfs", id, "test-layer", { lease });
    const spec = {
      ociVersion: "1.0.2",
      process: { args: ["/hello"], cwd: "/", env: ["PATH=/"], user: { uid: 0, gid: 0 }, terminal: false },
      root: { path: "rootfs" },
      hostname: "hello",
      mounts: [{ destination: "/proc", type: "proc", source: "proc" }],
      linux: {
        namespaces: [{ type: "pid" }, { type: "mount" }, { type: "ipc" }, { type: "uts" }, { type: "network" }],
      },
    };
    const info = await c.createContainer({
      id,
      labels: { "faasd.test": "run" },
      spec,
      snapshotter: "overlayfs",
      snapshotKey: id,
      runtime: { name: "io.containerd.runc.v2", binaryName: "runc" },
    }, { lease });
    assertEquals(info.runtime.name, "io.containerd.runc.v2");
    assertEquals((await c.listContainers(`labels."faasd.test"==run`)).map((x) => x.id), [id]);
    await assertRejects(() => c.createTask({ containerId: id, rootfs, stdout: `file://${outDir}/out` }), TypeError);
    const pid = await c.createTask({
      containerId: id,
      rootfs,
      stdout: `file://${outDir}/out`,
      stderr: `file://${outDir}/err`,
    });
    assert(pid > 0);
    assertEquals((await c.getTask(id))?.status, "created");
    const exited = c.waitTask(id);
    await c.startTask(id);
    assertEquals((await exited).exitStatus, 3);
    assertEquals((await c.listTasks()).map((t) => [t.containerId, t.status]), [[id, "stopped"]]);
    assertEquals((await c.deleteTask(id)).exitStatus, 3);
    assertEquals(await Deno.readTextFile(`${outDir}/out`), "hello from runc\n");
    await c.deleteContainer(id);
    assertEquals(await c.getContainer(id), null);
  } finally {
    await c.killTask(id, 9, { all: true }).catch(() => {});
    await c.deleteTask(id).catch(() => {});
    await c.deleteContainer(id).catch(() => {});
    await c.deleteLease(lease, { sync: true });
    await Deno.remove(outDir, { recursive: true });
  }
  assertEquals(await c.listSnapshots("overlayfs"), []);
  assertEquals(await c.listContent(), []);
});

Deno.test("Containerd keeps working after containerd restarts", async () => {
  if (ctd.external) return; // cannot restart a daemon we did not start
  using c = client();
  await c.version();
  await ctd.restart();
  assertMatch((await c.version()).version, /^1\./);
  const lease = await c.createLease();
  const { digest } = await c.writeBlob([randomBytes(1000)], { ref: "test-after-restart", lease });
  await c.deleteContent(digest);
  await c.deleteLease(lease);
});

Deno.test("Containerd calls fail with Unavailable when containerd is not there", async () => {
  using c = new Containerd({ address: "/nonexistent/containerd.sock", namespace: "x" });
  const err = await assertRejects(() => c.version(), ContainerdError, "containerd Version.Version:") as ContainerdError;
  assertEquals(err.code, Code.Unavailable);
});

Deno.test("stop the private containerd", async () => {
  await ctd.stop();
});
