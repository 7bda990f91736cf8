/**
 * Daemon configuration: command-line flags, each with an environment fallback `FAASD_<NAME>` (e.g. `--ip-pool` ←
 * `FAASD_IP_POOL`), then a default. Parsing is pure so it is unit-tested with a fake environment.
 *
 * @module
 */

import { LOG_LEVELS, type LogFormat, type LogLevel } from "./log.ts";
import { parseArgs } from "node:util";
import { IpPool } from "./ipam.ts";

/** Everything the daemon is configured with. */
export interface DaemonConfig {
  api: { hostname: string; port: number };
  stateDir: string;
  ipPool: IpPool;
  port: number;
  containerd: string;
  namespace: string;
  /**
   * `--runtime`: the OCI runtime binary the runc v2 shim runs: `auto` (faasd-runc, shim/faasd-runc.c, which builds
   * faasd's containers itself and hands anything else to runc, when built; else runc), or a name on PATH or a path.
   */
  runtime: string;
  /**
   * `--shim`: containerd's runtime for request containers: `auto` (faasd's shim wrapper, shim/faasd-shim.c, when
   * built; else the runc v2 shim), `runc-v2`, or the absolute path of a shim binary.
   */
  shim: string;
  /** `--adapter`: faasd-adapter's path for adapter mode; `auto`: where `deno task gen` builds it. */
  adapter: string;
  /** `--log-format`: how faasd's own log is written; auto: text on a terminal, else JSON. */
  logFormat: "auto" | LogFormat;
  /** `--log-level`. */
  logLevel: LogLevel;
  snapshotter: string;
  maxImageBytes: number;
  connectTimeoutMs: number;
  maxConcurrency: number;
  logMaxBytes: number;
  shutdownGraceMs: number;
  /** Bearer token the control API requires; null: no authentication. */
  apiToken: string | null;
  /** What each request's container may use (0: no limit); per-function settings may only lower these. */
  limits: DaemonLimits;
  /** The warm pool of ready containers and the queue of connections waiting for one. */
  pool: PoolConfig;
  /** What all request containers together may use (their parent cgroup); "auto" is sized from the host at start. */
  totals: { memoryBytes: number | "auto"; cpus: number | "auto"; pids: number | "auto" };
  /** `default` (faasd's profile), `unconfined`, or the path of a profile in the docker/containers JSON format. */
  seccomp: string;
  /** Whether handed-over sockets are kept from opening connections (nftables), or the operator opted out. */
  socketGuard: "nftables" | "off";
  /** Cluster mode (`--cluster`); null: a single host on SQLite. */
  cluster: ClusterConfig | null;
}

/** The flags of cluster mode. */
export interface ClusterConfig {
  /** `--cluster etcd://HOST:PORT[,HOST:PORT…]`, as `http://HOST:PORT` endpoints. */
  etcd: string[];
  /** `--registry`: the cluster's OCI registry, e.g. `http://192.0.2.1:5000`. */
  registry: string;
  /** `--host-name`: this host's name in the cluster (default: the machine's hostname). */
  host: string;
  /** `--host-ttl`: how long a host that stopped renewing its etcd lease stays listed, in seconds. */
  hostTtlSeconds: number;
  /** `--bird-config`: the operator's BIRD 2 fragment with the BGP sessions; null: announce nothing. */
  birdConfig: string | null;
}

/** The daemon's per-container limits: the defaults, and the ceilings of per-function settings. */
export interface DaemonLimits {
  memoryBytes: number;
  pids: number;
  /** CPUs (CFS quota); 0: no limit. */
  cpus: number;
  /** Size of the container's writable tmpfs (`/tmp`, or the whole root when writable). */
  scratchBytes: number;
  /** How long one request's container may run (the request timeout). */
  timeoutMs: number;
  /** `--pool-max` (as `pool.max`): the ceiling of a function's `min_ready` and `max_ready`. */
  poolMax: number;
}

/** The warm pool's flags. */
export interface PoolConfig {
  /** `--pool-idle`: a function with no connection for this long shrinks to its min_ready. */
  idleMs: number;
  /** `--pool-max`: ready containers across all functions (0: none are kept ready). */
  max: number;
  /** `--pool-max-age`: a ready container older than this is replaced. */
  maxAgeMs: number;
  /** `--max-starting`: container starts in flight at once, across all functions. */
  maxStarting: number;
  /** `--queue-timeout`: a connection waiting longer than this for a container is answered 503. */
  queueTimeoutMs: number;
  /** `--max-queue`: connections one function may have waiting (0: none wait; past it, 503). */
  maxQueue: number;
  /** `--header-timeout`: a connection that sends nothing within this is closed without costing a container. */
  headerTimeoutMs: number;
  /**
   * `--max-containers`: request containers across all functions, ready + starting + serving. "auto" is kept as
   * given and sized from the host at start by {@linkcode resolveMaxContainers}, as the `auto` totals are.
   */
  maxContainers: number | "auto";
  /** `--shim-group-size`: containers of one function that share a runc shim process (below 2: a shim each). */
  shimGroupSize: number;
}

interface FlagSpec {
  env: string;
  default: string;
  help: string;
}

/** The flags, their env variables, defaults and help lines (also printed by `--help`). */
export const FLAGS = {
  "api": { env: "FAASD_API", default: "127.0.0.1:8080", help: "control API address HOST:PORT" },
  "state-dir": { env: "FAASD_STATE_DIR", default: "/var/lib/faasd", help: "SQLite registry, sockets and logs" },
  "ip-pool": { env: "FAASD_IP_POOL", default: "127.10.0.0/24", help: "CIDR handing out function IPs from host .10" },
  "port": { env: "FAASD_PORT", default: "80", help: "port every function listens on" },
  "containerd": { env: "FAASD_CONTAINERD", default: "/run/containerd/containerd.sock", help: "containerd socket" },
  "namespace": { env: "FAASD_NAMESPACE", default: "faasd", help: "containerd namespace" },
  "runtime": {
    env: "FAASD_RUNTIME",
    default: "auto",
    help: "OCI runtime binary of the runc v2 shim: auto (faasd-runc when built, else runc), or a name or path (runc, " +
      "crun…)",
  },
  "shim": {
    env: "FAASD_SHIM",
    default: "auto",
    help: "containerd shim of request containers: auto (faasd-shim when built, else runc-v2), runc-v2, or the " +
      "absolute path of a shim binary",
  },
  "adapter": {
    env: "FAASD_ADAPTER",
    default: "auto",
    help: "faasd-adapter, run in adapter-mode (--http-port) containers: auto (where deno task gen builds it) or an " +
      "absolute path",
  },
  "snapshotter": { env: "FAASD_SNAPSHOTTER", default: "overlayfs", help: "containerd snapshotter" },
  "max-image-size": {
    env: "FAASD_MAX_IMAGE_SIZE",
    default: "2GiB",
    help: "largest upload, and largest image once its layers are unpacked",
  },
  "connect-timeout": {
    env: "FAASD_CONNECT_TIMEOUT",
    default: "5s",
    help: "how long a container may take to connect to /control.sock",
  },
  "request-timeout": { env: "FAASD_REQUEST_TIMEOUT", default: "60s", help: "how long one request's container may run" },
  "max-concurrency": {
    env: "FAASD_MAX_CONCURRENCY",
    default: "32",
    help: "connections one function may be serving at once (handed over, not yet ended); past it connections wait " +
      "in the queue",
  },
  "pool-idle": {
    env: "FAASD_POOL_IDLE",
    default: "5m",
    help: "a function with no connection for this long shrinks to its min_ready ready containers",
  },
  "pool-max": {
    env: "FAASD_POOL_MAX",
    default: "64",
    help: "ready containers kept across all functions (0: none); also the ceiling of min_ready and max_ready",
  },
  "pool-max-age": {
    env: "FAASD_POOL_MAX_AGE",
    default: "10m",
    help: "a ready container older than this is replaced by a fresh one",
  },
  "max-starting": {
    env: "FAASD_MAX_STARTING",
    default: "4",
    help: "container starts in flight at once, across all functions",
  },
  "queue-timeout": {
    env: "FAASD_QUEUE_TIMEOUT",
    default: "10s",
    help: "a connection waiting longer than this for a container gets 503",
  },
  "max-queue": {
    env: "FAASD_MAX_QUEUE",
    default: "256",
    help: "connections one function may have waiting (0: none wait); past it, 503",
  },
  "header-timeout": {
    env: "FAASD_HEADER_TIMEOUT",
    default: "10s",
    help: "a connection that sends nothing within this is closed without costing a container",
  },
  "shim-group-size": {
    env: "FAASD_SHIM_GROUP_SIZE",
    default: "64",
    help: "containers of one function that share one runc shim process before a fresh shim is started (0 or 1: a " +
      "shim per container)",
  },
  "max-containers": {
    env: "FAASD_MAX_CONTAINERS",
    default: "auto",
    help: "request containers across all functions, ready + starting + serving (auto: one per 64MiB of host " +
      "memory, 16 to 1024)",
  },
  "memory-limit": {
    env: "FAASD_MEMORY_LIMIT",
    default: "512MiB",
    help: "memory one request's container may use (0: no limit); past it the container is killed",
  },
  "pids-limit": {
    env: "FAASD_PIDS_LIMIT",
    default: "256",
    help: "processes and threads one request's container may run at once (0: no limit)",
  },
  "cpu-limit": {
    env: "FAASD_CPU_LIMIT",
    default: "1",
    help: "CPUs one request's container may use (CFS quota, e.g. 0.5; 0: no limit)",
  },
  "scratch-size": {
    env: "FAASD_SCRATCH_SIZE",
    default: "64MiB",
    help: "writable space of a container: its /tmp (or its root, when writable); counts against its memory",
  },
  "total-memory": {
    env: "FAASD_TOTAL_MEMORY",
    default: "auto",
    help: "memory all request containers together may use (auto: host memory less a reserve)",
  },
  "total-cpu": {
    env: "FAASD_TOTAL_CPU",
    default: "auto",
    help: "CPUs all request containers together may use (auto: host CPUs less half a CPU)",
  },
  "total-pids": {
    env: "FAASD_TOTAL_PIDS",
    default: "auto",
    help: "processes all request containers together may run (auto: 4096)",
  },
  "log-format": {
    env: "FAASD_LOG_FORMAT",
    default: "auto",
    help: "faasd's own log on stderr: json, text, or auto (text on a terminal, else json)",
  },
  "log-level": { env: "FAASD_LOG_LEVEL", default: "info", help: "debug, info, warn or error" },
  "seccomp": {
    env: "FAASD_SECCOMP",
    default: "default",
    help: "seccomp profile: default, unconfined, or a profile file in the docker/containers JSON format",
  },
  "socket-guard": {
    env: "FAASD_SOCKET_GUARD",
    default: "nftables",
    help: "keep handed-over sockets from opening connections: nftables, or off (unsafe: operator opt-out)",
  },
  "log-max-size": { env: "FAASD_LOG_MAX_SIZE", default: "10MiB", help: "size cap of each function's log file" },
  "api-token": {
    env: "FAASD_API_TOKEN",
    default: "",
    help: "when set, the API wants Authorization: Bearer TOKEN (all but /healthz); prefer the env variable",
  },
  "shutdown-grace": {
    env: "FAASD_SHUTDOWN_GRACE",
    default: "10s",
    help: "how long SIGTERM waits for in-flight requests",
  },
  "cluster": {
    env: "FAASD_CLUSTER",
    default: "",
    help: "cluster mode: etcd://HOST:PORT[,HOST:PORT...] holds the functions shared by every host (default: none)",
  },
  "registry": {
    env: "FAASD_REGISTRY",
    default: "",
    help: "cluster mode: the OCI registry images move through, e.g. http://192.0.2.1:5000",
  },
  "host-name": { env: "FAASD_HOST_NAME", default: "", help: "cluster mode: this host's name (default: hostname)" },
  "host-ttl": {
    env: "FAASD_HOST_TTL",
    default: "10s",
    help: "cluster mode: how long a host that stopped renewing its etcd lease stays a member",
  },
  "bird-config": {
    env: "FAASD_BIRD_CONFIG",
    default: "",
    help: "cluster mode: BIRD 2 config fragment with the BGP sessions; faasd runs BIRD announcing its function IPs",
  },
} as const satisfies Record<string, FlagSpec>;

/** A container memory limit: 0 (none) or at least 4 MiB, below which runc cannot even start one. @throws {TypeError} */
export function parseMemoryLimit(text: string, what = "--memory-limit"): number {
  const bytes = parseSize(text, what);
  if (bytes !== 0 && bytes < 4 << 20) throw new TypeError(`${what} must be 0 (no limit) or at least 4MiB`);
  return bytes;
}

/** A scratch (tmpfs) size: at least 1 MiB. @throws {TypeError} */
function parseScratchSize(text: string): number {
  const bytes = parseSize(text, "--scratch-size");
  if (bytes < 1 << 20) throw new TypeError("--scratch-size must be at least 1MiB");
  return bytes;
}

function parseSocketGuard(text: string): "nftables" | "off" {
  if (text === "nftables" || text === "off") return text;
  throw new TypeError(`invalid --socket-guard ${JSON.stringify(text)}: nftables or off`);
}

/** An API token: empty (no authentication) or 16+ visible ASCII characters. @throws {TypeError} */
export function parseToken(text: string): string | null {
  if (text === "") return null;
  if (!/^[\x21-\x7e]{16,}$/.test(text)) {
    throw new TypeError("--api-token must be at least 16 visible ASCII characters (e.g. openssl rand -hex 32)");
  }
  return text;
}

/** Parses `10s`, `500ms`, `2m` or a bare number of seconds into milliseconds. @throws {TypeError} */
export function parseDuration(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new TypeError(`invalid duration for ${what}: ${JSON.stringify(text)} (use e.g. 500ms, 5s, 2m)`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? "s"]!;
  return Math.round(Number(m[1]) * unit);
}

/** Parses `512MiB`, `2GiB`, `100MB` or a bare number of bytes. @throws {TypeError} */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?$/i.exec(text.trim());
  if (!m) throw new TypeError(`invalid size for ${what}: ${JSON.stringify(text)} (use e.g. 512MiB, 2GiB)`);
  const units: Record<string, number> = {
    b: 1,
    kb: 1e3,
    mb: 1e6,
    gb: 1e9,
    kib: 1024,
    mib: 1024 ** 2,
    gib: 1024 ** 3,
  };
  return Math.round(Number(m[1]) * units[(m[2] ?? "b").toLowerCase()]!);
}

/** A number of CPUs: 0 (no limit) or from 0.01 up. @throws {TypeError} */
export function parseCpus(text: string, what: string): number {
  const n = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text.trim()) || (n !== 0 && n < 0.01)) {
    throw new TypeError(`invalid ${what}: ${JSON.stringify(text)} (a number of CPUs, e.g. 0.5 or 2; 0: no limit)`);
  }
  return n;
}

/** `auto`, or what `parse` makes of the text. */
function orAuto<T>(text: string, parse: (text: string) => T): T | "auto" {
  return text === "auto" ? "auto" : parse(text);
}

function parsePort(text: string, what: string): number {
  const port = Number(text);
  if (!/^\d+$/.test(text) || port < 1 || port > 65535) {
    throw new TypeError(`invalid port for ${what}: ${JSON.stringify(text)}`);
  }
  return port;
}

function parsePositiveInt(text: string, what: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1) {
    throw new TypeError(`invalid ${what}: ${JSON.stringify(text)} (a whole number ≥ 1)`);
  }
  return n;
}

function parseCount(text: string, what: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n)) {
    throw new TypeError(`invalid ${what}: ${JSON.stringify(text)} (a whole number ≥ 0)`);
  }
  return n;
}

/** A duration that is not 0: a timeout of 0 would refuse everything. @throws {TypeError} */
function parsePositiveDuration(text: string, what: string): number {
  const ms = parseDuration(text, what);
  if (ms < 1) throw new TypeError(`invalid duration for ${what}: ${JSON.stringify(text)} (must be above 0)`);
  return ms;
}

/** Host memory per container under `--max-containers auto`. */
const AUTO_CONTAINER_BYTES = 64 * 1024 ** 2;

/**
 * What `--max-containers` comes to: the number given, or for `auto` one container per 64 MiB of host memory, at
 * least 16 and at most 1024.
 *
 * @param hostMemoryBytes the host's memory; read from the system (`Deno.systemMemoryInfo`) when not given.
 */
export function resolveMaxContainers(value: number | "auto", hostMemoryBytes?: number): number {
  if (value !== "auto") return value;
  const total = hostMemoryBytes ?? Deno.systemMemoryInfo().total;
  return Math.max(16, Math.min(1024, Math.floor(total / AUTO_CONTAINER_BYTES)));
}

/** `--help` text for the daemon. */
export function daemonHelp(): string {
  const lines = Object.entries(FLAGS).map(([flag, spec]) =>
    `  --${flag.padEnd(16)} ${spec.help} (env ${spec.env}, default ${spec.default})`
  );
  return `Usage: deno task faasd [flags]\n\nRuns the faasd daemon.\n\nFlags:\n${
    lines.join("\n")
  }\n  --help             this text\n`;
}

/**
 * Parses daemon flags.
 *
 * @returns the config, or "help" when `--help` was given.
 * @throws {TypeError} for an unknown flag or a malformed value, with a message fit to show the user.
 * @throws {RangeError} for an IP pool too small to hand out an address.
 */
export function parseDaemonConfig(
  args: string[],
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
): DaemonConfig | "help" {
  const options = Object.fromEntries(
    Object.keys(FLAGS).map((flag) => [flag, { type: "string" as const }]),
  ) as Record<keyof typeof FLAGS, { type: "string" }>;
  const { values } = parseArgs({ args, options: { ...options, help: { type: "boolean" } }, strict: true });
  if (values.help) return "help";
  const get = (flag: keyof typeof FLAGS): string =>
    (values as Record<string, string | undefined>)[flag] ?? env(FLAGS[flag].env) ?? FLAGS[flag].default;

  const poolMax = parseCount(get("pool-max"), "--pool-max");
  const api = get("api");
  const colon = api.lastIndexOf(":");
  if (colon <= 0) throw new TypeError(`invalid --api ${JSON.stringify(api)}: expected HOST:PORT`);
  return {
    api: { hostname: api.slice(0, colon), port: parsePort(api.slice(colon + 1), "--api") },
    stateDir: get("state-dir"),
    ipPool: new IpPool(get("ip-pool")),
    port: parsePort(get("port"), "--port"),
    containerd: get("containerd"),
    namespace: get("namespace"),
    runtime: get("runtime"),
    shim: parseShim(get("shim")),
    adapter: parseAdapter(get("adapter")),
    snapshotter: get("snapshotter"),
    maxImageBytes: parseSize(get("max-image-size"), "--max-image-size"),
    connectTimeoutMs: parseDuration(get("connect-timeout"), "--connect-timeout"),
    maxConcurrency: parsePositiveInt(get("max-concurrency"), "--max-concurrency"),
    logMaxBytes: parseSize(get("log-max-size"), "--log-max-size"),
    shutdownGraceMs: parseDuration(get("shutdown-grace"), "--shutdown-grace"),
    apiToken: parseToken(get("api-token")),
    limits: {
      memoryBytes: parseMemoryLimit(get("memory-limit")),
      pids: get("pids-limit") === "0" ? 0 : parsePositiveInt(get("pids-limit"), "--pids-limit"),
      cpus: parseCpus(get("cpu-limit"), "--cpu-limit"),
      scratchBytes: parseScratchSize(get("scratch-size")),
      timeoutMs: parseDuration(get("request-timeout"), "--request-timeout"),
      poolMax,
    },
    pool: {
      idleMs: parsePositiveDuration(get("pool-idle"), "--pool-idle"),
      max: poolMax,
      maxAgeMs: parsePositiveDuration(get("pool-max-age"), "--pool-max-age"),
      maxStarting: parsePositiveInt(get("max-starting"), "--max-starting"),
      queueTimeoutMs: parsePositiveDuration(get("queue-timeout"), "--queue-timeout"),
      maxQueue: parseCount(get("max-queue"), "--max-queue"),
      headerTimeoutMs: parsePositiveDuration(get("header-timeout"), "--header-timeout"),
      maxContainers: orAuto(get("max-containers"), (t) => parsePositiveInt(t, "--max-containers")),
      shimGroupSize: parseCount(get("shim-group-size"), "--shim-group-size"),
    },
    totals: {
      memoryBytes: orAuto(get("total-memory"), (t) => parseMemoryLimit(t, "--total-memory")),
      cpus: orAuto(get("total-cpu"), (t) => parseCpus(t, "--total-cpu")),
      pids: orAuto(get("total-pids"), (t) => t === "0" ? 0 : parsePositiveInt(t, "--total-pids")),
    },
    seccomp: get("seccomp"),
    logFormat: oneOf(get("log-format"), ["auto", "json", "text"] as const, "--log-format"),
    logLevel: oneOf(get("log-level"), LOG_LEVELS, "--log-level"),
    socketGuard: parseSocketGuard(get("socket-guard")),
    cluster: parseCluster(get),
  };
}

function parseCluster(get: (flag: keyof typeof FLAGS) => string): ClusterConfig | null {
  const cluster = get("cluster");
  const registry = get("registry");
  const bird = get("bird-config");
  if (!cluster) {
    if (registry || bird || get("host-name")) {
      throw new TypeError("--registry, --bird-config and --host-name need --cluster");
    }
    return null;
  }
  if (!cluster.startsWith("etcd://")) {
    throw new TypeError(`invalid --cluster ${JSON.stringify(cluster)}: expected etcd://HOST:PORT[,HOST:PORT...]`);
  }
  const etcd = cluster.slice("etcd://".length).split(",").map((endpoint) => {
    const colon = endpoint.lastIndexOf(":");
    if (colon <= 0) throw new TypeError(`invalid --cluster endpoint ${JSON.stringify(endpoint)}: expected HOST:PORT`);
    parsePort(endpoint.slice(colon + 1), "--cluster");
    return `http://${endpoint}`;
  });
  if (!registry) throw new TypeError("--cluster needs --registry (the OCI registry images move through)");
  let url: URL;
  try {
    url = new URL(registry);
  } catch (e) {
    throw new TypeError(`invalid --registry ${JSON.stringify(registry)}: expected http(s)://HOST:PORT`, { cause: e });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`invalid --registry ${JSON.stringify(registry)}: expected http(s)://HOST:PORT`);
  }
  const host = get("host-name") || Deno.hostname();
  if (!/^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/i.test(host)) {
    throw new TypeError(`invalid --host-name ${JSON.stringify(host)}: letters, digits, dots and dashes`);
  }
  const ttlMs = parsePositiveDuration(get("host-ttl"), "--host-ttl");
  return {
    etcd,
    registry: url.origin,
    host,
    hostTtlSeconds: Math.max(2, Math.ceil(ttlMs / 1000)),
    birdConfig: bird || null,
  };
}

function parseShim(text: string): string {
  if (text === "auto" || text === "runc-v2" || text.startsWith("/")) return text;
  throw new TypeError(`invalid --shim ${JSON.stringify(text)}: expected auto, runc-v2 or an absolute path`);
}

function oneOf<T extends string>(text: string, allowed: readonly T[], flag: string): T {
  if ((allowed as readonly string[]).includes(text)) return text as T;
  throw new TypeError(`invalid ${flag} ${JSON.stringify(text)}: one of ${allowed.join(", ")}`);
}

function parseAdapter(text: string): string {
  if (text === "auto" || text.startsWith("/")) return text;
  throw new TypeError(`invalid --adapter ${JSON.stringify(text)}: expected auto or an absolute path`);
}
