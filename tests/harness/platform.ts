/**
 * faasd for integration tests, two ways: in-process ({@linkcode startTestPlatform}: the real platform, its API
 * handler called without a port) and as the real daemon process ({@linkcode startDaemon}: for the CLI, restarts and
 * signals). Both run against a real containerd, in a namespace of their own, with a loopback pool of their own, so
 * tests stay independent. {@linkcode leftovers} lists what a test must not leave behind in containerd.
 *
 * @module
 */

import type { ContainerdInstance } from "./containerd.ts";
import { testNamespace } from "./containerd.ts";
import type { Containerd } from "../../lib/containerd/client.ts";
import { parseDaemonConfig } from "../../lib/config.ts";
import { type Platform, startPlatform } from "../../lib/platform.ts";
import { releaseAddress } from "../../lib/hostaddr.ts";
import { SocketGuard } from "../../lib/serve/socket_guard.ts";

const ROOT = new URL("../..", import.meta.url).pathname;

/** A random loopback /24 pool, e.g. `127.143.7.0/24`, so tests never share addresses. */
export function loopbackPool(prefix = 24): string {
  const [a, b] = crypto.getRandomValues(new Uint8Array(2));
  return `127.${100 + (a! % 150)}.${b}.0/${prefix}`;
}

/** A TCP port that was free a moment ago. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Options of a test platform; flags as strings, as on the command line. */
export interface TestPlatformOptions {
  pool?: string;
  port?: number;
  stateDir?: string;
  namespace?: string;
  /** Extra daemon flags, e.g. `["--request-timeout", "2s"]`. */
  flags?: string[];
  /** Run the daemon inside this network namespace (startDaemon only). */
  netns?: string;
  /** Extra environment of the daemon (startDaemon only), e.g. `OTEL_*`. */
  env?: Record<string, string>;
}

/** An in-process platform and what it was started with. */
export interface TestPlatform extends AsyncDisposable {
  platform: Platform;
  namespace: string;
  stateDir: string;
  pool: string;
  port: number;
  client: Containerd;
  /** Calls the control API in-process. */
  request(method: string, path: string, init?: { body?: BodyInit | null; headers?: HeadersInit }): Promise<Response>;
  /** Closes the platform (and, unless `keepState`, removes its state directory and its namespace's content). */
  close(opts?: { keepState?: boolean }): Promise<void>;
}

function flagsFor(
  ctd: ContainerdInstance,
  o: Required<Omit<TestPlatformOptions, "flags" | "netns" | "env">>,
  flags: string[],
) {
  return [
    "--state-dir",
    o.stateDir,
    "--ip-pool",
    o.pool,
    "--port",
    String(o.port),
    "--containerd",
    ctd.socket,
    "--namespace",
    o.namespace,
    "--shutdown-grace",
    "2s",
    // Ready containers go 2 s after the last connection (the default is 5 m), so that tests can check nothing is left.
    "--pool-idle",
    "2s",
    ...flags,
  ];
}

/** Removes the runc state root the shims made for namespace (`/run/containerd/runc/NAMESPACE`), once it is empty. */
async function removeRuncRoot(namespace: string): Promise<void> {
  await Deno.remove(`/run/containerd/runc/${namespace}`).catch(() => {});
}

/** Starts the platform in-process against `ctd`. */
export async function startTestPlatform(
  ctd: ContainerdInstance,
  opts: TestPlatformOptions = {},
): Promise<TestPlatform> {
  const o = {
    pool: opts.pool ?? loopbackPool(),
    port: opts.port ?? 18080,
    stateDir: opts.stateDir ?? await Deno.makeTempDir({ prefix: "faasd-state-" }),
    namespace: opts.namespace ?? testNamespace(),
  };
  const config = parseDaemonConfig(flagsFor(ctd, o, opts.flags ?? []), () => undefined);
  if (config === "help") throw new Error("unreachable");
  const platform = await startPlatform(config, () => {});
  const client = ctd.client(o.namespace);
  let closed: Promise<void> | null = null;
  const close = (c: { keepState?: boolean } = {}) =>
    closed ??= (async () => {
      const ips = platform.registry.list().map((f) => f.ip);
      await platform.close();
      // faasd keeps its guard table when containers may still run; a test leaves none behind.
      await SocketGuard.removeLeftover(o.namespace);
      await removeRuncRoot(o.namespace);
      if (!c.keepState) {
        for (const ip of ips) await releaseAddress(ip);
        await Deno.remove(o.stateDir, { recursive: true }).catch(() => {});
      }
      client.close();
    })();
  return {
    platform,
    ...o,
    client,
    request: (method, path, init = {}) =>
      platform.api(new Request(`http://faasd.test${path}`, { method, body: init.body, headers: init.headers })),
    close,
    [Symbol.asyncDispose]: () => close(),
  };
}

/** What containerd holds for a namespace, beyond the images faasd keeps on purpose. */
export interface Leftovers {
  containers: string[];
  tasks: string[];
  activeSnapshots: string[];
  leases: string[];
  ingests: string[];
}

/** Lists containers, tasks, active snapshots, leases and unfinished ingests in `client`'s namespace. */
export async function leftovers(client: Containerd, snapshotter = "overlayfs"): Promise<Leftovers> {
  return {
    containers: (await client.listContainers()).map((c) => c.id),
    tasks: (await client.listTasks()).map((t) => t.containerId),
    activeSnapshots: (await client.listSnapshots(snapshotter)).filter((s) => s.kind !== "committed").map((s) => s.name),
    leases: (await client.listLeases()).map((l) => l.id),
    ingests: (await client.listIngests()).map((i) => i.ref),
  };
}

/** No leftovers at all. */
export const NONE: Leftovers = { containers: [], tasks: [], activeSnapshots: [], leases: [], ingests: [] };

/**
 * This process's open file descriptors, as `fd -> target`, so that a leak names what leaked: a socket is named by
 * its Unix path or its TCP addresses where the kernel tells them.
 */
export function openFds(): string[] {
  const sockets = socketNames();
  const out: string[] = [];
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      const target = Deno.readLinkSync(`/proc/self/fd/${e.name}`);
      const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
      out.push(`${e.name} -> ${target}${inode && sockets.has(inode) ? ` ${sockets.get(inode)}` : ""}`);
    } catch {
      // the fd used by readDirSync itself, closed by now
    }
  }
  return out.sort();
}

/** Socket inode → a name: the Unix path, or `tcp local -> remote` (hex, as /proc/net/tcp has them). */
function socketNames(): Map<string, string> {
  const names = new Map<string, string>();
  const read = (path: string) => Deno.readTextFileSync(path).split("\n").slice(1).filter(Boolean);
  try {
    for (const line of read("/proc/net/unix")) {
      const f = line.trim().split(/\s+/);
      if (f[6]) names.set(f[6], `unix ${f[7] ?? "(unnamed)"}`);
    }
    for (const line of [...read("/proc/net/tcp"), ...read("/proc/net/tcp6")]) {
      const f = line.trim().split(/\s+/);
      if (f[9]) names.set(f[9], `tcp ${f[1]} -> ${f[2]}`);
    }
  } catch { /* no /proc/net here */ }
  return names;
}

/** The real daemon as a child process. */
export interface Daemon extends AsyncDisposable {
  url: string;
  stateDir: string;
  namespace: string;
  pool: string;
  port: number;
  pid: number;
  /** Everything the daemon printed so far. */
  output(): string;
  /** Sends `signal` and waits for the exit; returns the exit code. */
  stop(signal?: Deno.Signal): Promise<number>;
}

/** Whether `url`/healthz answers 200 (asked from inside `netns` when given). */
async function healthy(url: string, netns?: string): Promise<boolean> {
  if (netns) {
    const args = ["netns", "exec", netns, "curl", "-fsS", "-o", "/dev/null", "-m", "2", `${url}/healthz`];
    return (await new Deno.Command("ip", { args, stdout: "null", stderr: "null" }).output()).success;
  }
  try {
    const res = await fetch(`${url}/healthz`);
    await res.body?.cancel();
    return res.ok;
  } catch {
    return false; // not listening yet
  }
}

/**
 * The `--allow-*` flags of a `deno task` in deno.json: the tests run the daemon and the CLI with exactly the
 * permissions users run them with, so that one missing permission fails a test rather than a user.
 */
export function taskPermissions(task: "faasd" | "faas"): string[] {
  const tasks = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`)).tasks;
  const command: string = typeof tasks[task] === "string" ? tasks[task] : tasks[task].command;
  return command.split(/\s+/).filter((arg) => arg.startsWith("--allow-"));
}

/** Starts `deno run main.ts` against `ctd` and waits until `/healthz` answers. */
export async function startDaemon(ctd: ContainerdInstance, opts: TestPlatformOptions = {}): Promise<Daemon> {
  const o = {
    pool: opts.pool ?? loopbackPool(),
    port: opts.port ?? 18080,
    stateDir: opts.stateDir ?? await Deno.makeTempDir({ prefix: "faasd-state-" }),
    namespace: opts.namespace ?? testNamespace(),
  };
  const apiPort = freePort();
  const url = `http://127.0.0.1:${apiPort}`;
  const daemon = [
    Deno.execPath(),
    "run",
    ...taskPermissions("faasd"),
    `${ROOT}main.ts`,
    "--api",
    `127.0.0.1:${apiPort}`,
    ...flagsFor(ctd, o, opts.flags ?? []),
  ];
  const argv = opts.netns ? ["ip", "netns", "exec", opts.netns, ...daemon] : daemon;
  const child = new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    env: opts.env,
    stdout: "piped",
    stderr: "piped",
    cwd: ROOT,
  }).spawn();
  let out = "";
  const collect = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) out += chunk;
  };
  const collected = Promise.all([collect(child.stdout), collect(child.stderr)]);
  let status: Deno.CommandStatus | null = null;
  child.status.then((s) => status = s);
  const deadline = Date.now() + 30_000;
  while (true) {
    if (status) throw new Error(`faasd exited during start-up:\n${out}`);
    if (await healthy(url, opts.netns)) break;
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      await child.status;
      throw new Error(`faasd did not become healthy:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  let stopped: Promise<number> | null = null;
  const stop = (signal: Deno.Signal = "SIGTERM") =>
    stopped ??= (async () => {
      if (!status) child.kill(signal);
      const s = await child.status;
      await collected;
      // faasd keeps its guard table when containers may still run (or when killed); a test leaves none behind.
      await SocketGuard.removeLeftover(o.namespace);
      return s.code;
    })();
  return {
    url,
    ...o,
    pid: child.pid,
    output: () => out,
    stop,
    /** Stops the daemon and removes its state directory. */
    [Symbol.asyncDispose]: async () => {
      await stop();
      await SocketGuard.removeLeftover(o.namespace);
      await removeRuncRoot(o.namespace);
      await Deno.remove(o.stateDir, { recursive: true }).catch(() => {});
    },
  };
}
