import { assertEquals, assertThrows } from "../tests/assert.ts";
import { IpPool, PoolExhaustedError } from "./ipam.ts";
import { type DeployedImage, Registry } from "./registry.ts";

const image = (ref: string): DeployedImage => ({
  imageRef: ref,
  containerdName: `faasd.local/functions/x:latest`,
  manifestDigest: "sha256:" + "a".repeat(64),
  chainId: "sha256:" + "b".repeat(64),
  config: {
    entrypoint: ["/handler"],
    cmd: [],
    env: [],
    workingDir: "/",
    user: "",
    resolvedUser: { uid: 0, gid: 0, additionalGids: [] },
  },
});

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
  assertEquals(reg.importSeedJson(seed, pool), null);
  assertThrows(() => new Registry(":memory:").importSeedJson("[1]", pool), SyntaxError);
});
