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
  // Three headers (., a, b), each counted with a filesystem block.
  assertEquals(await scan(tar), { kind: "layer", tarBytes: tar.length, unpackedBytes: tar.length + 3 * 4096 });
});

Deno.test("LayerScanner inflates gzip, across concatenated members, and charges what it inflates to", async () => {
  const tar = await gnuTar({ files: { a: new Uint8Array(2 * MiB) } });
  const half = 1024 * 512;
  const gz = new Uint8Array([...zlib.gzipSync(tar.subarray(0, half)), ...zlib.gzipSync(tar.subarray(half))]);
  const inflated = new SizeBudget(100 * MiB, "unpacked");
  assertEquals(await scan(gz, inflated, 1000), {
    kind: "layer",
    tarBytes: tar.length,
    unpackedBytes: tar.length + 2 * 4096,
  });
  assertEquals(inflated.used, tar.length);
});

Deno.test("LayerScanner stops a gzip bomb as soon as the inflated budget is spent", async () => {
  const tar = await gnuTar({ files: { zeros: new Uint8Array(64 * MiB) } });
  const bomb = zlib.gzipSync(tar);
  const inflated = new SizeBudget(MiB, "unpacked");
  await assertRejects(() => scan(bomb, inflated, 16 * 1024), ImageTooLargeError, "unpacks to more");
  assertEquals(inflated.used < 32 * MiB, true);
});

Deno.test("LayerScanner refuses sparse files, which would unpack larger than the tar", async () => {
  for (const format of ["posix", "gnu"] as const) {
    const tar = await gnuTar({ sparse: format });
    assertEquals(tar.length < MiB, true);
    const result = await scan(tar);
    assertEquals(result.kind, "unusable", format);
    if (result.kind === "unusable") {
      assertStringIncludes(result.reason, "a sparse file");
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

Deno.test("LayerScanner refuses gzip followed by garbage, however it arrives, without hanging or throwing", async () => {
  const tar = await gnuTar({ files: { a: new Uint8Array(10_000) } });
  const data = new Uint8Array([...zlib.gzipSync(tar), ...new Uint8Array(300).fill(0x41)]);
  for (const chunk of [7, 4096, data.length]) {
    const result = await scan(data, undefined, chunk);
    assertEquals(result.kind, "unusable");
    if (result.kind === "unusable") assertStringIncludes(result.reason, "not valid gzip");
  }
});

/** A ustar header block as a hand-made (hostile) archive would have it; `size` is the raw 12-byte field. */
function header(name: string, type: string, size: Uint8Array | number): Uint8Array {
  const block = new Uint8Array(512);
  const put = (text: string, at: number) => block.set(new TextEncoder().encode(text), at);
  put(name, 0);
  put("0000644\0", 100);
  put("0000000\0", 108);
  put("0000000\0", 116);
  block.set(typeof size === "number" ? new TextEncoder().encode(size.toString(8).padStart(11, "0") + "\0") : size, 124);
  put("00000000000\0", 136);
  block[156] = type.charCodeAt(0);
  put("ustar\0" + "00", 257);
  block.fill(0x20, 148, 156);
  const sum = block.reduce((a, b) => a + b, 0);
  put(sum.toString(8).padStart(6, "0") + "\0 ", 148);
  return block;
}

/** GNU tar's PAX sparse file of 256 MiB of holes, without its end-of-archive blocks. */
async function sparseEntry(): Promise<Uint8Array> {
  const tar = await gnuTar({ sparse: "posix" });
  let end = tar.length;
  while (end >= 512 && tar.subarray(end - 512, end).every((b) => b === 0)) end -= 512;
  return tar.subarray(0, end);
}

Deno.test("LayerScanner finds a sparse file that tar-stream reads as data but Go reads as headers", async () => {
  const sparse = await sparseEntry();
  const end = new Uint8Array(1024);
  // Go gives a symlink no data whatever its size says; tar-stream skips `size` bytes.
  const behindLink = new Uint8Array([...header("link", "2", sparse.length), ...sparse, ...end]);
  // Go trims the NULs around "0001000" (512); tar-stream stops at the first NUL (0).
  const nulSize = new Uint8Array([0, 0, 0, 0x20, ...new TextEncoder().encode("0001000"), 0]);
  const behindSize = new Uint8Array([
    ...header("a", "0", nulSize),
    ...header("b", "0", sparse.length),
    ...sparse,
    ...end,
  ]);
  for (const [what, data] of [["link", behindLink], ["size", behindSize]] as const) {
    const result = await scan(data);
    assertEquals(result.kind, "unusable", what);
    if (result.kind === "unusable") assertStringIncludes(result.reason, "sparse", what);
  }
});

Deno.test("LayerScanner counts a filesystem block for every directory", async () => {
  const blocks = Array.from({ length: 1000 }, (_, i) => header(`d${i}/`, "5", 0));
  const tar = new Uint8Array(blocks.length * 512 + 1024);
  blocks.forEach((b, i) => tar.set(b, i * 512));
  const result = await scan(tar);
  assertEquals(result, { kind: "layer", tarBytes: tar.length, unpackedBytes: tar.length + 1000 * 4096 });
});

Deno.test("LayerScanner settles however a blob that is not a tar arrives in pieces", async () => {
  const json = new TextEncoder().encode(JSON.stringify({ config: "x".repeat(10_000) }));
  for (const first of [1, 100, 300, 511, 512, 513]) {
    for (const second of [1, 600, 900, 1500]) {
      using s = new LayerScanner(new SizeBudget(1 << 30));
      await s.write(json.subarray(0, first));
      await s.write(json.subarray(first, first + second));
      await s.write(json.subarray(first + second));
      assertEquals((await s.end()).kind, "unusable");
    }
  }
});
