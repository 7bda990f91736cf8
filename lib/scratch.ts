/**
 * A bounded writable root for functions deployed with `rootfs: writable`. containerd's overlayfs snapshotter keeps
 * a container's writes in a directory on the host's disk with no size limit, so faasd builds the root itself: the
 * image's layers (a containerd View, read-only) under an upper layer that lives on a tmpfs of `--scratch-size`,
 * mounted per container under `<state-dir>/scratch/<id>`. The tmpfs bounds the writes, and its pages count against
 * the container's memory limit (the kernel charges them to the writer's cgroup).
 *
 * @module
 */

import { detach, mountTmpfs } from "../ffi/mount.ts";
import type { Mount } from "./containerd/types.ts";

/** Directory of the per-container scratch mounts. */
export function scratchDir(stateDir: string): string {
  return `${stateDir}/scratch`;
}

/**
 * The rootfs mount of a writable root: the view's layers as overlay lower layers, `upper` and `work` on the scratch
 * tmpfs.
 *
 * @throws {TypeError} when the view's mounts are of a shape containerd's overlayfs snapshotter does not return.
 */
export function writableRootfs(view: readonly Mount[], upper: string, work: string): Mount {
  const m = view.length === 1 ? view[0]! : null;
  let lower: string | undefined;
  // One layer comes back as a read-only bind of its directory, several as an overlay without upper layer.
  if (m?.type === "bind") lower = m.source;
  else if (m?.type === "overlay") lower = m.options.find((o) => o.startsWith("lowerdir="))?.slice("lowerdir=".length);
  if (!lower) throw new TypeError(`cannot stack a writable layer on a view of ${JSON.stringify(view)}`);
  return { type: "overlay", source: "overlay", options: [`workdir=${work}`, `upperdir=${upper}`, `lowerdir=${lower}`] };
}

/** One container's scratch tmpfs, with the overlay's upper and work directories in it. */
export class Scratch {
  readonly path: string;
  #removed = false;

  private constructor(path: string) {
    this.path = path;
  }

  /** The upper layer directory. */
  get upper(): string {
    return `${this.path}/upper`;
  }

  /** overlayfs's work directory (on the same filesystem as the upper layer). */
  get work(): string {
    return `${this.path}/work`;
  }

  /**
   * Mounts a tmpfs of `sizeBytes` at `<stateDir>/scratch/<id>`.
   *
   * @throws {ErrnoError} when the mount fails; nothing is left.
   */
  static async create(stateDir: string, id: string, sizeBytes: number): Promise<Scratch> {
    const path = `${scratchDir(stateDir)}/${id}`;
    await Deno.mkdir(path, { recursive: true, mode: 0o700 });
    try {
      mountTmpfs(path, sizeBytes);
    } catch (e) {
      await Deno.remove(path).catch(() => {});
      throw e;
    }
    const scratch = new Scratch(path);
    try {
      await Deno.mkdir(scratch.upper, { mode: 0o755 });
      await Deno.mkdir(scratch.work, { mode: 0o700 });
    } catch (e) {
      await scratch.remove();
      throw e;
    }
    return scratch;
  }

  /** Unmounts (lazily: the container's mount namespace may still hold it) and removes the mount point. Idempotent. */
  async remove(): Promise<void> {
    if (this.#removed) return;
    this.#removed = true;
    try {
      detach(this.path);
    } catch { /* not mounted any more */ }
    await Deno.remove(this.path).catch(() => {});
  }
}

/**
 * Unmounts and removes the scratch mounts a previous faasd run left (it died with containers running).
 *
 * @returns how many were removed.
 */
export async function reapScratch(stateDir: string): Promise<number> {
  const dir = scratchDir(stateDir);
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  let reaped = 0;
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    try {
      detach(path);
    } catch { /* not mounted */ }
    await Deno.remove(path, { recursive: true }).catch(() => {});
    reaped++;
  }
  return reaped;
}
