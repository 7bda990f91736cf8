/**
 * The function registry: what only faasd knows (name → IP, the image each function runs, its settings, when it
 * changed), kept in SQLite (`node:sqlite`, WAL) in the state directory so that it survives restarts. containerd stays
 * the source of truth for what runs; this is the source of truth for what is deployed.
 *
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { assertValidName, isValidName } from "./names.ts";
import type { IpPool } from "./ipam.ts";
import type { DeployedProcess } from "./serve/spec.ts";
import { type FunctionSettings, mergeSettings, type SettingsPatch } from "./settings.ts";

export type { DeployedProcess } from "./serve/spec.ts";

/** The image a function runs, as the import left it in containerd. */
export interface DeployedImage {
  /** The reference the image carried in its tarball, e.g. `localhost/hello:latest`. */
  imageRef: string;
  /** The containerd image record faasd keeps for this function. */
  containerdName: string;
  manifestDigest: string;
  /** The top committed snapshot of the unpacked image; each request's snapshot is prepared on it. */
  chainId: string;
  config: DeployedProcess;
}

/** `active`: served. `no-image`: imported from a seed `registry.json`, waiting for its image to be deployed. */
export type FunctionStatus = "active" | "no-image";

/** One deployed function. */
export interface FunctionRecord {
  name: string;
  ip: string;
  status: FunctionStatus;
  /** The image reference the function was deployed from (shown by `faas list`). */
  imageRef: string;
  /** What containerd holds for it; null while `no-image`. */
  image: DeployedImage | null;
  createdAt: string;
  updatedAt: string;
  /** What was set for this function (memory, CPUs…); an absent field takes the daemon's default. */
  settings: FunctionSettings;
}

interface Row {
  name: string;
  ip: string;
  status: string;
  image_ref: string;
  image_json: string | null;
  created_at: string;
  updated_at: string;
  settings_json: string;
}

const SCHEMA = `
  CREATE TABLE IF NOT EXISTS functions (
    name        TEXT PRIMARY KEY,
    ip          TEXT NOT NULL UNIQUE,
    status      TEXT NOT NULL,
    image_ref   TEXT NOT NULL,
    image_json  TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    settings_json TEXT NOT NULL DEFAULT '{}'
  ) STRICT;
  CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
`;

function toRecord(row: Row): FunctionRecord {
  return {
    name: row.name,
    ip: row.ip,
    status: row.status === "active" ? "active" : "no-image",
    imageRef: row.image_ref,
    image: row.image_json ? JSON.parse(row.image_json) as DeployedImage : null,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    settings: JSON.parse(row.settings_json) as FunctionSettings,
  };
}

/** The columns of `functions`, named in every INSERT so that a column added later cannot shift the values. */
/**
 * What faasd's deploy, update and delete paths need of a registry: the SQLite one below on a single host, the etcd
 * one (cluster/cluster_registry.ts) in a cluster. Reads are synchronous (the etcd one answers from its watched
 * copy); writes may be asynchronous. Each write method throws as {@linkcode Registry}'s namesake documents.
 */
export interface FunctionRegistry {
  get(name: string): FunctionRecord | null;
  list(): FunctionRecord[];
  hasFreeIp(pool: IpPool): boolean;
  deploy(
    name: string,
    image: DeployedImage,
    pool: IpPool,
    settings?: SettingsPatch,
  ): { record: FunctionRecord; created: boolean } | Promise<{ record: FunctionRecord; created: boolean }>;
  updateSettings(name: string, patch: SettingsPatch): FunctionRecord | null | Promise<FunctionRecord | null>;
  restore(record: FunctionRecord): void | Promise<void>;
  remove(name: string): FunctionRecord | null | Promise<FunctionRecord | null>;
  /** Throws when a write could not be made now (etcd unreachable), so a deploy fails before its upload is read. */
  writable?(): Promise<void>;
}

const INSERT = `INSERT INTO functions (name, ip, status, image_ref, image_json, created_at, updated_at, settings_json)
  VALUES (?, ?, ?, ?, ?, ?, ?, ?)`;

/** The SQLite-backed registry. Synchronous: each method is one short transaction. */
export class Registry implements FunctionRegistry {
  readonly #db: DatabaseSync;
  readonly #now: () => Date;
  #closed = false;

  /**
   * Opens (creating if needed) the registry database at `path` (`:memory:` for tests).
   *
   * @param now clock, replaceable in unit tests.
   */
  constructor(path: string, now: () => Date = () => new Date()) {
    this.#db = new DatabaseSync(path);
    this.#now = now;
    this.#db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;");
    this.#db.exec(SCHEMA);
    this.#migrate();
  }

  /** Brings a database made by an earlier version up to SCHEMA (CREATE TABLE IF NOT EXISTS left it as it was). */
  #migrate(): void {
    const hasColumn = (column: string) =>
      (this.#db.prepare("PRAGMA table_info(functions)").all() as { name: string }[]).some((c) => c.name === column);
    if (hasColumn("settings_json")) return;
    // Checked again inside the transaction: another process may have migrated the file meanwhile.
    this.#tx(() => {
      if (!hasColumn("settings_json")) {
        this.#db.exec("ALTER TABLE functions ADD COLUMN settings_json TEXT NOT NULL DEFAULT '{}'");
      }
    });
  }

  #tx<T>(fn: () => T): T {
    this.#db.exec("BEGIN IMMEDIATE");
    try {
      const result = fn();
      this.#db.exec("COMMIT");
      return result;
    } catch (e) {
      this.#db.exec("ROLLBACK");
      throw e;
    }
  }

  /** The function called `name`, or null. */
  get(name: string): FunctionRecord | null {
    const row = this.#db.prepare("SELECT * FROM functions WHERE name = ?").get(name) as Row | undefined;
    return row ? toRecord(row) : null;
  }

  /** Every function, by name. */
  list(): FunctionRecord[] {
    return (this.#db.prepare("SELECT * FROM functions ORDER BY name").all() as unknown as Row[]).map(toRecord);
  }

  /** Whether a new function could get an address from `pool` now. */
  hasFreeIp(pool: IpPool): boolean {
    const { n } = this.#db.prepare("SELECT count(*) AS n FROM functions").get() as { n: number };
    if (n < pool.capacity) return true;
    try {
      pool.allocate(this.#usedIps());
      return true;
    } catch {
      return false;
    }
  }

  #usedIps(): string[] {
    return (this.#db.prepare("SELECT ip FROM functions").all() as { ip: string }[]).map((r) => r.ip);
  }

  /**
   * Records `image` as the image of function `name`: a new function gets the lowest free address of `pool`, an
   * existing one keeps its address and its settings, with `settings` (validated by the caller) merged in.
   *
   * @throws {TypeError} for an invalid name.
   * @throws {SettingsError} when the merged settings contradict each other (see mergeSettings); nothing is changed.
   * @throws {PoolExhaustedError} when the function is new and the pool is full.
   */
  deploy(
    name: string,
    image: DeployedImage,
    pool: IpPool,
    settings: SettingsPatch = {},
  ): { record: FunctionRecord; created: boolean } {
    assertValidName(name);
    const now = this.#now().toISOString();
    return this.#tx(() => {
      const existing = this.get(name);
      const merged = JSON.stringify(mergeSettings(existing?.settings ?? {}, settings));
      if (existing) {
        this.#db.prepare(
          `UPDATE functions SET status = 'active', image_ref = ?, image_json = ?, updated_at = ?, settings_json = ?
           WHERE name = ?`,
        ).run(image.imageRef, JSON.stringify(image), now, merged, name);
      } else {
        const ip = pool.allocate(this.#usedIps());
        this.#db.prepare(INSERT).run(name, ip, "active", image.imageRef, JSON.stringify(image), now, now, merged);
      }
      return { record: this.get(name)!, created: existing === null };
    });
  }

  /**
   * Applies `patch` (validated by the caller) to the settings of function `name`: a field given as null is dropped,
   * so the daemon's default applies again.
   *
   * @returns the updated record, or null when there is no such function.
   * @throws {SettingsError} when the merged settings contradict each other (see mergeSettings); nothing is changed.
   */
  updateSettings(name: string, patch: SettingsPatch): FunctionRecord | null {
    const now = this.#now().toISOString();
    return this.#tx(() => {
      const existing = this.get(name);
      if (!existing) return null;
      this.#db.prepare("UPDATE functions SET settings_json = ?, updated_at = ? WHERE name = ?")
        .run(JSON.stringify(mergeSettings(existing.settings, patch)), now, name);
      return this.get(name)!;
    });
  }

  /** Restores `record` exactly (used to undo a deploy or a settings update whose later steps failed). */
  restore(record: FunctionRecord): void {
    this.#tx(() => {
      this.#db.prepare("DELETE FROM functions WHERE name = ?").run(record.name);
      this.#db.prepare(INSERT).run(
        record.name,
        record.ip,
        record.status,
        record.imageRef,
        record.image ? JSON.stringify(record.image) : null,
        record.createdAt,
        record.updatedAt,
        JSON.stringify(record.settings),
      );
    });
  }

  /** Removes function `name`; returns what was removed, or null when there was none. */
  remove(name: string): FunctionRecord | null {
    return this.#tx(() => {
      const existing = this.get(name);
      if (existing) this.#db.prepare("DELETE FROM functions WHERE name = ?").run(name);
      return existing;
    });
  }

  /**
   * Imports a seed-format `registry.json` (`{"name": {"ip": "...", "image_ref": "..."}}`) once. Its functions have
   * no image in containerd yet, so they are kept as `no-image` (their names and addresses are reserved) until
   * redeployed. Entries with an invalid name, an address outside `pool` (faasd would add it to the host) or one
   * already taken are skipped and reported.
   *
   * @returns the names imported and the entries skipped with why; null when it had been imported before.
   * @throws {SyntaxError} when the file is not JSON of that shape.
   */
  importSeedJson(text: string, pool: IpPool): { imported: string[]; skipped: string[] } | null {
    const done = this.#db.prepare("SELECT value FROM meta WHERE key = 'seed_json_imported'").get();
    if (done) return null;
    const data = JSON.parse(text) as unknown;
    if (typeof data !== "object" || data === null || Array.isArray(data)) {
      throw new SyntaxError("registry.json must be an object of name → {ip, image_ref}");
    }
    const now = this.#now().toISOString();
    const imported: string[] = [];
    const skipped: string[] = [];
    this.#tx(() => {
      const used = new Set(this.#usedIps());
      for (const [name, value] of Object.entries(data)) {
        const ip = (value as { ip?: unknown })?.ip;
        const imageRef = (value as { image_ref?: unknown })?.image_ref;
        if (!isValidName(name)) skipped.push(`${name}: invalid name`);
        else if (typeof ip !== "string" || used.has(ip)) skipped.push(`${name}: missing or duplicate ip`);
        else if (!pool.contains(ip)) skipped.push(`${name}: ${ip} is not in the pool ${pool.cidr}`);
        else if (this.get(name)) skipped.push(`${name}: already deployed`);
        else {
          const ref = typeof imageRef === "string" ? imageRef : "";
          this.#db.prepare(INSERT).run(name, ip, "no-image", ref, null, now, now, "{}");
          used.add(ip);
          imported.push(name);
        }
      }
      this.#db.prepare("INSERT INTO meta VALUES ('seed_json_imported', ?)").run(now);
    });
    return { imported, skipped };
  }

  /** Closes the database; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#db.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
