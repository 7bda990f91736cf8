/**
 * Functions' undo paths and settings updates, with the real registry (in memory) and recording stand-ins for what
 * touches the host: a deploy that fails after the image was imported leaves the registry, the addresses and the
 * images as they were; an update is served from the next connection, or not made at all.
 */

import { assertEquals, assertRejects } from "../tests/assert.ts";
import { type Addresses, FunctionNotFoundError, Functions, type ImageStore, type Serving } from "./functions.ts";
import { IpPool } from "./ipam.ts";
import { type DeployedImage, type FunctionRecord, Registry } from "./registry.ts";
import { SettingsError } from "./settings.ts";
import { deployedImage } from "../tests/fixtures/deployed.ts";

function image(tag: string): DeployedImage {
  return { ...deployedImage(`example/${tag}`, `faasd.local/functions/fn:${tag}`), manifestDigest: `sha256:${tag}` };
}

/** Stand-ins that record what exists and fail where told; an import waits for `importGate` when set. */
function world(opts: { serveFails?: boolean; ensureFails?: boolean; importGate?: Promise<void> }) {
  const images = new Set<string>();
  const addresses = new Set<string>();
  const served = new Map<string, FunctionRecord>();
  const next = ["one", "two"];
  const store: ImageStore = {
    import: async (_name, body) => {
      body.cancel();
      await opts.importGate;
      const made = image(next.shift()!);
      images.add(made.containerdName);
      return made;
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

Deno.test("Functions.deploy() merges the settings it is given into those the function had", async () => {
  const w = world({});
  const { record: first } = await w.functions.deploy("fn", body(), { memoryBytes: 64 << 20, rootfs: "writable" });
  assertEquals(first.settings, { memoryBytes: 64 << 20, rootfs: "writable" });
  const { record: second } = await w.functions.deploy("fn", body(), { rootfs: null, cpus: 0.5 });
  assertEquals(second.settings, { memoryBytes: 64 << 20, cpus: 0.5 });
  assertEquals(w.served.get("fn"), second);
  w.registry.close();
});

Deno.test("Functions.update() changes the settings and serves the new record from the next connection", async () => {
  const w = world({});
  const { record: first } = await w.functions.deploy("fn", body(), { pids: 8, timeoutMs: 5000 });
  const updated = await w.functions.update("fn", { pids: null, memoryBytes: 32 << 20 });
  assertEquals(updated.settings, { timeoutMs: 5000, memoryBytes: 32 << 20 });
  assertEquals([updated.ip, updated.image], [first.ip, first.image]);
  assertEquals(w.registry.get("fn"), updated);
  assertEquals(w.served.get("fn"), updated);
  w.registry.close();
});

Deno.test("Functions.deploy() and update() refuse min_ready above max_ready, changing nothing", async () => {
  const w = world({});
  // A new function: refused before the upload is read (its stream is never cancelled), nothing registered.
  const untouched = body();
  await assertRejects(() => w.functions.deploy("fn", untouched, { minReady: 9 }), SettingsError, "max_ready 8");
  assertEquals([w.registry.list(), w.images.size, w.served.size], [[], 0, 0]);
  assertEquals(untouched.locked, false);
  const { record: first } = await w.functions.deploy("fn", body(), { maxReady: 2 });
  await assertRejects(
    () => w.functions.deploy("fn", body(), { minReady: 3 }),
    SettingsError,
    "min_ready 3 is above max_ready 2 (set before)",
  );
  await assertRejects(() => w.functions.update("fn", { minReady: 3 }), SettingsError, "(set before)");
  await assertRejects(
    () => w.functions.update("fn", { minReady: 9, maxReady: null, pids: 8 }),
    SettingsError,
    "(the default)",
  );
  await assertRejects(() => w.functions.update("fn", { minReady: 3, maxReady: 2 }), SettingsError);
  assertEquals(w.registry.get("fn"), first);
  assertEquals(w.served.get("fn"), first);
  assertEquals([...w.images], ["faasd.local/functions/fn:one"]);
  const updated = await w.functions.update("fn", { minReady: 3, maxReady: 3 });
  assertEquals(updated.settings, { minReady: 3, maxReady: 3 });
  w.registry.close();
});

Deno.test("Functions.update() of a name not deployed throws FunctionNotFoundError", async () => {
  const w = world({});
  await assertRejects(() => w.functions.update("nope", { pids: 8 }), FunctionNotFoundError, '"nope"');
  assertEquals(w.registry.list(), []);
  w.registry.close();
});

Deno.test("Functions.update() that cannot be served keeps the settings as they were", async () => {
  const opts: { serveFails?: boolean } = {};
  const w = world(opts);
  const { record: first } = await w.functions.deploy("fn", body(), { cpus: 0.5 });
  w.failNext({ serveFails: true });
  await assertRejects(() => w.functions.update("fn", { cpus: 0.25 }), Error, "cannot listen");
  assertEquals(w.registry.get("fn"), first);
  assertEquals(w.served.get("fn"), first);
  w.registry.close();
});

Deno.test("Functions.update() of a function waiting for its image changes settings without serving it", async () => {
  const w = world({});
  w.registry.importSeedJson(
    JSON.stringify({ fn: { ip: "127.77.0.10", image_ref: "fn:1" } }),
    new IpPool("127.77.0.0/24"),
  );
  const updated = await w.functions.update("fn", { rootfs: "writable" });
  assertEquals([updated.status, updated.settings], ["no-image", { rootfs: "writable" }]);
  assertEquals(w.served.size, 0);
  w.registry.close();
});

Deno.test("Functions.update() waits for a deploy of the same name in progress", async () => {
  const gate = Promise.withResolvers<void>();
  const w = world({ importGate: gate.promise });
  const deploying = w.functions.deploy("fn", body(), { pids: 8 });
  // Not deployed yet: without the per-name lock this update would find no function.
  const updating = w.functions.update("fn", { cpus: 0.5 });
  gate.resolve();
  await deploying;
  assertEquals((await updating).settings, { pids: 8, cpus: 0.5 });
  assertEquals(w.served.get("fn")?.settings, { pids: 8, cpus: 0.5 });
  w.registry.close();
});
