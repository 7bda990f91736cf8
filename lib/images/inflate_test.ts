import zlib from "node:zlib";
import { assertEquals, assertRejects, assertThrows } from "../../tests/assert.ts";
import { ImageImportError, ImageTooLargeError } from "./errors.ts";
import { InflateMeter, SizeBudget } from "./inflate.ts";

const MiB = 1 << 20;

async function meter(budget: SizeBudget, chunks: Uint8Array[]): Promise<void> {
  using m = new InflateMeter(budget, "layer");
  for (const chunk of chunks) await m.write(chunk);
  await m.end();
}

/** Splits `data` into `size`-byte chunks, as a tar entry arrives. */
function chunks(data: Uint8Array, size: number): Uint8Array[] {
  const out = [];
  for (let at = 0; at < data.length; at += size) out.push(data.subarray(at, at + size));
  return out;
}

Deno.test("SizeBudget.charge() throws ImageTooLargeError past the limit", () => {
  const budget = new SizeBudget(10);
  budget.charge(10);
  assertEquals(budget.used, 10);
  assertThrows(() => budget.charge(1), ImageTooLargeError);
  assertThrows(() => new SizeBudget(0), RangeError);
});

Deno.test("InflateMeter charges what gzip inflates to, across concatenated members", async () => {
  const budget = new SizeBudget(100 * MiB);
  const data = new Uint8Array([...zlib.gzipSync(new Uint8Array(3 * MiB)), ...zlib.gzipSync(new Uint8Array(MiB))]);
  await meter(budget, chunks(data, 1000));
  assertEquals(budget.used, 4 * MiB);
});

Deno.test("InflateMeter charges what zstd inflates to", async () => {
  const budget = new SizeBudget(100 * MiB);
  await meter(budget, chunks(zlib.zstdCompressSync(new Uint8Array(5 * MiB)), 3));
  assertEquals(budget.used, 5 * MiB);
});

Deno.test("InflateMeter charges nothing for an uncompressed blob, even one shorter than a magic number", async () => {
  const budget = new SizeBudget(1);
  await meter(budget, chunks(new Uint8Array(10 * MiB).fill(7), 64 * 1024));
  await meter(budget, [new Uint8Array([0x1f])]);
  assertEquals(budget.used, 0);
});

Deno.test("InflateMeter stops with ImageTooLargeError as soon as the budget is spent", async () => {
  const budget = new SizeBudget(MiB);
  const bomb = zlib.gzipSync(new Uint8Array(512 * MiB));
  await assertRejects(() => meter(budget, chunks(bomb, 16 * 1024)), ImageTooLargeError);
  // It stopped near the limit rather than inflating the whole bomb.
  assertEquals(budget.used < 64 * MiB, true);
});

Deno.test("InflateMeter rejects a gzip blob that is corrupt or truncated", async () => {
  const junk = crypto.getRandomValues(new Uint8Array(4096));
  junk.set([0x1f, 0x8b, 8, 0]);
  const err = await assertRejects(() => meter(new SizeBudget(MiB), [junk]), ImageImportError);
  assertEquals(err.message.startsWith("archive entry layer is not valid gzip"), true);
  const whole = zlib.gzipSync(new Uint8Array(MiB));
  await assertRejects(() => meter(new SizeBudget(10 * MiB), [whole.subarray(0, whole.length - 100)]), ImageImportError);
});
