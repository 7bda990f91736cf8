/**
 * Mounting a snapshot's mounts (as containerd describes them) on a host directory, read-only, and unmounting it.
 * faasd uses this to read files of an image, e.g. its `/etc/passwd`, without starting a container.
 *
 * @module
 */

import { check } from "./errno.ts";
import { libc, MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT } from "./libc.ts";

/** One mount as containerd's snapshotters return it (`type`, `source`, `options` as in mount(8)). */
export interface MountSpec {
  type: string;
  source: string;
  options: readonly string[];
}

/** Option words that are flags; everything else goes to the filesystem as data. */
const FLAGS: Readonly<Record<string, number>> = {
  ro: MS_RDONLY,
  nosuid: MS_NOSUID,
  nodev: MS_NODEV,
  noexec: MS_NOEXEC,
  bind: MS_BIND,
  rbind: MS_BIND | MS_REC,
};
/** Option words that ask for the default and change nothing. */
const DEFAULTS = new Set(["rw", "suid", "dev", "exec"]);

function cstring(text: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(text);
  if (bytes.includes(0)) throw new TypeError(`mount argument contains NUL: ${JSON.stringify(text)}`);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/**
 * Detaches whatever is mounted at `target` (lazily: `MNT_DETACH`).
 *
 * @throws {ErrnoError} when nothing is mounted there (`EINVAL`) or the caller may not unmount (`EPERM`).
 */
export function detach(target: string): void {
  check(libc().umount2(cstring(target), MNT_DETACH), "umount2", target);
}

/**
 * Mounts a tmpfs of at most `sizeBytes` at `target` (an existing directory), nosuid and nodev, root directory mode
 * 0700. Pages written to it are charged to the memory cgroup of whoever writes them.
 *
 * @throws {ErrnoError} from `mount`, e.g. `EPERM` without CAP_SYS_ADMIN.
 */
export function mountTmpfs(target: string, sizeBytes: number): void {
  const flags = BigInt(MS_NOSUID | MS_NODEV);
  const data = cstring(`size=${Math.max(4096, Math.floor(sizeBytes))},mode=0700`);
  check(libc().mount(cstring("tmpfs"), cstring(target), cstring("tmpfs"), flags, data), "mount", `tmpfs on ${target}`);
}

/**
 * A snapshot mounted read-only, nosuid, nodev and noexec at {@linkcode target}; {@linkcode close} (or `using`)
 * detaches it.
 */
export class ReadOnlyMount {
  /** The directory the snapshot is mounted on. */
  readonly target: string;
  #mounted = true;

  private constructor(target: string) {
    this.target = target;
  }

  /**
   * Mounts `mounts` (in order, each on the previous) at `target`, which must be an existing directory.
   *
   * @throws {RangeError} when `mounts` is empty.
   * @throws {ErrnoError} when a mount fails (e.g. `EPERM` without CAP_SYS_ADMIN); nothing stays mounted.
   */
  static open(mounts: readonly MountSpec[], target: string): ReadOnlyMount {
    if (mounts.length === 0) throw new RangeError("ReadOnlyMount.open: no mounts");
    const c = libc();
    const where = cstring(target);
    let done = 0;
    try {
      for (const m of mounts) {
        let flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
        const data: string[] = [];
        for (const option of m.options) {
          if (option in FLAGS) flags |= FLAGS[option]!;
          else if (!DEFAULTS.has(option)) data.push(option);
        }
        const type = m.type === "bind" ? "none" : m.type;
        check(
          c.mount(cstring(m.source), where, cstring(type), BigInt(flags), cstring(data.join(","))),
          "mount",
          `${m.type} on ${target}`,
        );
        done++;
        // A bind mount ignores MS_RDONLY and friends until it is remounted with them.
        if (flags & MS_BIND) {
          const remount = BigInt(flags | MS_REMOUNT);
          check(c.mount(null, where, null, remount, null), "mount", `remount ${target} read-only`);
        }
      }
    } catch (err) {
      for (; done > 0; done--) c.umount2(where, MNT_DETACH);
      throw err;
    }
    return new ReadOnlyMount(target);
  }

  /**
   * Detaches the mount (lazily, so a file still open elsewhere cannot keep it busy). Idempotent.
   *
   * @throws {ErrnoError} when the kernel refuses.
   */
  close(): void {
    if (!this.#mounted) return;
    this.#mounted = false;
    detach(this.target);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
