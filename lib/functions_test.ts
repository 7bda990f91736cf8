/**
 * Functions' undo paths, with the real registry (in memory) and recording stand-ins for what touches the host:
 * a deploy that fails after the image was imported leaves the registry, the addresses and the images as they were.
 */

import { assertEquals, assertRejects } from "../tests/assert.ts";
import { type Addresses, Functions, type ImageStore, type Serving } from "./functions.ts";
import { IpPool } from "./ipam.ts";
import { type DeployedImage, type FunctionRecord, Registry } from "./registry.ts";

function image(tag: string): DeployedImage {
  return {
    imageRef: `example/${tag}`,
    containerdName: `faasd.local/functions/fn:${tag}`,
    manifestDigest: `sha256:${tag}`,
    chainId: `sha256:chain-${tag}`,
    config: {
      entrypoint: ["/handler"],
      cmd: [],
      env: [],
      workingDir: "/",
      user: "",
      resolvedUser: { uid: 0, gid: 0, additionalGids: [] },
    },
  };
}

/** Stand-ins that record what exists and fail where told. */
function world(opts: { serveFails?: boolean; ensureFails?: boolean }) {
  const images = new Set<string>();
  const addresses = new Set<string>();
  const served = new Map<string, FunctionRecord>();
  const next = ["one", "two"];
  const store: ImageStore = {
    import: (_name, body) => {
      body.cancel();
      const made = image(next.shift()!);
      images.add(made.containerdName);
      return Promise.resolve(made);
    },
    remove: (_name, made) => {
      images.delete(made.containerdName);
      return Promise.resolve();
    },
  };
  const serving: Serving = {
    serve: (record) => {
      if (opts.serveFails) throw new Error("cannot listen");
      served.set(record.name, record);
    },
    stop: (name) => void served.delete(name),
  };
  const hostAddresses: Addresses = {
    ensure: (ip) => {
      if (opts.ensureFails) return Promise.reject(new Error("cannot add address"));
      addresses.add(ip);
      return Promise.resolve(true);
    },
    release: (ip) => Promise.resolve(void addresses.delete(ip)),
  };
  const registry = new Registry(":memory:");
  const functions = new Functions({
    registry,
    pool: new IpPool("127.77.0.0/24"),
    images: store,
    serving,
    addresses: hostAddresses,
  });
  return { functions, registry, images, addresses, served, failNext: (o: typeof opts) => Object.assign(opts, o) };
}

const body = () => new ReadableStream<Uint8Array>();

Deno.test("Functions.deploy() of a new name that cannot be served leaves no entry, address or image", async () => {
  const w = world({ serveFails: true });
  await assertRejects(() => w.functions.deploy("fn", body()), Error, "cannot listen");
  assertEquals(w.registry.list(), []);
  assertEquals([w.images.size, w.addresses.size, w.served.size], [0, 0, 0]);
  w.registry.close();
});

Deno.test("Functions.deploy() of a redeploy that fails keeps the function as it was, and drops the new image", async () => {
  const opts: { serveFails?: boolean; ensureFails?: boolean } = {};
  const w = world(opts);
  const { record: first } = await w.functions.deploy("fn", body());
  assertEquals([...w.images], ["faasd.local/functions/fn:one"]);
  w.failNext({ ensureFails: true });
  await assertRejects(() => w.functions.deploy("fn", body()), Error, "cannot add address");
  assertEquals(w.registry.get("fn"), first);
  assertEquals([...w.images], ["faasd.local/functions/fn:one"]);
  assertEquals(w.served.get("fn"), first);
  w.registry.close();
});
