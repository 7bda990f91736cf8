import process from "node:process";
import { Poller } from "../ffi/epoll.ts";
import { ErrnoError } from "../ffi/errno.ts";
import { assert, assertEquals, assertMatch, assertStringIncludes, assertThrows } from "../tests/assert.ts";
import { ContainerOutput, FunctionLog, logPath, Logs, logStream, removeLogs } from "./logs.ts";

async function collect(stream: ReadableStream<Uint8Array>): Promise<string> {
  return await new Response(stream).text();
}

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

const encoder = new TextEncoder();
const MiB = 1 << 20;

/** Polls `condition` every 10 ms until it holds; throws after `timeoutMs`. */
async function waitUntil(condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function openFds(): string[] {
  return [...Deno.readDirSync("/proc/self/fd")].map((e) => e.name).sort();
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    throw e;
  }
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

/** A state directory with `logs/` and `run/`, a poller, and the fds open before either; removed on dispose. */
async function fixture(): Promise<{ dir: string; poller: Poller; fdsBefore: string[] } & AsyncDisposable> {
  const fdsBefore = openFds();
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/logs`);
  await Deno.mkdir(`${dir}/run`);
  const poller = new Poller();
  return {
    dir,
    poller,
    fdsBefore,
    async [Symbol.asyncDispose]() {
      await poller[Symbol.asyncDispose]();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Writes `text` into the FIFO at `path` the way the shim does: open for writing, write, close. */
async function writeFifo(path: string, text: string | Uint8Array): Promise<void> {
  const file = await Deno.open(path, { write: true });
  try {
    const bytes = typeof text === "string" ? encoder.encode(text) : text;
    for (let done = 0; done < bytes.byteLength;) done += await file.write(bytes.subarray(done));
  } finally {
    file.close();
  }
}

Deno.test("FunctionLog rotates to .1 before a write would pass half the cap", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/f.log`;
    const log = new FunctionLog(path, 100);
    await log.append(encoder.encode("a".repeat(40)));
    assertEquals(await Deno.readTextFile(path), "a".repeat(40));
    await log.append(encoder.encode("b".repeat(20))); // 60 > 50: rotate first
    assertEquals(await Deno.readTextFile(`${path}.1`), "a".repeat(40));
    assertEquals(await Deno.readTextFile(path), "b".repeat(20));
    await log.append(encoder.encode("c".repeat(30))); // exactly half: no rotation
    assertEquals(await Deno.readTextFile(path), "b".repeat(20) + "c".repeat(30));
    let all = "a".repeat(40) + "b".repeat(20) + "c".repeat(30);
    // Concurrent appends keep their order; one larger than the cap is split across rotations.
    const big = "0123456789".repeat(13);
    await Promise.all([
      log.append(encoder.encode("d")),
      log.append(encoder.encode(big)),
      log.append(encoder.encode("e")),
    ]);
    all += "d" + big + "e";
    const current = await Deno.readTextFile(path);
    const rotated = await Deno.readTextFile(`${path}.1`);
    assert(current.length <= 50 && rotated.length <= 50, `${rotated.length} + ${current.length}`);
    assert(all.endsWith(rotated + current));
    assertEquals(await collect(logStream(path, { follow: false })), rotated + current);
    await log.close();
    await log.close();
    assertEquals(log.closed, true);
    await log.append(encoder.encode("after close"));
    assertEquals(await Deno.readTextFile(path), current);
    assertThrows(() => new FunctionLog(path, 1), RangeError);
    assertThrows(() => new FunctionLog("", 100), TypeError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("FunctionLog.close() lets queued writes finish and then never recreates the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/f.log`;
    const log = new FunctionLog(path, 1000);
    const queued = log.append(encoder.encode("queued\n"));
    await log.close();
    await queued;
    assertEquals(await Deno.readTextFile(path), "queued\n");
    await removeLogs(path);
    await log.append(encoder.encode("late\n"));
    assertEquals(await exists(path), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Logs.open() copies what a container writes to its FIFO into the function's log", async () => {
  await using fx = await fixture();
  const fds = openFds();
  {
    await using logs = new Logs({ stateDir: fx.dir, maxBytes: MiB, poller: fx.poller });
    const output = logs.open("hello", "faasd-one", `${fx.dir}/run/one.log`);
    assertEquals(output.path, `${fx.dir}/run/one.log`);
    assertEquals(logs.path("hello"), logPath(fx.dir, "hello"));
    assertEquals(await exists(logs.path("hello")), false); // nothing written yet: no file
    await writeFifo(output.path, "out\n");
    await writeFifo(output.path, "err\n"); // stdout and stderr are two writers of the same FIFO
    await waitUntil(async () => await fileSize(logs.path("hello")) === 8);
    assertEquals(await Deno.readTextFile(logs.path("hello")), "out\nerr\n");
    await output.close();
    await output.close();
    assertEquals(await exists(output.path), false);
    assertEquals(output.bytesKept, 8);
    assertEquals(output.bytesDropped, 0);
    assertEquals(await Deno.readTextFile(logs.path("hello")), "out\nerr\n"); // no marker without drops
    assertThrows(() => logs.open("Not/A/Name", "faasd-two", `${fx.dir}/run/two.log`), TypeError);
    assertThrows(() => logs.open("hello", "faasd-two", `${fx.dir}/run/one.log/x`), ErrnoError);
  }
  assertEquals(openFds(), fds);
});

Deno.test("ContainerOutput.close() drains what the writer wrote before it, holding no line back", async () => {
  await using fx = await fixture();
  const log = new FunctionLog(logPath(fx.dir, "f"), 64 * MiB);
  const output = new ContainerOutput({
    log,
    poller: fx.poller,
    fifoPath: `${fx.dir}/run/c.log`,
    containerId: "faasd-c",
    budget: 8 * MiB,
  });
  // 512 KiB fits in the pipe: the writer finishes without faasd having read anything yet.
  const lines = Array.from({ length: 8192 }, (_, i) => `line ${i} `.padEnd(63, ".") + "\n").join("");
  await writeFifo(output.path, lines + "no newline at the end");
  await output.close();
  assertEquals(await Deno.readTextFile(log.path), lines + "no newline at the end\n");
  await log.close();
});

Deno.test("two ContainerOutputs of one function append whole lines to one file", async () => {
  await using fx = await fixture();
  await using logs = new Logs({ stateDir: fx.dir, maxBytes: 64 * MiB, poller: fx.poller });
  const a = logs.open("f", "faasd-a", `${fx.dir}/run/a.log`);
  const b = logs.open("f", "faasd-b", `${fx.dir}/run/b.log`);
  const writers = [a, b].map(async (output, k) => {
    const file = await Deno.open(output.path, { write: true });
    for (let i = 0; i < 200; i++) {
      // Each line in two writes, so a line's end comes in a later read than its start.
      await file.write(encoder.encode(`${"ab"[k]}${i} start `));
      await file.write(encoder.encode(`end ${"ab"[k]}${i}\n`));
    }
    file.close();
  });
  await Promise.all(writers);
  await Promise.all([a.close(), b.close()]);
  const lines = (await Deno.readTextFile(logs.path("f"))).split("\n").slice(0, -1);
  assertEquals(lines.length, 400);
  for (const line of lines) assertMatch(line, /^([ab])(\d+) start end \1\2$/);
  for (const k of "ab") {
    const own = lines.filter((line) => line.startsWith(k));
    assertEquals(own, Array.from({ length: 200 }, (_, i) => `${k}${i} start end ${k}${i}`));
  }
});

Deno.test("Logs keeps a 100 MiB flood within the cap with bounded CPU, and marks what it dropped", async () => {
  await using fx = await fixture();
  const maxBytes = 10 * MiB;
  const total = 100 * MiB;
  await using logs = new Logs({ stateDir: fx.dir, maxBytes, poller: fx.poller });
  const earlier = logs.open("flood", "faasd-earlier", `${fx.dir}/run/earlier.log`);
  // Another container's output first: it keeps its 2.5 MiB budget, so the flood's output has to rotate the file.
  await writeFifo(earlier.path, "x".repeat(4 * MiB - 1) + "\n");
  await earlier.close();
  const output = logs.open("flood", "faasd-flood", `${fx.dir}/run/flood.log`);
  const cpuBefore = process.cpuUsage(); // this process only, in µs: the writer is a child
  const wallBefore = performance.now();
  // Written in 4 KiB writes like the shim's; the writer only finishes if faasd keeps draining past the budget.
  const writer = new Deno.Command("sh", {
    args: ["-c", `yes "a line of output from a flooding handler" | head -c ${total} | dd bs=4k of="$0"`, output.path],
    stderr: "null",
  }).spawn();
  assertEquals((await writer.status).code, 0);
  await output.close();
  const cpu = process.cpuUsage(cpuBefore);
  const cpuMs = (cpu.user + cpu.system) / 1000;
  const wallMs = performance.now() - wallBefore;
  console.log(
    `drained ${total / MiB} MiB: ${cpuMs.toFixed(1)} ms CPU in faasd's process ` +
      `(${(cpuMs / (total / MiB)).toFixed(3)} ms/MiB) over ${wallMs.toFixed(0)} ms`,
  );
  const budget = maxBytes / 4;
  assertEquals(output.bytesKept, budget);
  assertEquals(output.bytesDropped, total - budget);
  const path = logs.path("flood");
  const current = await fileSize(path);
  const rotated = await fileSize(`${path}.1`);
  assert(current + rotated <= maxBytes, `${rotated} + ${current} bytes exceed the cap`);
  assert(rotated > 0, "the flood rotated the log");
  const text = await collect(logStream(path, { follow: false }));
  assertStringIncludes(text, `\n[faasd] faasd-flood: output past ${budget} bytes dropped\n`);
  assert(text.endsWith(`\n[faasd] faasd-flood: ${total - budget} bytes of output dropped\n`), text.slice(-200));
  // The design's point is to wake up rarely, not once per 4 KiB write (25,600 times for 100 MiB): counted, since CPU
  // time on a shared machine is too noisy to tell 0.9 ms/MiB from 2.4. A generous CPU bound still catches copying
  // every byte into JS.
  console.log(`woke ${output.turns} times for ${total / MiB} MiB`);
  assert(output.turns < total / (64 * 1024), `${output.turns} wake-ups for ${total / MiB} MiB`);
  assert(cpuMs / (total / MiB) < 5, `${cpuMs} ms of CPU for ${total / MiB} MiB`);
});

Deno.test("Logs.forget() closes the log: output of a container still running is drained, not written", async () => {
  await using fx = await fixture();
  await using logs = new Logs({ stateDir: fx.dir, maxBytes: MiB, poller: fx.poller });
  const output = logs.open("gone", "faasd-g", `${fx.dir}/run/g.log`);
  const path = logs.path("gone");
  await writeFifo(output.path, "before\n");
  await waitUntil(() => exists(path));
  await logs.forget("gone");
  await removeLogs(path);
  await writeFifo(output.path, "after delete\n");
  await waitUntil(() => output.bytesKept === 20);
  await output.close();
  assertEquals(await exists(path), false);
  assertEquals(await exists(`${path}.1`), false);
  // A function deployed again under the same name gets a new log.
  const again = logs.open("gone", "faasd-h", `${fx.dir}/run/h.log`);
  await writeFifo(again.path, "new\n");
  await again.close();
  assertEquals(await Deno.readTextFile(path), "new\n");
});

Deno.test("Logs.close() closes the outputs still open, removes their FIFOs and leaves no fd open", async () => {
  await using fx = await fixture();
  const logs = new Logs({ stateDir: fx.dir, maxBytes: MiB, poller: fx.poller });
  const outputs = ["a", "b", "c"].map((id) => logs.open("f", `faasd-${id}`, `${fx.dir}/run/${id}.log`));
  await writeFifo(outputs[0].path, "one\n");
  await logs.close();
  await logs.close();
  assertEquals(await Deno.readTextFile(logs.path("f")), "one\n");
  for (const output of outputs) assertEquals(await exists(output.path), false);
  assertThrows(() => logs.open("f", "faasd-d", `${fx.dir}/run/d.log`), Deno.errors.BadResource);
  await fx.poller[Symbol.asyncDispose]();
  assertEquals(openFds(), fx.fdsBefore);
});

Deno.test("logStream() with follow follows a FunctionLog across its rotations", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/f.log`;
    const log = new FunctionLog(path, 200);
    const abort = new AbortController();
    const reader = logStream(path, { follow: true, signal: abort.signal, pollMs: 5 })
      .pipeThrough(new TextDecoderStream()).getReader();
    const expected = Array.from({ length: 12 }, (_, i) => `line ${String(i).padStart(2, "0")} `.padEnd(29) + "\n");
    let seen = "";
    for (const line of expected) {
      await log.append(encoder.encode(line)); // 30 bytes: a rotation every three lines
      while (seen.length < expected.slice(0, expected.indexOf(line) + 1).join("").length) {
        seen += (await reader.read()).value;
      }
    }
    assertEquals(seen, expected.join(""));
    abort.abort();
    await reader.cancel();
    await log.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
