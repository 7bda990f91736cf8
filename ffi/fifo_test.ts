import assert from "node:assert/strict";
import { Poller } from "./epoll.ts";
import { ErrnoError } from "./errno.ts";
import { FIFO_PIPE_SIZE, FifoReader } from "./fifo.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function openFds(): string[] {
  return [...Deno.readDirSync("/proc/self/fd")].map((e) => e.name).sort();
}

/** A temporary directory removed by `await using`. */
async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir();
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }) };
}

/** Resolves after `ms` milliseconds. */
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

Deno.test("FifoReader.create() makes a 0600 FIFO with a large pipe, and close() removes it", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/a.log`;
  const before = openFds();
  const reader = FifoReader.create(path);
  const info = Deno.statSync(path);
  assert.equal(info.isFifo, true);
  assert.equal(info.mode! & 0o777, 0o600);
  const max = Number(Deno.readTextFileSync("/proc/sys/fs/pipe-max-size"));
  assert.ok(reader.pipeSize >= 1 << 16, `pipe size ${reader.pipeSize}`);
  if (Deno.uid() === 0 || max >= FIFO_PIPE_SIZE) assert.equal(reader.pipeSize, FIFO_PIPE_SIZE);
  assert.equal(openFds().length, before.length + 2); // the read end and faasd's own write end
  reader.close();
  reader.close();
  assert.equal(reader.closed, true);
  assert.throws(() => Deno.statSync(path), Deno.errors.NotFound);
  assert.deepEqual(openFds(), before);
});

Deno.test("FifoReader.create() refuses an existing path or a bad one and leaves nothing behind", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/taken`;
  Deno.writeTextFileSync(path, "mine");
  const before = openFds();
  assert.throws(() => FifoReader.create(path), (e) => e instanceof ErrnoError && e.code === "EEXIST");
  assert.equal(Deno.readTextFileSync(path), "mine");
  assert.throws(
    () => FifoReader.create(`${dir.path}/missing/x`),
    (e) => e instanceof ErrnoError && e.code === "ENOENT",
  );
  assert.throws(() => FifoReader.create(""), TypeError);
  assert.throws(() => FifoReader.create(`${dir.path}/a\0b`), TypeError);
  assert.deepEqual(openFds(), before);
});

Deno.test("FifoReader.read() reports no end of stream before a writer or after it left, until release()", async () => {
  await using dir = await tempDir();
  using reader = FifoReader.create(`${dir.path}/a.log`);
  const buffer = new Uint8Array(64);
  assert.equal(reader.read(buffer), null); // no writer ever: still "nothing yet", not 0
  const writer = await Deno.open(reader.path, { write: true });
  await writer.write(encoder.encode("hello\n"));
  writer.close();
  assert.equal(decoder.decode(buffer.subarray(0, reader.read(buffer)!)), "hello\n");
  assert.equal(reader.read(buffer), null); // the writer left: still not the end
  const late = await Deno.open(reader.path, { write: true }); // a second writer (stderr) may still come
  await late.write(encoder.encode("late\n"));
  late.close();
  reader.release();
  reader.release();
  assert.equal(reader.released, true);
  assert.equal(decoder.decode(buffer.subarray(0, reader.read(buffer)!)), "late\n");
  assert.equal(reader.read(buffer), 0);
  reader.close();
  assert.throws(() => reader.read(buffer), (e) => e instanceof ErrnoError && e.code === "EBADF");
});

Deno.test("FifoReader on a Poller fires for data only, not for a writer that left", async () => {
  await using dir = await tempDir();
  await using poller = new Poller();
  using reader = FifoReader.create(`${dir.path}/a.log`);
  const buffer = new Uint8Array(FIFO_PIPE_SIZE);
  let wakeups = 0;
  let received = "";
  let got: () => void = () => {};
  poller.watch(reader.fd, () => {
    wakeups++;
    for (let n = reader.read(buffer); n; n = reader.read(buffer)) received += decoder.decode(buffer.subarray(0, n));
    got();
  });
  await sleep(30);
  assert.equal(wakeups, 0);
  const arrived = new Promise<void>((resolve) => got = resolve);
  const writer = await Deno.open(reader.path, { write: true });
  await writer.write(encoder.encode("data\n"));
  writer.close();
  await arrived;
  assert.equal(received, "data\n");
  const settled = wakeups;
  await sleep(30);
  assert.equal(wakeups, settled); // no EPOLLHUP storm once the writer closed
  poller.unwatch(reader.fd);
});
