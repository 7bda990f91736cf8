/**
 * What one container used, read from its cgroup once its processes have exited and before runc deletes the cgroup
 * (containerd's task delete): CPU time, peak memory and OOM kills. The kernel keeps these counters in the cgroup
 * itself, so they cover every process the container ran, runc's init included, at no cost while it runs.
 *
 * cgroup v2: `cpu.stat` (`usage_usec`), `memory.peak` (Linux 5.19 on; before it only `memory.current`, a lower
 * bound once the processes are gone — {@linkcode ContainerUsage.memorySource} says which), `memory.events`
 * (`oom_kill`). cgroup v1, and hybrid hosts, where runc uses the v1 controllers: `cpuacct.usage` (ns),
 * `memory.max_usage_in_bytes` (a high-water mark, page cache included), and `oom_kill` of `memory.oom_control`
 * (Linux 4.13 on; older kernels have no count of kills, only `memory.failcnt`, which counts reclaims at the limit
 * rather than kills, so it is not used).
 *
 * @module
 */

import { type CgroupLayout, detectLayout } from "./cgroups.ts";

/** What one container's cgroup recorded. */
export interface ContainerUsage {
  /** CPU time of all its processes (user and system). */
  cpuSeconds: number;
  /** The most memory it was charged at once; 0 when the memory controller had no file for it. */
  peakMemoryBytes: number;
  /** Whether the kernel's OOM killer killed one of its processes. */
  oomKilled: boolean;
  /** How many of its processes the OOM killer killed. */
  oomKills: number;
  /**
   * The file {@linkcode peakMemoryBytes} came from: a true high-water mark (`memory.peak`, `memory.max_usage_in_bytes`),
   * or `memory.current` (cgroup v2 before Linux 5.19: what is charged when read, a lower bound); null: none.
   */
  memorySource: "memory.peak" | "memory.max_usage_in_bytes" | "memory.current" | null;
}

let hostLayout: Promise<CgroupLayout> | null = null;

/**
 * Reads the usage of the cgroup `cgroupPath` (as in the OCI spec's `cgroupsPath`, e.g. `/faasd/hello/faasd-0a1b2c`)
 * under `layout` (default: this host's, detected once).
 *
 * @returns null when the cgroup does not exist (runc already deleted it, or never created it). Files missing from an
 *   existing cgroup count as 0.
 * @throws {TypeError} when `cgroupPath` is not absolute or climbs out of the cgroup root (`..`).
 */
export async function readUsage(cgroupPath: string, layout?: CgroupLayout): Promise<ContainerUsage | null> {
  if (!cgroupPath.startsWith("/") || cgroupPath.split("/").some((part) => part === "." || part === "..")) {
    throw new TypeError(`invalid cgroup path ${JSON.stringify(cgroupPath)}`);
  }
  const path = cgroupPath.replace(/\/+$/, "");
  const l = layout ?? await (hostLayout ??= detectLayout());
  return l.version === 2 ? await readV2(`${l.root}${path}`) : await readV1(l.root, path);
}

async function readV2(dir: string): Promise<ContainerUsage | null> {
  const [cpuStat, peak, current, events] = await Promise.all(
    ["cpu.stat", "memory.peak", "memory.current", "memory.events"].map((f) => readOrNull(`${dir}/${f}`)),
  );
  // cpu.stat is in every v2 cgroup (the cpu controller or not): without it, the cgroup is gone.
  if (cpuStat === null && peak === null && current === null) return null;
  const memorySource = peak !== null ? "memory.peak" : current !== null ? "memory.current" : null;
  const oomKills = field(events, "oom_kill");
  return {
    cpuSeconds: field(cpuStat, "usage_usec") / 1e6,
    peakMemoryBytes: number(peak ?? current),
    oomKilled: oomKills > 0,
    oomKills,
    memorySource,
  };
}

async function readV1(root: string, path: string): Promise<ContainerUsage | null> {
  const memory = `${root}/memory${path}`;
  // cpuacct is mounted on its own, or with cpu as `cpu,cpuacct` (most distributions link `cpuacct` to it).
  const [cpuNs, cpuNsJoint, maxUsage, oomControl] = await Promise.all([
    readOrNull(`${root}/cpuacct${path}/cpuacct.usage`),
    readOrNull(`${root}/cpu,cpuacct${path}/cpuacct.usage`),
    readOrNull(`${memory}/memory.max_usage_in_bytes`),
    readOrNull(`${memory}/memory.oom_control`),
  ]);
  const cpu = cpuNs ?? cpuNsJoint;
  if (cpu === null && maxUsage === null && oomControl === null) return null;
  const oomKills = field(oomControl, "oom_kill");
  return {
    cpuSeconds: number(cpu) / 1e9,
    peakMemoryBytes: number(maxUsage),
    oomKilled: oomKills > 0,
    oomKills,
    memorySource: maxUsage !== null ? "memory.max_usage_in_bytes" : null,
  };
}

/** A cgroup file's text; null when it (or its cgroup) does not exist or cannot be read. */
async function readOrNull(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch {
    return null;
  }
}

/** A file holding one number; 0 when absent or not a number (`max`). */
function number(text: string | null): number {
  const n = Number(text?.trim());
  return text !== null && Number.isFinite(n) ? n : 0;
}

/** The value of `key` in a flat-keyed file (`key value` per line); 0 when absent. */
function field(text: string | null, key: string): number {
  for (const line of text?.split("\n") ?? []) {
    const [k, v] = line.trim().split(/\s+/);
    if (k === key) return number(v ?? null);
  }
  return 0;
}
