/**
 * Resolves an image's `USER` (`name`, `uid`, `name:group`, `uid:gid`, …) to numeric ids at deploy time, the way
 * docker and runc do: names through the image's own `/etc/passwd` and `/etc/group`, a user's primary group from its
 * passwd entry, and its supplementary groups from `/etc/group` unless a group is given.
 *
 * The files are read from the unpacked image, mounted read-only on a temporary directory; symlinks in their paths
 * are followed inside the image's root only, never out to the host's files.
 *
 * @module
 */

import { errorText, log } from "../log.ts";
import { join } from "node:path";
import type { Containerd } from "../containerd/client.ts";
import { ImageImportError } from "./errors.ts";
import { detach, ReadOnlyMount } from "../../ffi/mod.ts";

import type { ResolvedUser } from "../serve/spec.ts";

export type { ResolvedUser } from "../serve/spec.ts";

/** The image's account databases; null when the image has no such file. */
export interface AccountFiles {
  passwd: string | null;
  group: string | null;
}

const NUMERIC = /^\d+$/;
/** Largest id the kernel takes (ids are 32-bit; -1 is reserved). */
const MAX_ID = 0xfffffffe;
/** Name prefix of the temporary directories images are mounted on. */
const ROOTFS_PREFIX = "faasd-rootfs-";
/** Mount options the kernel takes (one page, with its terminating NUL). */
const MAX_MOUNT_DATA = 4096;
/** Largest account file read. */
const MAX_FILE_BYTES = 1 << 20;

/** Whether `user` can be resolved without reading the image's files (empty, or `uid:gid` both numeric). */
export function isNumericUser(user: string): boolean {
  if (user === "") return true;
  const [u, g, ...rest] = user.split(":");
  return rest.length === 0 && g !== undefined && NUMERIC.test(u!) && NUMERIC.test(g);
}

function id(text: string, what: string): number {
  const n = Number(text);
  if (!NUMERIC.test(text) || n > MAX_ID) {
    throw new ImageImportError(`${what} ${JSON.stringify(text)} is not a valid id`);
  }
  return n;
}

/** Splits an account file into its entries' fields (trimmed, as runc reads them), skipping blanks and comments. */
function entries(file: string | null): string[][] {
  if (file === null) return [];
  return file.split("\n").map((line) => line.trim()).filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => line.split(":").map((field) => field.trim()));
}

/**
 * Resolves `user` against the image's account files.
 *
 * @throws {ImageImportError} when `user` is malformed, or names a user or group the files do not have.
 */
export function lookupUser(user: string, files: AccountFiles): ResolvedUser {
  if (user === "") return { uid: 0, gid: 0, additionalGids: [] };
  const parts = user.split(":");
  if (parts.length > 2 || parts[0] === "" || parts[1] === "") {
    throw new ImageImportError(`image user ${JSON.stringify(user)} is not of the form user[:group]`);
  }
  const [userPart, groupPart] = parts as [string, string | undefined];
  // passwd: name:password:uid:gid:gecos:home:shell
  const passwd = entries(files.passwd).filter((f) => f.length >= 4);
  const account = NUMERIC.test(userPart)
    ? passwd.find((f) => f[2] === userPart)
    : passwd.find((f) => f[0] === userPart);
  if (!account && !NUMERIC.test(userPart)) {
    throw new ImageImportError(
      `image user ${JSON.stringify(userPart)} is not in the image's /etc/passwd${
        files.passwd === null ? " (it has none)" : ""
      }`,
    );
  }
  const uid = account ? id(account[2]!, "uid of user") : id(userPart, "uid");
  // group: name:password:gid:member,member
  const groups = entries(files.group).filter((f) => f.length >= 3);
  if (groupPart !== undefined) {
    if (NUMERIC.test(groupPart)) return { uid, gid: id(groupPart, "gid"), additionalGids: [] };
    const group = groups.find((f) => f[0] === groupPart);
    if (!group) {
      throw new ImageImportError(
        `image group ${JSON.stringify(groupPart)} is not in the image's /etc/group${
          files.group === null ? " (it has none)" : ""
        }`,
      );
    }
    return { uid, gid: id(group[2]!, "gid of group"), additionalGids: [] };
  }
  const gid = account ? id(account[3]!, "gid of user") : 0;
  const name = account?.[0];
  const additionalGids = name === undefined ? [] : [
    ...new Set(
      groups.filter((f) => (f[3] ?? "").split(",").includes(name)).map((f) => id(f[2]!, "gid of group")),
    ),
  ].filter((g) => g !== gid);
  return { uid, gid, additionalGids };
}

/**
 * Reads `path` (absolute, inside the image) from the root directory `root`, following symlinks as the container
 * would see them: absolute targets and `..` stay within `root`. Null when the file does not exist.
 *
 * @throws {ImageImportError} when the path leads to something other than a regular file, loops, or is too large.
 */
export async function readFileInRoot(root: string, path: string, maxBytes = MAX_FILE_BYTES): Promise<string | null> {
  let pending = path.split("/").filter((p) => p !== "" && p !== ".");
  const resolved: string[] = [];
  let hops = 0;
  while (pending.length > 0) {
    const [part, ...rest] = pending as [string, ...string[]];
    pending = rest;
    if (part === "..") {
      resolved.pop(); // never above the root
      continue;
    }
    const host = join(root, ...resolved, part);
    let info: Deno.FileInfo;
    try {
      info = await Deno.lstat(host);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) return null;
      throw err;
    }
    if (info.isSymlink) {
      if (++hops > 40) throw new ImageImportError(`${path} in the image: too many symlinks`);
      const target = await Deno.readLink(host);
      if (target.startsWith("/")) resolved.length = 0;
      pending = [...target.split("/").filter((p) => p !== "" && p !== "."), ...pending];
      continue;
    }
    if (pending.length > 0 && !info.isDirectory) return null;
    if (pending.length === 0) {
      if (!info.isFile) throw new ImageImportError(`${path} in the image is not a regular file`);
      if (info.size > maxBytes) throw new ImageImportError(`${path} in the image is larger than ${maxBytes} bytes`);
    }
    resolved.push(part);
  }
  if (resolved.length === 0) throw new ImageImportError(`${path} in the image is not a regular file`);
  return await Deno.readTextFile(join(root, ...resolved));
}

/** Options of {@linkcode resolveImageUser}. */
export interface ResolveUserOptions {
  snapshotter: string;
  /** The image's top snapshot. */
  chainId: string;
  /** Lease that holds the temporary view until it is removed. */
  lease: string;
  /** Key of the temporary view snapshot. */
  key: string;
  /** Where the temporary mount point is made (default: the system's temp dir). */
  mountDir?: string;
}

/**
 * Resolves `user` for the image unpacked at `options.chainId`, reading its account files only when needed.
 *
 * @throws {ImageImportError} when the user cannot be resolved (see {@linkcode lookupUser}).
 * @throws {ContainerdError} when containerd fails; {@linkcode ErrnoError} when the view cannot be mounted.
 */
export async function resolveImageUser(
  client: Containerd,
  user: string,
  options: ResolveUserOptions,
): Promise<ResolvedUser> {
  if (isNumericUser(user)) return lookupUser(user, { passwd: null, group: null });
  const { snapshotter, chainId, lease, key } = options;
  let dir: string | null = null;
  try {
    const mounts = await client.viewSnapshot(snapshotter, key, chainId, { lease });
    // The kernel takes one page of mount options; containerd shortens longer ones in a helper process that changes
    // its working directory, which faasd's own process cannot do safely.
    if (mounts.some((m) => m.options.join(",").length >= MAX_MOUNT_DATA)) {
      throw new ImageImportError(
        `image user ${JSON.stringify(user)} cannot be looked up: the image has too many layers to mount; ` +
          "use a numeric USER uid:gid",
      );
    }
    dir = await Deno.makeTempDir({ dir: options.mountDir, prefix: ROOTFS_PREFIX });
    const mounted = ReadOnlyMount.open(mounts, dir);
    let files: AccountFiles;
    try {
      files = { passwd: await readFileInRoot(dir, "/etc/passwd"), group: await readFileInRoot(dir, "/etc/group") };
    } finally {
      try {
        mounted.close();
      } catch (err) {
        // Detaching cannot fail for a mount we made; should it, the next start reaps it.
        log.error(errorText(err));
      }
    }
    return lookupUser(user, files);
  } finally {
    if (dir) await Deno.remove(dir).catch(() => {});
    await client.removeSnapshot(snapshotter, key).catch(() => {});
  }
}

/**
 * Detaches and removes the temporary mounts in `mountDir` of lookups a previous faasd did not finish (it died
 * mid-deploy). Works from the directory's entries, not /proc: a lazy unmount takes the mounts below with it.
 *
 * @returns how many such directories held a mount.
 */
export async function reapRootfsMounts(mountDir: string): Promise<number> {
  let reaped = 0;
  for await (const entry of Deno.readDir(mountDir)) {
    if (!entry.name.startsWith(ROOTFS_PREFIX)) continue;
    const point = `${mountDir}/${entry.name}`;
    let mounted = false;
    // Mounts may be stacked on one point; detaching fails (EINVAL) once none is left.
    for (let i = 0; i < 16; i++) {
      try {
        detach(point);
        mounted = true;
      } catch {
        break;
      }
    }
    if (mounted) reaped++;
    await Deno.remove(point).catch(() => {});
  }
  return reaped;
}
