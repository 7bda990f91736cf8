/**
 * A host's membership of the cluster: an etcd lease with a short TTL that the host keeps renewing, its
 * `hosts/<host>` key and one `serving/<name>/<host>` key per function it serves, all under that lease. A host that
 * dies (or is cut off from etcd for longer than the TTL) thereby vanishes from the cluster's view by itself. When
 * etcd comes back after the lease expired, the host takes a new lease and writes its keys again.
 *
 * @module
 */

import { errorText, log } from "../log.ts";
import type { Etcd } from "./etcd.ts";
import { type HostInfo, HOSTS, type Placement, SERVING } from "./cluster_registry.ts";

/** How long to wait before trying again to join after etcd failed. */
const RETRY_MS = 1000;

/** Options of {@linkcode Membership.join}. */
export interface MembershipOptions {
  host: string;
  api: string;
  /** The lease's TTL in seconds: how long a dead host stays listed. */
  ttlSeconds: number;
  now?: () => Date;
}

/** This host's keys in etcd; see the module doc. */
export class Membership {
  readonly #etcd: Etcd;
  readonly #options: MembershipOptions;
  readonly #info: Omit<HostInfo, "host">;
  /** What this host serves: function → digest (written again under each new lease). */
  readonly #serving = new Map<string, Omit<Placement, "host">>();
  readonly #closing = new AbortController();
  #lease: bigint | null = null;
  #running: Promise<void> | null = null;
  /** Serializes writes, so that a function's key never goes back to an older value. */
  #writes: Promise<void> = Promise.resolve();

  private constructor(etcd: Etcd, options: MembershipOptions) {
    this.#etcd = etcd;
    this.#options = options;
    this.#info = { api: options.api, startedAt: (options.now?.() ?? new Date()).toISOString() };
  }

  /**
   * Joins the cluster: takes a lease and writes this host's key, then keeps the lease alive in the background.
   *
   * @throws {EtcdUnavailableError} when etcd cannot be reached for the first lease.
   */
  static async join(etcd: Etcd, options: MembershipOptions): Promise<Membership> {
    const membership = new Membership(etcd, options);
    await membership.#register();
    membership.#running = membership.#keepAlive();
    return membership;
  }

  /** The host's name in the cluster. */
  get host(): string {
    return this.#options.host;
  }

  /**
   * Records that this host serves `digest` of function `name` (null: serves it no more). Written in the background;
   * a failure is logged and repaired at the next lease.
   */
  setServing(name: string, digest: string | null): void {
    if (digest === null) {
      if (!this.#serving.delete(name)) return;
    } else {
      if (this.#serving.get(name)?.digest === digest) return;
      this.#serving.set(name, { digest, since: (this.#options.now?.() ?? new Date()).toISOString() });
    }
    this.#write(async () => {
      const lease = this.#lease;
      if (!lease) return; // the next registration writes it
      const key = `${SERVING}${name}/${this.#options.host}`;
      const value = this.#serving.get(name);
      if (value) await this.#etcd.put(key, JSON.stringify(value), { lease });
      else await this.#etcd.delete(key);
    });
  }

  /** Leaves the cluster: revokes the lease, which deletes this host's keys; idempotent. */
  async close(): Promise<void> {
    if (this.#closing.signal.aborted) return;
    this.#closing.abort();
    await this.#running?.catch(() => {});
    await this.#writes;
    const lease = this.#lease;
    this.#lease = null;
    if (lease) await this.#etcd.revokeLease(lease).catch(() => {});
  }

  #write(step: () => Promise<void>): void {
    this.#writes = this.#writes.then(step).catch((e) =>
      log.warn("writing this host's state to etcd failed", { error: errorText(e) })
    );
  }

  async #register(): Promise<void> {
    const lease = await this.#etcd.grantLease(this.#options.ttlSeconds);
    const host = this.#options.host;
    await this.#etcd.put(`${HOSTS}${host}`, JSON.stringify(this.#info), { lease });
    for (const [name, value] of this.#serving) {
      await this.#etcd.put(`${SERVING}${name}/${host}`, JSON.stringify(value), { lease });
    }
    this.#lease = lease;
  }

  /** Renews the lease until closed; takes a new one (and rewrites the keys) whenever it was lost. */
  async #keepAlive(): Promise<void> {
    const signal = this.#closing.signal;
    while (!signal.aborted) {
      const lease = this.#lease;
      if (lease) {
        const end = await this.#etcd.keepAlive(lease, signal);
        if (end.reason === "aborted" || signal.aborted) return;
        log.warn("the cluster lease was lost; joining again", {
          host: this.#options.host,
          why: end.reason === "failed" ? errorText(end.error) : "expired",
        });
        this.#lease = null;
      }
      try {
        await this.#register();
        log.info("joined the cluster", { host: this.#options.host });
      } catch {
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
    }
  }
}
