import { assertEquals } from "../tests/assert.ts";
import { logStream, removeLogs, rotateIfNeeded } from "./logs.ts";

async function collect(stream: ReadableStream<Uint8Array>): Promise<string> {
  return await new Response(stream).text();
}

Deno.test("rotateIfNeeded() moves the log aside past half the cap, keeping one rotation", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const log = `${dir}/f.log`;
    await rotateIfNeeded(log, 100); // no file yet: nothing to do
    await Deno.writeTextFile(log, "a".repeat(40));
    await rotateIfNeeded(log, 100);
    assertEquals(await Deno.readTextFile(log), "a".repeat(40));
    await Deno.writeTextFile(log, "b".repeat(60));
    await rotateIfNeeded(log, 100);
    assertEquals(await Deno.readTextFile(`${log}.1`), "b".repeat(60));
    await Deno.writeTextFile(log, "c".repeat(60));
    await rotateIfNeeded(log, 100);
    assertEquals(await Deno.readTextFile(`${log}.1`), "c".repeat(60));
    assertEquals(await collect(logStream(log, { follow: false })), "c".repeat(60));
    await removeLogs(log);
    assertEquals(await collect(logStream(log, { follow: false })), "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("logStream() gives the rotated part first, then the current file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const log = `${dir}/f.log`;
    await Deno.writeTextFile(`${log}.1`, "old\n");
    await Deno.writeTextFile(log, "new\n");
    assertEquals(await collect(logStream(log, { follow: false })), "old\nnew\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("logStream() with follow delivers appended output and rotations until aborted", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const log = `${dir}/f.log`;
    await Deno.writeTextFile(log, "one\n");
    const abort = new AbortController();
    const reader = logStream(log, { follow: true, signal: abort.signal, pollMs: 10 })
      .pipeThrough(new TextDecoderStream()).getReader();
    assertEquals((await reader.read()).value, "one\n");
    await Deno.writeTextFile(log, "two\n", { append: true });
    assertEquals((await reader.read()).value, "two\n");
    // Written just before the rotation, after the last read: it must not be lost.
    await Deno.writeTextFile(log, "tail\n", { append: true });
    await Deno.rename(log, `${log}.1`);
    await Deno.writeTextFile(log, "three\n");
    let rest = "";
    while (!rest.endsWith("three\n")) rest += (await reader.read()).value;
    assertEquals(rest, "tail\nthree\n");
    abort.abort();
    assertEquals((await reader.read()).done, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
