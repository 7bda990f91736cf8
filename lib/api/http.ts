/**
 * JSON responses and the one mapping from errors to HTTP statuses for the control API. Every error answer is
 * `{"error": "..."}`; 500 is kept for bugs.
 *
 * @module
 */

import { errorText, log } from "../log.ts";
import { FunctionNotFoundError } from "../functions.ts";
import { PoolExhaustedError } from "../ipam.ts";
import { ContainerdError, isUnavailable } from "../containerd/errors.ts";
import { EtcdError, EtcdUnavailableError } from "../cluster/etcd.ts";
import { RegistryError } from "../cluster/distribution.ts";
import { ImageImportError, withoutHostPaths } from "../images/errors.ts";
import { ListenError } from "../serve/server.ts";
import { HostAddressError } from "../hostaddr.ts";
import { SettingsError } from "../settings.ts";
import { SecretConflictError, SecretNotFoundError } from "../secrets.ts";

/** An error that already knows its HTTP status (bad requests found by the handlers themselves). */
export class HttpError extends Error {
  constructor(readonly status: number, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "HttpError";
  }
}

/** A JSON response. */
export function json(body: unknown, status = 200, headers: HeadersInit = {}): Response {
  return new Response(JSON.stringify(body) + "\n", {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

/** The status an error is answered with. */
export function statusOf(e: unknown): number {
  if (e instanceof HttpError) return e.status;
  if (e instanceof FunctionNotFoundError) return 404;
  if (e instanceof SettingsError) return 400; // a setting refused, alone or merged with those set before
  if (e instanceof SecretNotFoundError) return 400; // a deploy naming a secret that does not exist
  if (e instanceof SecretConflictError) return 409;
  if (e instanceof PoolExhaustedError) return 503;
  if (e instanceof ImageImportError) {
    if (e.kind === "invalid") return 400;
    if (e.kind === "too-large") return 413;
    return isUnavailable(e.cause) ? 503 : 502; // containerd failed, not the upload
  }
  if (e instanceof ListenError) return 409;
  if (e instanceof HostAddressError) return 503;
  if (e instanceof URIError) return 400; // a malformed %-escape in the path
  if (e instanceof ContainerdError) return isUnavailable(e) ? 503 : 502;
  // A cluster's etcd or registry: unreachable is a wait-and-retry (503), anything else a failure upstream (502).
  if (e instanceof EtcdUnavailableError) return 503;
  if (e instanceof EtcdError) return 502;
  if (e instanceof RegistryError) return e.status === undefined ? 503 : 502;
  return 500;
}

/** The `{"error": ...}` answer for `e`; unexpected errors are logged since they are bugs. */
export function errorResponse(e: unknown): Response {
  const status = statusOf(e);
  let message = e instanceof Error ? e.message : String(e);
  if (status === 500) log.error("internal error", { error: errorText(e), stack: (e as Error)?.stack });
  if (e instanceof ContainerdError) {
    // containerd's messages name paths on the host: the operator's log has them, the client does not.
    log.error("containerd refused", { error: message });
    message = withoutHostPaths(message);
  }
  if (e instanceof EtcdError) {
    // The operator's log gets etcd's own words and addresses; the client learns what to do.
    log.error("etcd failed", { error: message });
    message = e instanceof EtcdUnavailableError
      ? "the cluster's etcd is unreachable: deploys, changes and deletes wait until it is back (functions still serve)"
      : "the cluster's etcd refused the change; try again";
  }
  return json({ error: message }, status);
}
