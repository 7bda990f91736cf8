import zlib from "node:zlib";
import { assertEquals, assertRejects, assertStringIncludes, assertThrows } from "../../tests/assert.ts";
import { ImageTooLargeError } from "./errors.ts";
import { LayerScanner, SizeBudget } from "./layer_scan.ts";

const MiB = 1 << 20;

async function scan(data: Uint8Array, inflated = new SizeBudget(1 << 30), chunk = 64 * 1024) {
  using s = new LayerScanner(inflated);
  for (let at = 0; at < data.length; at += chunk) await s.write(data.subarray(at, at + chunk));
  return await s.end();
}

/** A tar made by GNU tar from files in a temp dir; `sparse` makes a 1 GiB hole file, in `format`. */
async function gnuTar(
  opts: { files?: Record<string, Uint8Array>; sparse?: "posix" | "gnu" } = {},
): Promise<Uint8Array> {
  const dir = await Deno.makeTempDir();
  try {
    for (const [name, data] of Object.entries(opts.files ?? {})) await Deno.writeFile(`${dir}/${name}`, data);
    const args = ["-C", dir, "-cf", "-"];
    if (opts.sparse) {
      using f = await Deno.open(`${dir}/holes`, { create: true, write: true });
      await f.truncate(1 << 30);
      args.unshift("-S", `--format=${opts.sparse}`);
    }
    const out = await new Deno.Command("tar", { args: [...args, "."], stdout: "piped" }).output();
    if (!out.success) throw new Error("tar failed");
    return out.stdout;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("SizeBudget.charge() throws ImageTooLargeError past the limit, naming what was counted", () => {
  const budget = new SizeBudget(10);
  budget.charge(10);
  assertEquals(budget.used, 10);
  assertThrows(() => budget.charge(1), ImageTooLargeError, "image archive is larger");
  assertThrows(() => new SizeBudget(1, "unpacked").charge(2), ImageTooLargeError, "unpacks to more");
  assertThrows(() => new SizeBudget(0), RangeError);
});

Deno.test("LayerScanner reports a plain tar's size", async () => {
  const tar = await gnuTar({ files: { a: new Uint8Array(3 * MiB), b: new TextEncoder().encode("b") } });
  assertEquals(await scan(tar), { kind: "layer", tarBytes: tar.length });
});

Deno.test("LayerScanner inflates gzip, across concatenated members, and charges what it inflates to", async () => {
  const tar = await gnuTar({ files: { a: new Uint8Array(2 * MiB) } });
  const half = 1024 * 512;
  const gz = new Uint8Array([...zlib.gzipSync(tar.subarray(0, half)), ...zlib.gzipSync(tar.subarray(half))]);
  const inflated = new SizeBudget(100 * MiB, "unpacked");
  assertEquals(await scan(gz, inflated, 1000), { kind: "layer", tarBytes: tar.length });
  assertEquals(inflated.used, tar.length);
});

Deno.test("LayerScanner stops a gzip bomb as soon as the inflated budget is spent", async () => {
  const tar = await gnuTar({ files: { zeros: new Uint8Array(256 * MiB) } });
  const bomb = zlib.gzipSync(tar);
  const inflated = new SizeBudget(MiB, "unpacked");
  await assertRejects(() => scan(bomb, inflated, 16 * 1024), ImageTooLargeError, "unpacks to more");
  assertEquals(inflated.used < 64 * MiB, true);
});

Deno.test("LayerScanner refuses sparse files, which would unpack larger than the tar", async () => {
  for (const format of ["posix", "gnu"] as const) {
    const tar = await gnuTar({ sparse: format });
    assertEquals(tar.length < MiB, true);
    const result = await scan(tar);
    assertEquals(result.kind, "unusable", format);
    if (result.kind === "unusable") {
      assertStringIncludes(result.reason, format === "posix" ? "a sparse file" : "unknown type");
    }
  }
});

Deno.test("LayerScanner tells what is not a usable layer: zstd, JSON, broken gzip, truncated tar, a few bytes", async () => {
  const tar = await gnuTar({ files: { a: new Uint8Array(100_000).fill(1) } });
  const gz = zlib.gzipSync(tar);
  const junkGzip = crypto.getRandomValues(new Uint8Array(4096));
  junkGzip.set([0x1f, 0x8b, 8, 0]);
  const cases: [string, Uint8Array, string][] = [
    ["zstd", zlib.zstdCompressSync(tar), "zstd"],
    ["json", new TextEncoder().encode(JSON.stringify({ config: "x".repeat(2000) })), "not a tar"],
    ["junk gzip", junkGzip, "not valid gzip"],
    ["truncated gzip", gz.subarray(0, gz.length - 200), "gzip"],
    ["truncated tar", tar.subarray(0, 50_000), "not a tar"],
    ["tiny", new Uint8Array([0x1f]), "not a tar"],
  ];
  for (const [what, data, reason] of cases) {
    const result = await scan(data);
    assertEquals(result.kind, "unusable", what);
    if (result.kind === "unusable") assertStringIncludes(result.reason, reason, what);
  }
});

Deno.test("LayerScanner neither hangs nor throws on gzip followed by garbage", async () => {
  const tar = await gnuTar({ files: { a: new Uint8Array(10_000) } });
  const data = new Uint8Array([...zlib.gzipSync(tar), ...new Uint8Array(300).fill(0x41)]);
  for (const chunk of [7, 4096, data.length]) {
    const result = await scan(data, undefined, chunk);
    assertEquals(["layer", "unusable"].includes(result.kind), true);
  }
});
