/**
 * Where faasd's adapter (adapter/faasd-adapter.c, built by `deno task gen`) is: the small static program that turns a
 * plain HTTP server image into a function. faasd mounts it read-only into adapter-mode containers and runs it as their
 * process; it starts the image's own command, waits for its port, then relays the client's connection to it.
 *
 * @module
 */

/** Where `deno task gen` builds the adapter. */
export const BUILT_ADAPTER: string = new URL("../.tools/bin/faasd-adapter", import.meta.url).pathname;

/**
 * The adapter's host path for `--adapter` (`auto`: where `deno task gen` builds it, else an absolute path) when it is
 * an executable file; null when there is none (then adapter mode is refused with 503).
 */
export async function resolveAdapter(option = "auto", built: string = BUILT_ADAPTER): Promise<string | null> {
  const path = option === "auto" ? built : option;
  return await Deno.stat(path).then((s) => s.isFile && ((s.mode ?? 0) & 0o111) !== 0 ? path : null, () => null);
}
