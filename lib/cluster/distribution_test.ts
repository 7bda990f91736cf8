/**
 * Images between two hosts through a registry, for real: two private containerd daemons ("host A" imports and
 * pushes, "host B" pulls), Debian's docker-registry, podman-built images.
 */

import { assert, assertEquals, assertMatch, assertRejects } from "../../tests/assert.ts";
import {
  type ContainerdInstance,
  EMPTY_NAMESPACE,
  namespaceContents,
  startContainerd,
} from "../../tests/harness/containerd.ts";
import { buildHandlerImage, buildPaddedImage } from "../../tests/harness/images.ts";
import { type RegistryInstance, type RegistryRequest, startRegistry } from "../../tests/harness/registry.ts";
import { type Containerd, ContainerdError } from "../containerd/client.ts";
import {
  containerdImageName,
  ImageTooLargeError,
  type ImportedImage,
  importImage,
  removeImage,
  TooManyLayersError,
} from "../images/import.ts";
import { LABELS } from "../labels.ts";
import { DigestMismatchError, pullImage, pushImage, RegistryError } from "./distribution.ts";

const MAX = 1 << 30;
const NAMESPACE = "faasd";

/** Two hosts and a registry; everything goes when it is disposed. */
interface Cluster extends AsyncDisposable {
  registry: RegistryInstance;
  a: Containerd;
  b: Containerd;
}

async function startCluster(): Promise<Cluster> {
  const started: AsyncDisposable[] = [];
  const stop = async () => {
    for (const s of started.reverse()) await s[Symbol.asyncDispose]();
  };
  try {
    const [registry, hostA, hostB] = await Promise.all([
      startRegistry().then((r) => (started.push(r), r)),
      startContainerd().then((c) => (started.push(c), c)),
      startContainerd().then((c) => (started.push(c), c)),
    ]);
    const a = client(hostA);
    const b = client(hostB);
    return {
      registry,
      a,
      b,
      [Symbol.asyncDispose]: async () => {
        a.close();
        b.close();
        await stop();
      },
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

function client(ctd: ContainerdInstance): Containerd {
  return ctd.client(NAMESPACE);
}

/** Imports `tarball` on host A as function `name` and pushes it. */
async function importAndPush(
  cluster: Cluster,
  tarball: string,
  name: string,
): Promise<Pushed> {
  const imported = await importImage(cluster.a, (await Deno.open(tarball)).readable, { name, maxBytes: MAX });
  const repository = `faasd/${name}`;
  const pushed = await pushImage(cluster.a, {
    registry: cluster.registry.url,
    repository,
    manifestDigest: imported.manifestDigest,
    tag: "latest",
  });
  return { imported, repository, uploaded: pushed.uploaded };
}

interface Pushed {
  imported: ImportedImage;
  repository: string;
  uploaded: string[];
}

interface Limits {
  maxBytes?: number;
  maxLayers?: number;
}

/** Pulls what host A pushed on host B, as function `name`. */
function pull(cluster: Cluster, { imported, repository }: Pushed, name: string, limits: Limits = {}) {
  return pullImage(cluster.b, {
    registry: cluster.registry.url,
    repository,
    manifestDigest: imported.manifestDigest,
    name,
    maxBytes: limits.maxBytes ?? MAX,
    maxLayers: limits.maxLayers,
    imageRef: imported.imageRef,
  });
}

/** The config and layer digests of a manifest in `client`'s content store. */
async function blobsOf(c: Containerd, manifestDigest: string): Promise<{ config: string; layers: string[] }> {
  const manifest = JSON.parse(new TextDecoder().decode(await c.readBlob(manifestDigest)));
  return { config: manifest.config.digest, layers: manifest.layers.map((l: { digest: string }) => l.digest) };
}

const leftovers = namespaceContents;
const NOTHING = EMPTY_NAMESPACE;

/** The requests the registry logged after the first `since` ones. */
async function requestsSince(registry: RegistryInstance, since: number): Promise<RegistryRequest[]> {
  return (await registry.requests()).slice(since);
}

const isBlobRequest = (r: RegistryRequest) => r.path.includes("/blobs/");

Deno.test("pullImage() gives host B the image host A imported and pushed, unpacked and runnable", async () => {
  await using cluster = await startCluster();
  // Two layers (the handler, 8 MiB of random padding): streamed in many pieces both ways.
  const pushed = await importAndPush(cluster, await buildPaddedImage(8), "padded");
  const { imported, uploaded } = pushed;
  const { config, layers } = await blobsOf(cluster.a, imported.manifestDigest);
  assertEquals(layers.length, 2);
  assertEquals(uploaded.sort(), [config, ...layers].sort());

  const pulled = await pull(cluster, pushed, "padded");
  assertEquals(pulled, imported);
  const b = cluster.b;
  const record = await b.getImage(containerdImageName("padded", imported.manifestDigest));
  assertEquals(record?.target.digest, imported.manifestDigest);
  assertEquals(record?.target.mediaType, "application/vnd.docker.distribution.manifest.v2+json");
  assertEquals(record?.labels[LABELS.function], "padded");
  assertEquals(record?.labels[LABELS.imageRef], imported.imageRef);
  assertEquals((await b.contentInfo(config))?.labels["containerd.io/gc.ref.snapshot.overlayfs"], imported.chainId);
  // A container's snapshot can be prepared on the pulled chain.
  assertEquals((await b.statSnapshot("overlayfs", imported.chainId))?.kind, "committed");
  const lease = await b.createLease();
  const mounts = await b.prepareSnapshot("overlayfs", "request-1", imported.chainId, { lease });
  assertEquals(mounts[0]?.type, "overlay");
  await b.removeSnapshot("overlayfs", "request-1");
  await b.deleteLease(lease, { sync: true });
  assertEquals(await b.listLeases(), [], "the pull lease is gone");
  assertEquals(await b.listIngests(), []);

  // The image record alone holds it all: removing it leaves nothing.
  await removeImage(b, pulled.containerdName);
  assertEquals(await leftovers(b), NOTHING);
});

Deno.test("pushImage() of an image the registry has uploads no blob", async () => {
  await using cluster = await startCluster();
  const { imported } = await importAndPush(cluster, await buildHandlerImage("hello"), "hello");
  const before = (await cluster.registry.requests()).length;
  const again = await pushImage(cluster.a, {
    registry: cluster.registry.url,
    repository: "faasd/hello",
    manifestDigest: imported.manifestDigest,
  });
  assertEquals(again.uploaded, []);
  assertEquals(again.uploadedBytes, 0);
  assertEquals(again.skipped.length, 2); // config and the one layer
  const requests = await requestsSince(cluster.registry, before);
  assertEquals(requests.filter(isBlobRequest).map((r) => `${r.method} ${r.status}`), ["HEAD 200", "HEAD 200"]);
  assertEquals(requests.filter((r) => r.method === "POST"), []);
});

Deno.test("pushImage() of a manifest containerd lacks, or to a registry that is down, throws", async () => {
  await using cluster = await startCluster();
  await assertRejects(
    () =>
      pushImage(cluster.a, {
        registry: cluster.registry.url,
        repository: "faasd/nothing",
        manifestDigest: `sha256:${"cd".repeat(32)}`,
      }),
    ContainerdError,
    "not found",
  );
  const { imported } = await importAndPush(cluster, await buildHandlerImage("hello"), "hello");
  await cluster.registry.stop();
  const error = await assertRejects(
    () =>
      pushImage(cluster.a, {
        registry: cluster.registry.url,
        repository: "faasd/hello",
        manifestDigest: imported.manifestDigest,
      }),
    RegistryError,
  ) as RegistryError;
  assertEquals(error.status, undefined);
});

Deno.test("pullImage() downloads no blob the host has already", async () => {
  await using cluster = await startCluster();
  const pushed = await importAndPush(cluster, await buildHandlerImage("hello"), "hello");
  const first = await pull(cluster, pushed, "hello");
  const before = (await cluster.registry.requests()).length;
  // Another function of the same image: only the manifest comes from the registry.
  const second = await pull(cluster, pushed, "hello-again");
  assertEquals(second, {
    ...first,
    containerdName: containerdImageName("hello-again", pushed.imported.manifestDigest),
  });
  const requests = await requestsSince(cluster.registry, before);
  assertEquals(requests.map((r) => `${r.method} ${r.status}`), ["GET 200"]);
  assertEquals(requests.filter(isBlobRequest), []);
  assertEquals(await cluster.b.listLeases(), []);
});

Deno.test("pullImage() of an unknown digest, or from a registry that is down, throws RegistryError and leaves nothing", async () => {
  await using cluster = await startCluster();
  const options = { repository: "faasd/nothing", manifestDigest: `sha256:${"ab".repeat(32)}`, name: "nothing" };
  const unknown = await assertRejects(
    () => pullImage(cluster.b, { ...options, registry: cluster.registry.url, maxBytes: MAX }),
    RegistryError,
  ) as RegistryError;
  assertEquals(unknown.status, 404);
  assertMatch(unknown.message, /manifest .* 404: MANIFEST_UNKNOWN/);
  assertEquals(await leftovers(cluster.b), NOTHING);

  // A port nothing listens on any more.
  const down = (() => {
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    return listener.addr.port;
  })();
  const unreachable = await assertRejects(
    () => pullImage(cluster.b, { ...options, registry: `http://127.0.0.1:${down}`, maxBytes: MAX }),
    RegistryError,
  ) as RegistryError;
  assertEquals(unreachable.status, undefined, "no answer, no status");
  assertMatch(unreachable.message, /cannot be reached/);
  assertEquals(await leftovers(cluster.b), NOTHING);
});

Deno.test("pullImage() of a manifest or layer tampered with in the registry throws DigestMismatchError, leaving nothing", async () => {
  await using cluster = await startCluster();
  const pushed = await importAndPush(cluster, await buildHandlerImage("hello"), "hello");
  const manifest = pushed.imported.manifestDigest;
  const [layer] = (await blobsOf(cluster.a, manifest)).layers;
  // Same length, other bytes: the registry serves them as if nothing happened.
  const tamper = async (digest: string) => {
    const path = cluster.registry.blobPath(digest);
    const original = await Deno.readFile(path);
    const bytes = original.slice();
    // In a manifest, a digest's hex digits ("a" → "b"): still JSON, another digest.
    if (digest === manifest) bytes[bytes.lastIndexOf(0x61)] = 0x62;
    else for (let i = 0; i < 64; i++) bytes[bytes.length / 2 + i]! ^= 0xff;
    await Deno.writeFile(path, bytes);
    return () => Deno.writeFile(path, original);
  };

  const restore = await tamper(manifest);
  let error = await assertRejects(() => pull(cluster, pushed, "hello"), DigestMismatchError) as DigestMismatchError;
  assertEquals(error.expected, manifest);
  assertMatch(error.message, /sent manifest sha256:[0-9a-f]{64} with digest sha256:/);
  assertEquals(await leftovers(cluster.b), NOTHING);
  await restore();

  await tamper(layer!);
  error = await assertRejects(() => pull(cluster, pushed, "hello"), DigestMismatchError) as DigestMismatchError;
  assertEquals(error.expected, layer);
  assertMatch(error.message, /blob sha256:[0-9a-f]{64} with other content/);
  assertEquals(await leftovers(cluster.b), NOTHING);
});

Deno.test("pullImage() aborted while it downloads a layer throws the signal's reason and leaves nothing", async () => {
  await using cluster = await startCluster();
  const pushed = await importAndPush(cluster, await buildPaddedImage(8), "padded");
  const { layers } = await blobsOf(cluster.a, pushed.imported.manifestDigest);
  const abort = new AbortController();
  const reason = new Error("deploy cancelled");
  // Aborts once 4 MiB of the padding layer have passed and its ingest in containerd is under way.
  let ingestsAtAbort: string[] = [];
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (input, init) => {
    const res = await realFetch(input, init);
    if (!String(input).endsWith(`/blobs/${layers.at(-1)}`)) return res;
    const reader = res.body!.getReader();
    let passed = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const next = await reader.read();
        if (next.done) return controller.close();
        passed += next.value.length;
        if (passed >= 4 << 20 && !abort.signal.aborted) {
          // containerd opens the ingest as the first piece reaches it, a moment after it passed here.
          for (let attempt = 0; attempt < 100 && ingestsAtAbort.length === 0; attempt++) {
            ingestsAtAbort = (await cluster.b.listIngests()).map((i) => i.ref);
            if (ingestsAtAbort.length === 0) await new Promise((r) => setTimeout(r, 20));
          }
          abort.abort(reason);
        }
        controller.enqueue(next.value);
      },
      cancel: (why) => reader.cancel(why),
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  try {
    const error = await assertRejects(() =>
      pullImage(cluster.b, {
        registry: cluster.registry.url,
        repository: pushed.repository,
        manifestDigest: pushed.imported.manifestDigest,
        name: "padded",
        maxBytes: MAX,
        signal: abort.signal,
      })
    );
    assert(error === reason, `the signal's reason, not ${error}`);
  } finally {
    globalThis.fetch = realFetch;
  }
  assertEquals(ingestsAtAbort.length, 1, "a layer was being written when the pull was aborted");
  assertEquals(await leftovers(cluster.b), NOTHING);
});

Deno.test("pullImage() refuses too many layers or bytes before downloading any blob", async () => {
  await using cluster = await startCluster();
  const pushed = await importAndPush(cluster, await buildPaddedImage(8), "padded");
  const before = (await cluster.registry.requests()).length;
  await assertRejects(() => pull(cluster, pushed, "padded", { maxLayers: 1 }), TooManyLayersError);
  await assertRejects(() => pull(cluster, pushed, "padded", { maxBytes: 4 << 20 }), ImageTooLargeError);
  const requests = await requestsSince(cluster.registry, before);
  assertEquals(requests.map((r) => `${r.method} ${r.status}`), ["GET 200", "GET 200"], "two manifests, no blob");
  assertEquals(await leftovers(cluster.b), NOTHING);
});

Deno.test("pushImage() and pullImage() move an OCI-archive image with a named USER", async () => {
  await using cluster = await startCluster();
  const tarball = await buildHandlerImage("echo-env", {
    format: "oci-archive",
    env: { GREETING: "hi" },
    workdir: "/srv",
    user: "app",
    files: { "etc/passwd": "app:x:1000:1000::/:/bin/false\n", "etc/group": "app:x:1000:\nstaff:x:50:app\n" },
  });
  const pushed = await importAndPush(cluster, tarball, "oci");
  const { imported } = pushed;
  assertEquals(imported.config.resolvedUser, { uid: 1000, gid: 1000, additionalGids: [50] });
  const pulled = await pull(cluster, pushed, "oci");
  assertEquals(pulled, imported);
  const record = await cluster.b.getImage(pulled.containerdName);
  assertEquals(record?.target.mediaType, "application/vnd.oci.image.manifest.v1+json");
  assert(await cluster.b.statSnapshot("overlayfs", pulled.chainId));
  assertEquals(await cluster.b.listLeases(), []);
});
