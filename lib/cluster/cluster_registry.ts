/**
 * The function registry of a cluster, in etcd: every host reads the same functions, and two hosts never hand out one
 * address. Reads are answered from a copy that a watch keeps current (so the serving path never waits on etcd, and a
 * host keeps serving what it has while etcd is down); writes are etcd transactions, and fail with
 * {@linkcode EtcdUnavailableError} while etcd is unreachable (the API answers 503).
 *
 * Keys, under `/faasd/`:
 * - `functions/<name>`: the function's record (JSON, the same {@linkcode FunctionRecord} a single host keeps);
 * - `ips/<ip>`: the name holding the address; created in the same transaction as a new function's record;
 * - `hosts/<host>` and `serving/<name>/<host>`: written by each host under its lease (membership.ts); this copy
 *   reads them to say which host serves which image;
 * - `secrets/<name>`: the secrets every host mounts (cluster_secrets.ts).
 *
 * @module
 */

import { assertValidName } from "../names.ts";
import type { IpPool } from "../ipam.ts";
import type { DeployedImage, FunctionRecord, FunctionRegistry } from "../registry.ts";
import { mergeSettings, type SettingsPatch } from "../settings.ts";
import { errorText, log } from "../log.ts";
import {
  Code,
  type Etcd,
  EtcdCompactedError,
  EtcdError,
  EtcdUnavailableError,
  type KeyValue,
  type WatchEvent,
} from "./etcd.ts";

/** The key prefix of everything faasd keeps in etcd. */
export const PREFIX = "/faasd/";
const FUNCTIONS = `${PREFIX}functions/`;
const IPS = `${PREFIX}ips/`;
/** `hosts/<host>`: a member host, under its lease. */
export const HOSTS = `${PREFIX}hosts/`;
/** `serving/<name>/<host>`: what a host serves of a function, under the host's lease. */
export const SERVING = `${PREFIX}serving/`;
/** `secrets/<name>`: a secret's value, base64, written by the host that created it (cluster_secrets.ts). */
export const SECRETS = `${PREFIX}secrets/`;

/** A host of the cluster, as it announced itself. */
export interface HostInfo {
  host: string;
  /** Its control API, e.g. `http://192.0.2.11:8080`. */
  api: string;
  startedAt: string;
}

/** Which image of a function a host serves. */
export interface Placement {
  host: string;
  digest: string;
  since: string;
}

/** How often a transaction that lost a race is tried again before giving up. */
const TXN_ATTEMPTS = 20;
/** Back-off of the watch after etcd went away. */
const REWATCH_MS = 1000;

interface Entry {
  record: FunctionRecord;
  modRevision: number;
}

/** The etcd-backed registry of a cluster; see the module doc. */
export class ClusterRegistry implements FunctionRegistry {
  readonly #etcd: Etcd;
  readonly #now: () => Date;
  readonly #functions = new Map<string, Entry>();
  /** name → host → placement. */
  readonly #serving = new Map<string, Map<string, Placement>>();
  readonly #hosts = new Map<string, HostInfo>();
  /** Secret name → value (base64). */
  readonly #secrets = new Map<string, string>();
  /** Revision of the last key deleted by this host's own writes, per key: older watch events for it are stale. */
  readonly #deletedAt = new Map<string, number>();
  readonly #listeners = new Set<() => void>();
  readonly #closing = new AbortController();
  #revision = 0;
  #watching: Promise<void> | null = null;

  private constructor(etcd: Etcd, now: () => Date) {
    this.#etcd = etcd;
    this.#now = now;
  }

  /**
   * Loads the registry from etcd and keeps it current.
   *
   * @throws {EtcdUnavailableError} when etcd cannot be reached.
   */
  static async open(etcd: Etcd, options: { now?: () => Date } = {}): Promise<ClusterRegistry> {
    const registry = new ClusterRegistry(etcd, options.now ?? (() => new Date()));
    await registry.#load();
    registry.#watching = registry.#watch();
    return registry;
  }

  /** Calls `listener` after every change the copy took in (own writes included); returns the unsubscribe. */
  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  get(name: string): FunctionRecord | null {
    return this.#functions.get(name)?.record ?? null;
  }

  list(): FunctionRecord[] {
    return [...this.#functions.values()].map((e) => e.record).sort((a, b) => a.name < b.name ? -1 : 1);
  }

  /** The hosts that serve function `name`, and which image each serves. */
  placements(name: string): Placement[] {
    return [...this.#serving.get(name)?.values() ?? []].sort((a, b) => a.host < b.host ? -1 : 1);
  }

  /** The cluster's secrets: name → value (base64). */
  secrets(): ReadonlyMap<string, string> {
    return this.#secrets;
  }

  /** The member hosts. */
  hosts(): HostInfo[] {
    return [...this.#hosts.values()].sort((a, b) => a.host < b.host ? -1 : 1);
  }

  /** Whether a new function could get an address now, as far as this copy knows (the transaction decides). */
  hasFreeIp(pool: IpPool): boolean {
    try {
      pool.allocate(this.list().map((f) => f.ip));
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Records `image` as function `name`'s, as {@linkcode FunctionRegistry.deploy}: a new name gets the lowest address
   * of `pool` that no host holds, in the transaction that creates the record.
   *
   * @throws {TypeError} for an invalid name.
   * @throws {SettingsError} when the merged settings contradict each other.
   * @throws {PoolExhaustedError} (ipam.ts) when the function is new and the pool is full.
   * @throws {EtcdUnavailableError} when etcd cannot be reached; {@linkcode EtcdError} when it fails otherwise.
   */
  async deploy(
    name: string,
    image: DeployedImage,
    pool: IpPool,
    settings: SettingsPatch = {},
  ): Promise<{ record: FunctionRecord; created: boolean }> {
    assertValidName(name);
    for (let attempt = 0; attempt < TXN_ATTEMPTS; attempt++) {
      const now = this.#now().toISOString();
      const current = await this.#etcd.get(FUNCTIONS + name);
      if (current) {
        const existing = JSON.parse(current.value) as FunctionRecord;
        const record: FunctionRecord = {
          ...existing,
          status: "active",
          imageRef: image.imageRef,
          image,
          updatedAt: now,
          settings: mergeSettings(existing.settings, settings),
        };
        if (await this.#swap(record, current.modRevision)) return { record, created: false };
        continue;
      }
      const used = (await this.#etcd.getPrefix(IPS)).kvs.map((kv) => kv.key.slice(IPS.length));
      const ip = pool.allocate(used); // throws PoolExhaustedError
      const record: FunctionRecord = {
        name,
        ip,
        status: "active",
        imageRef: image.imageRef,
        image,
        createdAt: now,
        updatedAt: now,
        settings: mergeSettings({}, settings),
      };
      const result = await this.#etcd.txn({
        compare: [
          { key: FUNCTIONS + name, target: "createRevision", op: "==", value: 0 },
          { key: IPS + ip, target: "createRevision", op: "==", value: 0 },
        ],
        success: [
          { type: "put", key: FUNCTIONS + name, value: JSON.stringify(record) },
          { type: "put", key: IPS + ip, value: name },
        ],
      });
      if (result.succeeded) {
        this.#took(name, record, result.revision);
        return { record, created: true };
      }
    }
    throw new EtcdError("Txn", Code.Aborted, `deploying ${name} lost ${TXN_ATTEMPTS} races with other hosts in a row`);
  }

  /**
   * Applies `patch` to function `name`'s settings.
   *
   * @returns the updated record, or null when there is no such function.
   * @throws {SettingsError}, {@linkcode EtcdUnavailableError}, {@linkcode EtcdError} as {@linkcode deploy}.
   */
  async updateSettings(name: string, patch: SettingsPatch): Promise<FunctionRecord | null> {
    for (let attempt = 0; attempt < TXN_ATTEMPTS; attempt++) {
      const current = await this.#etcd.get(FUNCTIONS + name);
      if (!current) return null;
      const existing = JSON.parse(current.value) as FunctionRecord;
      const record = {
        ...existing,
        settings: mergeSettings(existing.settings, patch),
        updatedAt: this.#now().toISOString(),
      };
      if (await this.#swap(record, current.modRevision)) return record;
    }
    throw new EtcdError("Txn", Code.Aborted, `updating ${name} lost ${TXN_ATTEMPTS} races with other hosts in a row`);
  }

  /** Puts `record` back as it was (undo of a deploy or update whose later steps failed). */
  async restore(record: FunctionRecord): Promise<void> {
    const result = await this.#etcd.txn({
      compare: [],
      success: [
        { type: "put", key: FUNCTIONS + record.name, value: JSON.stringify(record) },
        { type: "put", key: IPS + record.ip, value: record.name },
      ],
    });
    this.#took(record.name, record, result.revision);
  }

  /**
   * Removes function `name` and frees its address, in one transaction.
   *
   * @returns what was removed, or null when there was none.
   * @throws {EtcdUnavailableError}, {@linkcode EtcdError} as {@linkcode deploy}.
   */
  async remove(name: string): Promise<FunctionRecord | null> {
    for (let attempt = 0; attempt < TXN_ATTEMPTS; attempt++) {
      const current = await this.#etcd.get(FUNCTIONS + name);
      if (!current) {
        this.#dropped(name, this.#revision);
        return null;
      }
      const record = JSON.parse(current.value) as FunctionRecord;
      const result = await this.#etcd.txn({
        compare: [{ key: FUNCTIONS + name, target: "modRevision", op: "==", value: current.modRevision }],
        success: [
          { type: "delete", key: FUNCTIONS + name },
          { type: "delete", key: IPS + record.ip },
        ],
      });
      if (result.succeeded) {
        this.#dropped(name, result.revision);
        return record;
      }
    }
    throw new EtcdError("Txn", Code.Aborted, `deleting ${name} lost ${TXN_ATTEMPTS} races with other hosts in a row`);
  }

  /**
   * Checks that etcd answers now, so that a deploy fails before its upload is read, not after.
   *
   * @throws {EtcdUnavailableError} when it does not.
   */
  async writable(): Promise<void> {
    await this.#etcd.get(FUNCTIONS);
  }

  /** Stops watching; idempotent. */
  async close(): Promise<void> {
    this.#closing.abort();
    await this.#watching?.catch(() => {});
  }

  async #swap(record: FunctionRecord, modRevision: number): Promise<boolean> {
    const result = await this.#etcd.txn({
      compare: [{ key: FUNCTIONS + record.name, target: "modRevision", op: "==", value: modRevision }],
      success: [{ type: "put", key: FUNCTIONS + record.name, value: JSON.stringify(record) }],
    });
    if (result.succeeded) this.#took(record.name, record, result.revision);
    return result.succeeded;
  }

  /** Takes an own write into the copy at once, so that the writer reads it back before the watch brings it. */
  #took(name: string, record: FunctionRecord, revision: number): void {
    const entry = this.#functions.get(name);
    if (entry && entry.modRevision >= revision) return;
    this.#functions.set(name, { record, modRevision: revision });
    this.#deletedAt.delete(FUNCTIONS + name);
    this.#changed();
  }

  #dropped(name: string, revision: number): void {
    this.#deletedAt.set(FUNCTIONS + name, revision);
    if (this.#functions.delete(name)) this.#changed();
  }

  #changed(): void {
    for (const listener of this.#listeners) {
      try {
        listener();
      } catch (e) {
        log.error("a registry listener failed", { error: errorText(e) });
      }
    }
  }

  /** Replaces the copy with what etcd holds now. */
  async #load(): Promise<void> {
    const { kvs, revision } = await this.#etcd.getPrefix(PREFIX);
    this.#functions.clear();
    this.#serving.clear();
    this.#hosts.clear();
    this.#secrets.clear();
    this.#deletedAt.clear();
    for (const kv of kvs) this.#apply({ type: "put", kv, revision: kv.modRevision });
    this.#revision = revision;
    this.#changed();
  }

  async #watch(): Promise<void> {
    const signal = this.#closing.signal;
    while (!signal.aborted) {
      try {
        for await (const event of this.#etcd.watchPrefix(PREFIX, { fromRevision: this.#revision + 1, signal })) {
          this.#apply(event);
          this.#revision = Math.max(this.#revision, event.revision);
          this.#changed();
        }
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof EtcdCompactedError) {
          // The events since our revision are gone: start over from what etcd holds.
          await this.#load().catch(() => {});
          continue;
        }
        if (!(e instanceof EtcdUnavailableError)) log.warn("etcd watch failed", { error: errorText(e) });
      }
      await new Promise((resolve) => setTimeout(resolve, REWATCH_MS));
    }
  }

  #apply(event: WatchEvent): void {
    const key = event.kv.key;
    if (key.startsWith(FUNCTIONS)) {
      const name = key.slice(FUNCTIONS.length);
      const stale = (this.#deletedAt.get(key) ?? 0) >= event.revision ||
        (this.#functions.get(name)?.modRevision ?? 0) >= event.revision;
      if (stale) return;
      if (event.type === "delete") {
        this.#functions.delete(name);
        this.#deletedAt.set(key, event.revision);
      } else this.#functions.set(name, { record: parse<FunctionRecord>(event.kv), modRevision: event.revision });
    } else if (key.startsWith(SERVING)) {
      const [name, host] = key.slice(SERVING.length).split("/");
      if (!name || !host) return;
      const hosts = this.#serving.get(name) ?? new Map<string, Placement>();
      if (event.type === "delete") hosts.delete(host);
      else hosts.set(host, { ...parse<Omit<Placement, "host">>(event.kv), host });
      if (hosts.size) this.#serving.set(name, hosts);
      else this.#serving.delete(name);
    } else if (key.startsWith(SECRETS)) {
      const name = key.slice(SECRETS.length);
      if (event.type === "delete") this.#secrets.delete(name);
      else this.#secrets.set(name, event.kv.value);
    } else if (key.startsWith(HOSTS)) {
      const host = key.slice(HOSTS.length);
      if (event.type === "delete") this.#hosts.delete(host);
      else this.#hosts.set(host, { ...parse<Omit<HostInfo, "host">>(event.kv), host });
    }
  }
}

function parse<T>(kv: KeyValue): T {
  return JSON.parse(kv.value) as T;
}
