/**
 * Secrets in a cluster: created and deleted in etcd (`/faasd/secrets/<name>`, the value base64), and mirrored by
 * every host into its own secrets directory, so a function deployed with `--secret` finds it on every host. etcd
 * keeps the values as it keeps everything else: reach it only from the hosts' private network.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { errorText, log } from "../log.ts";
import { SecretConflictError, type Secrets } from "../secrets.ts";
import { type ClusterRegistry, SECRETS } from "./cluster_registry.ts";
import type { Etcd } from "./etcd.ts";

/**
 * Shares `secrets` through etcd and keeps the local files in step with the registry's copy (now and on every change).
 *
 * @returns the unsubscribe.
 */
export function shareSecrets(etcd: Etcd, registry: ClusterRegistry, secrets: Secrets): () => void {
  secrets.share({
    create: async (name, value) => {
      if (!(await etcd.create(SECRETS + name, Buffer.from(value).toString("base64")))) {
        throw new SecretConflictError(`secret ${JSON.stringify(name)} exists already`);
      }
    },
    delete: async (name) => {
      await etcd.delete(SECRETS + name);
    },
  });
  let syncing: Promise<void> = Promise.resolve();
  const sync = () => {
    const wanted = new Map(
      [...registry.secrets()].map(([name, value]) => [name, new Uint8Array(Buffer.from(value, "base64"))]),
    );
    syncing = syncing.then(() => secrets.sync(wanted)).catch((e) =>
      log.error("writing the cluster's secrets on this host failed", { error: errorText(e) })
    );
  };
  sync();
  return registry.onChange(sync);
}
