/**
 * faasd's parent cgroup: every request container runs in `/<parent>/<function>/<container>`, and the parent caps
 * what they all use together (memory, processes, CPU), so that any number of hostile requests leaves the host and
 * faasd itself a reserve. The function level gives each function an equal CPU share under contention, however many
 * containers it runs. runc creates the function and container levels; faasd sets the parent's limits and removes
 * the levels it no longer needs.
 *
 * Works on cgroup v2 (unified) and v1 (one hierarchy per controller, as on this project's CI hosts).
 *
 * @module
 */

/** What all request containers together may use; 0: no limit. */
export interface Totals {
  memoryBytes: number;
  cpus: number;
  pids: number;
}

const CPU_PERIOD_US = 100_000;

/** Processes all containers together may run by default: far below any host's pid_max (32768 at the least). */
const AUTO_PIDS = 4096;

/**
 * Sizes the `auto` totals from the host: memory less max(1 GiB, 20 %), CPUs less half a CPU, and 4096 processes.
 */
export function autoTotals(
  wanted: { memoryBytes: number | "auto"; cpus: number | "auto"; pids: number | "auto" },
): Totals {
  let memoryBytes = wanted.memoryBytes;
  if (memoryBytes === "auto") {
    const total = Deno.systemMemoryInfo().total;
    memoryBytes = Math.max(64 << 20, total - Math.max(1 << 30, Math.round(total * 0.2)));
  }
  const cpus = wanted.cpus === "auto" ? Math.max(0.5, navigator.hardwareConcurrency - 0.5) : wanted.cpus;
  const pids = wanted.pids === "auto" ? AUTO_PIDS : wanted.pids;
  return { memoryBytes, cpus, pids };
}

/** The cgroup layout of this host. */
export type CgroupLayout = { version: 2; root: string } | { version: 1; root: string };

/** Finds whether `/sys/fs/cgroup` is unified (v2) or per controller (v1). */
export async function detectLayout(root = "/sys/fs/cgroup"): Promise<CgroupLayout> {
  try {
    await Deno.stat(`${root}/cgroup.controllers`);
    return { version: 2, root };
  } catch {
    return { version: 1, root };
  }
}

async function write(path: string, value: string): Promise<void> {
  await Deno.writeTextFile(path, value);
}

/** Removes an empty cgroup directory; a missing or busy one is left as it is. */
async function rmdir(path: string): Promise<boolean> {
  try {
    await Deno.remove(path);
    return true;
  } catch {
    return false;
  }
}

/** faasd's parent cgroup with its limits. */
export class ParentCgroup {
  /** The cgroup path as runc takes it, e.g. `/faasd`. */
  readonly path: string;
  readonly layout: CgroupLayout;

  private constructor(path: string, layout: CgroupLayout) {
    this.path = path;
    this.layout = layout;
  }

  /**
   * Creates (or takes over) the parent cgroup `path` and sets `totals` on it (all 0: leaves it to runc).
   *
   * @throws {Deno.errors.PermissionDenied} (or another filesystem error) when the cgroup filesystem refuses.
   */
  static async setUp(path: string, totals: Totals, layout?: CgroupLayout): Promise<ParentCgroup> {
    const parent = new ParentCgroup(path, layout ?? await detectLayout());
    // Without totals there is nothing to write (runc creates the path, and faasd need not see the cgroup filesystem),
    // unless a previous run left limits on an existing parent: those are lifted.
    if (totals.memoryBytes || totals.cpus || totals.pids || await parent.#exists()) await parent.#apply(totals);
    return parent;
  }

  /** The cgroup path of container `id` of function `fn`. */
  containerPath(fn: string, id: string): string {
    return `${this.path}/${fn}/${id}`;
  }

  /**
   * The directories holding the parent: one on v2; on v1, one in every hierarchy mounted under the root (runc creates
   * the path in each, the named `systemd` one and a hybrid host's `unified` one included).
   */
  async #dirs(): Promise<string[]> {
    const { version, root } = this.layout;
    if (version === 2) return [`${root}${this.path}`];
    return (await subdirs(root)).map((h) => `${root}/${h}${this.path}`);
  }

  async #exists(): Promise<boolean> {
    for (const d of await this.#dirs().catch(() => [])) {
      try {
        if ((await Deno.stat(d)).isDirectory) return true;
      } catch { /* not there */ }
    }
    return false;
  }

  async #apply(t: Totals): Promise<void> {
    const { version, root } = this.layout;
    const dir = (controller: string) => version === 2 ? `${root}${this.path}` : `${root}/${controller}${this.path}`;
    if (version === 2) {
      // Children can only be limited by controllers their parent hands down.
      await write(`${root}/cgroup.subtree_control`, "+memory +pids +cpu").catch(() => {});
      await Deno.mkdir(dir(""), { recursive: true });
      await write(`${dir("")}/cgroup.subtree_control`, "+memory +pids +cpu");
      await write(`${dir("")}/memory.max`, t.memoryBytes ? String(t.memoryBytes) : "max");
      await write(`${dir("")}/pids.max`, t.pids ? String(t.pids) : "max");
      await write(`${dir("")}/cpu.max`, t.cpus ? `${Math.round(t.cpus * CPU_PERIOD_US)} ${CPU_PERIOD_US}` : "max");
      return;
    }
    for (const c of ["memory", "pids", "cpu"]) await Deno.mkdir(dir(c), { recursive: true });
    await write(`${dir("memory")}/memory.limit_in_bytes`, t.memoryBytes ? String(t.memoryBytes) : "-1");
    await write(`${dir("pids")}/pids.max`, t.pids ? String(t.pids) : "max");
    await write(`${dir("cpu")}/cpu.cfs_period_us`, String(CPU_PERIOD_US));
    await write(`${dir("cpu")}/cpu.cfs_quota_us`, t.cpus ? String(Math.round(t.cpus * CPU_PERIOD_US)) : "-1");
  }

  /** Processes running in the parent now (every request container together). */
  async pids(): Promise<number> {
    const { version, root } = this.layout;
    const file = version === 2 ? `${root}${this.path}/pids.current` : `${root}/pids${this.path}/pids.current`;
    return Number((await Deno.readTextFile(file)).trim());
  }

  /** Removes function `fn`'s level once its containers are gone (busy: left for {@linkcode sweep}). */
  async removeFunction(fn: string): Promise<void> {
    for (const d of await this.#dirs()) await rmdir(`${d}/${fn}`);
  }

  /**
   * Removes empty container and function levels: what containers killed with their shim left, or functions gone.
   * Levels with processes stay.
   *
   * @returns how many container cgroups were removed.
   */
  async sweep(): Promise<number> {
    const removed = new Set<string>();
    for (const d of await this.#dirs()) {
      for (const fn of await subdirs(d)) {
        for (const c of await subdirs(`${d}/${fn}`)) if (await rmdir(`${d}/${fn}/${c}`)) removed.add(c);
        await rmdir(`${d}/${fn}`);
      }
    }
    return removed.size;
  }

  /** Sweeps, then removes the parent itself when nothing runs in it. */
  async remove(): Promise<void> {
    await this.sweep();
    for (const d of await this.#dirs()) await rmdir(d);
  }
}

async function subdirs(dir: string): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) if (e.isDirectory) out.push(e.name);
  } catch { /* gone */ }
  return out;
}
