/**
 * Secrets: named values an operator stores once and functions name at deploy (`secrets`), each mounted read-only at
 * `/run/secrets/NAME` in every container of those functions, as OpenFaaS and Docker do.
 *
 * They live as files in `<state-dir>/secrets/` (mode 0700: only root can reach them on the host). A file itself is
 * 0444 so that a function running under a non-root `USER` can read its own mount; the directory keeps everyone else
 * out. A value is written to a temporary file and renamed, so a reader never sees half of one. Values are never
 * returned by the API nor logged: only names and creation times are listed.
 *
 * @module
 */

import { isValidSecretName } from "./settings.ts";

/** The largest secret value (Docker's limit is 500 KB). */
export const MAX_SECRET_BYTES = 512 * 1024;

/** A secret asked for that does not exist; the API answers 400 at deploy, 404 on delete. */
export class SecretNotFoundError extends Error {
  constructor(readonly secret: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SecretNotFoundError";
  }
}

/** A secret that cannot be created or deleted as asked (it exists, or functions use it); the API answers 409. */
export class SecretConflictError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SecretConflictError";
  }
}

/** One secret as listed: never its value. */
export interface SecretInfo {
  name: string;
  createdAt: string;
}

/** Where secrets are shared with other hosts (a cluster's etcd); creates and deletes go there first. */
export interface SecretReplica {
  /** @throws {SecretConflictError} when the secret exists already. */
  create(name: string, value: Uint8Array): Promise<void>;
  delete(name: string): Promise<void>;
}

/** The secrets of one faasd. */
export class Secrets {
  readonly dir: string;
  /** Secrets named by deploys and changes in progress (not registered yet), with how many hold each. */
  readonly #held = new Map<string, number>();
  #replica: SecretReplica | null = null;

  private constructor(dir: string) {
    this.dir = dir;
  }

  /** Opens (creating it, mode 0700) the secrets directory under `stateDir`. */
  static open(stateDir: string): Secrets {
    const dir = `${stateDir}/secrets`;
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
    Deno.chmodSync(dir, 0o700);
    // A write that a crash cut short leaves a temporary file: never a secret.
    for (const e of Deno.readDirSync(dir)) if (e.name.startsWith(".")) Deno.removeSync(`${dir}/${e.name}`);
    return new Secrets(dir);
  }

  /**
   * Shares this host's secrets through `replica` (cluster mode): create and delete go to it first, and
   * {@linkcode sync} brings in what other hosts created and deleted.
   */
  share(replica: SecretReplica): void {
    this.#replica = replica;
  }

  /**
   * Makes the local files what `wanted` holds (name → value), as the cluster's copy says: writes the missing or
   * changed ones, removes the others. Invalid names are skipped.
   */
  async sync(wanted: ReadonlyMap<string, Uint8Array>): Promise<void> {
    for (const [name, value] of wanted) {
      if (!isValidSecretName(name)) continue;
      const current = await Deno.readFile(this.path(name)).catch(() => null);
      if (current && current.length === value.length && current.every((b, i) => b === value[i])) continue;
      await this.#write(name, value, true);
    }
    for (const { name } of this.list()) {
      if (!wanted.has(name)) await Deno.remove(this.path(name)).catch(() => {});
    }
  }

  /** Host path of secret `name` (bind-mounted into containers). */
  path(name: string): string {
    return `${this.dir}/${name}`;
  }

  /** Whether secret `name` exists. */
  has(name: string): boolean {
    if (!isValidSecretName(name)) return false;
    try {
      return Deno.statSync(this.path(name)).isFile;
    } catch {
      return false;
    }
  }

  /**
   * @throws {SecretNotFoundError} naming the first of `names` that does not exist.
   */
  assertExist(names: readonly string[]): void {
    for (const name of names) {
      if (!this.has(name)) {
        throw new SecretNotFoundError(
          name,
          `secret ${JSON.stringify(name)} does not exist: create it first (faas secret create ${name})`,
        );
      }
    }
  }

  /**
   * Checks that `names` exist and keeps them from being deleted until the returned function is called: a deploy
   * holds its secrets while its upload runs, before the function that mounts them is registered.
   *
   * @throws {SecretNotFoundError} naming the first of `names` that does not exist.
   */
  hold(names: readonly string[]): () => void {
    this.assertExist(names);
    for (const n of names) this.#held.set(n, (this.#held.get(n) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const n of names) {
        const left = this.#held.get(n)! - 1;
        if (left > 0) this.#held.set(n, left);
        else this.#held.delete(n);
      }
    };
  }

  /** Every secret, by name. */
  list(): SecretInfo[] {
    const out: SecretInfo[] = [];
    for (const e of Deno.readDirSync(this.dir)) {
      if (!e.isFile || !isValidSecretName(e.name)) continue;
      const info = Deno.statSync(this.path(e.name));
      out.push({ name: e.name, createdAt: (info.birthtime ?? info.mtime ?? new Date(0)).toISOString() });
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * Stores a new secret.
   *
   * @throws {TypeError} for an invalid name, an empty value, or one over {@linkcode MAX_SECRET_BYTES}.
   * @throws {SecretConflictError} when it exists already (in a cluster: on any host).
   * @throws whatever the replica throws (in a cluster: `EtcdUnavailableError`); nothing is written then.
   */
  async create(name: string, value: Uint8Array): Promise<void> {
    if (!isValidSecretName(name)) {
      throw new TypeError(
        `invalid secret name ${JSON.stringify(name)}: 1-64 letters, digits, '.', '_' or '-', starting with a letter ` +
          "or digit",
      );
    }
    if (value.length === 0) throw new TypeError("empty secret: give a value");
    if (value.length > MAX_SECRET_BYTES) {
      throw new TypeError(`secret of ${value.length} bytes is over the limit of ${MAX_SECRET_BYTES} bytes`);
    }
    if (this.has(name)) throw new SecretConflictError(`secret ${JSON.stringify(name)} exists already`);
    if (this.#replica) {
      // The cluster's copy decides whether the name is free; this host's file follows it.
      await this.#replica.create(name, value);
      await this.#write(name, value, true);
    } else await this.#write(name, value, false);
  }

  /** Writes secret `name` through a temporary file: replacing one, or (`replace` false) only where none exists. */
  async #write(name: string, value: Uint8Array, replace: boolean): Promise<void> {
    const tmp = `${this.dir}/.${name}.${crypto.randomUUID()}`;
    try {
      await Deno.writeFile(tmp, value, { mode: 0o444, createNew: true });
      await Deno.chmod(tmp, 0o444);
      if (replace) {
        await Deno.rename(tmp, this.path(name));
        return;
      }
      // link() fails if the name was taken meanwhile, where rename() would replace it.
      await Deno.link(tmp, this.path(name)).catch((e) => {
        if (e instanceof Deno.errors.AlreadyExists) {
          throw new SecretConflictError(`secret ${JSON.stringify(name)} exists already`, { cause: e });
        }
        throw e;
      });
    } finally {
      await Deno.remove(tmp).catch(() => {});
    }
  }

  /**
   * Deletes secret `name`, unless `usedBy` lists functions that mount it.
   *
   * @throws {SecretNotFoundError} when it does not exist.
   * @throws {SecretConflictError} when functions use it (they are named).
   * @throws whatever the replica throws (in a cluster: `EtcdUnavailableError`); nothing is deleted then.
   */
  async delete(name: string, usedBy: readonly string[]): Promise<void> {
    if (!this.has(name)) throw new SecretNotFoundError(name, `secret ${JSON.stringify(name)} does not exist`);
    if (this.#held.has(name)) {
      throw new SecretConflictError(`secret ${JSON.stringify(name)} is named by a deploy in progress`);
    }
    if (usedBy.length) {
      throw new SecretConflictError(
        `secret ${JSON.stringify(name)} is used by ${usedBy.join(", ")}: deploy them without it first`,
      );
    }
    await this.#replica?.delete(name);
    await Deno.remove(this.path(name)).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e; // a sync removed it meanwhile
    });
  }
}
