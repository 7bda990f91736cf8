/**
 * Per-function log files. Each request's container writes its stdout and stderr straight into
 * `<state-dir>/logs/<name>.log` (the runc shim opens the file itself through a `file://` URI, so output never passes
 * through faasd). The size cap works by rotation before each container starts: past half the cap the file moves to
 * `<name>.log.1`, replacing the previous one, so the two together stay near the cap. Containers still running keep
 * writing into the file they opened.
 *
 * @module
 */

/** Path of function `name`'s current log file. */
export function logPath(stateDir: string, name: string): string {
  return `${stateDir}/logs/${name}.log`;
}

async function size(path: string): Promise<number | null> {
  try {
    return (await Deno.stat(path)).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** Rotates `path` to `path.1` once it holds more than half of `maxBytes`. */
export async function rotateIfNeeded(path: string, maxBytes: number): Promise<void> {
  const current = await size(path);
  if (current === null || current <= maxBytes / 2) return;
  try {
    await Deno.rename(path, `${path}.1`);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e; // a concurrent request rotated it first
  }
}

/** Removes a function's log files (on delete). */
export async function removeLogs(path: string): Promise<void> {
  for (const p of [path, `${path}.1`]) await Deno.remove(p).catch(() => {});
}

/** Reads up to 1 MiB of `path` from `offset`, with the inode read (the file, not the name); null when missing. */
async function readFrom(path: string, offset: number): Promise<{ ino: number | null; bytes: Uint8Array } | null> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
  try {
    const { size, ino } = await file.stat();
    if (size <= offset) return { ino, bytes: new Uint8Array(0) };
    await file.seek(offset, Deno.SeekMode.Start);
    const buf = new Uint8Array(Math.min(size - offset, 1 << 20));
    const n = await file.read(buf);
    return { ino, bytes: buf.subarray(0, n ?? 0) };
  } finally {
    file.close();
  }
}

/**
 * The log as a stream: the rotated part, then the current file; with `follow`, keeps polling for new output (and
 * rotations) until `signal` aborts.
 */
export function logStream(
  path: string,
  opts: { follow: boolean; signal?: AbortSignal; pollMs?: number },
): ReadableStream<
  Uint8Array
> {
  const pollMs = opts.pollMs ?? 250;
  let phase: "rotated" | "current" = "rotated";
  let offset = 0;
  let ino: number | null = null;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      while (true) {
        if (opts.signal?.aborted) return controller.close();
        if (phase === "rotated") {
          const chunk = (await readFrom(`${path}.1`, offset))?.bytes;
          if (chunk && chunk.length) {
            offset += chunk.length;
            return controller.enqueue(chunk);
          }
          phase = "current";
          offset = 0;
          continue;
        }
        const read = await readFrom(path, offset);
        if (read && ino !== null && read.ino !== ino) {
          // Rotated while following: the file followed so far is `.1` now. Its rest first, then the new one.
          phase = "rotated";
          ino = null;
          continue;
        }
        if (read) ino = read.ino;
        if (read?.bytes.length) {
          offset += read.bytes.length;
          return controller.enqueue(read.bytes);
        }
        if (!opts.follow) return controller.close();
        await new Promise((resolve) => setTimeout(resolve, pollMs));
      }
    },
  });
}
