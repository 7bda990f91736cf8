/**
 * Image import against a real containerd: podman-built tarballs in both layouts, hand-assembled variants (gzip
 * layers, gzipped archive) and broken ones, each of which must fail clearly and leave nothing behind.
 */

import zlib from "node:zlib";
import tar from "tar-stream";
import { assert, assertEquals, assertMatch, assertRejects, assertStringIncludes } from "./assert.ts";
import { EMPTY_NAMESPACE, namespaceContents, startContainerd, testNamespace } from "./harness/containerd.ts";
import { buildHandlerImage, buildPaddedImage } from "./harness/images.ts";
import type { Containerd } from "../lib/containerd/client.ts";
import {
  containerdImageName,
  ImageImportError,
  ImageTooLargeError,
  importImage,
  MAX_LAYERS,
  removeImage,
  TooManyLayersError,
} from "../lib/images/import.ts";
import { LABELS } from "../lib/labels.ts";
import { statusOf } from "../lib/api/http.ts";
import { chainIds, sha256Digest } from "../lib/images/digest.ts";
import { concatBytes } from "../lib/bytes.ts";

const ctd = await startContainerd();
const MAX = 1 << 30;

// --- tarball helpers ---

interface TarFile {
  header: tar.Header;
  data: Uint8Array;
}

async function readTar(bytes: Uint8Array): Promise<TarFile[]> {
  const extract = tar.extract();
  const files: TarFile[] = [];
  const done = (async () => {
    for await (const entry of extract) {
      const parts: Uint8Array[] = [];
      for await (const chunk of entry) parts.push(chunk as Uint8Array);
      files.push({ header: entry.header, data: concatBytes(parts) });
    }
  })();
  extract.end(bytes);
  await done;
  return files;
}

async function packTar(files: TarFile[]): Promise<Uint8Array> {
  const pack = tar.pack();
  const out = (async () => {
    const parts: Uint8Array[] = [];
    for await (const chunk of pack) parts.push(chunk as Uint8Array);
    return concatBytes(parts);
  })();
  for (const f of files) {
    await new Promise<void>((resolve, reject) => {
      const { name, type, linkname, mode } = f.header;
      const header = { name, type, linkname, mode, size: type === "file" ? f.data.length : 0 };
      const done = (err?: Error | null) => err ? reject(err) : resolve();
      if (type === "file") pack.entry(header, f.data, done);
      else pack.entry(header, done).end(undefined);
    });
  }
  pack.finalize();
  return await out;
}

async function gzip(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as BlobPart]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** A body delivering `data` in small chunks, as an upload does. */
function body(data: Uint8Array, chunk = 16 * 1024): ReadableStream<Uint8Array> {
  return countingBody(data, chunk).stream;
}

/** {@linkcode body}, telling how many bytes the reader has pulled from it so far. */
function countingBody(data: Uint8Array, chunk = 16 * 1024): { stream: ReadableStream<Uint8Array>; pulled(): number } {
  let at = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (at >= data.length) return controller.close();
      controller.enqueue(data.slice(at, at + chunk));
      at = Math.min(at + chunk, data.length);
    },
  });
  return { stream, pulled: () => at };
}

function file(name: string, data: Uint8Array | string): TarFile {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  return { header: { name, type: "file", mode: 0o644 } as tar.Header, data: bytes };
}

const text = (t: TarFile) => new TextDecoder().decode(t.data);

/** The podman docker-archive of the test handler image, as entries. */
async function dockerArchive(mode = "hello"): Promise<TarFile[]> {
  return await readTar(await Deno.readFile(await buildHandlerImage(mode)));
}

function manifestOf(files: TarFile[]): { Config: string; Layers: string[]; RepoTags?: string[] }[] {
  return JSON.parse(text(files.find((f) => f.header.name === "manifest.json")!));
}

function replaceManifest(files: TarFile[], manifest: unknown): TarFile[] {
  return [...files.filter((f) => f.header.name !== "manifest.json"), file("manifest.json", JSON.stringify(manifest))];
}

// --- containerd state helpers ---

const leftovers = namespaceContents;
const NOTHING = EMPTY_NAMESPACE;

async function withClient(fn: (c: Containerd) => Promise<void>): Promise<void> {
  using c = ctd.client(testNamespace());
  try {
    await fn(c);
  } finally {
    for (const image of await c.listImages()) await removeImage(c, image.name);
  }
}

/** Asserts the imported image is in containerd: record, labelled blobs, committed snapshot chain. */
async function assertImported(
  c: Containerd,
  imported: Awaited<ReturnType<typeof importImage>>,
  name: string,
  layerCount: number,
) {
  assertEquals(imported.containerdName, containerdImageName(name, imported.manifestDigest));
  const record = await c.getImage(imported.containerdName);
  assert(record, "image record exists");
  assertEquals(record.target.digest, imported.manifestDigest);
  assertEquals(record.labels[LABELS.function], name);
  const config = await c.contentInfo(imported.configDigest);
  assertEquals(config?.labels["containerd.io/gc.ref.snapshot.overlayfs"], imported.chainId);
  const manifest = await c.contentInfo(imported.manifestDigest);
  assertEquals(manifest?.labels["containerd.io/gc.ref.content.config"], imported.configDigest);
  // Walk the chain from the top: every snapshot committed, `layerCount` deep.
  let depth = 0;
  for (let key = imported.chainId; key; depth++) {
    const info = await c.statSnapshot("overlayfs", key);
    assertEquals(info?.kind, "committed");
    key = info!.parent;
  }
  assertEquals(depth, layerCount);
  assertEquals(await c.listLeases(), [], "the import lease is gone");
  assertEquals(await c.listIngests(), []);
}

// --- imports that work ---

Deno.test("importImage() imports a podman docker-archive", async () => {
  await withClient(async (c) => {
    const tarball = await buildHandlerImage("hello");
    const imported = await importImage(c, (await Deno.open(tarball)).readable, { name: "hello", maxBytes: MAX });
    await assertImported(c, imported, "hello", 1);
    assertMatch(imported.imageRef, /^localhost\/faasd-test-hello:/);
    assertEquals(imported.config.entrypoint, ["/handler"]);
    assertEquals(imported.config.cmd, ["hello"]);
    assertEquals((await c.getImage(imported.containerdName))?.target.mediaType, DOCKER_MANIFEST);
  });
});

const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";

Deno.test("importImage() imports a podman oci-archive", async () => {
  await withClient(async (c) => {
    const tarball = await buildHandlerImage("echo-env", {
      format: "oci-archive",
      env: { GREETING: "hi" },
      workdir: "/srv",
    });
    const imported = await importImage(c, (await Deno.open(tarball)).readable, { name: "oci", maxBytes: MAX });
    await assertImported(c, imported, "oci", 1);
    assertMatch(imported.imageRef, /^localhost\/faasd-test-echo-env:/);
    assert(imported.config.env.includes("GREETING=hi"));
    assertEquals(imported.config.workingDir, "/srv");
    assertEquals(
      (await c.getImage(imported.containerdName))?.target.mediaType,
      "application/vnd.oci.image.manifest.v1+json",
    );
  });
});

Deno.test("importImage() unpacks a multi-layer image into a snapshot chain named by chain ids", async () => {
  await withClient(async (c) => {
    const files = await readTar(await Deno.readFile(await buildPaddedImage(1)));
    const config = JSON.parse(text(files.find((f) => f.header.name === manifestOf(files)[0]!.Config)!));
    const imported = await importImage(c, body(await packTar(files)), { name: "padded", maxBytes: MAX });
    await assertImported(c, imported, "padded", 2);
    assertEquals(imported.chainId, chainIds(config.rootfs.diff_ids).at(-1));
  });
});

Deno.test("importImage() accepts gzip-compressed layers in a gzipped archive", async () => {
  await withClient(async (c) => {
    const files = await dockerArchive();
    const [entry] = manifestOf(files);
    const layers: string[] = [];
    const rewritten: TarFile[] = [];
    for (const f of files) {
      if (entry!.Layers.includes(f.header.name)) {
        const name = `${f.header.name}.gz`;
        rewritten.push(file(name, await gzip(f.data)));
        layers.push(name);
      } else if (f.header.type === "file") rewritten.push(f);
    }
    const archive = await gzip(await packTar(replaceManifest(rewritten, [{ ...entry, Layers: layers }])));
    const imported = await importImage(c, body(archive), { name: "gzipped", maxBytes: MAX });
    await assertImported(c, imported, "gzipped", 1);
    const manifest = JSON.parse(new TextDecoder().decode(await c.readBlob(imported.manifestDigest)));
    assertEquals(manifest.layers[0].mediaType, "application/vnd.docker.image.rootfs.diff.tar.gzip");
  });
});

Deno.test("importImage() tells a gzipped archive whose upload starts with a 1-byte chunk", async () => {
  await withClient(async (c) => {
    const archive = await gzip(await Deno.readFile(await buildHandlerImage("hello")));
    const first = archive.slice(0, 1);
    const rest = body(archive.slice(1));
    const stream = new ReadableStream<Uint8Array>({
      start: (controller) => controller.enqueue(first),
      pull: async (controller) => {
        const reader = rest.getReader();
        for (let r = await reader.read(); !r.done; r = await reader.read()) controller.enqueue(r.value);
        controller.close();
      },
    });
    const imported = await importImage(c, stream, { name: "trickle", maxBytes: MAX });
    await assertImported(c, imported, "trickle", 1);
  });
});

Deno.test("importImage() of a redeployed function adds a record; removing the old one collects it", async () => {
  await withClient(async (c) => {
    const first = await importImage(c, (await Deno.open(await buildHandlerImage("hello"))).readable, {
      name: "fn",
      maxBytes: MAX,
    });
    const second = await importImage(c, (await Deno.open(await buildHandlerImage("echo"))).readable, {
      name: "fn",
      maxBytes: MAX,
    });
    assert(first.configDigest !== second.configDigest);
    // Both records exist until the caller switches over, so requests in flight keep their snapshots.
    assertEquals(
      (await c.listImages()).map((i) => i.name).sort(),
      [first.containerdName, second.containerdName].sort(),
    );
    assert(await removeImage(c, first.containerdName));
    assertEquals((await c.listImages()).map((i) => [i.name, i.target.digest]), [
      [containerdImageName("fn", second.manifestDigest), second.manifestDigest],
    ]);
    assertEquals(await c.contentInfo(first.configDigest), null, "old config collected");
    assertEquals(await c.contentInfo(first.manifestDigest), null, "old manifest collected");
    // What is left is exactly the new image: its manifest, config and layer, its one snapshot.
    const left = await leftovers(c);
    assertEquals(left.snapshots, [second.chainId]);
    assertEquals(left.content.length, 3);
    assert(left.content.includes(second.manifestDigest) && left.content.includes(second.configDigest));
  });
});

Deno.test("importImage() gives two functions with the same tarball separate image records", async () => {
  await withClient(async (c) => {
    const tarball = await buildHandlerImage("hello");
    const a = await importImage(c, (await Deno.open(tarball)).readable, { name: "a", maxBytes: MAX });
    const b = await importImage(c, (await Deno.open(tarball)).readable, { name: "b", maxBytes: MAX });
    assertEquals((await c.listImages()).map((i) => i.name).sort(), [
      containerdImageName("a", a.manifestDigest),
      containerdImageName("b", b.manifestDigest),
    ]);
    assert(await removeImage(c, a.containerdName));
    // b still holds everything.
    assert(await c.contentInfo(b.configDigest));
    assert(await c.statSnapshot("overlayfs", b.chainId));
  });
});

Deno.test("removeImage() deletes the record, and its content and snapshots go with it", async () => {
  using c = ctd.client(testNamespace());
  const imported = await importImage(c, (await Deno.open(await buildHandlerImage("hello"))).readable, {
    name: "gone",
    maxBytes: MAX,
  });
  assertEquals(await removeImage(c, imported.containerdName), true);
  assertEquals(await leftovers(c), NOTHING);
  assertEquals(await removeImage(c, imported.containerdName), false);
});

Deno.test("importImage() keeps working after containerd restarts", async () => {
  if (ctd.external) return;
  await withClient(async (c) => {
    await c.version();
    await ctd.restart();
    const imported = await importImage(c, (await Deno.open(await buildHandlerImage("hello"))).readable, {
      name: "restarted",
      maxBytes: MAX,
    });
    await assertImported(c, imported, "restarted", 1);
  });
});

// --- imports that must fail, leaving nothing ---

/** Asserts the import of `archive` fails with `message`, leaving nothing; returns the error and the bytes read. */
async function assertFails(
  archive: Uint8Array | Promise<Uint8Array>,
  message: RegExp,
  options: {
    maxBytes?: number;
    maxEntries?: number;
    maxLayers?: number;
    cls?: Parameters<typeof assertRejects>[1];
  } = {},
): Promise<{ error: ImageImportError; pulled: number }> {
  const bytes = await archive;
  using c = ctd.client(testNamespace());
  const upload = countingBody(bytes);
  const error = await assertRejects(
    () =>
      importImage(c, upload.stream, {
        name: "bad",
        maxBytes: options.maxBytes ?? MAX,
        maxEntries: options.maxEntries,
        maxLayers: options.maxLayers,
      }),
    options.cls ?? ImageImportError,
  ) as ImageImportError;
  assertMatch(error.message, message);
  assertEquals(await leftovers(c), NOTHING);
  return { error, pulled: upload.pulled() };
}

Deno.test("importImage() rejects random bytes", async () => {
  const junk = new Uint8Array(64 * 1024);
  crypto.getRandomValues(junk);
  await assertFails(junk, /not a valid tar file/);
});

Deno.test("importImage() rejects a truncated tarball, aborting the blob it was writing", async () => {
  const tarball = await Deno.readFile(await buildPaddedImage(1));
  // Cut inside the padding layer, the biggest entry.
  await assertFails(tarball.slice(0, Math.floor(tarball.length * 0.7)), /truncated/);
});

Deno.test("importImage() rejects an entry that climbs out with ../", async () => {
  const files = await dockerArchive();
  await assertFails(packTar([...files, file("../escape", "x")]), /outside the archive/);
});

Deno.test("importImage() rejects an entry with an absolute path", async () => {
  const files = await dockerArchive();
  // tar-stream's pack strips nothing, so the name reaches the parser as written.
  await assertFails(packTar([file("/etc/evil", "x"), ...files]), /absolute path/);
});

Deno.test("importImage() follows a layer linked inside the archive, as older docker save writes duplicates", async () => {
  const files = await dockerArchive();
  // podman's archive carries a legacy `<id>/layer.tar` symlink to the real layer: name it as the layer.
  const link = files.find((f) => f.header.type === "symlink")!;
  const [entry] = manifestOf(files);
  await withClient(async (c) => {
    const bytes = await packTar(replaceManifest(files, [{ ...entry, Layers: [link.header.name] }]));
    const imported = await importImage(c, body(bytes), { name: "linked", maxBytes: MAX });
    await assertImported(c, imported, "linked", 1);
  });
});

Deno.test("importImage() rejects a layer linking outside the archive or to nothing", async () => {
  const files = await dockerArchive();
  const [entry] = manifestOf(files);
  const link = (name: string, linkname: string) => ({
    header: { name, type: "symlink", linkname } as tar.Header,
    data: new Uint8Array(),
  });
  const withLayer = (name: string) => replaceManifest(files, [{ ...entry, Layers: [name] }]);
  await assertFails(packTar([...withLayer("evil/layer.tar"), link("evil/layer.tar", "../../etc/passwd")]), /outside/);
  await assertFails(packTar([...withLayer("abs/layer.tar"), link("abs/layer.tar", "/etc/passwd")]), /outside/);
  await assertFails(packTar([...withLayer("gone/layer.tar"), link("gone/layer.tar", "../nothing.tar")]), /missing/);
  await assertFails(
    packTar([
      ...withLayer("a/layer.tar"),
      link("a/layer.tar", "../b/layer.tar"),
      link("b/layer.tar", "../a/layer.tar"),
    ]),
    /too many links/,
  );
});

Deno.test("importImage() rejects a manifest.json that is a symlink", async () => {
  const files = (await dockerArchive()).filter((f) => f.header.name !== "manifest.json");
  const link = {
    header: { name: "manifest.json", type: "symlink", linkname: "/etc/passwd" } as tar.Header,
    data: new Uint8Array(),
  };
  await assertFails(packTar([...files, link]), /manifest.json is a symlink entry/);
});

Deno.test("importImage() rejects an oversized body with ImageTooLargeError", async () => {
  const tarball = await Deno.readFile(await buildHandlerImage("hello"));
  await assertFails(tarball, /larger than the limit of 100000 bytes/, { maxBytes: 100_000, cls: ImageTooLargeError });
});

Deno.test("importImage() stops a gzip bomb at maxBytes of inflated tar", async () => {
  // 256 MiB of zeros gzip to ~256 KiB: the limit applies to what the archive inflates to.
  const zeros = new Uint8Array(256 * 1024 * 1024);
  await assertFails(gzip(zeros), /larger than the limit/, { maxBytes: 8 << 20, cls: ImageTooLargeError });
});

/**
 * The hello image with its layer replaced by `layer` (named `bomb.tar.*`), listed `times` times; the config's diff
 * ids say `diffId` (default: the layer's own digest, right for an uncompressed layer).
 */
async function withLayer(layer: Uint8Array, ext: string, opts: { times?: number; diffId?: string } = {}) {
  const files = await dockerArchive();
  const [entry] = manifestOf(files);
  const config = files.find((f) => f.header.name === entry!.Config)!;
  const json = JSON.parse(text(config));
  const times = opts.times ?? 1;
  json.rootfs.diff_ids = Array(times).fill(opts.diffId ?? sha256Digest(layer));
  const kept = files.filter((f) => f.header.type === "file" && f !== config && !entry!.Layers.includes(f.header.name));
  const name = `bomb.tar.${ext}`;
  return await packTar(
    replaceManifest([...kept, file(entry!.Config, JSON.stringify(json)), file(name, layer)], [{
      ...entry,
      Layers: Array(times).fill(name),
    }]),
  );
}

Deno.test("importImage() stops a gzip layer that would unpack past maxBytes", async () => {
  // 64 MiB of zeros in a layer gzip to ~64 KiB; the archive itself is far under the limit.
  const layer = await gzip(await packTar([file("zeros", new Uint8Array(64 << 20))]));
  assert(layer.length < 1 << 20);
  await assertFails(withLayer(layer, "gz"), /unpacks to more than the limit/, {
    maxBytes: 8 << 20,
    cls: ImageTooLargeError,
  });
});

Deno.test("importImage() counts a layer as often as the manifest applies it", async () => {
  const layer = await packTar([file("data", crypto.getRandomValues(new Uint8Array(65536)))]);
  // 10 × 64 KiB of unpacked layers from an upload of one: over a 400 KiB limit, under it once.
  await assertFails(withLayer(layer, "plain", { times: 10 }), /unpacks to more than the limit/, {
    maxBytes: 400 << 10,
    cls: ImageTooLargeError,
  });
});

Deno.test("importImage() refuses layers it cannot vouch for: zstd, sparse files, broken gzip", async () => {
  const tar = await packTar([file("a", "a")]);
  await assertFails(withLayer(zlib.zstdCompressSync(tar), "zst"), /layer 1 .* is zstd-compressed/);
  const dir = await Deno.makeTempDir();
  try {
    using holes = await Deno.open(`${dir}/holes`, { create: true, write: true });
    await holes.truncate(1 << 30);
    const sparse = await new Deno.Command("tar", {
      args: ["-S", "--format=posix", "-C", dir, "-cf", "-", "holes"],
      stdout: "piped",
    }).output();
    await assertFails(withLayer(sparse.stdout, "sparse"), /layer 1 .* holds a sparse file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const junk = crypto.getRandomValues(new Uint8Array(32 * 1024));
  junk.set([0x1f, 0x8b, 8, 0]);
  await assertFails(withLayer(junk, "gz"), /layer 1 .* is not valid gzip/);
});

Deno.test("importImage() abandons an upload that stalls", async () => {
  const tarball = await Deno.readFile(await buildHandlerImage("hello"));
  using c = ctd.client(testNamespace());
  let sent = false;
  const stalling = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (!sent) controller.enqueue(tarball.slice(0, tarball.length / 2));
      sent = true;
      return new Promise(() => {}); // and then nothing, ever
    },
  });
  const err = await assertRejects(
    () => importImage(c, stalling, { name: "stalled", maxBytes: MAX, stallMs: 300 }),
    ImageImportError,
  );
  assertMatch(err.message, /stalled/);
  assertEquals(await leftovers(c), NOTHING);
});

Deno.test("importImage() rejects an archive without manifest", async () => {
  const files = await dockerArchive();
  await assertFails(
    packTar(files.filter((f) => f.header.name !== "manifest.json")),
    /neither manifest.json .* nor index.json/,
  );
});

Deno.test("importImage() rejects a manifest naming a missing layer", async () => {
  const files = await dockerArchive();
  const [entry] = manifestOf(files);
  await assertFails(
    packTar(replaceManifest(files, [{ ...entry, Layers: ["nope.tar"] }])),
    /layer 1 "nope.tar" is missing from the archive/,
  );
});

Deno.test("importImage() rejects a layer whose content differs from the config's diff id", async () => {
  const files = await dockerArchive();
  const [entry] = manifestOf(files);
  const configFile = files.find((f) => f.header.name === entry!.Config)!;
  const config = JSON.parse(text(configFile));
  config.rootfs.diff_ids[0] = sha256Digest("something else");
  const rewritten = files.map((f) => f === configFile ? file(f.header.name, JSON.stringify(config)) : f);
  await assertFails(packTar(rewritten), /layer 1 unpacks to sha256:[0-9a-f]+, but the image config says/);
});

Deno.test("importImage() does not hand out another image's unpacked layers to a forged upload", async () => {
  await withClient(async (c) => {
    const victim = await importImage(c, (await Deno.open(await buildHandlerImage("hello"))).readable, {
      name: "victim",
      maxBytes: MAX,
    });
    // An upload claiming the victim's diff ids (so its chain ids) for layers of its own, plain and gzipped.
    const files = await dockerArchive("noread");
    const [entry] = manifestOf(files);
    const configFile = files.find((f) => f.header.name === entry!.Config)!;
    const config = JSON.parse(text(configFile));
    const victimConfig = JSON.parse(new TextDecoder().decode(await c.readBlob(victim.configDigest)));
    config.rootfs.diff_ids = victimConfig.rootfs.diff_ids;
    for (const compress of [false, true]) {
      const rewritten: TarFile[] = [];
      const layers: string[] = [];
      for (const f of files) {
        if (f === configFile) rewritten.push(file(f.header.name, JSON.stringify(config)));
        else if (entry!.Layers.includes(f.header.name) && compress) {
          rewritten.push(file(`${f.header.name}.gz`, await gzip(f.data)));
          layers.push(`${f.header.name}.gz`);
        } else {
          rewritten.push(f);
          if (entry!.Layers.includes(f.header.name)) layers.push(f.header.name);
        }
      }
      const forged = await packTar(replaceManifest(rewritten, [{ ...entry, Layers: layers }]));
      const err = await assertRejects(
        () => importImage(c, body(forged), { name: "thief", maxBytes: MAX }),
        ImageImportError,
      );
      assertMatch(err.message, /layer 1 unpacks to sha256:[0-9a-f]+, but the image config says/);
    }
    assertEquals((await c.listImages()).map((i) => i.name), [victim.containerdName]);
  });
});

Deno.test("importImage() rejects an OCI blob whose content does not match its name", async () => {
  const files = await readTar(await Deno.readFile(await buildHandlerImage("hello", { format: "oci-archive" })));
  const victim = files.find((f) => f.header.name.startsWith("blobs/sha256/") && f.data.length > 1000)!;
  const tampered = files.map((f) => f === victim ? file(f.header.name, f.data.slice(1)) : f);
  await assertFails(packTar(tampered), /does not match its name's digest or size/);
});

Deno.test("importImage() rejects an archive with too many entries", async () => {
  const files = await dockerArchive();
  await assertFails(packTar(files), /more than 3 entries/, { maxEntries: 3 });
});

/** The hello image plus `extra` layers (`etc/passwd` in the top one) and `USER app`. */
async function withManyLayers(extra: number): Promise<Uint8Array> {
  const files = await dockerArchive();
  const [entry] = manifestOf(files);
  const config = files.find((f) => f.header.name === entry!.Config)!;
  const json = JSON.parse(text(config));
  const added: TarFile[] = [];
  for (let i = 0; i < extra; i++) {
    const top = i === extra - 1;
    added.push(file(`extra${i}.tar`, await packTar([file(top ? "etc/passwd" : `f${i}`, "app:x:1000:1000::/:/x\n")])));
  }
  json.rootfs.diff_ids = [...json.rootfs.diff_ids, ...added.map((f) => sha256Digest(f.data))];
  json.config.User = "app";
  const kept = files.filter((f) => f.header.type === "file" && f !== config);
  return await packTar(
    replaceManifest([...kept, file(entry!.Config, JSON.stringify(json)), ...added], [{
      ...entry,
      Layers: [...entry!.Layers, ...added.map((f) => f.header.name)],
    }]),
  );
}

Deno.test("importImage() resolves a named USER in a many-layer image, and says so when there are too many", async () => {
  await withClient(async (c) => {
    const imported = await importImage(c, body(await withManyLayers(20)), { name: "layered", maxBytes: MAX });
    assertEquals(imported.config.resolvedUser, { uid: 1000, gid: 1000, additionalGids: [] });
  });
  await assertFails(withManyLayers(80), /too many layers to mount; use a numeric USER/);
});

// --- the layer limit ---

/**
 * A docker-archive of `count` one-file layers (distinct: `l<i>/layer.tar` holding `f<i>`) whose config runs `/x`,
 * written as docker save writes it, manifest.json last, unless `manifestFirst`. Nothing in it could run: it is only
 * imported.
 */
async function layeredArchive(count: number, opts: { manifestFirst?: boolean } = {}): Promise<Uint8Array> {
  const layers: TarFile[] = [];
  for (let i = 0; i < count; i++) layers.push(file(`l${i}/layer.tar`, await packTar([file(`f${i}`, `${i}\n`)])));
  const config = JSON.stringify({
    architecture: "amd64",
    os: "linux",
    config: { Cmd: ["/x"] },
    rootfs: { type: "layers", diff_ids: layers.map((l) => sha256Digest(l.data)) },
  });
  const configName = `${sha256Digest(config).slice("sha256:".length)}.json`;
  const manifest = file(
    "manifest.json",
    JSON.stringify([{
      Config: configName,
      RepoTags: ["localhost/layered:latest"],
      Layers: layers.map((l) => l.header.name),
    }]),
  );
  const rest = [file(configName, config), ...layers];
  return await packTar(opts.manifestFirst ? [manifest, ...rest] : [...rest, manifest]);
}

/** Asserts `error` is the layer limit's refusal: a 400. */
function assertTooManyLayers(error: ImageImportError, maxLayers = MAX_LAYERS): void {
  assert(error instanceof TooManyLayersError, `${error.name}: ${error.message}`);
  assertEquals(error.maxLayers, maxLayers);
  assertEquals(error.kind, "invalid");
  assertEquals(statusOf(error), 400);
  assertMatch(error.message, new RegExp(`faasd runs images of at most ${maxLayers} `));
}

Deno.test("importImage() refuses an image of MAX_LAYERS + 1 layers with a 400, leaving nothing", async () => {
  assertEquals(MAX_LAYERS, 125);
  const over = MAX_LAYERS + 1;
  // docker save's order: manifest.json after the layers. The layer blobs are counted as they stream past.
  const streamed = await assertFails(layeredArchive(over), /^image archive holds more than 125 layers; /);
  assertTooManyLayers(streamed.error);
  // manifest.json first: refused once it is read, before a single layer.
  const archive = await layeredArchive(over, { manifestFirst: true });
  const listed = await assertFails(archive, /^image has 126 layers; /);
  assertTooManyLayers(listed.error);
  assert(listed.pulled < archive.length / 4, `${listed.pulled} of ${archive.length} bytes read`);
  // One blob listed 126 times: the streamed count stays at 1, the manifest decides.
  const layer = await packTar([file("data", "x")]);
  assertTooManyLayers((await assertFails(withLayer(layer, "plain", { times: over }), /^image has 126 layers; /)).error);
});

Deno.test("importImage() refuses an OCI image whose manifest lists more than MAX_LAYERS layers", async () => {
  const files = await readTar(await Deno.readFile(await buildHandlerImage("hello", { format: "oci-archive" })));
  const indexFile = files.find((f) => f.header.name === "index.json")!;
  const index = JSON.parse(text(indexFile));
  const blobName = (digest: string) => `blobs/sha256/${digest.slice("sha256:".length)}`;
  const manifestFile = files.find((f) => f.header.name === blobName(index.manifests[0].digest))!;
  const manifest = JSON.parse(text(manifestFile));
  manifest.layers = Array(MAX_LAYERS + 1).fill(manifest.layers[0]);
  const bytes = new TextEncoder().encode(JSON.stringify(manifest));
  index.manifests[0] = { ...index.manifests[0], digest: sha256Digest(bytes), size: bytes.length };
  const rewritten = [
    ...files.filter((f) => f !== indexFile && f !== manifestFile),
    file(blobName(sha256Digest(bytes)), bytes),
    file("index.json", JSON.stringify(index)),
  ];
  assertTooManyLayers((await assertFails(packTar(rewritten), /^image has 126 layers; /)).error);
});

Deno.test("importImage() takes an image of exactly maxLayers layers, and refuses one more", async () => {
  await withClient(async (c) => {
    const imported = await importImage(c, body(await layeredArchive(3)), {
      name: "three",
      maxBytes: MAX,
      maxLayers: 3,
    });
    await assertImported(c, imported, "three", 3);
  });
  assertTooManyLayers((await assertFails(layeredArchive(4), /more than 3 layers/, { maxLayers: 3 })).error, 3);
  assertTooManyLayers(
    (await assertFails(layeredArchive(4, { manifestFirst: true }), /image has 4 layers/, { maxLayers: 3 })).error,
    3,
  );
});

Deno.test("importImage() takes an image of MAX_LAYERS layers", async () => {
  await withClient(async (c) => {
    const imported = await importImage(c, body(await layeredArchive(MAX_LAYERS)), { name: "max", maxBytes: MAX });
    await assertImported(c, imported, "max", MAX_LAYERS);
  });
});

Deno.test("importImage() stops an upload of thousands of layers within its first few hundred entries", async () => {
  const count = 3000;
  const archive = await layeredArchive(count);
  const { error, pulled } = await assertFails(archive, /^image archive holds more than 125 layers; /);
  assertTooManyLayers(error);
  // Each layer is one archive entry of the same size: what was read covers a few hundred of them at most.
  const perLayer = archive.length / count;
  assert(pulled < 300 * perLayer, `${pulled} bytes read: ${Math.round(pulled / perLayer)} layers' worth`);
});

// --- what the client is told ---

Deno.test("importImage() says why containerd could not unpack a layer, naming no host path", async () => {
  // A hard link to a file the layer does not have: faasd's scan lets it through, containerd's extraction fails
  // with the link's paths on the host.
  const layer = await packTar([{
    header: { name: "x", type: "link", linkname: "missing" } as tar.Header,
    data: new Uint8Array(),
  }]);
  const { error } = await assertFails(
    withLayer(layer, "plain"),
    /^layer 1 \(sha256:[0-9a-f]{64}\) could not be unpacked: /,
  );
  assertEquals(error.kind, "invalid");
  assertEquals(statusOf(error), 400);
  // containerd's own message (logged for the operator) names its root; the client's names no absolute path at all.
  if (ctd.root) assertStringIncludes((error.cause as Error).message, ctd.root);
  assertMatch(error.message, /: link <path> <path>: no such file or directory$/);
  assert(!/(^|[\s'"=:(])\/\w/.test(error.message), `a host path in: ${error.message}`);
});

Deno.test("stop the private containerd", async () => {
  await ctd.stop();
});
