/**
 * Start-up reaping: what a previous faasd run left when it died mid-request — per-request containers (shim group
 * anchors included), their tasks, snapshots and leases (found by their `request` kind label, container.ts's
 * `OWNED_LABELS`), and the control sockets and output FIFOs in the state directory.
 *
 * @module
 */

import { errorText, log } from "../log.ts";
import { isNotFound } from "../containerd/errors.ts";
import { LABELS } from "../labels.ts";
import { type ContainerDeps, socketDir } from "./container.ts";

/**
 * Removes every per-request container, task, snapshot, lease and control socket found in containerd's namespace
 * and the state directory: what a previous faasd run left when it died mid-request. Call before serving.
 *
 * @returns how many request containers were reaped (shim group anchors, reaped too, are not counted).
 */
export async function reapLeftovers(
  deps: Pick<ContainerDeps, "containerd" | "stateDir" | "snapshotter">,
): Promise<number> {
  const { containerd, snapshotter } = deps;
  const filter = `labels."${LABELS.kind}"==request`;
  const swallow = (e: unknown) => {
    if (!isNotFound(e)) log.error("reaping failed", { error: errorText(e) });
  };
  const containers = await containerd.listContainers(filter);
  const anchors = containers.filter((c) => c.labels[LABELS.role] === "shim-anchor").length;
  for (const c of containers) {
    await containerd.killTask(c.id, 9, { all: true }).catch(() => {});
    await containerd.deleteTask(c.id).catch(async () => {
      // A task that was still stopping: wait for it, then delete.
      await containerd.waitTask(c.id).catch(() => {});
      await containerd.deleteTask(c.id).catch(swallow);
    });
    await containerd.deleteContainer(c.id).catch(swallow);
  }
  for (const s of await containerd.listSnapshots(snapshotter, filter)) {
    await containerd.removeSnapshot(snapshotter, s.name).catch(swallow);
  }
  for (const l of await containerd.listLeases(filter)) {
    await containerd.deleteLease(l.id, { sync: false }).catch(swallow);
  }
  const dir = socketDir(deps.stateDir);
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  for await (const entry of Deno.readDir(dir)) {
    if (/\.(sock|log)$/.test(entry.name)) await Deno.remove(`${dir}/${entry.name}`).catch(() => {});
  }
  return containers.length - anchors;
}
