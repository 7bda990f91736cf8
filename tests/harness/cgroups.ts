/**
 * What the host's cgroup layout lets tests expect.
 *
 * @module
 */

/**
 * Whether faasd-runc builds containers itself here (shim/create.c): the memory, pids, cpu and devices controllers are
 * cgroup v1 hierarchies under /sys/fs/cgroup (v1 or hybrid); on other layouts it hands every create to runc.
 */
export async function ownCreateHost(): Promise<boolean> {
  const info = await Deno.readTextFile("/proc/self/mountinfo");
  const v1 = new Set<string>();
  for (const line of info.split("\n")) {
    const [pre, post] = line.split(" - ");
    if (!post) continue;
    const [type, , options] = post.split(" ");
    if (type === "cgroup" && pre.split(" ")[4].startsWith("/sys/fs/cgroup/")) {
      for (const o of options.split(",")) v1.add(o);
    }
  }
  return ["memory", "pids", "cpu", "devices"].every((c) => v1.has(c));
}
