/**
 * The OCI runtime spec of a request's container: the image's process (entrypoint, cmd, env, working directory,
 * user) in new pid, mount, network (empty: only `lo`), ipc and uts namespaces, with the per-request control socket
 * bind-mounted at `/control.sock`. The passed client socket is the container's only way out.
 *
 * Hardened: a read-only root with a size-bounded tmpfs at `/tmp` (unless the function asked for a writable root, which
 * faasd then bounds itself), a seccomp profile, a reduced capability set, no new privileges, and cgroup limits on
 * memory, processes and CPU under the function's own cgroup (so that functions share CPU fairly, whatever their
 * number of containers).
 *
 * @module
 */

/** What a container needs from the image config to start the image's process. */
export interface ProcessConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  /** `USER` as the image states it. */
  user: string;
}

/** Numeric ids a container process runs with. */
export interface ResolvedUser {
  uid: number;
  gid: number;
  /** Supplementary groups. */
  additionalGids: number[];
}

/** The process of a deployed image: checked runnable at deploy, its `USER` resolved against the image's files. */
export interface DeployedProcess extends ProcessConfig {
  resolvedUser: ResolvedUser;
}

/** Where the control socket appears inside the container (the handler contract). */
export const CONTROL_SOCKET = "/control.sock";

const DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** The capabilities a container keeps: containerd's default set without NET_RAW (no network to use) and SYS_CHROOT (seccomp denies chroot). */
export const CAPABILITIES: readonly string[] = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_FSETID",
  "CAP_FOWNER",
  "CAP_MKNOD",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETFCAP",
  "CAP_SETPCAP",
  "CAP_NET_BIND_SERVICE",
  "CAP_KILL",
  "CAP_AUDIT_WRITE",
];

/** Options of one container's spec. */
export interface SpecOptions {
  hostname: string;
  process: DeployedProcess;
  /** Host path of this container's control socket. */
  controlSocket: string;
  /** The container's cgroup, e.g. `/faasd/hello/faasd-0a1b…`. */
  cgroupsPath: string;
  /** Resource limits; absent or 0: none. */
  limits?: ContainerLimits;
  /**
   * `readonly`: the image's root is mounted read-only and `/tmp` is a tmpfs of `limits.scratchBytes`. `writable`:
   * the root is writable (the caller bounds it: the rootfs it hands containerd has a size-bounded upper layer).
   */
  rootfs?: "readonly" | "writable";
  /** The OCI `linux.seccomp` profile; null or absent: unconfined. */
  seccomp?: Record<string, unknown> | null;
  /** The runc shim group to run in (containerd's runc v2 shim serves a group's tasks from one process). */
  shimGroup?: string;
  /** Environment over the image's `ENV` (the function's `env` setting). */
  env?: Record<string, string>;
  /** Adapter mode: faasd's adapter (host path) runs first and relays the connection to the image's server. */
  adapter?: { path: string; port: number; readyTimeoutMs: number };
  /** Secrets mounted read-only at `/run/secrets/NAME`, from their host files. */
  secrets?: { name: string; path: string }[];
}

/** Where the adapter appears inside an adapter-mode container. */
export const ADAPTER_PATH = "/.faasd/adapter";

/** `ENV` entries with `env` over them: an image variable the function sets is replaced, others are kept in order. */
export function mergeEnv(image: readonly string[], env: Record<string, string>): string[] {
  const name = (entry: string) => entry.slice(0, entry.indexOf("=") < 0 ? entry.length : entry.indexOf("="));
  return [...image.filter((e) => !Object.hasOwn(env, name(e))), ...Object.entries(env).map(([k, v]) => `${k}=${v}`)];
}

/** The annotation by which containerd's runc v2 shim serves several tasks from one shim process. */
export const SHIM_GROUP_ANNOTATION = "io.containerd.runc.v2.group";

/** What one request's container may use. */
export interface ContainerLimits {
  /** Memory (cgroup memory limit) in bytes; past it the kernel kills the container. */
  memoryBytes?: number;
  /** Processes and threads at once; past it fork() fails. */
  pids?: number;
  /** CPUs (CFS quota over a 100 ms period). */
  cpus?: number;
  /** Size of the writable `/tmp` tmpfs; its pages count against the memory limit. Default 64 MiB. */
  scratchBytes?: number;
  /** Whether the host accounts swap per cgroup: then the memory limit covers swap too (else swap would extend it). */
  swapAccounting?: boolean;
}

/** CFS period of the CPU limit, in microseconds. */
const CPU_PERIOD_US = 100_000;

/** Whether the host's cgroups account swap (cgroup v2, or v1 with `memory.memsw.*`). */
export async function hasSwapAccounting(cgroupRoot = "/sys/fs/cgroup"): Promise<boolean> {
  for (const probe of ["memory.swap.max", "memory/memory.memsw.limit_in_bytes"]) {
    try {
      await Deno.stat(`${cgroupRoot}/${probe}`);
      return true;
    } catch { /* not this layout */ }
  }
  // cgroup v2 keeps memory.swap.max only in child groups; the root lists the controller instead.
  try {
    return (await Deno.readTextFile(`${cgroupRoot}/cgroup.controllers`)).split(/\s+/).includes("memory");
  } catch {
    return false;
  }
}

/** Builds the spec (the image was checked runnable at deploy: it has a command). */
export function buildSpec(opts: SpecOptions): Record<string, unknown> {
  const command = [...opts.process.entrypoint, ...opts.process.cmd];
  const { adapter } = opts;
  const args = adapter
    ? [
      ADAPTER_PATH,
      "--port",
      String(adapter.port),
      "--ready-timeout-ms",
      String(adapter.readyTimeoutMs),
      "--",
      ...command,
    ]
    : command;
  const merged = mergeEnv(opts.process.env, opts.env ?? {});
  const env = merged.some((e) => e.startsWith("PATH=")) ? merged : [DEFAULT_PATH, ...merged];
  const ro = ["bind", "ro", "nosuid", "nodev"];
  const extraMounts = [
    ...(adapter ? [{ destination: ADAPTER_PATH, type: "bind", source: adapter.path, options: ro }] : []),
    ...(opts.secrets ?? []).map((s) => ({
      destination: `/run/secrets/${s.name}`,
      type: "bind",
      source: s.path,
      options: [...ro, "noexec"],
    })),
  ];
  const caps = CAPABILITIES;
  const limits = opts.limits ?? {};
  const readonly = (opts.rootfs ?? "readonly") === "readonly";
  // Scratch space for a read-only root; a writable root is bounded by the caller, /tmp is then part of it.
  const tmp = readonly
    ? [{
      destination: "/tmp",
      type: "tmpfs",
      source: "tmpfs",
      options: ["nosuid", "nodev", "mode=1777", `size=${limits.scratchBytes ?? 64 << 20}`],
    }]
    : [];
  return {
    ociVersion: "1.0.2-dev",
    process: {
      terminal: false,
      user: opts.process.resolvedUser,
      args,
      env,
      cwd: opts.process.workingDir || "/",
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: "rootfs", readonly },
    hostname: opts.hostname,
    ...(opts.shimGroup ? { annotations: { [SHIM_GROUP_ANNOTATION]: opts.shimGroup } } : {}),
    mounts: [
      { destination: "/proc", type: "proc", source: "proc", options: ["nosuid", "noexec", "nodev"] },
      {
        destination: "/dev",
        type: "tmpfs",
        source: "tmpfs",
        options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
      },
      {
        destination: "/dev/pts",
        type: "devpts",
        source: "devpts",
        options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
      },
      {
        destination: "/dev/shm",
        type: "tmpfs",
        source: "shm",
        options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
      },
      { destination: "/dev/mqueue", type: "mqueue", source: "mqueue", options: ["nosuid", "noexec", "nodev"] },
      { destination: "/sys", type: "sysfs", source: "sysfs", options: ["nosuid", "noexec", "nodev", "ro"] },
      ...tmp,
      { destination: CONTROL_SOCKET, type: "bind", source: opts.controlSocket, options: ["bind", "rw"] },
      ...extraMounts,
    ],
    linux: {
      namespaces: [{ type: "pid" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }, { type: "network" }],
      cgroupsPath: opts.cgroupsPath,
      resources: {
        devices: [{ allow: false, access: "rwm" }],
        ...(limits.memoryBytes
          ? { memory: { limit: limits.memoryBytes, ...(limits.swapAccounting ? { swap: limits.memoryBytes } : {}) } }
          : {}),
        ...(limits.pids ? { pids: { limit: limits.pids } } : {}),
        ...(limits.cpus ? { cpu: { quota: Math.round(limits.cpus * CPU_PERIOD_US), period: CPU_PERIOD_US } } : {}),
      },
      ...(opts.seccomp ? { seccomp: opts.seccomp } : {}),
      maskedPaths: [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
      ],
      readonlyPaths: ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
  };
}
