/**
 * Cluster mode assembled (`--cluster`): the etcd client, the etcd-backed registry, this host's membership, BIRD
 * announcing what this host serves, the registry-backed image store, and the converger that makes this host serve
 * what etcd holds. The platform (platform.ts) builds it in place of the SQLite registry and hands its parts to the
 * same deploy, update and delete paths a single host has.
 *
 * A host withdraws its routes when it stops, when its containerd stops answering (until it answers again) and, since
 * BIRD runs as faasd's child that dies with it, when faasd is killed. It keeps serving and announcing what it has
 * while etcd is down: every host loses etcd at once then, and withdrawing would take every function offline.
 *
 * @module
 */

import type { Containerd } from "../containerd/client.ts";
import { answers } from "../containerd/availability.ts";
import type { ClusterConfig } from "../config.ts";
import type { Addresses, ImageStore, Serving } from "../functions.ts";
import { errorText, log } from "../log.ts";
import { BirdAnnouncer } from "./bird.ts";
import { clusterImageStore } from "./cluster_images.ts";
import { ClusterRegistry } from "./cluster_registry.ts";
import { Converger } from "./converger.ts";
import { Etcd } from "./etcd.ts";
import { Membership } from "./membership.ts";
import { shareSecrets } from "./cluster_secrets.ts";
import type { Secrets } from "../secrets.ts";

/** How often containerd is asked whether it answers, to withdraw this host's routes while it does not. */
const HEALTH_MS = 1000;

/** What the composition root hands in. */
export interface ClusterModeDeps {
  containerd: Containerd;
  /** This host's image store (imports into its containerd). */
  localImages: ImageStore;
  /** This host's server. */
  server: Serving;
  addresses: Addresses;
  /** This host's secrets: shared through etcd in a cluster. */
  secrets: Secrets;
  stateDir: string;
  /** This host's control API as other hosts and operators reach it, e.g. `http://192.0.2.11:8080`. */
  api: string;
  maxImageBytes: number;
  snapshotter: string;
  mountDir?: string;
}

/** Cluster mode, opened; see the module doc. */
export interface ClusterMode {
  registry: ClusterRegistry;
  images: ImageStore;
  /** Serving through this is announced and recorded in etcd. */
  serving: Serving;
  converger: Converger;
  /** Serves (pulling first) what etcd holds, then announces it; follows etcd from then on. */
  start(): Promise<void>;
  /** Withdraws every route, leaves the cluster (its keys go with its lease) and stops BIRD. Idempotent. */
  close(): Promise<void>;
}

/**
 * Opens cluster mode: loads the registry from etcd, joins as a member and starts BIRD (when configured).
 *
 * @throws {EtcdUnavailableError} when etcd cannot be reached (faasd does not start without the cluster's state).
 * @throws {BirdError} when BIRD cannot start with the operator's configuration.
 */
export async function openClusterMode(config: ClusterConfig, deps: ClusterModeDeps): Promise<ClusterMode> {
  const etcd = new Etcd({ endpoints: config.etcd });
  let registry: ClusterRegistry | null = null;
  let membership: Membership | null = null;
  let announcer: BirdAnnouncer | null = null;
  try {
    registry = await ClusterRegistry.open(etcd);
    membership = await Membership.join(etcd, { host: config.host, api: deps.api, ttlSeconds: config.hostTtlSeconds });
    if (config.birdConfig) {
      announcer = await BirdAnnouncer.start({ operatorConfig: config.birdConfig, stateDir: deps.stateDir });
    }
  } catch (e) {
    await announcer?.close().catch(() => {});
    await membership?.close().catch(() => {});
    await registry?.close().catch(() => {});
    etcd.close();
    throw e;
  }
  const images = clusterImageStore(deps.containerd, deps.localImages, {
    registry: config.registry,
    maxBytes: deps.maxImageBytes,
    snapshotter: deps.snapshotter,
    mountDir: deps.mountDir,
  });
  const unshare = shareSecrets(etcd, registry, deps.secrets);
  const converger = new Converger({
    registry,
    membership,
    images,
    server: deps.server,
    addresses: deps.addresses,
    announcer,
  });
  let health: ReturnType<typeof setInterval> | undefined;
  let closing: Promise<void> | null = null;
  const reg = registry;
  const member = membership;
  const bird = announcer;
  return {
    registry: reg,
    images,
    serving: converger.serving,
    converger,
    start: async () => {
      await converger.start();
      log.info("cluster member", { host: config.host, hosts: reg.hosts().map((h) => h.host).join(",") });
      let down = false;
      health = setInterval(async () => {
        const ok = await answers(deps.containerd);
        if (ok === !down) return;
        down = !ok;
        if (down) {
          log.error("containerd does not answer: withdrawing this host's routes", { host: config.host });
          await converger.withdraw().catch((e) => log.error("withdrawing failed", { error: errorText(e) }));
        } else {
          log.info("containerd answers again: announcing this host's routes", { host: config.host });
          await converger.reannounce().catch((e) => log.error("announcing failed", { error: errorText(e) }));
        }
      }, HEALTH_MS);
    },
    close: () =>
      closing ??= (async () => {
        clearInterval(health);
        unshare();
        await converger.close();
        await bird?.close().catch(() => {});
        await member.close();
        await reg.close();
        etcd.close();
      })(),
  };
}
