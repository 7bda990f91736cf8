/**
 * The platform assembled: registry, containerd client, listeners, spawner and control API, wired together. main.ts
 * runs it behind `Deno.serve`; tests build it in-process and call its API handler without a port.
 *
 * @module
 */

import { untilContainerdAnswers } from "./containerd/availability.ts";
import { Containerd } from "./containerd/client.ts";
import { type DaemonConfig, resolveMaxContainers } from "./config.ts";
import { poolSizing } from "./settings.ts";
import { type FunctionRegistry, Registry } from "./registry.ts";
import { type ClusterMode, openClusterMode } from "./cluster/cluster_mode.ts";
import { Functions, type Serving } from "./functions.ts";
import { ensureAddress, ownAddresses, releaseAddress } from "./hostaddr.ts";
import { containerdImageStore, reapImages } from "./image_store.ts";
import { reapRootfsMounts } from "./images/user.ts";
import { Metrics } from "./metrics.ts";
import { FunctionStats } from "./stats.ts";
import type { ContainerUsage } from "./usage.ts";
import { Server } from "./serve/server.ts";
import { socketDir } from "./serve/container.ts";
import { reapLeftovers } from "./serve/reap.ts";
import { CAPABILITIES, hasSwapAccounting } from "./serve/spec.ts";
import { loadSeccompProfile } from "./seccomp.ts";
import { resolveRuntime, resolveShim, RUNC, RUNC_V2 } from "./shim.ts";
import { resolveAdapter } from "./adapter.ts";
import { Secrets } from "./secrets.ts";
import { GUARD_MARK, SocketGuard } from "./serve/socket_guard.ts";
import { autoTotals, ParentCgroup } from "./cgroups.ts";
import { reapScratch } from "./scratch.ts";
import { logPath, Logs, removeLogs } from "./logs.ts";
import { createApi } from "./api/router.ts";
import { Poller } from "../ffi/epoll.ts";

/** A running platform. */
export interface Platform {
  /** The control API handler. */
  api: (req: Request) => Promise<Response>;
  functions: Functions;
  /** SQLite on a single host; etcd in a cluster. */
  registry: FunctionRegistry;
  /** Cluster mode's parts; null on a single host. */
  cluster: ClusterMode | null;
  containerd: Containerd;
  server: Server;
  metrics: Metrics;
  /** Requests, latency and container usage per function. */
  stats: FunctionStats;
  /** The parent cgroup of every request container. */
  cgroup: ParentCgroup;
  /** The installed socket guard; null when the operator opted out. */
  guard: SocketGuard | null;
  /**
   * Stops serving: ends `logs -f` streams, stops accepting, waits up to the grace period for requests in flight, then
   * kills and cleans up. Idempotent. The control API still answers meanwhile.
   */
  drain(): Promise<void>;
  /** Drains, then closes the registry and the containerd connection. Idempotent. */
  close(): Promise<void>;
}

/** How often the socket guard's table is checked (and put back when someone removed it). */
const GUARD_CHECK_MS = 5000;

/** The per-container CPU limit, capped by the total (0: no limit). */
function capCpus(perContainer: number, total: number): number {
  if (!total) return perContainer;
  return perContainer ? Math.min(perContainer, total) : total;
}

async function waitForContainerd(containerd: Containerd, address: string): Promise<string> {
  await untilContainerdAnswers(containerd, Date.now() + 10_000);
  try {
    return (await containerd.version()).version;
  } catch (e) {
    throw new Error(`containerd is not answering on ${address}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Starts the platform: opens the registry (importing a seed `registry.json` once), connects to containerd, reaps
 * what a previous run left, and restores every function's listener.
 *
 * @throws {Error} when containerd does not answer within 10 s.
 */
export async function startPlatform(config: DaemonConfig, log: (message: string) => void): Promise<Platform> {
  const { stateDir } = config;
  await Deno.mkdir(`${stateDir}/logs`, { recursive: true });
  // Only root may reach the control sockets: whoever connects to one first is handed the client's connection.
  await Deno.mkdir(socketDir(stateDir), { recursive: true, mode: 0o700 });
  await Deno.chmod(socketDir(stateDir), 0o700);

  // A cluster's registry is etcd, opened once the server exists (cluster mode serves through it).
  const local = config.cluster ? null : new Registry(`${stateDir}/faasd.db`);
  const seedJson = `${stateDir}/registry.json`;
  try {
    const result = local?.importSeedJson(await Deno.readTextFile(seedJson), config.ipPool);
    if (result) {
      log(`imported ${result.imported.length} function(s) from ${seedJson} (redeploy them to serve)`);
      for (const s of result.skipped) log(`registry.json: skipped ${s}`);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  let cluster: ClusterMode | null = null;
  let registry: FunctionRegistry = local!;

  const containerd = new Containerd({ address: config.containerd, namespace: config.namespace });
  let poller: Poller | null = null;
  let guard: SocketGuard | null = null;
  const closeRegistry = async () => {
    local?.close();
    await cluster?.close();
  };
  try {
    const version = await waitForContainerd(containerd, config.containerd);
    log(`containerd ${version} on ${config.containerd}, namespace ${config.namespace}`);
    // Containment comes before anything is served: without it faasd refuses to start (unless the operator opted out).
    const seccomp = await loadSeccompProfile(config.seccomp, { capabilities: CAPABILITIES });
    if (!seccomp) log("seccomp: unconfined (--seccomp unconfined): containers may use every system call");
    if (config.socketGuard === "nftables") guard = await SocketGuard.install(config.namespace);
    else {
      await SocketGuard.removeLeftover(config.namespace);
      log("socket guard off (--socket-guard off): a handler can reconnect its socket to any host address");
    }
    const shim = await resolveShim(config.shim);
    const unbuilt = config.shim === "auto" && shim === RUNC_V2
      ? " (faasd-shim is not built: tools/setup.sh builds it)"
      : "";
    const runtime = await resolveRuntime(config.runtime);
    const unbuiltRuntime = config.runtime === "auto" && runtime === RUNC
      ? " (faasd-runc is not built: tools/setup.sh builds it)"
      : "";
    log(`containers run under the shim ${shim}${unbuilt}, with the OCI runtime ${runtime}${unbuiltRuntime}`);
    const adapter = await resolveAdapter(config.adapter);
    if (!adapter) {
      log(
        `faasd-adapter is not at ${
          config.adapter === "auto" ? "its build place (deno task gen builds it)" : config.adapter
        }: functions cannot use --http-port`,
      );
    }
    const secrets = Secrets.open(stateDir);
    const totals = autoTotals(config.totals);
    // A container's CPU quota may not pass its parent's (cgroup v1 refuses it): the total caps the per-container limit.
    const limits = { ...config.limits, cpus: capCpus(config.limits.cpus, totals.cpus) };
    if (limits.cpus !== config.limits.cpus) log(`--cpu-limit lowered to --total-cpu: ${limits.cpus} CPUs`);
    poller = new Poller();
    const metrics = new Metrics();
    const stats = new FunctionStats({ metrics, known: (name) => registry.get(name) !== null });
    const logs = new Logs({ stateDir, maxBytes: config.logMaxBytes, poller });
    const cgroupParent = `/${config.namespace}`;
    const spawnDeps = {
      containerd,
      poller,
      stateDir,
      snapshotter: config.snapshotter,
      runtime,
      shim,
      logs,
      limits,
      swapAccounting: await hasSwapAccounting(),
      cgroupParent,
      seccomp,
      adapter,
      secretPath: (name: string) => secrets.path(name),
      onUsage: (fn: string, _id: string, usage: ContainerUsage, served: boolean) =>
        stats.recordUsage(fn, usage, served),
    };
    // What a previous run left goes first: its containers still count against the parent cgroup's limits.
    const reaped = await reapLeftovers(spawnDeps);
    if (reaped) log(`reaped ${reaped} container(s) left by a previous run`);
    const cgroup = await ParentCgroup.setUp(cgroupParent, totals).catch((e) => {
      throw new Error(
        `cannot set up the parent cgroup ${cgroupParent}: ${(e as Error).message} ` +
          "(run faasd where /sys/fs/cgroup is mounted, or pass --total-memory 0 --total-cpu 0 --total-pids 0)",
        { cause: e },
      );
    });
    await cgroup.sweep();
    const scratches = await reapScratch(stateDir);
    if (scratches) log(`removed ${scratches} writable root(s) left by a previous run`);

    const server = new Server({
      ...spawnDeps,
      metrics,
      port: config.port,
      pool: {
        ...config.pool,
        poolMax: config.pool.max,
        maxContainers: resolveMaxContainers(config.pool.maxContainers),
        connectTimeoutMs: config.connectTimeoutMs,
        maxConcurrency: config.maxConcurrency,
      },
      sizing: (record) => poolSizing(record.settings, limits),
      socketMark: guard ? GUARD_MARK : null,
      onRequest: (fn, outcome, seconds) => stats.recordRequest(fn, outcome, seconds),
    });
    // Images are mounted here to read their /etc/passwd; a lookup a previous run died in leaves a mount to reap.
    const mountDir = `${stateDir}/mnt`;
    await Deno.mkdir(mountDir, { recursive: true, mode: 0o700 });
    const staleMounts = await reapRootfsMounts(mountDir);
    if (staleMounts) log(`removed ${staleMounts} image mount(s) left by a previous run`);
    let images = containerdImageStore(containerd, {
      maxBytes: config.maxImageBytes,
      snapshotter: config.snapshotter,
      mountDir,
    });
    const addresses = { ensure: ensureAddress, release: releaseAddress };
    let serving: Serving = server;
    if (config.cluster) {
      cluster = await openClusterMode(config.cluster, {
        containerd,
        localImages: images,
        server,
        addresses,
        secrets,
        stateDir,
        api: `http://${config.api.hostname}:${config.api.port}`,
        maxImageBytes: config.maxImageBytes,
        snapshotter: config.snapshotter,
        mountDir,
      });
      registry = cluster.registry;
      images = cluster.images;
      serving = cluster.serving;
      log(`cluster mode: host ${config.cluster.host}, etcd ${config.cluster.etcd.join(",")}`);
    }
    const functions = new Functions({
      registry,
      pool: config.ipPool,
      images,
      serving,
      addresses,
      onDeleted: async (name) => {
        await logs.forget(name);
        await removeLogs(logPath(stateDir, name));
        await cgroup.removeFunction(name);
        stats.forget(name);
      },
    });

    // What a previous run left half-done: images of functions no longer registered, imports that died midway,
    // addresses of this pool whose function is gone.
    const kept = registry.list().flatMap((f) => f.image ? [f.image.containerdName] : []);
    const reapedImages = await reapImages(containerd, kept);
    if (reapedImages) log(`removed ${reapedImages} image(s) and import(s) left by a previous run`);
    const deployedIps = new Set(registry.list().map((f) => f.ip));
    for (const ip of await ownAddresses()) {
      if (config.ipPool.contains(ip) && !deployedIps.has(ip)) await releaseAddress(ip);
    }
    if (cluster) {
      // The converger serves what etcd holds, pulling the images this host lacks before announcing anything.
      await cluster.start();
      log(`serving ${cluster.registry.list().length} function(s) of the cluster on port ${config.port}`);
    } else {
      const served = await functions.restore((record, e) =>
        log(`cannot serve ${record.name}: ${(e as Error).message}`)
      );
      if (served) log(`serving ${served} function(s) on port ${config.port}`);
    }

    const stopping = new AbortController();
    const api = createApi({
      functions,
      metrics,
      stats,
      maxImageBytes: config.maxImageBytes,
      limits,
      logPath: (name) => logPath(stateDir, name),
      stopping: stopping.signal,
      token: config.apiToken,
      pool: { ready: (name) => server.ready(name), status: (name) => server.status(name) },
      placements: cluster ? (name) => cluster!.registry.placements(name) : undefined,
      probe: async () => ({ containerd: (await containerd.version()).version, functions: registry.list().length }),
      secrets,
      adapterBuilt: adapter !== null,
    });
    let draining: Promise<void> | null = null;
    let closing: Promise<void> | null = null;
    const drain = () =>
      draining ??= (async () => {
        // A cluster host withdraws its routes and leaves first, so that the router sends new connections elsewhere.
        await cluster?.close();
        stopping.abort();
        await server.close(config.shutdownGraceMs);
      })();
    const p = poller;
    const g = guard;
    // Someone may flush the ruleset (a reload of nftables.service does): put the guard back at once.
    const guardCheck = setInterval(() => void g?.ensure(log), GUARD_CHECK_MS);
    return {
      api,
      functions,
      registry,
      cluster,
      containerd,
      server,
      metrics,
      stats,
      cgroup,
      guard,
      drain,
      close: () =>
        closing ??= (async () => {
          await drain();
          await logs.close();
          p.close();
          await cgroup.remove();
          // Containers still running (containerd did not answer) keep their client sockets: keep the guard then.
          if (server.containers === 0) await g?.remove();
          else log("socket guard kept: containers may still run; the next start replaces it");
          clearInterval(guardCheck);
          containerd.close();
          await closeRegistry();
        })(),
    };
  } catch (e) {
    await guard?.remove();
    poller?.close();
    containerd.close();
    await closeRegistry();
    throw e;
  }
}
