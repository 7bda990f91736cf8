import { assertEquals, assertThrows } from "../tests/assert.ts";
import { ErrnoError } from "./errno.ts";
import { ReadOnlyMount } from "./mount.ts";

/** Whether `dir` is a mount point now (per /proc/self/mountinfo). */
function mounted(dir: string): boolean {
  return Deno.readTextFileSync("/proc/self/mountinfo").split("\n").some((line) => line.split(" ")[4] === dir);
}

Deno.test("ReadOnlyMount.open() mounts a bind read-only and close() detaches it", async () => {
  const source = await Deno.makeTempDir();
  const target = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${source}/file`, "content");
    {
      using m = ReadOnlyMount.open([{ type: "bind", source, options: ["ro", "rbind"] }], target);
      assertEquals(mounted(target), true);
      assertEquals(await Deno.readTextFile(`${m.target}/file`), "content");
      assertThrows(() => Deno.writeTextFileSync(`${target}/new`, "x"));
      m.close();
      m.close(); // idempotent
    }
    assertEquals(mounted(target), false);
    assertEquals([...Deno.readDirSync(target)], []);
  } finally {
    await Deno.remove(source, { recursive: true });
    await Deno.remove(target, { recursive: true });
  }
});

Deno.test("ReadOnlyMount.open() mounts an overlay of lower dirs, the first on top", async () => {
  const lower1 = await Deno.makeTempDir();
  const lower2 = await Deno.makeTempDir();
  const target = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${lower1}/a`, "top");
    await Deno.writeTextFile(`${lower2}/a`, "bottom");
    await Deno.writeTextFile(`${lower2}/b`, "only below");
    using _m = ReadOnlyMount.open(
      [{ type: "overlay", source: "overlay", options: [`lowerdir=${lower1}:${lower2}`] }],
      target,
    );
    assertEquals(await Deno.readTextFile(`${target}/a`), "top");
    assertEquals(await Deno.readTextFile(`${target}/b`), "only below");
  } finally {
    await Deno.remove(lower1, { recursive: true });
    await Deno.remove(lower2, { recursive: true });
    await Deno.remove(target, { recursive: true });
  }
});

Deno.test("ReadOnlyMount.open() throws ErrnoError for a missing source and leaves nothing mounted", async () => {
  const target = await Deno.makeTempDir();
  try {
    const err = assertThrows(
      () => ReadOnlyMount.open([{ type: "bind", source: `${target}/missing`, options: ["rbind"] }], target),
      ErrnoError,
    ) as ErrnoError;
    assertEquals(err.code, "ENOENT");
    assertEquals(mounted(target), false);
    assertThrows(() => ReadOnlyMount.open([], target), RangeError);
  } finally {
    await Deno.remove(target);
  }
});
