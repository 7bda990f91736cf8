/**
 * Test images built the way users build them: a static C handler (tests/fixtures/handler.c) compiled with the
 * host's gcc, put into a `FROM scratch` image by `podman build`, and exported by `podman save`.
 *
 * Every image is the same binary with a different CMD (the handler mode, see {@linkcode HANDLER_MODES}).
 *
 * Results are cached on disk (default `/tmp/faasd-test-cache/`, override with env `FAASD_TEST_CACHE`) by the
 * handler source hash and the build options, so a tarball is built once per machine rather than once per test.
 * podman runs against a private storage inside that directory (`--root`/`--runroot`, driver `vfs` by default,
 * override with env `FAASD_TEST_STORAGE_DRIVER`): tests never see or touch the host's podman images. vfs is the
 * default because it needs neither kernel overlay support nor mounts, so it works in nested CI containers and a
 * killed test run leaves no mounts behind; for one- or two-layer scratch images its copying costs nothing.
 * Each image is removed from that storage right after `podman save`, keeping it empty.
 *
 * podman invocations are serialized within the process and, via a lock file, across processes.
 *
 * @example
 * ```ts
 * const tarball = await buildHandlerImage("hello");
 * const oci = await buildHandlerImage("echo-env", { format: "oci-archive", env: { GREETING: "hi" }, workdir: "/srv" });
 * ```
 *
 * @module
 */

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The behaviours of the test handler, selected by its first argument. See tests/fixtures/handler.c. */
export const HANDLER_MODES = [
  "hello",
  "noread",
  "crash",
  "exit",
  "hangup",
  "noconnect",
  "hang",
  "marker",
  "netprobe",
  "echo-env",
  "big",
  "echo",
  "sleep",
  "fork",
  "alloc",
  "probe",
  "server",
] as const;

/** One of {@linkcode HANDLER_MODES}. */
export type HandlerMode = typeof HANDLER_MODES[number];

/** The tarball layouts `podman save` can write and faasd accepts. */
export type ArchiveFormat = "docker-archive" | "oci-archive";

/** Options of {@linkcode buildHandlerImage}. */
export interface HandlerImageOptions {
  /** Tarball layout; default `"docker-archive"` (what `docker save` writes). */
  format?: ArchiveFormat;
  /** Image reference recorded in the tarball; default `localhost/faasd-test-<mode>:<cache key>`. */
  tag?: string;
  /** `ENV` entries of the image config. Keys are shell-style identifiers; values may not contain newlines. */
  env?: Record<string, string>;
  /** `WORKDIR` of the image config: an absolute path of `[A-Za-z0-9._/-]` characters. */
  workdir?: string;
  /** `USER` of the image config, e.g. `1000:1000` or a name. */
  user?: string;
  /** Extra CMD arguments after the mode, e.g. `["2048"]` for mode `big`. */
  args?: string[];
  /** Extra files of the image by relative path, e.g. `{ "etc/passwd": "…" }`; paths of `[A-Za-z0-9._/-]`. */
  files?: Record<string, string>;
}

/** Options of {@linkcode buildPaddedImage}. */
export interface PaddedImageOptions {
  /** Tarball layout; default `"docker-archive"`. */
  format?: ArchiveFormat;
  /** Handler mode of the image; default `"hello"`. */
  mode?: HandlerMode;
  /** Image reference recorded in the tarball; default `localhost/faasd-test-padded-<MiB>:<cache key>`. */
  tag?: string;
}

/** Options of {@linkcode buildPythonHandlerImage}. */
export interface PythonImageOptions {
  /** Tarball layout; default `"docker-archive"`. */
  format?: ArchiveFormat;
}

/** A failure of gcc or podman while building a test image. */
export class ImageBuildError extends Error {
  /** The failing tool's stderr, when it ran. */
  readonly stderr: string;

  /** Creates the error; `stderr` is appended to the message for readable test failures. */
  constructor(message: string, stderr = "", options?: ErrorOptions) {
    super(stderr ? `${message}\n${stderr.trimEnd()}` : message, options);
    this.name = "ImageBuildError";
    this.stderr = stderr;
  }
}

/** The directory holding the test fixtures (handler.c, fdpass_peer.py). */
export const FIXTURES_DIR: string = fileURLToPath(new URL("../fixtures", import.meta.url));
const HANDLER_SOURCE = join(FIXTURES_DIR, "handler.c");
const GCC_FLAGS = ["-static", "-O2", "-s", "-Wall", "-Wextra"];
/** Bump when the Containerfile shape changes, to invalidate cached tarballs. */
const CACHE_VERSION = 1;
/** Debian's interpreter (tools/setup.sh installs it); `python3` on PATH may be a pyenv shim. */
const PYTHON = "/usr/bin/python3";
/** The seed's Python handler, as users would deploy it. */
const PYTHON_HANDLER = fileURLToPath(new URL("../../examples/hello-python/handler.py", import.meta.url));
/** Bump when the Python image's shape changes (what is copied, the Containerfile), to invalidate cached tarballs. */
const PYTHON_CACHE_VERSION = 1;
/**
 * Top-level entries of the standard library left out of the Python image: tests, GUI, pip's bootstrap, third-party
 * packages, and `config-*` (the static libpython and Makefile for building C extensions, ~25 MB).
 */
const STDLIB_OMITTED = /^(test|idlelib|tkinter|turtledemo|ensurepip|site-packages|dist-packages|config-.*)$/;

/**
 * The cache directory: env `FAASD_TEST_CACHE`, else `/tmp/faasd-test-cache`.
 *
 * @returns an absolute path (it may not exist yet)
 */
export function cacheDir(): string {
  return Deno.env.get("FAASD_TEST_CACHE") || "/tmp/faasd-test-cache";
}

/**
 * Whether the `podman` binary can be run.
 *
 * @returns true when `podman --version` succeeds
 */
export async function podmanAvailable(): Promise<boolean> {
  try {
    const { success } = await new Deno.Command("podman", { args: ["--version"], stdout: "null", stderr: "null" })
      .output();
    return success;
  } catch {
    return false;
  }
}

let compiled: Promise<string> | undefined;

/**
 * Compiles tests/fixtures/handler.c into a static binary, once per process and once per source version on disk.
 *
 * @returns the path of the binary (inside the cache directory; do not modify or delete it)
 * @throws {ImageBuildError} when gcc fails
 */
export function compileHandler(): Promise<string> {
  compiled ??= compile().catch((err) => {
    compiled = undefined; // let a later call retry, e.g. after the source was fixed
    throw err;
  });
  return compiled;
}

async function compile(): Promise<string> {
  const source = await Deno.readFile(HANDLER_SOURCE);
  const hash = await sha256Hex(JSON.stringify({ flags: GCC_FLAGS, source: await sha256Hex(source) }));
  const binDir = join(cacheDir(), "bin");
  const binary = join(binDir, `handler-${hash.slice(0, 16)}`);
  if (await exists(binary)) return binary;

  await Deno.mkdir(binDir, { recursive: true });
  // Compile beside the target and rename: concurrent processes never see a half-written binary.
  const partial = `${binary}.${Deno.pid}.partial`;
  await run("gcc", [...GCC_FLAGS, "-o", partial, HANDLER_SOURCE]);
  await Deno.rename(partial, binary);
  return binary;
}

const inflight = new Map<string, Promise<string>>();

/**
 * Builds (or finds in the cache) an image running the test handler in `mode` and saves it as a tarball.
 *
 * @param mode one of {@linkcode HANDLER_MODES}; becomes the image's CMD (ENTRYPOINT is `/handler`)
 * @param opts tarball format, tag, ENV, WORKDIR and extra CMD arguments
 * @returns the path of the tarball (shared cache: do not modify or delete it)
 * @throws {TypeError} for an unknown mode, an invalid env key or value, or an invalid workdir
 * @throws {ImageBuildError} when gcc or podman fails
 */
export function buildHandlerImage(mode: string, opts: HandlerImageOptions = {}): Promise<string> {
  if (!(HANDLER_MODES as readonly string[]).includes(mode)) {
    return Promise.reject(new TypeError(`Unknown handler mode "${mode}"; expected one of ${HANDLER_MODES}`));
  }
  let containerfileBody: string;
  try {
    containerfileBody = [
      ...envLines(opts.env ?? {}),
      ...(opts.workdir === undefined ? [] : [workdirLine(opts.workdir)]),
      ...(opts.files === undefined ? [] : ["COPY files/ /"]),
      ...(opts.user === undefined ? [] : [userLine(opts.user)]),
      `CMD ${JSON.stringify([mode, ...(opts.args ?? [])])}`,
    ].join("\n");
  } catch (err) {
    return Promise.reject(err);
  }
  return cached(
    { kind: "handler", mode, format: opts.format, tag: opts.tag, body: containerfileBody, files: opts.files },
    (key) => ({
      format: opts.format ?? "docker-archive",
      tag: opts.tag ?? `localhost/faasd-test-${mode}:${key.slice(0, 12)}`,
      containerfile: containerfileBody,
      files: opts.files,
    }),
  );
}

/**
 * Builds (or finds in the cache) a handler image padded with an extra layer of `sizeMiB` MiB of random
 * (incompressible) bytes at `/padding`, for import benchmarks.
 *
 * @param sizeMiB size of the padding layer in MiB: an integer from 1 to 4096
 * @param opts tarball format, handler mode and tag
 * @returns the path of the tarball (shared cache: do not modify or delete it)
 * @throws {RangeError} when sizeMiB is not an integer in range
 * @throws {TypeError} for an unknown mode
 * @throws {ImageBuildError} when gcc or podman fails
 */
export function buildPaddedImage(sizeMiB: number, opts: PaddedImageOptions = {}): Promise<string> {
  if (!Number.isInteger(sizeMiB) || sizeMiB < 1 || sizeMiB > 4096) {
    return Promise.reject(new RangeError(`sizeMiB must be an integer from 1 to 4096, got ${sizeMiB}`));
  }
  const mode = opts.mode ?? "hello";
  if (!(HANDLER_MODES as readonly string[]).includes(mode)) {
    return Promise.reject(new TypeError(`Unknown handler mode "${mode}"`));
  }
  const body = [`COPY padding /padding`, `CMD ${JSON.stringify([mode])}`].join("\n");
  return cached(
    { kind: "padded", sizeMiB, mode, format: opts.format, tag: opts.tag, body },
    (key) => ({
      format: opts.format ?? "docker-archive",
      tag: opts.tag ?? `localhost/faasd-test-padded-${sizeMiB}:${key.slice(0, 12)}`,
      containerfile: body,
      paddingMiB: sizeMiB,
    }),
  );
}

/**
 * Builds (or finds in the cache) a `FROM scratch` image running the seed's Python handler
 * (examples/hello-python/handler.py, as `/handler.py`) on the host's Debian Python: the interpreter at its real
 * path, the shared libraries `ldd` lists for it (the dynamic loader included) at their absolute paths, and the
 * standard library with lib-dynload, less {@linkcode STDLIB_OMITTED}. Extension modules that need libraries the
 * interpreter itself does not (ssl, sqlite3, ctypes, curses…) are present but cannot be imported.
 *
 * The cache key is the handler source, the interpreter's path, size and mtime, and {@linkcode PYTHON_CACHE_VERSION}.
 *
 * @param opts tarball format
 * @returns the path of the tarball (shared cache: do not modify or delete it)
 * @throws {ImageBuildError} when /usr/bin/python3 is missing, ldd finds a library missing, or podman fails
 */
export async function buildPythonHandlerImage(opts: PythonImageOptions = {}): Promise<string> {
  const format = opts.format ?? "docker-archive";
  let python: string;
  try {
    python = await Deno.realPath(PYTHON);
  } catch (err) {
    throw new ImageBuildError(`${PYTHON} is not there (tools/setup.sh installs Debian's python3)`, "", { cause: err });
  }
  const { size, mtime } = await Deno.stat(python);
  const handler = await sha256Hex(await Deno.readFile(PYTHON_HANDLER));
  const key = await sha256Hex(
    JSON.stringify({ v: PYTHON_CACHE_VERSION, kind: "python", python, size, mtime: mtime?.getTime(), handler, format }),
  );
  const tag = `localhost/faasd-test-python:${key.slice(0, 12)}`;
  return once(key, () =>
    buildImage(key, format, tag, async (context) => {
      const root = join(context, "root");
      const stdlib = (await run(python, ["-I", "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"])).trim();
      for (const file of [python, ...sharedLibraries(await run("ldd", [python]))]) {
        await copyFile(file, join(root, file));
      }
      await copyTree(stdlib, join(root, stdlib), (name) => STDLIB_OMITTED.test(name));
      await copyFile(PYTHON_HANDLER, join(root, "handler.py"));
      return [
        "FROM scratch",
        "COPY root/ /",
        "ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
        `ENTRYPOINT ${JSON.stringify([python, "/handler.py"])}`,
        "",
      ].join("\n");
    }));
}

/**
 * The absolute paths in `ldd` output: `libm.so.6 => /lib/…/libm.so.6 (0x…)` and the loader `/lib64/ld-….so.2
 * (0x…)`; the vDSO has no file and is skipped.
 *
 * @throws {ImageBuildError} when a library is not found
 */
function sharedLibraries(lddOutput: string): string[] {
  const paths: string[] = [];
  for (const line of lddOutput.split("\n")) {
    if (/=>\s*not found/.test(line)) throw new ImageBuildError(`ldd: a library is missing`, line.trim());
    const path = /^\s*(?:\S+\s+=>\s+)?(\/\S+)\s+\(0x[0-9a-f]+\)\s*$/.exec(line)?.[1];
    if (path) paths.push(path);
  }
  return paths;
}

/**
 * Copies the file `src` points to (symlinks resolved) to `dst`, creating its directory, keeping mode and mtime:
 * a `.pyc` is only used while its source's mtime matches the one recorded in it.
 */
async function copyFile(src: string, dst: string): Promise<void> {
  await Deno.mkdir(dirname(dst), { recursive: true });
  await Deno.copyFile(src, dst);
  const { atime, mtime } = await Deno.stat(src);
  if (atime && mtime) await Deno.utime(dst, atime, mtime);
}

/** Copies the tree `src` to `dst`, resolving symlinks and skipping dangling ones and top-level names `omit` matches. */
async function copyTree(src: string, dst: string, omit: (name: string) => boolean = () => false): Promise<void> {
  for await (const entry of Deno.readDir(src)) {
    if (omit(entry.name)) continue;
    const path = join(src, entry.name);
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(path);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) continue; // a dangling symlink
      throw err;
    }
    if (info.isDirectory) await copyTree(path, join(dst, entry.name));
    else if (info.isFile) await copyFile(path, join(dst, entry.name));
  }
}

interface BuildPlan {
  format: ArchiveFormat;
  tag: string;
  /** Containerfile lines after FROM/COPY/ENTRYPOINT. */
  containerfile: string;
  /** Size of a random file `padding` to place in the build context. */
  paddingMiB?: number;
  /** Files to place under `files/` in the build context. */
  files?: Record<string, string>;
}

/** Returns the cached tarball for `identity`, building it with `plan(key)` when absent. */
async function cached(identity: Record<string, unknown>, plan: (key: string) => BuildPlan): Promise<string> {
  const binary = await compileHandler();
  const key = await sha256Hex(JSON.stringify({ v: CACHE_VERSION, binary, ...identity }));
  return once(key, () => buildCached(key, binary, plan(key)));
}

/** Runs `build` for `key` unless a build of the same key is already under way in this process. */
function once(key: string, build: () => Promise<string>): Promise<string> {
  let pending = inflight.get(key);
  if (!pending) {
    pending = build().finally(() => inflight.delete(key));
    inflight.set(key, pending);
  }
  return pending;
}

function buildCached(key: string, binary: string, plan: BuildPlan): Promise<string> {
  return buildImage(key, plan.format, plan.tag, async (context) => {
    await Deno.copyFile(binary, join(context, "handler"));
    if (plan.paddingMiB) await writeRandomFile(join(context, "padding"), plan.paddingMiB);
    for (const [path, text] of Object.entries(plan.files ?? {})) {
      if (!/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(path) || path.split("/").includes("..")) {
        throw new TypeError(`image file path ${JSON.stringify(path)} is not a plain relative path`);
      }
      await Deno.mkdir(join(context, "files", path, ".."), { recursive: true });
      await Deno.writeTextFile(join(context, "files", path), text);
    }
    return `FROM scratch\nCOPY handler /handler\nENTRYPOINT ["/handler"]\n${plan.containerfile}\n`;
  });
}

/**
 * Returns the cached tarball for `key`, or builds it: `prepare` fills a fresh build context and returns the
 * Containerfile, which podman builds and saves as `format` under `tag`.
 */
async function buildImage(
  key: string,
  format: ArchiveFormat,
  tag: string,
  prepare: (context: string) => Promise<string>,
): Promise<string> {
  const imagesDir = join(cacheDir(), "images");
  const tarball = join(imagesDir, `${key.slice(0, 32)}.${format === "oci-archive" ? "oci" : "docker"}.tar`);
  if (await exists(tarball)) return tarball;
  await Deno.mkdir(imagesDir, { recursive: true });

  const context = await Deno.makeTempDir({ dir: cacheDir(), prefix: "context-" });
  try {
    await Deno.writeTextFile(join(context, "Containerfile"), await prepare(context));
    await withPodmanLock(async () => {
      // Another process may have built it while we waited for the lock.
      if (await exists(tarball)) return;
      const partial = `${tarball}.${Deno.pid}.partial`;
      await Deno.remove(partial).catch(() => {});
      try {
        await podman(["build", "--pull=never", "--network=none", "-q", "-t", tag, "-f", "Containerfile", "."], {
          cwd: context,
        });
        await podman(["save", "--format", format, "-o", partial, tag]);
      } finally {
        // The tarball is the cache; keeping the image in podman's storage would only grow it.
        await podman(["rmi", "-f", "--ignore", tag]).catch(() => {});
      }
      await Deno.rename(partial, tarball);
    });
  } finally {
    await Deno.remove(context, { recursive: true });
  }
  return tarball;
}

let podmanQueue: Promise<unknown> = Promise.resolve();

/** Runs fn while holding the in-process queue and the cross-process lock file. */
function withPodmanLock<T>(fn: () => Promise<T>): Promise<T> {
  const result = podmanQueue.then(async () => {
    await Deno.mkdir(cacheDir(), { recursive: true });
    using lock = await Deno.open(join(cacheDir(), "podman.lock"), { create: true, write: true });
    await lock.lock(true);
    return await fn(); // closing the file (by `using`) releases the lock
  });
  podmanQueue = result.catch(() => {});
  return result;
}

/** Runs podman against the private storage in the cache directory. */
function podman(args: string[], opts: { cwd?: string } = {}): Promise<string> {
  const base = join(cacheDir(), "podman");
  const driver = Deno.env.get("FAASD_TEST_STORAGE_DRIVER") || "vfs";
  return run("podman", [
    "--root",
    join(base, "root"),
    "--runroot",
    join(base, "runroot"),
    "--tmpdir",
    join(base, "tmp"),
    "--storage-driver",
    driver,
    "--events-backend",
    "none",
    "--cgroup-manager",
    "cgroupfs",
    ...args,
  ], { cwd: opts.cwd, env: { TMPDIR: join(base, "tmp") } });
}

/** Runs a command to completion; returns its stdout. */
async function run(cmd: string, args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}) {
  if (opts.env?.TMPDIR) await Deno.mkdir(opts.env.TMPDIR, { recursive: true });
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(cmd, { args, cwd: opts.cwd, env: opts.env, stdin: "null" }).output();
  } catch (err) {
    throw new ImageBuildError(`Cannot run ${cmd}`, "", { cause: err });
  }
  const decoder = new TextDecoder();
  if (!output.success) {
    throw new ImageBuildError(`${cmd} ${args.join(" ")} exited with ${output.code}`, decoder.decode(output.stderr));
  }
  return decoder.decode(output.stdout);
}

/** Writes `mib` MiB of cryptographically random bytes: incompressible, so tarball size ≈ layer size. */
async function writeRandomFile(path: string, mib: number): Promise<void> {
  using file = await Deno.open(path, { create: true, write: true, truncate: true });
  const chunk = new Uint8Array(1024 * 1024);
  for (let i = 0; i < mib; i++) {
    // getRandomValues fills at most 65536 bytes per call.
    for (let off = 0; off < chunk.length; off += 65536) crypto.getRandomValues(chunk.subarray(off, off + 65536));
    let written = 0;
    while (written < chunk.length) written += await file.write(chunk.subarray(written));
  }
}

/** Containerfile ENV lines; values are double-quoted with `"`, `\` and `$` escaped. */
function envLines(env: Record<string, string>): string[] {
  return Object.keys(env).sort().map((name) => {
    const value = env[name];
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new TypeError(`Invalid env name "${name}"`);
    if (typeof value !== "string" || /[\r\n]/.test(value)) {
      throw new TypeError(`Invalid value for env ${name}: must be a string without newlines`);
    }
    return `ENV ${name}="${value.replace(/[\\"$]/g, (c) => `\\${c}`)}"`;
  });
}

function userLine(user: string): string {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.:-]*$/.test(user)) throw new TypeError(`invalid user ${JSON.stringify(user)}`);
  return `USER ${user}`;
}

function workdirLine(workdir: string): string {
  if (!/^\/[A-Za-z0-9._/-]*$/.test(workdir)) {
    throw new TypeError(`Invalid workdir "${workdir}": must be an absolute path of [A-Za-z0-9._/-]`);
  }
  return `WORKDIR ${workdir}`;
}

async function sha256Hex(data: string | Uint8Array<ArrayBuffer>): Promise<string> {
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}
