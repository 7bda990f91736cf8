/**
 * Deployed functions: deploy, look up, list, change settings and delete, keeping the registry, the image store, the
 * host addresses and the listeners in step. Each step that can fail is undone when a later one fails, so a failed
 * deploy leaves nothing behind and a replaced function keeps serving its old image.
 *
 * @module
 */

import { errorText, log } from "./log.ts";
import { traced } from "./trace.ts";
import { assertValidName } from "./names.ts";
import { type IpPool, PoolExhaustedError } from "./ipam.ts";
import type { DeployedImage, FunctionRecord, FunctionRegistry } from "./registry.ts";
import { mergeSettings, type SettingsPatch } from "./settings.ts";

/** Raised for a function name that is not deployed; the API answers 404. */
export class FunctionNotFoundError extends Error {
  constructor(name: string, options?: ErrorOptions) {
    super(`no function named ${JSON.stringify(name)}`, options);
    this.name = "FunctionNotFoundError";
  }
}

/** Where images come from and go to (containerd, in production). */
export interface ImageStore {
  /** Streams an image tarball in for function `name`; throws a clear error and leaves nothing on bad input. */
  import(name: string, body: ReadableStream<Uint8Array>): Promise<DeployedImage>;
  /** Removes what `import` made for function `name`. */
  remove(name: string, image: DeployedImage): Promise<void>;
}

/** Serving of functions on their addresses. */
export interface Serving {
  /** Serves `record` from the next connection on, listening unless already; throws when it cannot listen. */
  serve(record: FunctionRecord): void;
  /** Stops accepting connections for `name`; requests in flight finish. Idempotent. */
  stop(name: string): void;
}

/** Host address management (see hostaddr.ts). */
export interface Addresses {
  ensure(ip: string): Promise<boolean>;
  release(ip: string): Promise<void>;
}

/** Dependencies handed in by the composition root. */
export interface FunctionsDeps {
  registry: FunctionRegistry;
  pool: IpPool;
  images: ImageStore;
  serving: Serving;
  addresses: Addresses;
  /** Called after a function was deleted, to drop what else it had (its logs). */
  onDeleted?: (name: string) => Promise<void>;
}

/** The deployed functions. */
export class Functions {
  readonly #deps: FunctionsDeps;
  /** Per-name queue: deploys, updates and deletes of one name never interleave. */
  readonly #locks = new Map<string, Promise<unknown>>();

  constructor(deps: FunctionsDeps) {
    this.#deps = deps;
  }

  async #locked<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(name) ?? Promise.resolve();
    const run = previous.catch(() => {}).then(fn);
    this.#locks.set(name, run);
    try {
      return await run;
    } finally {
      if (this.#locks.get(name) === run) this.#locks.delete(name);
    }
  }

  /** The function `name`. @throws {FunctionNotFoundError} */
  get(name: string): FunctionRecord {
    const record = this.#deps.registry.get(name);
    if (!record) throw new FunctionNotFoundError(name);
    return record;
  }

  /** Every deployed function. */
  list(): FunctionRecord[] {
    return this.#deps.registry.list();
  }

  /**
   * Deploys the image tarball `body` as function `name`: a new name gets the lowest free address, an existing one
   * keeps its address and its settings and serves the new image from the next connection on.
   *
   * @param settings merged into the function's settings (each value validated by the caller, before the body is
   *   read; the merged whole is checked here, before the body is read too).
   * @throws {TypeError} for an invalid name.
   * @throws {SettingsError} when the merged settings contradict each other (min_ready above max_ready).
   * @throws {PoolExhaustedError} when the name is new and no address is free (checked before reading the body).
   * @throws whatever the registry throws when it cannot be written now (in a cluster: EtcdUnavailableError), also
   *   before the body is read.
   * @throws whatever the image store throws for a bad tarball; nothing is left behind.
   */
  deploy(
    name: string,
    body: ReadableStream<Uint8Array>,
    settings: SettingsPatch = {},
  ): Promise<{ record: FunctionRecord; created: boolean }> {
    assertValidName(name);
    return this.#locked(name, () =>
      traced("deploy", { function: name }, async (span) => {
        const { registry, pool, images, serving, addresses } = this.#deps;
        const before = registry.get(name);
        mergeSettings(before?.settings ?? {}, settings); // throws for contradicting settings, before the upload is read
        if (!before && !registry.hasFreeIp(pool)) throw new PoolExhaustedError(pool.cidr);
        await registry.writable?.(); // in a cluster: etcd unreachable fails here, before the upload is read

        const image = await traced("image.import", {}, () => images.import(name, body));
        span.setAttribute("image.digest", image.manifestDigest);
        let deployed: { record: FunctionRecord; created: boolean };
        try {
          deployed = await traced(
            "registry.update",
            {},
            async () => await registry.deploy(name, image, pool, settings),
          );
        } catch (e) {
          await images.remove(name, image).catch(() => {});
          throw e;
        }
        const { record } = deployed;
        let added = false;
        try {
          added = await addresses.ensure(record.ip);
          serving.serve(record);
        } catch (e) {
          // Undo: the function is as it was before (or gone again), its new image too.
          if (before) await registry.restore(before);
          else await registry.remove(name);
          if (added) {
            await addresses.release(record.ip).catch(() => {});
          }
          if (before?.image?.containerdName !== image.containerdName) {
            await images.remove(name, image).catch(() => {});
          }
          throw e;
        }
        // The registry points at the new image now; requests in flight keep the old snapshots they were prepared on.
        if (before?.image && before.image.containerdName !== image.containerdName) {
          await images.remove(name, before.image).catch((e) =>
            log.error("removing the previous image failed", { function: name, error: errorText(e) })
          );
        }
        log.info(deployed.created ? "deployed" : "redeployed", {
          function: name,
          ip: record.ip,
          image: image.imageRef,
          digest: image.manifestDigest,
        });
        span.setAttribute("function.ip", record.ip);
        return deployed;
      }));
  }

  /**
   * Applies `patch` (validated by the caller) to the settings of function `name`; the next connection's container
   * gets them, requests in flight keep theirs. When the new record cannot be served the settings stay as they were.
   *
   * @returns the updated function.
   * @throws {FunctionNotFoundError} when it is not deployed.
   * @throws {SettingsError} when the patch merged with the stored settings contradicts itself (min_ready above
   *   max_ready); nothing is changed.
   */
  update(name: string, patch: SettingsPatch): Promise<FunctionRecord> {
    return this.#locked(name, async () => {
      const { registry, serving } = this.#deps;
      const before = registry.get(name);
      if (!before) throw new FunctionNotFoundError(name);
      const record = await registry.updateSettings(name, patch);
      if (!record) throw new FunctionNotFoundError(name); // deleted meanwhile (by another host of a cluster)
      log.info("settings changed", { function: name, keys: Object.keys(patch).join(",") });
      // A function waiting for its image has nothing to serve; it gets the settings with its first image.
      if (record.status === "active") {
        try {
          serving.serve(record);
        } catch (e) {
          await registry.restore(before);
          throw e;
        }
      }
      return record;
    });
  }

  /**
   * Stops serving `name`, removes its image, frees its address. When the image cannot be removed the function is
   * served again and the error thrown, so that a delete either happens or can be retried.
   *
   * @throws {FunctionNotFoundError} when it is not deployed.
   */
  remove(name: string): Promise<FunctionRecord> {
    return this.#locked(name, async () => {
      const { registry, images, serving, addresses } = this.#deps;
      const record = registry.get(name);
      if (!record) throw new FunctionNotFoundError(name);
      serving.stop(name);
      // The registry first: in a cluster it is the step that can fail (etcd unreachable) and others act on it.
      let removed = false;
      try {
        await registry.remove(name);
        removed = true;
        if (record.image) await images.remove(name, record.image);
      } catch (e) {
        if (removed) await Promise.resolve().then(() => registry.restore(record)).catch(() => {});
        if (record.status === "active") serving.serve(record);
        throw e;
      }
      await addresses.release(record.ip).catch((e) =>
        log.error("releasing the address failed", { function: name, ip: record.ip, error: errorText(e) })
      );
      await this.#deps.onDeleted?.(name).catch(() => {});
      log.info("deleted", { function: name, ip: record.ip });
      return record;
    });
  }

  /**
   * Serves every active function again (at start-up). A function that cannot be served is reported and skipped,
   * so one broken address does not keep the others down.
   */
  async restore(onError: (record: FunctionRecord, error: unknown) => void): Promise<number> {
    let served = 0;
    for (const record of this.#deps.registry.list()) {
      if (record.status !== "active") continue;
      try {
        await this.#deps.addresses.ensure(record.ip);
        this.#deps.serving.serve(record);
        served++;
      } catch (e) {
        onError(record, e);
      }
    }
    return served;
  }
}
