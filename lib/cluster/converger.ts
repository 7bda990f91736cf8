/**
 * Makes one host serve what the cluster's registry says: every function in etcd, with the image etcd names, and
 * nothing else. A function whose image this host lacks is pulled from the cluster registry first; while a new image
 * is pulled the host serves the function no more (its route is withdrawn), so a version is announced only by hosts
 * that have it. A host that joins pulls every image before it announces anything.
 *
 * The deploy and delete paths of this host go through {@linkcode Converger.serving}, so that what they serve is
 * announced and recorded in etcd like what the converger serves by itself.
 *
 * @module
 */

import type { Addresses, Serving } from "../functions.ts";
import type { DeployedImage, FunctionRecord } from "../registry.ts";
import { errorText, log } from "../log.ts";
import type { ClusterRegistry } from "./cluster_registry.ts";
import type { Membership } from "./membership.ts";

/** How long a failed pull waits before the next round tries again. */
const RETRY_MS = 2000;
/** How long a starting host keeps trying to pull every image before it announces what it has. */
const START_PULL_DEADLINE_MS = 60_000;

/** Where this host's images come from. */
export interface ClusterImages {
  /** Whether this host's containerd holds `image` (unpacked). */
  has(image: DeployedImage): Promise<boolean>;
  /** Pulls function `record`'s image from the cluster registry into this host's containerd. */
  pull(record: FunctionRecord): Promise<void>;
  /** Removes what `pull` (or an import) made for function `name`. */
  remove(name: string, image: DeployedImage): Promise<void>;
}

/** Announces the addresses this host serves (BIRD, in production). */
export interface Announcer {
  announce(ips: Iterable<string>): Promise<void>;
}

/** What the converger needs, from the composition root. */
export interface ConvergerDeps {
  registry: ClusterRegistry;
  membership: Membership;
  images: ClusterImages;
  /** The server: serves and stops functions on this host. */
  server: Serving;
  addresses: Addresses;
  announcer: Announcer | null;
}

interface Local {
  record: FunctionRecord;
  digest: string;
}

/** See the module doc. */
export class Converger {
  readonly #deps: ConvergerDeps;
  /** What this host serves now. */
  readonly #local = new Map<string, Local>();
  #round: Promise<void> | null = null;
  #again = false;
  #retry: ReturnType<typeof setTimeout> | undefined;
  /** Nothing is announced until the first round pulled every image. */
  #announcing = false;
  #closed = false;
  /** Whether the last round left a function unserved (its pull failed). */
  #failed = false;
  /** Set once start() is done: from then on a failed round schedules its own retry. */
  #started = false;
  #unsubscribe: (() => void) | null = null;

  constructor(deps: ConvergerDeps) {
    this.#deps = deps;
  }

  /**
   * The serving interface for this host's deploy and delete paths: serving through it is announced and recorded in
   * etcd.
   */
  readonly serving: Serving = {
    serve: (record) => {
      this.#deps.server.serve(record);
      this.#served(record);
    },
    stop: (name) => {
      this.#deps.server.stop(name);
      this.#stopped(name);
    },
  };

  /** Serves what the registry holds (pulling first), then announces it, and follows every later change. */
  async start(): Promise<void> {
    this.#unsubscribe = this.#deps.registry.onChange(() => this.#schedule());
    // Pulls that fail (the registry down) are tried again for a while before the host announces the rest anyway: a
    // host that cannot get one image still serves the others.
    const deadline = Date.now() + START_PULL_DEADLINE_MS;
    await this.#schedule();
    while (this.#failed && !this.#closed && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      await this.#schedule();
    }
    if (this.#failed) log.warn("announcing without every image: some pulls keep failing (tried again every 2 s)");
    this.#started = true;
    this.#announcing = true;
    await this.#announce();
  }

  /** Whether this host serves function `name` now, and which image. */
  digestOf(name: string): string | null {
    return this.#local.get(name)?.digest ?? null;
  }

  /** Withdraws everything (the host stops, or its containerd is gone); start() is not called again after close(). */
  async withdraw(): Promise<void> {
    this.#announcing = false;
    await this.#deps.announcer?.announce([]);
  }

  /** Announces again after {@linkcode withdraw} (containerd came back). */
  async reannounce(): Promise<void> {
    this.#announcing = true;
    await this.#announce();
  }

  /** Stops following the registry and withdraws every route; idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#unsubscribe?.();
    clearTimeout(this.#retry);
    await this.#round?.catch(() => {});
    await this.withdraw().catch(() => {});
  }

  #served(record: FunctionRecord): void {
    const digest = record.image!.manifestDigest;
    this.#local.set(record.name, { record, digest });
    this.#deps.membership.setServing(record.name, digest);
    void this.#announce();
  }

  #stopped(name: string): void {
    if (!this.#local.delete(name)) return;
    this.#deps.membership.setServing(name, null);
    void this.#announce();
  }

  async #announce(): Promise<void> {
    if (!this.#announcing || !this.#deps.announcer) return;
    const ips = [...this.#local.values()].map((l) => l.record.ip);
    await this.#deps.announcer.announce(ips).catch((e) =>
      log.error("announcing the function addresses failed", { error: errorText(e) })
    );
  }

  /** Runs a round now, or once more after the one under way; resolves when the rounds are done. */
  #schedule(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    if (this.#round) {
      this.#again = true;
      return this.#round;
    }
    this.#round = (async () => {
      try {
        do {
          this.#again = false;
          await this.#converge();
        } while (this.#again && !this.#closed);
      } finally {
        this.#round = null;
      }
    })();
    return this.#round;
  }

  async #converge(): Promise<void> {
    const { registry, images, addresses } = this.#deps;
    const wanted = new Map(registry.list().filter((f) => f.status === "active" && f.image).map((f) => [f.name, f]));
    for (const [name, local] of [...this.#local]) {
      if (wanted.has(name)) continue;
      this.serving.stop(name);
      await addresses.release(local.record.ip).catch(() => {});
      await images.remove(name, local.record.image!).catch((e) =>
        log.warn("removing a deleted function's image failed", { function: name, error: errorText(e) })
      );
      log.info("stopped serving a function deleted from the cluster", { function: name });
    }
    let failed = false;
    for (const record of wanted.values()) {
      if (this.#closed) return;
      const local = this.#local.get(record.name);
      const digest = record.image!.manifestDigest;
      if (local?.digest === digest) {
        // Same image: settings may have changed; serving the newer record applies them.
        if (local.record.updatedAt !== record.updatedAt) this.serving.serve(record);
        continue;
      }
      // A new image (or a new function): withdraw the old one before pulling, so no host announces an old version.
      if (local) this.serving.stop(record.name);
      try {
        if (!(await images.has(record.image!))) {
          log.info("pulling a function's image", { function: record.name, digest });
          await images.pull(record);
        }
        // The record may have changed while pulling; the next round takes the newer one.
        if (registry.get(record.name)?.image?.manifestDigest !== digest) continue;
        await addresses.ensure(record.ip);
        this.serving.serve(record);
        if (local && local.record.image!.containerdName !== record.image!.containerdName) {
          await images.remove(record.name, local.record.image!).catch(() => {});
        }
        log.info("serving a function of the cluster", { function: record.name, ip: record.ip, digest });
      } catch (e) {
        failed = true;
        log.error("cannot serve a function of the cluster yet", { function: record.name, error: errorText(e) });
      }
    }
    this.#failed = failed;
    if (failed && !this.#closed && this.#started) {
      clearTimeout(this.#retry);
      this.#retry = setTimeout(() => void this.#schedule(), RETRY_MS);
    }
  }
}
