/**
 * Which containerd shim runs request containers. faasd's own (shim/faasd-shim.c, built by tools/setup.sh) is the runc
 * v2 shim minus two Go program starts per container: it answers containerd 1.6's `start` for a task joining a running
 * group shim, and the clean-up call containerd makes after every task delete for nothing; without it, the runc v2
 * shim itself. Likewise the OCI runtime the shim runs: faasd-runc (shim/faasd-runc.c) builds containers of faasd's
 * spec itself, without a Go program start (shim/create.c), answers for them (shim/own.c), and is runc for everything
 * else.
 *
 * @module
 */

/** containerd's name of the runc v2 shim. */
export const RUNC_V2 = "io.containerd.runc.v2";

/** Where tools/setup.sh builds faasd's shim. */
export const BUILT_SHIM: string = new URL("../.tools/bin/faasd-shim", import.meta.url).pathname;

/**
 * The containerd runtime name for `--shim`: `auto` (faasd's shim when built, else the runc v2 shim), `runc-v2`, or an
 * absolute path (containerd runs that binary as the shim).
 *
 * @throws {Deno.errors.NotFound} when an absolute path names no executable file.
 */
export async function resolveShim(option: string, built: string = BUILT_SHIM): Promise<string> {
  if (option === "runc-v2") return RUNC_V2;
  const path = option === "auto" ? built : option;
  const executable = await Deno.stat(path).then((s) => s.isFile && ((s.mode ?? 0) & 0o111) !== 0, () => false);
  if (executable) return path;
  if (option === "auto") return RUNC_V2;
  throw new Deno.errors.NotFound(`--shim ${option}: no executable file there`);
}

/** The OCI runtime binary faasd's front stands in for. */
export const RUNC = "runc";

/** Where tools/setup.sh builds faasd's front for runc. */
export const BUILT_RUNTIME: string = new URL("../.tools/bin/faasd-runc", import.meta.url).pathname;

/**
 * The OCI runtime binary for `--runtime`: `auto` (faasd's front for runc when built, else runc), or the name or path
 * given, as it is (the runc v2 shim looks a name up on its PATH).
 */
export async function resolveRuntime(option: string, built: string = BUILT_RUNTIME): Promise<string> {
  if (option !== "auto") return option;
  const executable = await Deno.stat(built).then((s) => s.isFile && ((s.mode ?? 0) & 0o111) !== 0, () => false);
  return executable ? built : RUNC;
}
