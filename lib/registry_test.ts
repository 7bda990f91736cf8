import { DatabaseSync } from "node:sqlite";
import { assertEquals, assertThrows } from "../tests/assert.ts";
import { IpPool, PoolExhaustedError } from "./ipam.ts";
import { type DeployedImage, Registry } from "./registry.ts";
import { deployedImage } from "../tests/fixtures/deployed.ts";

const image = (ref: string): DeployedImage => deployedImage(ref, `faasd.local/functions/x:latest`);

Deno.test("Registry.deploy() allocates the lowest free IP and keeps it on redeploy", () => {
  using reg = new Registry(":memory:");
  const pool = new IpPool("10.0.0.0/24");
  assertEquals(reg.deploy("a", image("a:1"), pool).record.ip, "10.0.0.10");
  assertEquals(reg.deploy("b", image("b:1"), pool).record.ip, "10.0.0.11");
  const again = reg.deploy("a", image("a:2"), pool);
  assertEquals(again.created, false);
  assertEquals(again.record.ip, "10.0.0.10");
  assertEquals(again.record.imageRef, "a:2");
  reg.remove("a");
  assertEquals(reg.deploy("c", image("c:1"), pool).record.ip, "10.0.0.10");
});

Deno.test("Registry.deploy() throws PoolExhaustedError and records nothing when the pool is full", () => {
  using reg = new Registry(":memory:");
  const pool = new IpPool("10.0.0.0/28");
  for (const n of ["a", "b", "c", "d", "e"]) reg.deploy(n, image(n), pool);
  assertEquals(reg.hasFreeIp(pool), false);
  assertThrows(() => reg.deploy("f", image("f"), pool), PoolExhaustedError);
  assertEquals(reg.get("f"), null);
  assertEquals(reg.list().length, 5);
});

Deno.test("Registry keeps its records across reopening the database", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const times = [new Date("2026-01-01T00:00:00Z"), new Date("2026-01-02T00:00:00Z")];
    {
      using reg = new Registry(`${dir}/faasd.db`, () => times[0]!);
      reg.deploy("a", image("a:1"), new IpPool("10.0.0.0/24"));
    }
    using reg = new Registry(`${dir}/faasd.db`, () => times[1]!);
    const a = reg.get("a")!;
    assertEquals(a.ip, "10.0.0.10");
    assertEquals(a.createdAt, "2026-01-01T00:00:00.000Z");
    assertEquals(a.image?.config.entrypoint, ["/handler"]);
    assertEquals(reg.deploy("a", image("a:2"), new IpPool("10.0.0.0/24")).record.updatedAt, "2026-01-02T00:00:00.000Z");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Registry.importSeedJson() imports a seed registry.json once, skipping bad entries", () => {
  using reg = new Registry(":memory:");
  const seed = JSON.stringify({
    "my-handler": { ip: "10.0.0.10", image_ref: "my-handler:latest" },
    "api-service": { ip: "10.0.0.11", image_ref: "api-service:latest" },
    "Bad_Name": { ip: "10.0.0.12", image_ref: "x" },
    "dup": { ip: "10.0.0.10", image_ref: "y" },
    "outside": { ip: "8.8.8.8", image_ref: "z" },
    "nonsense": { ip: "not an address", image_ref: "z" },
  });
  const pool = new IpPool("10.0.0.0/24");
  const result = reg.importSeedJson(seed, pool)!;
  assertEquals(result.imported.sort(), ["api-service", "my-handler"]);
  assertEquals(result.skipped.length, 4);
  assertEquals(result.skipped.filter((s) => s.includes("is not in the pool 10.0.0.0/24")).length, 2);
  assertEquals(reg.get("my-handler")?.status, "no-image");
  assertEquals(reg.get("my-handler")?.imageRef, "my-handler:latest");
  assertEquals(reg.get("my-handler")?.settings, {});
  assertEquals(reg.importSeedJson(seed, pool), null);
  assertThrows(() => new Registry(":memory:").importSeedJson("[1]", pool), SyntaxError);
});

Deno.test("Registry.deploy() merges the settings it is given, and a redeploy keeps those set before", () => {
  using reg = new Registry(":memory:");
  const pool = new IpPool("10.0.0.0/24");
  assertEquals(reg.deploy("a", image("a:1"), pool).record.settings, {});
  assertEquals(reg.deploy("a", image("a:2"), pool, { memoryBytes: 64 << 20, cpus: 0.5 }).record.settings, {
    memoryBytes: 64 << 20,
    cpus: 0.5,
  });
  assertEquals(reg.deploy("a", image("a:3"), pool).record.settings, { memoryBytes: 64 << 20, cpus: 0.5 });
  assertEquals(reg.deploy("a", image("a:4"), pool, { cpus: null, rootfs: "writable" }).record.settings, {
    memoryBytes: 64 << 20,
    rootfs: "writable",
  });
  assertEquals(reg.deploy("b", image("b:1"), pool, { pids: 8 }).record.settings, { pids: 8 });
});

Deno.test("Registry.updateSettings() merges a patch, deleting fields given as null", () => {
  const times = [new Date("2026-01-01T00:00:00Z"), new Date("2026-01-02T00:00:00Z")];
  let now = times[0]!;
  using reg = new Registry(":memory:", () => now);
  reg.deploy("a", image("a:1"), new IpPool("10.0.0.0/24"), { memoryBytes: 64 << 20, timeoutMs: 5000 });
  now = times[1]!;
  const updated = reg.updateSettings("a", { timeoutMs: null, pids: 32 })!;
  assertEquals(updated.settings, { memoryBytes: 64 << 20, pids: 32 });
  assertEquals(updated.updatedAt, "2026-01-02T00:00:00.000Z");
  assertEquals(updated.imageRef, "a:1");
  assertEquals(reg.get("a"), updated);
  assertEquals(reg.updateSettings("missing", { pids: 1 }), null);
});

Deno.test("Registry.restore() puts back the settings a record had", () => {
  using reg = new Registry(":memory:");
  const { record } = reg.deploy("a", image("a:1"), new IpPool("10.0.0.0/24"), { cpus: 0.25 });
  reg.updateSettings("a", { cpus: null, memoryBytes: 8 << 20 });
  reg.restore(record);
  assertEquals(reg.get("a"), record);
});

Deno.test("Registry keeps settings across reopening, and migrates a database made before settings existed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/faasd.db`;
    // The previous version's schema and rows, written as it wrote them.
    const old = new DatabaseSync(path);
    old.exec(`
      CREATE TABLE functions (
        name TEXT PRIMARY KEY, ip TEXT NOT NULL UNIQUE, status TEXT NOT NULL, image_ref TEXT NOT NULL,
        image_json TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
      ) STRICT;
      CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    `);
    old.prepare("INSERT INTO functions VALUES (?, ?, 'active', ?, ?, ?, ?)")
      .run(
        "a",
        "10.0.0.10",
        "a:1",
        JSON.stringify(image("a:1")),
        "2026-01-01T00:00:00.000Z",
        "2026-01-01T00:00:00.000Z",
      );
    old.close();
    {
      using reg = new Registry(path);
      assertEquals(reg.get("a")?.settings, {});
      assertEquals(reg.get("a")?.image?.imageRef, "a:1");
      reg.updateSettings("a", { memoryBytes: 64 << 20 });
      const b = reg.deploy("b", image("b:1"), new IpPool("10.0.0.0/24"), { rootfs: "writable" }).record;
      assertEquals([b.ip, b.settings], ["10.0.0.11", { rootfs: "writable" }]);
    }
    using reg = new Registry(path); // opening a migrated database again changes nothing
    const settings = Object.fromEntries(reg.list().map((f) => [f.name, f.settings]));
    assertEquals(settings, { a: { memoryBytes: 64 << 20 }, b: { rootfs: "writable" } });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
