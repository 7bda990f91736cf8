/**
 * Tests of the podman-based test image builder: the tarballs must be real docker-archive / OCI layouts whose image
 * config carries the requested entrypoint, CMD, ENV and WORKDIR.
 *
 * @module
 */

import { createReadStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import tar from "tar-stream";
import { buildHandlerImage, buildPaddedImage } from "./images.ts";

/** A tarball's entries: name → size, plus the contents of small regular files (JSON documents). */
interface TarListing {
  sizes: Map<string, number>;
  small: Map<string, Uint8Array>;
}

async function readTar(path: string): Promise<TarListing> {
  const listing: TarListing = { sizes: new Map(), small: new Map() };
  const extract = tar.extract();
  const consume = (async () => {
    for await (const entry of extract) {
      const chunks: Uint8Array[] = [];
      let size = 0;
      for await (const chunk of entry as AsyncIterable<Uint8Array>) {
        size += chunk.length;
        if (size <= 64 * 1024) chunks.push(chunk);
      }
      const name = entry.header.name.replace(/^\.\//, "");
      listing.sizes.set(name, size);
      if (entry.header.type === "file" && size <= 64 * 1024) {
        const bytes = new Uint8Array(size);
        let off = 0;
        for (const c of chunks) {
          bytes.set(c, off);
          off += c.length;
        }
        listing.small.set(name, bytes);
      }
    }
  })();
  await Promise.all([pipeline(createReadStream(path), extract), consume]);
  return listing;
}

function json(listing: TarListing, name: string): unknown {
  const bytes = listing.small.get(name);
  if (!bytes) throw new Error(`${name} missing from tarball; entries: ${[...listing.sizes.keys()].join(", ")}`);
  return JSON.parse(new TextDecoder().decode(bytes));
}

interface ImageConfig {
  config: { Entrypoint?: string[]; Cmd?: string[]; Env?: string[]; WorkingDir?: string };
}

/** The image config of a docker-archive tarball, via manifest.json. */
function dockerConfig(listing: TarListing): { config: ImageConfig; repoTags: string[]; layers: string[] } {
  const manifest = json(listing, "manifest.json") as { Config: string; RepoTags: string[]; Layers: string[] }[];
  assert(manifest.length === 1, `expected one image in manifest.json, got ${manifest.length}`);
  const [image] = manifest;
  return { config: json(listing, image.Config) as ImageConfig, repoTags: image.RepoTags, layers: image.Layers };
}

/** The image config of an OCI archive, via index.json → manifest → config. */
function ociConfig(listing: TarListing): { config: ImageConfig; refName?: string; layers: string[] } {
  const blob = (digest: string) => json(listing, `blobs/${digest.replace(":", "/")}`);
  const index = json(listing, "index.json") as {
    manifests: { digest: string; annotations?: Record<string, string> }[];
  };
  assert(index.manifests.length === 1, `expected one manifest in index.json, got ${index.manifests.length}`);
  const manifest = blob(index.manifests[0].digest) as { config: { digest: string }; layers: { digest: string }[] };
  return {
    config: blob(manifest.config.digest) as ImageConfig,
    refName: index.manifests[0].annotations?.["org.opencontainers.image.ref.name"],
    layers: manifest.layers.map((l) => `blobs/${l.digest.replace(":", "/")}`),
  };
}

function assert(cond: unknown, message: string): asserts cond {
  if (!cond) throw new Error(message);
}

function assertJsonEquals(actual: unknown, expected: unknown, what: string) {
  const a = JSON.stringify(actual), e = JSON.stringify(expected);
  assert(a === e, `${what}: expected ${e}, got ${a}`);
}

Deno.test("buildHandlerImage() writes a docker-archive with the mode as CMD", async () => {
  const path = await buildHandlerImage("hello");
  const listing = await readTar(path);
  assert(listing.sizes.has("manifest.json"), "manifest.json missing");
  const { config, repoTags, layers } = dockerConfig(listing);
  assertJsonEquals(config.config.Entrypoint, ["/handler"], "Entrypoint");
  assertJsonEquals(config.config.Cmd, ["hello"], "Cmd");
  assert(repoTags.length === 1 && repoTags[0].startsWith("localhost/faasd-test-hello:"), `RepoTags ${repoTags}`);
  assert(layers.length === 1, `expected one layer, got ${layers.length}`);
  // The static binary is several hundred KiB; an empty layer would mean COPY went wrong.
  assert((listing.sizes.get(layers[0]) ?? 0) > 100_000, `layer ${layers[0]} is too small`);
});

Deno.test("buildHandlerImage() writes an oci-archive with env, workdir, args and tag", async () => {
  const path = await buildHandlerImage("echo-env", {
    format: "oci-archive",
    tag: "localhost/faasd-test-custom:v1",
    env: { GREETING: 'say "hi" $HOME \\o/', PROBE_ADDR: "127.0.0.1:9" },
    workdir: "/srv/app",
    args: ["extra"],
  });
  const listing = await readTar(path);
  assert(listing.sizes.has("index.json"), "index.json missing");
  assert(listing.sizes.has("oci-layout"), "oci-layout missing");
  const { config, refName, layers } = ociConfig(listing);
  assertJsonEquals(config.config.Entrypoint, ["/handler"], "Entrypoint");
  assertJsonEquals(config.config.Cmd, ["echo-env", "extra"], "Cmd");
  assert(config.config.WorkingDir === "/srv/app", `WorkingDir ${config.config.WorkingDir}`);
  const env = config.config.Env ?? [];
  assert(env.includes('GREETING=say "hi" $HOME \\o/'), `Env ${JSON.stringify(env)}`);
  assert(env.includes("PROBE_ADDR=127.0.0.1:9"), `Env ${JSON.stringify(env)}`);
  assert(refName === "localhost/faasd-test-custom:v1", `ref name ${refName}`);
  assert(layers.length === 1 && listing.sizes.has(layers[0]), "layer blob missing");
});

Deno.test("buildHandlerImage() returns the cached tarball for the same arguments", async () => {
  const first = await buildHandlerImage("noread");
  const before = await Deno.stat(first);
  const [second, third] = await Promise.all([buildHandlerImage("noread"), buildHandlerImage("noread")]);
  assert(first === second && second === third, `paths differ: ${first} ${second} ${third}`);
  const after = await Deno.stat(first);
  assert(before.mtime?.getTime() === after.mtime?.getTime(), "tarball was rebuilt");
});

Deno.test("buildHandlerImage() builds different images concurrently", async () => {
  const modes = ["crash", "exit", "hang", "marker"];
  const paths = await Promise.all(modes.map((mode) => buildHandlerImage(mode)));
  assert(new Set(paths).size === modes.length, `expected distinct tarballs: ${paths}`);
  for (const [i, path] of paths.entries()) {
    assertJsonEquals(dockerConfig(await readTar(path)).config.config.Cmd, [modes[i]], `Cmd of ${path}`);
  }
});

Deno.test("buildHandlerImage() rejects unknown modes and invalid options", async () => {
  const rejects = async (p: Promise<unknown>, type: ErrorConstructor) => {
    const err = await p.then(() => undefined, (e) => e);
    assert(err instanceof type, `expected ${type.name}, got ${err}`);
  };
  await rejects(buildHandlerImage("no-such-mode"), TypeError);
  await rejects(buildHandlerImage("hello", { env: { "BAD NAME": "x" } }), TypeError);
  await rejects(buildHandlerImage("hello", { env: { OK: "two\nlines" } }), TypeError);
  await rejects(buildHandlerImage("hello", { workdir: "relative" }), TypeError);
  await rejects(buildPaddedImage(0), RangeError);
  await rejects(buildPaddedImage(1.5), RangeError);
});

Deno.test("buildPaddedImage() adds an incompressible layer of the requested size", async () => {
  const mib = 3;
  const path = await buildPaddedImage(mib, { format: "oci-archive" });
  const listing = await readTar(path);
  const { config, layers } = ociConfig(listing);
  assertJsonEquals(config.config.Cmd, ["hello"], "Cmd");
  assert(layers.length === 2, `expected two layers, got ${layers.length}`);
  // oci-archive layers are gzipped: random bytes keep the padding layer at (about) full size.
  const padding = listing.sizes.get(layers[1]) ?? 0;
  assert(padding >= mib * 1024 * 1024, `padding layer is ${padding} bytes`);
  const { size } = await Deno.stat(path);
  assert(size < (mib + 2) * 1024 * 1024, `tarball is ${size} bytes`);
});
