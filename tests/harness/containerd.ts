/**
 * A private containerd for integration tests: its own root, state, sockets and config in a temp dir, so tests never
 * touch a host's containerd and leave nothing behind. Starting one takes well under a second; share one per test file
 * and give each test its own namespace ({@linkcode testNamespace}).
 *
 * With `FAASD_TEST_CONTAINERD=/path/to/containerd.sock` the tests use that daemon instead and start or stop nothing.
 *
 * @module
 */

import { Containerd } from "../../lib/containerd/client.ts";

/** A containerd the tests can talk to. */
export interface ContainerdInstance extends AsyncDisposable {
  /** The gRPC socket path. */
  socket: string;
  /** containerd's `--root` (empty for an external daemon). */
  root: string;
  /** containerd's `--state` (empty for an external daemon). */
  state: string;
  /** Whether this daemon came from `FAASD_TEST_CONTAINERD` (it cannot be restarted or stopped). */
  external: boolean;
  /** Stops the daemon and the shims it started, unmounts what is left, removes the temp dir. Idempotent. */
  stop(): Promise<void>;
  /**
   * Stops the daemon (its shims keep running) and starts it again on the same socket, root and state; `whileDown`
   * runs in between, when nothing answers on the socket.
   *
   * @throws {Error} for an external daemon.
   */
  restart(whileDown?: () => Promise<void>): Promise<void>;
  /** A client of namespace `namespace` on this daemon. */
  client(namespace: string): Containerd;
}

const READY_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 10_000;

/** Plugins that cannot (or need not) run in a test daemon. */
const DISABLED_PLUGINS = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
];

/** A random namespace for one test, e.g. `faasd-test-3f9a0c1d`. */
export function testNamespace(prefix = "faasd-test"): string {
  const hex = Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, "0")).join("");
  return `${prefix}-${hex}`;
}

/**
 * Starts a private containerd (or attaches to `FAASD_TEST_CONTAINERD`) and waits until it answers `Version`.
 *
 * @param options.pathPrefix a directory put first on the private containerd's PATH (its shims and their runc inherit
 * it), for stand-ins that record their calls; an external containerd keeps its own.
 * @throws {Error} when containerd exits or does not answer in time; the message carries its log.
 */
export async function startContainerd(options: { pathPrefix?: string } = {}): Promise<ContainerdInstance> {
  const external = Deno.env.get("FAASD_TEST_CONTAINERD");
  if (external) return externalInstance(external);
  const dir = await Deno.makeTempDir({ prefix: "faasd-ctd-" });
  try {
    const instance = new PrivateContainerd(dir, options.pathPrefix);
    await instance.start();
    return instance;
  } catch (err) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  }
}

function externalInstance(socket: string): ContainerdInstance {
  return {
    socket,
    root: "",
    state: "",
    external: true,
    stop: () => Promise.resolve(),
    restart: () => Promise.reject(new Error("cannot restart an external containerd (FAASD_TEST_CONTAINERD)")),
    client: (namespace) => new Containerd({ address: socket, namespace }),
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
}

class PrivateContainerd implements ContainerdInstance {
  readonly socket: string;
  readonly root: string;
  readonly state: string;
  readonly external = false;
  readonly #dir: string;
  readonly #config: string;
  readonly #log: string;
  #child: Deno.ChildProcess | undefined;
  #stopped = false;
  readonly #onUnload = () => this.#stopSync();

  readonly #pathPrefix: string | undefined;

  constructor(dir: string, pathPrefix?: string) {
    this.#dir = dir;
    this.#pathPrefix = pathPrefix;
    this.socket = `${dir}/containerd.sock`;
    this.root = `${dir}/root`;
    this.state = `${dir}/state`;
    this.#config = `${dir}/config.toml`;
    this.#log = `${dir}/containerd.log`;
  }

  client(namespace: string): Containerd {
    return new Containerd({ address: this.socket, namespace });
  }

  async start(): Promise<void> {
    await Deno.writeTextFile(this.#config, this.#configText());
    // A test run that ends without calling stop() (e.g. a filtered run) must still not leave a daemon behind.
    globalThis.addEventListener("unload", this.#onUnload);
    await this.#spawn();
  }

  async #spawn(): Promise<void> {
    // `exec` keeps the pid, so that killing the child kills containerd itself; its output goes to a log file.
    this.#child = new Deno.Command("sh", {
      args: ["-c", 'exec containerd --config "$1" >>"$2" 2>&1', "sh", this.#config, this.#log],
      env: this.#pathPrefix ? { PATH: `${this.#pathPrefix}:${Deno.env.get("PATH") ?? ""}` } : undefined,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    const exited = this.#child.status.then((s) => s);
    using probe = this.client("default");
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      const outcome = await Promise.race([
        probe.version().then(() => "ready" as const, () => "retry" as const),
        exited.then(() => "exited" as const),
      ]);
      if (outcome === "ready") return;
      if (outcome === "exited" || Date.now() > deadline) {
        const log = await Deno.readTextFile(this.#log).catch(() => "");
        if (outcome !== "exited") this.#kill("SIGKILL");
        await exited;
        throw new Error(`containerd did not become ready (${outcome}); log:\n${log.slice(-4000)}`);
      }
      probe.close();
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async restart(whileDown?: () => Promise<void>): Promise<void> {
    if (this.#stopped) throw new Error("containerd was stopped");
    await this.#terminate();
    try {
      await whileDown?.();
    } finally {
      await this.#spawn();
    }
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    globalThis.removeEventListener("unload", this.#onUnload);
    for (const pid of shimTrees(this.socket)) killPid(pid, "SIGKILL");
    await this.#terminate();
    // Shims are killed by then; anything they or the snapshotter mounted under the temp dir goes before the dir.
    for (const mountPoint of mountsUnder(this.#dir)) {
      await new Deno.Command("umount", { args: ["-l", mountPoint], stdout: "null", stderr: "null" }).output();
    }
    await Deno.remove(this.#dir, { recursive: true });
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  async #terminate(): Promise<void> {
    const child = this.#child;
    if (!child) return;
    this.#child = undefined;
    this.#kill("SIGTERM", child);
    const timer = setTimeout(() => this.#kill("SIGKILL", child), STOP_TIMEOUT_MS);
    await child.status;
    clearTimeout(timer);
  }

  #kill(signal: Deno.Signal, child = this.#child): void {
    try {
      child?.kill(signal);
    } catch {
      // already exited
    }
  }

  /** Last-resort cleanup at process exit: synchronous, best effort. */
  #stopSync(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const pid of shimTrees(this.socket)) killPid(pid, "SIGKILL");
    if (this.#child) killPid(this.#child.pid, "SIGKILL");
    for (const mountPoint of mountsUnder(this.#dir)) {
      new Deno.Command("umount", { args: ["-l", mountPoint], stdout: "null", stderr: "null" }).outputSync();
    }
    try {
      Deno.removeSync(this.#dir, { recursive: true });
    } catch {
      // containerd may still be writing; nothing more to do at exit
    }
  }

  #configText(): string {
    const q = JSON.stringify;
    return [
      "version = 2",
      `root = ${q(this.root)}`,
      `state = ${q(this.state)}`,
      `disabled_plugins = [${DISABLED_PLUGINS.map((p) => q(p)).join(", ")}]`,
      "",
      "[grpc]",
      `  address = ${q(this.socket)}`,
      "",
      "[ttrpc]",
      `  address = ${q(`${this.socket}.ttrpc`)}`,
      "",
      "[debug]",
      `  level = "warn"`,
      "",
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = ${q(`${this.root}/opt`)}`,
      "",
    ].join("\n");
  }
}

function killPid(pid: number, signal: Deno.Signal): void {
  try {
    Deno.kill(pid, signal);
  } catch {
    // gone already
  }
}

/** Pids of the shims serving `socket` and all their descendants (the containers), children first. */
function shimTrees(socket: string): number[] {
  const parents = new Map<number, number>();
  const shims: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    const pid = Number(entry.name);
    if (!Number.isInteger(pid)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      parents.set(pid, Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
      const argv = Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0");
      if (argv[0]?.includes("containerd-shim") && argv.includes(socket)) shims.push(pid);
    } catch {
      // the process exited while we looked
    }
  }
  const out: number[] = [];
  const visit = (pid: number) => {
    for (const [child, parent] of parents) if (parent === pid) visit(child);
    out.push(pid);
  };
  for (const shim of shims) visit(shim);
  return out;
}

/** Mount points at or below `dir`, deepest first. */
function mountsUnder(dir: string): string[] {
  const points: string[] = [];
  for (const line of Deno.readTextFileSync("/proc/self/mountinfo").split("\n")) {
    const field = line.split(" ")[4];
    if (!field) continue;
    // mountinfo escapes space, tab, newline and backslash as octal.
    const point = field.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
    if (point === dir || point.startsWith(`${dir}/`)) points.push(point);
  }
  return points.sort((a, b) => b.length - a.length);
}

/** Everything of a namespace that an import or a pull could leave behind, by name. */
export async function namespaceContents(c: Containerd): Promise<Record<string, string[]>> {
  return {
    images: (await c.listImages()).map((i) => i.name),
    leases: (await c.listLeases()).map((l) => l.id),
    ingests: (await c.listIngests()).map((i) => i.ref),
    content: (await c.listContent()).map((i) => i.digest),
    snapshots: (await c.listSnapshots("overlayfs")).map((s) => s.name),
  };
}

/** {@linkcode namespaceContents} of an untouched namespace. */
export const EMPTY_NAMESPACE: Record<string, string[]> = {
  images: [],
  leases: [],
  ingests: [],
  content: [],
  snapshots: [],
};
